"""Stage 'train' for one date: `python jobs/train.py --ds YYYY-MM-DD`, the same job as
`python -m crossrec_core.jobs train ...` (what Airflow runs)."""

import sys

from crossrec_core.jobs import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
