"""``python -m crossrec_core``: the ``crossrec`` command line."""

from crossrec_core.cli import run

if __name__ == "__main__":
    run()
