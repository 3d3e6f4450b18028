"""The trainer: one loop for every learned model, used by the train stage and by offline
experiments alike.

``fit_model`` builds a registered model; fixed models fit in closed form, learned ones
train with Adam on :class:`~crossrec_core.batches.InteractionBatches`, evaluating
target validation NDCG@10 after every epoch (early stopping with ``patience``, the best
weights kept). The same code runs on CUDA (mixed precision: autocast + GradScaler) and
on the CPU, where seeds and deterministic algorithms make a run bit-repeatable.

Every epoch ends with an atomic checkpoint (model, optimiser, scaler, RNG states,
best weights, history). A checkpoint whose fingerprint (model name, settings, data)
matches the run is resumed, so a killed run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crossrec_core.batches import InteractionBatches
from crossrec_core.config import ModelSettings
from crossrec_core.contracts import VALIDATION_METRIC, VALIDATION_SEGMENT, Segment
from crossrec_core.data import FeatureSet
from crossrec_core.lake import write_atomically
from crossrec_core.models.base import Recommender, build_model

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainingHistory:
    """What happened in one fit; ``epochs`` holds one dict per completed epoch."""

    name: str
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    validation: dict[str, Any] | None = None  # all metrics of the best epoch
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    warm_started: list[str] = field(default_factory=list)  # tensors copied from the old model
    n_examples: int = 0

    @property
    def train_seconds(self) -> float:
        return sum(e["train_seconds"] for e in self.epochs)

    @property
    def examples_per_second(self) -> float | None:
        seconds = self.train_seconds
        return self.n_examples * len(self.epochs) / seconds if seconds > 0 else None


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def validate(model: Recommender, features: FeatureSet, device: torch.device | None = None) -> dict[str, Any] | None:
    """Target validation metrics over the held-out segments present (None: no holdout),
    as plain JSON values (they go into checkpoints, logs and the model card)."""
    from crossrec_core.evaluation import evaluate_model

    segments = tuple(s for s in (Segment.WARM, Segment.COLD_START) if features.holdout_users(s).size)
    if not segments:
        return None
    model.eval()
    with torch.no_grad():
        metrics = evaluate_model(model, features, segments=segments, ks=(10,), device=device)
    return json.loads(json.dumps(metrics, default=float))


def validation_score(metrics: dict[str, Any] | None) -> float | None:
    return None if metrics is None else float(metrics[VALIDATION_SEGMENT][VALIDATION_METRIC])


def run_fingerprint(name: str, features: FeatureSet, settings: ModelSettings) -> str:
    """Identifies a run: same model, settings and data -> same checkpoint."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([name, settings.model_dump(mode="json")], sort_keys=True).encode())
    matrices = [features.train[d] for d in features.domains] + [features.holdout[s] for s in sorted(features.holdout)]
    for matrix in matrices:
        digest.update(repr(matrix.shape).encode())
        for array in (matrix.indptr, matrix.indices, matrix.data):
            digest.update(array.tobytes())
    return digest.hexdigest()


def warm_start(model: Recommender, old_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy an older model's weights into ``model`` through the stable keys.

    Keys only append, so row i of an old embedding table is row i of the new one: rows
    [0:n_old] are copied, new rows keep their initialisation. Tensors whose other
    dimensions differ (another ``dim``) are left alone. Returns the copied names."""
    copied = []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in model.not_warm_started:
                continue
            old = old_state.get(name)
            if old is None or old.dim() != tensor.dim() or old.shape[1:] != tensor.shape[1:]:
                continue
            if tensor.dim() == 0 or old.shape[0] == tensor.shape[0]:
                tensor.copy_(old)
            elif old.shape[0] < tensor.shape[0]:
                tensor[: old.shape[0]].copy_(old)
            else:
                continue  # fewer rows than before: keys are not the same index
            copied.append(name)
    return copied


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on the CPU (bit-repeatable runs), restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(device.type == "cpu" or previous)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _write_metrics_log(path: Path, history: TrainingHistory) -> None:
    # Rewritten whole from the history (atomically), so a resumed run never duplicates lines.
    lines = "".join(json.dumps({"model": history.name, **e}, sort_keys=True) + "\n" for e in history.epochs)
    write_atomically(path, lambda staged: staged.write_text(lines))


def _read_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a checkpoint is only a shortcut: start over, loudly
        log.warning("ignoring unreadable checkpoint %s (%s: %s); training from scratch", path, type(err).__name__, err)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint %s of another run (model, settings or data differ)", path)
        return None
    return state


def _state_copy(model: Recommender) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_model(
    name: str,
    features: FeatureSet,
    model_settings: ModelSettings,
    *,
    device: str | torch.device | None = None,
    checkpoint_dir: Path | None = None,
    warm_start_from: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
    metrics_log: Path | None = None,
) -> tuple[Recommender, TrainingHistory]:
    """Build and train model ``name``; return it (best weights) and its history.

    ``warm_start_from``: an older model's state_dict (``model_store.read_state_dict``)
    whose weights seed the new model (see :func:`warm_start`). ``checkpoint_dir``: where
    this run checkpoints every epoch and from where it resumes. ``metrics_log``:
    per-epoch metrics as JSON lines. ``device``: default ``model_settings.device``."""
    device = resolve_device(device or model_settings.device)
    torch.manual_seed(model_settings.seed)
    model = build_model(name, features, model_settings).to(device)
    if not model.learned:
        return _fit_fixed(name, model, features, model_settings, device)
    with _deterministic(device):
        history = _train(model, features, model_settings, device, checkpoint_dir, warm_start_from, progress, metrics_log)
    return model, history


def _fit_fixed(
    name: str, model: Recommender, features: FeatureSet, model_settings: ModelSettings, device: torch.device
) -> tuple[Recommender, TrainingHistory]:
    """Fit a closed-form model once per entry of its tuning grid; keep the best on
    target validation (one "epoch" per grid entry in the history)."""
    history = TrainingHistory(name=name, n_examples=sum(int(features.train[d].nnz) for d in features.domains))
    best = model
    for trial, update in enumerate(model.tuning_grid(), start=1):
        candidate = build_model(name, features, model_settings.model_copy(update=update)).to(device) if update else model
        started = time.perf_counter()
        candidate.fit_fixed(features)
        fit_seconds = time.perf_counter() - started
        metrics = validate(candidate, features, device)
        score = validation_score(metrics)
        history.epochs.append({"epoch": trial, "settings": update, "train_seconds": fit_seconds, "validation": metrics})
        log.info("%s %s fitted in %.1f s, validation %s=%s", name, update or "", fit_seconds, VALIDATION_METRIC, score)
        if history.best_score is None or (score is not None and score > history.best_score):
            best, history.best_epoch, history.best_score, history.validation = candidate, trial, score, metrics
    return best, history


def _train(
    model: Recommender,
    features: FeatureSet,
    settings: ModelSettings,
    device: torch.device,
    checkpoint_dir: Path | None,
    warm_start_from: dict[str, torch.Tensor] | None,
    progress: bool,
    metrics_log: Path | None,
) -> TrainingHistory:
    batches = InteractionBatches(
        features, model.train_domains, settings.batch_size, settings.negatives, device, shared_negatives=model.shared_negatives()
    )
    history = TrainingHistory(name=model.name, n_examples=batches.n_examples)
    # Fused Adam: one kernel over all parameters, the fastest on the CPU of the options
    # benchmarked (docs/BENCHMARKS.md; sparse gradients + SparseAdam were slower).
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True)
    mixed_precision = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    checkpoint = checkpoint_dir / CHECKPOINT_FILE if checkpoint_dir else None
    fingerprint = run_fingerprint(history.name, features, settings)
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0

    saved = _read_checkpoint(checkpoint, fingerprint) if checkpoint else None
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        best_state, bad_epochs = saved["best_state"], saved["bad_epochs"]
        history = TrainingHistory(**saved["history"])
        history.resumed_from_epoch = len(history.epochs)
        log.info("%s: resuming after epoch %d from %s", history.name, history.resumed_from_epoch, checkpoint)
    elif warm_start_from is not None:
        history.warm_started = warm_start(model, warm_start_from)
        log.info("%s: warm start, %d tensors copied", history.name, len(history.warm_started))

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
    )
    with Progress(*columns, disable=not progress) as bar:
        for epoch in range(len(history.epochs), settings.epochs):
            if history.stopped_early:
                break
            model.train()
            model.on_epoch_start(epoch, settings.epochs)
            task = bar.add_task(f"{history.name} epoch {epoch + 1}/{settings.epochs}", total=batches.steps_per_epoch, loss=math.nan)
            started = time.perf_counter()
            total_loss = torch.zeros((), device=device)
            for step, batch in enumerate(batches.epoch(generator), start=1):
                with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision):
                    loss = model.calculate_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total_loss += loss.detach()
                if progress and (step % 20 == 0 or step == batches.steps_per_epoch):
                    bar.update(task, completed=step, loss=float(total_loss) / step)
            train_seconds = time.perf_counter() - started
            metrics = validate(model, features, device)
            score = validation_score(metrics)
            improved = score is None or history.best_score is None or score > history.best_score
            if improved:
                best_state, bad_epochs = _state_copy(model), 0
                history.best_epoch, history.best_score, history.validation = epoch + 1, score, metrics
            else:
                bad_epochs += 1
            history.stopped_early = score is not None and bad_epochs >= settings.patience
            history.epochs.append(
                {
                    "epoch": epoch + 1,
                    "loss": float(total_loss) / batches.steps_per_epoch,
                    "validation": metrics,
                    "train_seconds": train_seconds,
                    "examples_per_second": batches.n_examples / train_seconds,
                }
            )
            log.info(
                "%s epoch %d/%d: loss %.4f, validation %s %s, %.1f s (%.0f examples/s)",
                history.name,
                epoch + 1,
                settings.epochs,
                history.epochs[-1]["loss"],
                VALIDATION_METRIC,
                "n/a" if score is None else f"{score:.4f}",
                train_seconds,
                batches.n_examples / train_seconds,
            )
            if checkpoint:
                state = {
                    "fingerprint": fingerprint,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "best_state": best_state,
                    "bad_epochs": bad_epochs,
                    "history": asdict(history),
                }
                write_atomically(checkpoint, partial(torch.save, state))
            if metrics_log:
                _write_metrics_log(metrics_log, history)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
