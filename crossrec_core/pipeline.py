"""A stage's function by name (the stages are declared in crossrec_core.stages) and the
run's closing report. One function per stage, called the same way from the CLI
(``crossrec run``) and from the jobs Airflow runs (``python -m crossrec_core.jobs``). ``report_stage`` summarises every stage's
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
from crossrec_core.lake import Lake, LakeError
from crossrec_core.reports import ALL_DOMAINS, StageReport, read_run_reports, stage_run
from crossrec_core.stages import RUN_REPORT_STAGE, STAGE_LIST, declared

log = logging.getLogger(__name__)


def stage_function(name: str) -> Callable[..., StageReport]:
    module_name, function_name = declared(name).function.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_stages(settings: Settings, ds: str, stages: list[str]) -> list[StageReport]:
    """Run ``stages`` in order for one ds, per-domain stages once per domain."""
    ds = parse_ds(ds, settings.ds_range)
    reports: list[StageReport] = []
    for name in stages:
        function = stage_function(name)
        if declared(name).per_domain:
            reports.extend(function(settings, ds, domain=domain) for domain in settings.domains.all)
        else:
            reports.append(function(settings, ds))
    return reports


# ---- the run's closing report ----------------------------------------------------------
class RunFailed(LakeError):
    """A stage of the run failed; the report names which and why."""


def summarise(lake: Lake, ds: str) -> list[dict[str, Any]]:
    """One row per (stage, domain) run of ``ds``, in run order, with its seconds split
    into ``fixed_seconds`` (the job process's start-up and the stage's set-up) and
    ``data_seconds`` (the rest; see crossrec_core.reports)."""
    rows = read_run_reports(lake, ds).to_pylist()
    for row in rows:
        metrics = json.loads(row["metrics"] or "{}")
        row["seconds"] = metrics.get("seconds")
        setup = sum(metrics.get("setup_seconds", {}).values())
        row["fixed_seconds"] = None if row["seconds"] is None else metrics.get("startup_seconds", 0.0) + setup
        row["data_seconds"] = None if row["seconds"] is None else row["seconds"] - setup
        row["note"] = metrics.get("error") or metrics.get("reason") or ""
    return [row for row in rows if row["stage"] != RUN_REPORT_STAGE]


def expected_stages(settings: Settings, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(stage, domain) of a complete night: score and publish are not expected once the gate said no."""
    gated = any(r["status"] == StageStatus.GATED for r in rows)
    expected = []
    for night_stage in STAGE_LIST:
        if night_stage.closes_the_run or (gated and night_stage.held_back_by_gate):
            continue
        domains = settings.domains.all if night_stage.per_domain else (ALL_DOMAINS,)
        expected += [(night_stage.name, domain) for domain in domains]
    return expected


def report_stage(settings: Settings, ds: str) -> StageReport:
    """Log the run's summary; fail, naming the stages, when a stage of ``ds`` failed or
    did not run (a task that died before reporting leaves no row: it still fails the run)."""
    lake = Lake(settings.lake)
    with stage_run(lake, RUN_REPORT_STAGE, ds) as report:
        rows = summarise(lake, ds)
        for row in rows:
            log.info(
                "ds=%s %-9s %-8s %-7s rows_in=%d rows_out=%d quarantined=%d %ss (fixed %ss, data %ss) %s",
                ds,
                row["stage"],
                row["domain"],
                row["status"],
                row["rows_in"],
                row["rows_out"],
                row["rows_quarantined"],
                row["seconds"],
                row["fixed_seconds"],
                row["data_seconds"],
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
