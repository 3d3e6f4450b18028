"""The crossrec error family: failures that a retry cannot fix.

Bad configuration, bad input, missing data and contract violations raise a subclass of
:class:`CrossrecError` whose message names the file, row, field or key. Every entry point
(``python -m crossrec_core.jobs``, the ``crossrec`` CLI) prints such an error as one line and exits
with :data:`EXPECTED_FAILURE_EXIT`, which the Airflow tasks do not retry. Any other
exception (a bug, an OOM, a lost executor, a flaky filesystem, a ValueError from pyarrow,
numpy or torch) keeps its traceback and a different exit code, so Airflow retries it.

This module imports nothing: every other module can depend on it.
"""

from __future__ import annotations

EXPECTED_FAILURE_EXIT = 2


class CrossrecError(Exception):
    """Bad config, bad input, missing data or a contract violation; the message names it."""


class InputError(CrossrecError):
    """An input file, argument or value that cannot be used as given."""


class MissingDataError(CrossrecError):
    """A required input (file, directory, partition, table version) does not exist."""
