"""Stage 'score' for one date: `python jobs/score.py --ds YYYY-MM-DD`, the same job as
`python -m crossrec_core.jobs score ...` (what Airflow runs)."""

import sys

from crossrec_core.jobs import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
