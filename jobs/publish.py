"""Stage 'publish' for one date: `python jobs/publish.py --ds YYYY-MM-DD`, the same job as
`python -m crossrec_core.jobs publish ...` (what Airflow runs)."""

import sys

from crossrec_core.jobs import main

if __name__ == "__main__":
    sys.exit(main(["publish", *sys.argv[1:]]))
