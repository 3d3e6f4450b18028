"""The ``train`` stage: fit ``model.name`` (or every candidate under ``auto``) with the
trainer (:mod:`crossrec_core.trainer`) on the night's features, warm-started from the
served model, and save the best on validation with its model card.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass

import torch

from crossrec_core.config import Settings
from crossrec_core.contracts import VALIDATION_METRIC, VALIDATION_SEGMENT
from crossrec_core.lake import Lake, dir_size
from crossrec_core.model_store import (
    MODEL_FILE,
    ModelFileError,
    checkpoint_root,
    data_card,
    model_dir,
    read_state_dict,
    save_model,
)
from crossrec_core.models.base import Recommender
from crossrec_core.reports import StageReport, stage_run
from crossrec_core.trainer import TrainingHistory, fit_model

log = logging.getLogger(__name__)


@dataclass
class PublishedModel:
    version: str
    name: str
    state: dict[str, torch.Tensor]


def _published_model(lake: Lake, settings: Settings, ds: str, report: StageReport) -> PublishedModel | None:
    """The model serving the target domain before ``ds``, to warm-start from; a damaged
    card or file costs the warm start (logged, in the report), not the night."""
    from crossrec_core.gate import latest_published

    card = latest_published(lake, settings.target, before_ds=ds)
    if not card:
        return None
    try:
        version = card["model_version"]
        return PublishedModel(version, card["name"], read_state_dict(model_dir(lake, version) / MODEL_FILE))
    except (ModelFileError, KeyError) as err:
        log.warning("no warm start from the published model: %s", err)
        report.metrics["warm_start_error"] = str(err)
        return None


def train_stage(settings: Settings, ds: str) -> StageReport:
    """Train ``settings.model.name`` (or every candidate under ``auto``, keeping the best
    on target validation NDCG@10) on the features of ``ds`` and save the model."""
    from crossrec_core.features import load_features

    lake = Lake(settings.lake)
    with stage_run(lake, "train", ds) as report:
        features = load_features(lake, ds, settings.source, settings.target)
        report.rows_in = sum(int(features.train[d].nnz) for d in features.domains)
        names = list(settings.model.candidates) if settings.model.name == "auto" else [settings.model.name]
        published = _published_model(lake, settings, ds, report) if settings.model.warm_start else None
        checkpoints = checkpoint_root(lake, ds)
        best: tuple[Recommender, TrainingHistory] | None = None
        scores: dict[str, float | None] = {}
        seconds: dict[str, float] = {}  # what each candidate cost the night: fit and validation
        for name in names:
            started = time.perf_counter()
            model, history = fit_model(
                name,
                features,
                settings.model,
                checkpoint_dir=checkpoints / name,
                warm_start_from=published.state if published and published.name == name else None,
                metrics_log=checkpoints / name / "metrics.jsonl",
            )
            scores[name], seconds[name] = history.best_score, round(time.perf_counter() - started, 3)
            log.info("train ds=%s: candidate %s, validation %s %s, %.1f s", ds, name, VALIDATION_METRIC, scores[name], seconds[name])
            if best is None or (history.best_score or -math.inf) > (best[1].best_score or -math.inf):
                best = (model, history)
        assert best is not None  # settings refuse an empty candidate list
        model, history = best
        card = {
            **data_card(features),
            "metrics": history.validation,
            "selection": {
                "mode": settings.model.name,
                "metric": f"{VALIDATION_SEGMENT} {VALIDATION_METRIC}",
                "candidates": scores,
                "candidate_seconds": seconds,
            },
            "training": {
                "epochs": len(history.epochs),
                "best_epoch": history.best_epoch,
                "stopped_early": history.stopped_early,
                "resumed_from_epoch": history.resumed_from_epoch,
                "warm_started_from": published.version if published and history.warm_started else None,
                "train_seconds": round(history.train_seconds, 3),
                "examples_per_second": history.examples_per_second,
                "history": history.epochs,
            },
        }
        version = save_model(lake, ds, model, card)
        shutil.rmtree(checkpoints, ignore_errors=True)
        report.bytes_out, _ = dir_size(model_dir(lake, version))
        report.metrics.update(
            {
                "model": model.name,
                "model_version": version,
                "validation": history.validation,
                "candidates": scores,
                "candidate_seconds": seconds,
                "epochs": len(history.epochs),
                "train_seconds": round(history.train_seconds, 3),
                "examples_per_second": history.examples_per_second,
            }
        )
    return report
