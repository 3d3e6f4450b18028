"""The validation gate between training and serving, in one place.

* ``evaluate_stage`` compares tonight's model with the model that serves now, on the
  target validation NDCG@10 each model's card records, and writes the decision to
  ``gate.json`` in the candidate model's directory. Caveat: the validation users differ
  from night to night (the window moves), so this compares each model's score on its
  own night's validation set, not both models on one set. The tolerance absorbs that
  noise; a real regression (a bad night of data, a broken model) exceeds it.
* ``held_back`` is how score and publish obey it: a gated night leaves both with status
  GATED and the gate's reason, and the last good list stays served. The DAG's gate task
  (orchestration.gate) reads the same decision to skip them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from crossrec_core.config import Settings
from crossrec_core.contracts import VALIDATION_METRIC, VALIDATION_SEGMENT, StageStatus
from crossrec_core.lake import Lake, LakeError, MissingPartitionError, write_atomically
from crossrec_core.model_store import candidate_version, model_dir, read_card
from crossrec_core.reports import StageReport, stage_run
from crossrec_core.serving import latest_served

log = logging.getLogger(__name__)

GATE_FILE = "gate.json"


def gate_path(lake: Lake, ds: str) -> Path:
    """Where the evaluate stage keeps its verdict on the candidate model of ``ds``: inside
    that model's directory, so a newly trained model is never published on an old verdict."""
    return model_dir(lake, candidate_version(lake, ds)) / GATE_FILE


def gate_decision(lake: Lake, ds: str) -> dict[str, Any]:
    """The evaluate stage's verdict on the model of ``ds``: ``{"publish": bool, "reason": str, ...}``.

    A missing or malformed file is an error naming it: scoring or publishing a model
    nobody gated would serve it unchecked."""
    path = gate_path(lake, ds)
    try:
        decision = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingPartitionError(f"no gate decision at {path}: run the evaluate stage for ds={ds} first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LakeError(f"gate decision {path} is not valid JSON: {err}") from err
    if not isinstance(decision, dict) or not isinstance(decision.get("publish"), bool):
        raise LakeError(f"gate decision {path}: expected an object with a boolean 'publish', got {decision!r}")
    return decision


def held_back(lake: Lake, ds: str, report: StageReport) -> bool:
    """True when the gate kept the served model for ``ds``; ``report`` then says GATED,
    with the gate's reason. Score and publish stop there."""
    decision = gate_decision(lake, ds)
    if decision["publish"]:
        return False
    report.status = StageStatus.GATED
    report.metrics["reason"] = decision.get("reason", "")
    log.info("%s of ds=%s held back by the gate: %s", report.stage, ds, report.metrics["reason"])
    return True


def latest_published(lake: Lake, domain: str, before_ds: str | None = None) -> dict[str, Any] | None:
    """The model card of the model serving ``domain`` now (in the newest recommendations
    partition, before ``before_ds`` when given), or None when nothing is served."""
    served = latest_served(lake, domain, before_ds=before_ds)
    return read_card(lake, served["model_version"]) if served else None


def validation_ndcg(card: dict[str, Any]) -> float | None:
    """The card's target validation NDCG@10; None when its night had no validation users."""
    metrics = card.get("metrics") or {}
    value = (metrics.get(VALIDATION_SEGMENT) or {}).get(VALIDATION_METRIC)
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
            f"validation {VALIDATION_METRIC} {new_ndcg:.4f} is below {floor:.4f} "
            f"(the served model's {published_ndcg:.4f} minus {tolerance:.0%} tolerance)"
        )
    return True, f"validation {VALIDATION_METRIC} {new_ndcg:.4f} >= {floor:.4f} (served {published_ndcg:.4f}, tolerance {tolerance:.0%})"


def evaluate_stage(settings: Settings, ds: str) -> StageReport:
    """Decide whether tonight's model may replace the served one; write ``gate.json``."""
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
