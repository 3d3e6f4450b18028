"""The gate between training and serving, and the run's closing report.

* ``evaluate_stage`` compares tonight's model with the model that serves now, on the
  target validation NDCG@10 each model's card records, and writes the decision to
  ``models/ds=DS/gate.json``; score and publish obey it. Caveat: the validation users
  differ from night to night (the window moves), so this compares each model's score
  on its own night's validation set, not both models on one set. The tolerance absorbs
  that noise; a real regression (a bad night of data, a broken model) exceeds it.
* ``report_stage`` summarises every stage's run_reports row of the date and fails
  when one of them failed, so the DAG run ends red with the reason in one place.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from crossrec_core.config import Settings
from crossrec_core.contracts import StageStatus
from crossrec_core.lake import Lake, LakeError, write_atomically
from crossrec_core.reports import ALL_DOMAINS, StageReport, read_run_reports, stage_run
from crossrec_core.serving import gate_path, latest_served

log = logging.getLogger(__name__)

# Where the trainer's card keeps the score the gate compares (see training.validate).
GATE_SEGMENT = "all"
GATE_METRIC = "ndcg@10"


class RunFailed(LakeError):
    """A stage of the run failed; the report names which and why."""


def latest_published(lake: Lake, domain: str, before_ds: str | None = None) -> dict[str, Any] | None:
    """The model card of the model serving ``domain`` now (in the newest recommendations
    partition, before ``before_ds`` when given), or None when nothing is served."""
    from crossrec_core.model_store import read_card

    served = latest_served(lake, domain, before_ds=before_ds)
    return read_card(lake, served["model_version"]) if served else None


def validation_ndcg(card: dict[str, Any]) -> float | None:
    """The card's target validation NDCG@10; None when its night had no validation users."""
    metrics = card.get("metrics") or {}
    value = (metrics.get(GATE_SEGMENT) or {}).get(GATE_METRIC)
    return None if value is None else float(value)


def decide(new_ndcg: float | None, published_ndcg: float | None, tolerance: float) -> tuple[bool, str]:
    """Publish unless the new score is more than ``tolerance`` (a fraction) below the served one."""
    if published_ndcg is None:
        return True, "nothing comparable is served: first model, or the served model has no validation score"
    if new_ndcg is None:
        return True, "tonight's model has no validation score (no validation users): nothing to compare"
    floor = published_ndcg * (1 - tolerance)
    if new_ndcg < floor:
        return False, (
            f"validation {GATE_METRIC} {new_ndcg:.4f} is below {floor:.4f} "
            f"(the served model's {published_ndcg:.4f} minus {tolerance:.0%} tolerance)"
        )
    return True, f"validation {GATE_METRIC} {new_ndcg:.4f} >= {floor:.4f} (served {published_ndcg:.4f}, tolerance {tolerance:.0%})"


def evaluate_stage(settings: Settings, ds: str) -> StageReport:
    """Decide whether tonight's model may replace the served one; write ``gate.json``."""
    from crossrec_core.model_store import candidate_version, read_card

    lake = Lake(settings.lake)
    with stage_run(lake, "evaluate", ds) as report:
        card = read_card(lake, candidate_version(lake, ds))
        published = latest_published(lake, settings.target, before_ds=ds)
        new_ndcg = validation_ndcg(card)
        published_ndcg = validation_ndcg(published) if published else None
        publish, reason = decide(new_ndcg, published_ndcg, settings.gate.tolerance)
        decision = {
            "publish": publish,
            "reason": reason,
            "model": card.get("name"),
            "new_ndcg@10": new_ndcg,
            "published_ndcg@10": published_ndcg,
            "published_version": published.get("model_version") if published else None,
            "tolerance": settings.gate.tolerance,
        }
        text = json.dumps(decision, indent=2, sort_keys=True)
        write_atomically(gate_path(lake, ds), lambda staged: staged.write_text(text))
        report.metrics.update(decision)
        if not publish:
            report.status = StageStatus.GATED
            log.warning("gate: model of ds=%s NOT published: %s", ds, reason)
        else:
            log.info("gate: model of ds=%s may be published: %s", ds, reason)
    return report


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
    from crossrec_core.pipeline import PER_DOMAIN_STAGES, STAGES

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
