"""Stage 'clean' for one date: `python jobs/clean.py --ds YYYY-MM-DD`, the same job as
`python -m crossrec_core.jobs clean ...` (what Airflow runs)."""

import sys

from crossrec_core.jobs import main

if __name__ == "__main__":
    sys.exit(main(["clean", *sys.argv[1:]]))
