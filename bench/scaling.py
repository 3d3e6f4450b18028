"""Cost curves of the stages over data size, each with its fitted growth (docs/SCALING.md).

    .venv/bin/python -m bench.scaling [--etl-json docs/bench/etl.json] [--json PATH] [--write-docs]

* ETL: clean + featurize seconds over raw events, read from bench.etl's summary
  (``python -m bench.etl --sizes 1000000,5000000,20000000 --json docs/bench/etl.json``);
  left out when that file is absent.
* Scoring: the scorer (``ranking.top_k_for_users``: scores, seen-item mask, exact top-K)
  of a two-tower model (d = 64, K = 50, 20 seen items per user) over users at a fixed
  catalogue, then over items at a fixed user count: seconds and peak memory.
* Training: seconds per epoch of ``target_only`` and ``dann`` (d = 64, embedded default
  settings) over synthetic interactions (10 target and, for dann, 10 source items per
  user), the second epoch of two (the first pays the warm-up).

Each point runs in its own process (its peak memory is its own). Each curve gets a
power-law fit, seconds = a * n^b (least squares in log-log): b near 1 is linear growth.
``--write-docs`` replaces the "## Measured cost curves" section of docs/SCALING.md; the
projection below it is written by hand from these numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bench.common import DOCS, REPO, figure, link_figure, machine, write_section, write_summary

SECTION = "## Measured cost curves"
PAGE = DOCS.with_name("SCALING.md")  # beside BENCHMARKS.md (CROSSREC_BENCH_DOCS moves both)
SCORE_ITEMS_FIXED, SCORE_USERS_FIXED = 50_000, 100_000
TRAIN_ITEMS = 20_000
HISTORY = 10
# each curve's size column
SIZE_OF = {
    "etl": "events",
    "score_users": "users",
    "score_items": "items",
    "train_target_only": "interactions",
    "train_dann": "interactions",
}

app = typer.Typer(add_completion=False)


def fit_power_law(sizes: list[float], seconds: list[float]) -> dict:
    """seconds = a * size^b by least squares on the logs (None and None from one size)."""
    if len(set(sizes)) < 2:
        return {"a": None, "b": None}
    b, log_a = np.polyfit(np.log(sizes), np.log(seconds), 1)
    return {"a": float(np.exp(log_a)), "b": float(b)}


def predict(fit: dict, size: float) -> float:
    return fit["a"] * size ** fit["b"] if fit["b"] is not None else float("nan")


def measure_scoring(users: int, items: int) -> dict:
    import torch

    from bench.score_speed import peak_rss, synthetic_features
    from crossrec_core import ranking
    from crossrec_core.config import load_settings
    from crossrec_core.models.base import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    block_size = load_settings().score.block_size
    with peak_rss() as memory:
        features = synthetic_features(users, items, history=20)
        model = build_model("target_only", features, load_settings(model={"dim": 64, "device": "cpu"}).model).eval()
        started = time.perf_counter()
        ranking.top_k_for_users(model, features, "tgt", np.arange(users), 50, block_size)
        seconds = time.perf_counter() - started
    return {"users": users, "items": items, "seconds": seconds, "peak_mib": (memory["peak"] - memory["start"]) / 2**20}


def measure_training(model_name: str, users: int) -> dict:
    import torch

    from bench.score_speed import peak_rss, synthetic_features
    from crossrec_core.config import load_settings
    from crossrec_core.trainer import fit_model

    torch.set_num_threads(2)
    source_history = HISTORY if model_name != "target_only" else 0
    settings = load_settings(model={"epochs": 2, "device": "cpu", "dim": 64}).model
    with peak_rss() as memory:
        features = synthetic_features(users, TRAIN_ITEMS, HISTORY, source_history=source_history)
        _, history = fit_model(model_name, features, settings, progress=False)
    return {
        "model": model_name,
        "users": users,
        "interactions": history.n_examples,
        "seconds": history.epochs[-1]["train_seconds"],
        "peak_mib": (memory["peak"] - memory["start"]) / 2**20,
    }


def in_child(kind: str, *args: object) -> dict:
    """One point in a fresh process."""
    command = [sys.executable, "-m", "bench.scaling", "--one", json.dumps([kind, *args])]
    child = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if child.returncode:
        sys.exit(f"{kind} {args} failed:\n{child.stderr[-3000:]}")
    point = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(point), file=sys.stderr, flush=True)
    return point


def etl_curve(etl_json: Path) -> list[dict] | None:
    if not etl_json.exists():
        print(f"no ETL curve: {etl_json} is absent", file=sys.stderr)
        return None
    summary = json.loads(etl_json.read_text())
    return [
        {
            "events": r["events"],
            "seconds": r["clean_source"] + r["clean_target"] + r["featurize"],
            "featurize_seconds": r["featurize"],
            "peak_mib": r["peak_rss_mib"],
        }
        for r in summary["results"]
    ]


def curve_rows(points: list[dict], size_key: str, fit: dict) -> list[str]:
    return [f"| {p[size_key]:,} | {p['seconds']:.1f} | {predict(fit, p[size_key]):.1f} | {p['peak_mib']:,.0f} |" for p in points]


def section(curves: dict, fits: dict, command: str, etl_source: str) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; torch on 2 threads, Spark local[2].  ",
        "Each curve: measured seconds, the fitted power law's seconds at the same size, and the",
        "peak resident memory above the process's own at the start (data, model, work; for ETL",
        "the whole process, Python and the driver JVM). Fitted growth b: seconds = a * n^b.",
        "",
    ]
    titles = {
        "etl": ("ETL, clean + featurize, over raw events", etl_source),
        "score_users": (
            f"Scoring over users ({SCORE_ITEMS_FIXED:,} items, d = 64, K = 50)",
            "the scorer alone (no Parquet, no commit)",
        ),
        "score_items": (
            f"Scoring over items ({SCORE_USERS_FIXED:,} users, d = 64, K = 50)",
            "the scorer alone (no Parquet, no commit)",
        ),
        "train_target_only": (
            f"Training target_only, one epoch, over interactions ({TRAIN_ITEMS:,} items, {HISTORY} per user)",
            "synthetic uniform histories",
        ),
        "train_dann": (
            f"Training dann, one epoch, over interactions (both domains, {TRAIN_ITEMS:,} items each, {HISTORY} per user each)",
            "synthetic uniform histories",
        ),
    }
    for name, points in curves.items():
        title, note = titles[name]
        key = SIZE_OF[name]
        fit = fits[name]
        lines += [
            f"### {title}",
            "",
            (f"Fitted growth b = {fit['b']:.2f} (a = {fit['a']:.3g})" if fit["b"] is not None else "One size: no fit") + f"; {note}.",
            "",
            f"| {key} | seconds | fitted seconds | memory MiB |",
            "|---:|---:|---:|---:|",
            *curve_rows(points, key, fit),
            "",
        ]
    lines.append(link_figure(plot(curves, fits), "scaling"))
    return "\n".join(lines) + "\n"


def plot(curves: dict, fits: dict):
    fig, ax = figure(7.5, 4.5)
    for name, points in curves.items():
        sizes = [p[SIZE_OF[name]] for p in points]
        ax.loglog(
            sizes, [p["seconds"] for p in points], "o-", label=name if fits[name]["b"] is None else f"{name} (b = {fits[name]['b']:.2f})"
        )
    ax.set_xlabel("size (events, users, items or interactions)")
    ax.set_ylabel("seconds")
    ax.set_title("Cost curves (log-log), 2 cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


@app.command()
def main(
    score_users: Annotated[str, typer.Option(help="user counts of the scoring curve")] = "10000,100000,1000000",
    score_items: Annotated[str, typer.Option(help="item counts of the scoring curve")] = "10000,50000,200000",
    train_users: Annotated[
        str, typer.Option(help="user counts of the training curves (x 10 interactions per domain)")
    ] = "20000,80000,320000",
    etl_json: Annotated[Path, typer.Option(help="bench.etl's --json summary")] = DOCS.parent / "bench" / "etl.json",
    write_docs: Annotated[bool, typer.Option("--write-docs", help="write the curves into docs/SCALING.md")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write a machine-readable summary here")] = None,
    one: Annotated[str, typer.Option(hidden=True, help="internal: measure one point in this process")] = "",
) -> None:
    if one:
        kind, *args = json.loads(one)
        point = measure_scoring(*args) if kind == "score" else measure_training(*args)
        print(json.dumps(point))
        return
    curves: dict[str, list[dict]] = {}
    etl = etl_curve(etl_json)
    if etl:
        curves["etl"] = etl
    curves["score_users"] = [in_child("score", int(u), SCORE_ITEMS_FIXED) for u in score_users.split(",")]
    curves["score_items"] = [in_child("score", SCORE_USERS_FIXED, int(i)) for i in score_items.split(",")]
    for model_name in ("target_only", "dann"):
        curves[f"train_{model_name}"] = [in_child("train", model_name, int(u)) for u in train_users.split(",")]
    fits = {name: fit_power_law([p[SIZE_OF[name]] for p in points], [p["seconds"] for p in points]) for name, points in curves.items()}
    command = "python -m bench.scaling " + " ".join(sys.argv[1:])
    text = section(curves, fits, command.strip(), f"bench.etl's run in {etl_json.name}")
    print(text)
    if json_path:
        write_summary(json_path, "scaling", command.strip(), [], {"curves": curves, "fits": fits})
    if write_docs:
        write_section(SECTION, text, PAGE)


if __name__ == "__main__":
    app()
