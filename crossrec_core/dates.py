"""Run dates: the one parser of ``ds`` every entry point uses (CLI, jobs, importers, DAG)."""

from __future__ import annotations

import re
from datetime import date

from crossrec_core.config import DsRange
from crossrec_core.errors import InputError

# date.fromisoformat alone also takes 20261105 and 2026-W45-1
DS_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_ds(value: str | date, ds_range: DsRange | None = None) -> str:
    """A run date: exactly YYYY-MM-DD, a real day and, given the config's ``ds_range``,
    within it; InputError naming the value otherwise."""
    text = value.isoformat() if isinstance(value, date) else value
    if not isinstance(text, str) or not DS_PATTERN.fullmatch(text):
        raise InputError(f"ds must be a date YYYY-MM-DD, got {value!r}")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise InputError(f"ds {text!r} is not a calendar date") from None
    if ds_range is not None and not ds_range.earliest <= day <= ds_range.latest:
        raise InputError(
            f"ds {text} is outside ds_range {ds_range.earliest} .. {ds_range.latest} (config keys ds_range.earliest, ds_range.latest)"
        )
    return text
