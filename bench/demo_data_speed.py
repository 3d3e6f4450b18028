"""Speed of the demo-data generator at scale (not run in CI).

    .venv/bin/python -m bench.demo_data_speed [--events 1000000 5000000 20000000] [--days 3]

For each total event count (both domains, all days; the target gets 35% of the source's
volume) generates into a temporary lake with one user per 25 events and prints wall and CPU
seconds, events per second and bytes written. The numbers go to docs/INGEST.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from crossrec_core.config import load_settings
from crossrec_core.ingest.demo_data import TARGET_VOLUME, generate_demo_data
from crossrec_core.lake import Lake

EVENTS_PER_USER = 25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()
    # CPU seconds too: on a shared machine the wall clock measures the neighbours as well
    print(f"{'events':>12} {'users':>9} {'seconds':>8} {'cpu s':>8} {'M events/s':>10} {'MB':>8}")
    for events in args.events:
        root = Path(tempfile.mkdtemp(prefix="crossrec-bench-demo-"))
        try:
            settings = load_settings(lake=root)
            per_day = round(events / args.days / (1 + TARGET_VOLUME))
            users = max(20, events // EVENTS_PER_USER)
            clock, cpu = time.perf_counter(), time.process_time()
            summary = generate_demo_data(
                Lake(root), settings, users=users, days=args.days, seed=0, end_date="2026-11-20", events_per_day=per_day
            )
            seconds, cpu = time.perf_counter() - clock, time.process_time() - cpu
            rows = sum(d.rows for d in summary.domains)
            size = sum(d.bytes for d in summary.domains)
            print(f"{rows:>12,} {users:>9,} {seconds:>8.1f} {cpu:>8.1f} {rows / seconds / 1e6:>10.2f} {size / 1e6:>8.0f}", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
