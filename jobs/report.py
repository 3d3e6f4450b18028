"""Stage 'report' for one date: `python jobs/report.py --ds YYYY-MM-DD`, the same job as
`python -m crossrec_core.jobs report ...` (what Airflow runs)."""

import sys

from crossrec_core.jobs import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
