"""Stage 'score' for one date: `python jobs/score.py --ds YYYY-MM-DD` (or spark-submit)."""

import sys

from crossrec_core.jobs_main import main

if __name__ == "__main__":
    sys.exit(main("score"))
