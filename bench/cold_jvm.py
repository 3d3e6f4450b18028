"""What a cold JVM costs a small clean (not run in CI).

    .venv/bin/python -m bench.cold_jvm [--users 600]

Generates one night of demo data, then cleans the same (domain, night) twice in one
process: first on a fresh JVM (the Spark session's start is timed apart), then again on
the same, now warm, JVM. The first clean pays for class loading and compiling Spark's
query code; the second shows what the data work itself costs. Every nightly Spark task is
a new spark-submit, so each pays the first figure (docs/BENCHMARKS.md, "Fixed cost of a
small night").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from crossrec_core.config import load_settings
from crossrec_core.etl import clean as clean_stage
from crossrec_core.ingest.demo_data import generate_demo_data
from crossrec_core.lake import Lake
from crossrec_core.spark import spark_session

DS = "2026-03-10"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=600, help="demo users (the demo's default night is about 22,000 events)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crossrec-cold-jvm-") as root:
        settings = load_settings(lake=Path(root) / "lake")
        generate_demo_data(Lake(settings.lake), settings, users=args.users, days=1, seed=7, end_date=DS)
        started = time.perf_counter()
        spark_session(settings, "crossrec-clean")  # the stage reuses it (getOrCreate)
        print(f"JVM and Spark session start: {time.perf_counter() - started:.1f} s")
        for attempt in ("cold JVM", "warm JVM"):
            report = clean_stage.clean(settings, DS, settings.target)
            print(f"clean {settings.target} ({report.rows_in:,} rows), {attempt}: {report.metrics['seconds']:.1f} s")


if __name__ == "__main__":
    main()
