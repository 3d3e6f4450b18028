"""The stages of the nightly run, by name, and the run's closing report. One function per
stage, called the same way from the CLI (``crossrec run``), from ``jobs/<stage>.py``
(spark-submit or python -m) and from Airflow. ``report_stage`` summarises every stage's
run_reports row of the date and fails when one failed or did not run, so the DAG run
ends red with the reason in one place.

Every stage function has the signature ``stage(settings, ds) -> StageReport`` (per-domain
stages also take ``domain``); run parameters (model, K, retrain from scratch) arrive as
settings overrides. Each keeps the rules of DESIGN.md: idempotent per ds, atomic
output, counts in run_reports.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from typing import Any

from crossrec_core.config import Settings
from crossrec_core.contracts import StageStatus
from crossrec_core.dates import parse_ds
from crossrec_core.errors import InputError
from crossrec_core.lake import Lake, LakeError
from crossrec_core.reports import ALL_DOMAINS, StageReport, read_run_reports, stage_run

log = logging.getLogger(__name__)

# name -> "module:function"; imported lazily so that `crossrec recs` never loads Spark or torch
STAGES: dict[str, str] = {
    "clean": "crossrec_core.etl.clean:clean",
    "featurize": "crossrec_core.etl.featurize:featurize",
    "train": "crossrec_core.training:train_stage",
    "evaluate": "crossrec_core.gate:evaluate_stage",
    "score": "crossrec_core.scoring:score_stage",
    "publish": "crossrec_core.publish:publish_stage",
    "report": "crossrec_core.pipeline:report_stage",
}
PER_DOMAIN_STAGES = frozenset({"clean"})


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


# ---- the run's closing report ----------------------------------------------------------
class RunFailed(LakeError):
    """A stage of the run failed; the report names which and why."""


def summarise(lake: Lake, ds: str) -> list[dict[str, Any]]:
    """One row per (stage, domain) run of ``ds``, in run order, with its seconds."""
    rows = read_run_reports(lake, ds).to_pylist()
    for row in rows:
        metrics = json.loads(row["metrics"] or "{}")
        row["seconds"] = metrics.get("seconds")
        row["note"] = metrics.get("error") or metrics.get("reason") or ""
    return [row for row in rows if row["stage"] != "report"]


def expected_stages(settings: Settings, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(stage, domain) of a complete night: score and publish are not expected once the gate said no."""
    gated = any(r["stage"] == "evaluate" and r["status"] == StageStatus.GATED for r in rows)
    expected = []
    for stage in STAGES:
        if stage == "report" or (gated and stage in ("score", "publish")):
            continue
        domains = settings.domains.all if stage in PER_DOMAIN_STAGES else (ALL_DOMAINS,)
        expected += [(stage, domain) for domain in domains]
    return expected


def report_stage(settings: Settings, ds: str) -> StageReport:
    """Log the run's summary; fail, naming the stages, when a stage of ``ds`` failed or
    did not run (a task that died before reporting leaves no row: it still fails the run)."""
    lake = Lake(settings.lake)
    with stage_run(lake, "report", ds) as report:
        rows = summarise(lake, ds)
        for row in rows:
            log.info(
                "ds=%s %-9s %-8s %-7s rows_in=%d rows_out=%d quarantined=%d %ss %s",
                ds,
                row["stage"],
                row["domain"],
                row["status"],
                row["rows_in"],
                row["rows_out"],
                row["rows_quarantined"],
                row["seconds"],
                row["note"],
            )
        report.rows_in = len(rows)
        reported = {(r["stage"], r["domain"]) for r in rows}
        missing = [f"{stage}[{domain}]" for stage, domain in expected_stages(settings, rows) if (stage, domain) not in reported]
        report.metrics["stages"] = {f"{r['stage']}[{r['domain']}]": r["status"] for r in rows}
        gated = [r for r in rows if r["status"] == StageStatus.GATED]
        if gated:
            report.metrics["gated"] = gated[0]["note"]
        failed = [r for r in rows if r["status"] == StageStatus.FAILED]
        problems = [f"{r['stage']}[{r['domain']}] failed: {r['note']}" for r in failed]
        problems += [f"{name} did not run" for name in missing]
        if problems:
            raise RunFailed(f"ds={ds}: " + "; ".join(problems))
    return report
