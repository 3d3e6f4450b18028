"""Every benchmark, one after the other, each writing its section of docs/BENCHMARKS.md.

    .venv/bin/python -m bench [--smoke] [--only etl,score_speed,...]   (also: make bench)

Each runs in its own process (peak memory is its own). ``--smoke`` runs tiny sizes (the
CI smoke test points CROSSREC_BENCH_DOCS at a temporary page). train_speed needs the
shared amazon dataset and is skipped, saying so, when it is absent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench.common import DOCS, REPO

SHARED_AMAZON = REPO.parent / "shared" / "data" / "amazon-cloth-sport"

# name -> (full-size arguments, smoke arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "etl": (["--sizes", "1000000,5000000,20000000"], ["--sizes", "20000"]),
    "etl_profile": ([], ["--events", "20000"]),
    "score_speed": ([], ["--users", "2000", "--items", "1000", "--block-sizes", "256"]),
    "eval_speed": ([], ["--users", "300", "--items", "1500", "--repeats", "1"]),
    "train_speed": ([], ["--models", "target_only", "--epochs", "2"]),
    "e2e": ([], ["--events", "5000", "--model", "popularity"]),
    "als": ([], ["--datasets", "amazon_cloth_sport", "--score-users", "500", "--score-items", "300"]),
    "reliability": ([], ["--seeds", "1", "--stages", "score"]),
    # after etl: its ETL curve is etl's summary
    "scaling": ([], ["--score-users", "500,1000", "--score-items", "300,600", "--train-users", "300,600"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does the harness work")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; known: {', '.join(BENCHMARKS)}")
    for name in names:
        if name in ("train_speed", "als") and not SHARED_AMAZON.is_dir():
            print(f"skipping {name}: {SHARED_AMAZON} is absent", flush=True)
            continue
        full, smoke = BENCHMARKS[name]
        # the section, its figures and its machine-readable summary, beside the page
        summary = DOCS.parent / "bench" / f"{name}.json"
        if summary.is_relative_to(REPO):  # the command each section quotes, run from the repository
            summary = summary.relative_to(REPO)
        command = [sys.executable, "-m", f"bench.{name}", *(smoke if args.smoke else full), "--write-docs", "--json", str(summary)]
        print(f"== {' '.join(command[1:])}", flush=True)
        if subprocess.call(command, cwd=REPO):
            print(f"{name} failed", file=sys.stderr)
            return 1
    print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
