"""Stage 'featurize' for one date: `python jobs/featurize.py --ds YYYY-MM-DD`, the same job as
`python -m crossrec_core.jobs featurize ...` (what Airflow runs)."""

import sys

from crossrec_core.jobs import main

if __name__ == "__main__":
    sys.exit(main(["featurize", *sys.argv[1:]]))
