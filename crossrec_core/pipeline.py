"""The stages of the nightly run, by name. One function per stage, called the same way
from the CLI (``crossrec run``), from ``jobs/<stage>.py`` (spark-submit or python -m)
and from Airflow.

Every stage function has the signature ``stage(settings, ds) -> StageReport`` (per-domain
stages also take ``domain``); run parameters (model, K, retrain from scratch) arrive as
settings overrides. Each keeps the rules of DESIGN.md: idempotent per ds, atomic
output, counts in run_reports.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from datetime import date

from crossrec_core.config import DsRange, Settings
from crossrec_core.errors import InputError
from crossrec_core.reports import StageReport

# name -> "module:function"; imported lazily so that `crossrec recs` never loads Spark or torch
STAGES: dict[str, str] = {
    "clean": "crossrec_core.etl.clean:clean",
    "featurize": "crossrec_core.etl.featurize:featurize",
    "train": "crossrec_core.training:train_stage",
    "evaluate": "crossrec_core.gate:evaluate_stage",
    "score": "crossrec_core.scoring:score_stage",
    "publish": "crossrec_core.serving:publish_stage",
    "report": "crossrec_core.gate:report_stage",
}
PER_DOMAIN_STAGES = frozenset({"clean"})
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


def stage_function(name: str) -> Callable[..., StageReport]:
    try:
        module_name, function_name = STAGES[name].split(":")
    except KeyError:
        raise InputError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None
    return getattr(importlib.import_module(module_name), function_name)


def run_stages(settings: Settings, ds: str, stages: list[str]) -> list[StageReport]:
    """Run ``stages`` in order for one ds, per-domain stages once per domain."""
    ds = parse_ds(ds, settings.ds_range)
    reports: list[StageReport] = []
    for name in stages:
        function = stage_function(name)
        if name in PER_DOMAIN_STAGES:
            reports.extend(function(settings, ds, domain=domain) for domain in settings.domains.all)
        else:
            reports.append(function(settings, ds))
    return reports
