"""Stage 'evaluate' for one date: `python jobs/evaluate.py --ds YYYY-MM-DD`, the same job as
`python -m crossrec_core.jobs evaluate ...` (what Airflow runs)."""

import sys

from crossrec_core.jobs import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
