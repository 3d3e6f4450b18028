"""Offline benchmark runs: models x seeds on an offline dataset, then results files.

For every model and seed: fit on the validation view of the dataset (learned models
early-stop on its holdout, crossrec_core.trainer.fit_model), give the model the test
view's histories, evaluate the test holdout with each protocol. Fixed models
(popularity, item_knn_cross) do not depend on the seed: they are fitted once and only
the sampled protocol's negatives change with the seed.

Writes to OUT: ``results.json`` (one record per model, segment, protocol and metric:
mean, std, per-seed values), ``results.md`` (tables: rows models, columns metrics, one
table per protocol and segment) and ``ndcg_at_10.png`` (bar chart, matplotlib Agg).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from crossrec_core.config import MODEL_NAMES, ModelSettings
from crossrec_core.datasets import Splits
from crossrec_core.errors import InputError
from crossrec_core.evaluation import Protocol, evaluate_model
from crossrec_core.models import Recommender  # the package: every model registered
from crossrec_core.trainer import fit_model

log = logging.getLogger(__name__)

RESULTS_JSON, RESULTS_MD, CHART_PNG = "results.json", "results.md", "ndcg_at_10.png"
CHART_METRIC = "ndcg@10"


@dataclass
class ExperimentRun:
    """Per-seed metrics of every (model, protocol, segment, metric), plus timings."""

    models: list[str]
    seeds: list[int]
    protocols: list[str]
    values: dict[tuple[str, str, str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    rows: dict[tuple[str, str, str], int] = field(default_factory=dict)  # metric rows: users or pairs
    seconds: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    epochs: dict[str, list[int | None]] = field(default_factory=lambda: defaultdict(list))
    validation: dict[str, list[float | None]] = field(default_factory=lambda: defaultdict(list))  # best validation ndcg@10

    def records(self) -> list[dict[str, Any]]:
        return [
            {
                "model": model,
                "protocol": protocol,
                "segment": segment,
                "metric": metric,
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "values": values,
                "rows": self.rows[(model, protocol, segment)],
            }
            for (model, protocol, segment, metric), values in self.values.items()
        ]


def run_experiment(
    splits: Splits,
    models: Sequence[str],
    seeds: Sequence[int],
    model_settings: ModelSettings,
    protocols: Sequence[Protocol] = ("full", "sampled"),
    ks: Sequence[int] = (10, 20, 50),
    n_negatives: int = 999,
    console: Console | None = None,
    exclude_known: bool = True,
) -> ExperimentRun:
    """Fit and evaluate every model with every seed (see the module docstring)."""
    specs = {label: parse_model_spec(label, model_settings) for label in models}
    console = console or Console(stderr=True)
    run = ExperimentRun(models=list(models), seeds=list(seeds), protocols=list(protocols))
    steps, step = len(models) * len(seeds), 0
    for name, (model_name, variant_settings) in specs.items():
        learned = Recommender.registry[model_name].learned
        fitted: tuple[Recommender, Any] | None = None
        for seed in seeds:
            step += 1
            settings = variant_settings.model_copy(update={"seed": seed})
            started = time.perf_counter()
            if fitted is None or learned:
                console.print(f"[bold]\\[{step}/{steps}][/] {name}, seed {seed}: fitting")
                fitted = fit_model(model_name, splits.valid, settings, progress=console.is_terminal)
                run.seconds[name]["fit"] += time.perf_counter() - started
                run.epochs[name].append(len(fitted[1].epochs) if learned else None)
                run.validation[name].append(fitted[1].best_score)
            model, _ = fitted
            model.set_histories(splits.test)
            started = time.perf_counter()
            for protocol in protocols:
                results = evaluate_model(
                    model, splits.test, ks=ks, protocol=protocol, n_negatives=n_negatives, seed=seed, exclude_known=exclude_known
                )
                for segment, metrics in results.items():
                    run.rows[(name, protocol, segment)] = int(metrics.pop("users"))
                    for metric, value in metrics.items():
                        run.values[(name, protocol, segment, metric)].append(float(value))
            run.seconds[name]["evaluate"] += time.perf_counter() - started
            summary = ", ".join(
                f"{protocol}/{segment} {CHART_METRIC} {run.values[(name, protocol, segment, CHART_METRIC)][-1]:.4f}"
                for protocol in protocols
                for segment in ("cold_start", "warm")
                if (name, protocol, segment, CHART_METRIC) in run.values
            )
            console.print(f"[bold]\\[{step}/{steps}][/] {name}, seed {seed}: {summary}")
    return run


def parse_model_spec(spec: str, model_settings: ModelSettings) -> tuple[str, ModelSettings]:
    """``name`` or ``name[key=value;key=value]`` (model settings overrides, values in YAML,
    e.g. ``hybrid[alignment_weight=0]``) -> (registered model name, its settings)."""
    name, _, rest = spec.partition("[")
    if name not in MODEL_NAMES:
        raise InputError(f"unknown model {name!r} in {spec!r}; known: {sorted(MODEL_NAMES)}")
    if not rest:
        return name, model_settings
    if not rest.endswith("]"):
        raise InputError(f"model variant {spec!r}: expected name[key=value;...]")
    updates: dict[str, Any] = {}
    for assignment in filter(None, rest[:-1].split(";")):
        key, equals, value = assignment.partition("=")
        if not equals or key.strip() not in ModelSettings.model_fields:
            raise InputError(f"model variant {spec!r}: {assignment!r} is not key=value with a model setting key")
        updates[key.strip()] = yaml.safe_load(value)
    return name, ModelSettings.model_validate({**model_settings.model_dump(), **updates})


def _segments(run: ExperimentRun, protocol: str) -> list[str]:
    """Segments evaluated under ``protocol``; "all" only when it differs from a single segment."""
    present = [s for s in ("cold_start", "warm", "all") if any(k[1] == protocol and k[2] == s for k in run.values)]
    return [s for s in present if s != "all"] if len(present) == 2 else present


def _markdown(run: ExperimentRun, meta: dict[str, Any]) -> str:
    by_key = {(r["model"], r["protocol"], r["segment"], r["metric"]): r for r in run.records()}
    lines = [
        "# crossrec offline evaluation",
        "",
        f"- dataset: {meta['dataset']}",
        f"- command: `{meta['command']}`",
        f"- seeds: {run.seeds}; values are mean ± std over seeds (fixed models: fitted once, "
        "only the sampled negatives change with the seed)",
        f"- model settings: `{json.dumps(meta['model_settings'], sort_keys=True)}`",
        "",
    ]
    for protocol in run.protocols:
        for segment in _segments(run, protocol):
            metrics = list(dict.fromkeys(m for (mo, p, s, m) in by_key if p == protocol and s == segment))
            rows = {mo: run.rows[(mo, p, s)] for (mo, p, s) in run.rows if p == protocol and s == segment}
            unit = "pairs" if protocol == "sampled" else "users"
            lines += [
                f"## {protocol} protocol, {segment} ({max(rows.values())} {unit})",
                "",
                "| model | " + " | ".join(metrics) + " |",
                "|---|" + "---|" * len(metrics),
            ]
            for model in run.models:
                cells = [
                    f"{by_key[key]['mean']:.4f} ± {by_key[key]['std']:.4f}" if (key := (model, protocol, segment, m)) in by_key else "n/a"
                    for m in metrics
                ]
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [
        "## Validation (the split every choice is made on) and time",
        "",
        "| model | validation ndcg@10 (per seed) | epochs | fit s (all seeds) | evaluate s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {m} | {', '.join('n/a' if v is None else f'{v:.4f}' for v in run.validation[m])} | "
        f"{', '.join('-' if e is None else str(e) for e in run.epochs[m])} | {run.seconds[m]['fit']:.1f} | {run.seconds[m]['evaluate']:.1f} |"
        for m in run.models
    ]
    return "\n".join(lines) + "\n"


def _chart(run: ExperimentRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segments = _segments(run, run.protocols[0])
    fig, axes = plt.subplots(1, len(run.protocols), figsize=(max(6, 1.4 * len(run.models)) * len(run.protocols), 4.5), squeeze=False)
    width = 0.8 / len(segments)
    x = np.arange(len(run.models))
    for ax, protocol in zip(axes[0], run.protocols, strict=True):
        for i, segment in enumerate(segments):
            values = [run.values.get((m, protocol, segment, CHART_METRIC), []) for m in run.models]
            ax.bar(
                x + (i - (len(segments) - 1) / 2) * width,
                [np.mean(v) if v else 0.0 for v in values],
                width,
                yerr=[np.std(v) if v else 0.0 for v in values],
                label=segment,
                capsize=3,
            )
        ax.set_xticks(x, run.models, rotation=30, ha="right")
        ax.set_ylabel(CHART_METRIC.upper())
        ax.set_title(f"{CHART_METRIC.upper()}, {protocol} protocol (mean ± std over {len(run.seeds)} seeds)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(run: ExperimentRun, out: Path, meta: dict[str, Any]) -> list[Path]:
    """Write results.json, results.md and (with matplotlib, the ``bench`` extra) the chart
    into ``out``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / RESULTS_JSON, out / RESULTS_MD]
    payload = {
        "meta": {**meta, "seeds": run.seeds, "protocols": run.protocols, "models": run.models},
        "timings_seconds": {m: dict(run.seconds[m]) for m in run.models},
        "epochs_trained": {m: run.epochs[m] for m in run.models},
        "validation_ndcg_at_10": {m: run.validation[m] for m in run.models},
        "results": run.records(),
    }
    paths[0].write_text(json.dumps(payload, indent=2))
    paths[1].write_text(_markdown(run, meta))
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("no %s: matplotlib is not installed (pip install 'crossrec[bench]')", out / CHART_PNG)
        return paths
    _chart(run, out / CHART_PNG)
    return [*paths, out / CHART_PNG]
