"""Training throughput of every learned model on the CPU (not run in CI).

    .venv/bin/python -m bench.train_speed [--data ../shared/data/amazon-cloth-sport] [--write-docs]

Each model trains in its own process (so that its peak memory is its own) with the real
trainer (``fit_model``) for ``--epochs`` epochs on amazon, source sport -> target
cloth, with the embedded default model settings but ``--dim`` (64, the dimension the
throughput goals are set at) on ``--threads`` torch threads.
Throughput = training interactions (both trained domains) / training seconds, over the
epochs after the first (warm-up); validation is not counted. ``--write-docs`` replaces
the "## Training throughput" section of docs/BENCHMARKS.md with the table.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from bench.common import REPO, Goal, figure, link_figure, write_section, write_summary

SECTION = "## Training throughput"
MODELS = ("target_only", "joint_mf", "emcdr", "dann", "mmd", "hybrid")
GOALS = {"target_only": 300_000, "dann": 100_000}

app = typer.Typer(add_completion=False)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(model: str, data: Path, epochs: int, threads: int, dim: int, overrides: dict) -> dict:
    """Train one model in this process; return its throughput and memory."""
    import torch

    from crossrec_core.config import load_settings
    from crossrec_core.datasets import load_pairs
    from crossrec_core.trainer import fit_model

    torch.set_num_threads(threads)
    features = load_pairs(data, source="sport", target="cloth").valid
    features.holdout = {}  # throughput only: no validation pass
    baseline = peak_rss_mib()
    settings = load_settings(model={"epochs": epochs, "device": "cpu", "dim": dim, **overrides}).model
    _, history = fit_model(model, features, settings, progress=False)
    timed = history.epochs[1:] or history.epochs
    seconds = sum(e["train_seconds"] for e in timed)
    return {
        "model": model,
        "examples_per_epoch": history.n_examples,
        "examples_per_second": history.n_examples * len(timed) / seconds,
        "seconds_per_epoch": seconds / len(timed),
        "data_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mib(),
        "settings": {k: getattr(settings, k) for k in ("dim", "batch_size", "negatives", "history_length", "learning_rate")},
    }


def plot(results: list[dict]) -> str:
    """Examples/s per model, with the goals."""
    fig, ax = figure()
    names = [r["model"] for r in results]
    ax.bar(names, [r["examples_per_second"] for r in results], color="tab:blue")
    goals = [(i, GOALS[name]) for i, name in enumerate(names) if name in GOALS]
    for n, (i, goal) in enumerate(goals):
        ax.hlines(goal, i - 0.4, i + 0.4, colors="tab:red", label="goal" if n == 0 else None)
    ax.set_ylabel("training examples / s")
    ax.set_title("Training throughput, 2 CPU cores")
    if goals:
        ax.legend()
    return link_figure(fig, "train_speed")


def table(results: list[dict], command: str, load_before: str) -> str:
    settings = results[0]["settings"]
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
        f"Python {platform.python_version()}, torch {__import__('torch').__version__} (CPU); "
        f"load average before/after: {load_before} / {' '.join(f'{x:.1f}' for x in os.getloadavg())}.  ",
        f"Data: amazon sport -> cloth train split; settings: {', '.join(f'{k}={v}' for k, v in settings.items())}; "
        "throughput = training interactions of the trained domains per second of training (epochs after the first).",
        "",
        "| model | interactions / epoch | examples/s | s / epoch | peak RSS (MiB) | of which data (MiB) | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = {goal.what: f"{goal.target:,.0f}/s: {goal.verdict}" for goal in goals(results)}
    for r in results:
        verdict = verdicts.get(goal_name(r["model"]), "")
        lines.append(
            f"| {r['model']} | {r['examples_per_epoch']:,} | {r['examples_per_second']:,.0f} | {r['seconds_per_epoch']:.1f} "
            f"| {r['peak_rss_mib']:,.0f} | {r['data_rss_mib']:,.0f} | {verdict} |"
        )
    lines += ["", plot(results)]
    return "\n".join(lines) + "\n"


def goal_name(model: str) -> str:
    return f"{model} examples/s"


def goals(results: list[dict]) -> list[Goal]:
    return [Goal(goal_name(r["model"]), r["examples_per_second"], GOALS[r["model"]]) for r in results if r["model"] in GOALS]


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="amazon-cloth-sport folder")] = REPO.parent / "shared" / "data" / "amazon-cloth-sport",
    models: Annotated[str, typer.Option(help="comma-separated learned models")] = ",".join(MODELS),
    epochs: Annotated[int, typer.Option(help="epochs per model; the first is warm-up")] = 3,
    threads: Annotated[int, typer.Option(help="torch threads")] = 2,
    dim: Annotated[int, typer.Option(help="embedding dimension")] = 64,
    settings: Annotated[str, typer.Option(help="JSON model-settings overrides, e.g. '{\"negatives\": 4}'")] = "{}",
    write_docs: Annotated[bool, typer.Option(help="write the table into docs/BENCHMARKS.md")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write a machine-readable summary (goals, verdicts) here")] = None,
    child: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    if child:
        print(json.dumps(measure(child, data, epochs, threads, dim, json.loads(settings))))
        return
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    for model in models.split(","):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.train_speed",
                "--child",
                model,
                "--data",
                str(data),
                "--epochs",
                str(epochs),
                "--threads",
                str(threads),
                "--dim",
                str(dim),
                "--settings",
                settings,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        if run.returncode != 0:
            raise SystemExit(f"{model} failed:\n{run.stderr[-3000:]}")
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(f"{model}: {results[-1]['examples_per_second']:,.0f} examples/s, peak {results[-1]['peak_rss_mib']:,.0f} MiB", flush=True)
    command = "python -m bench.train_speed " + " ".join(sys.argv[1:])
    text = table(results, command.strip(), load_before)
    print(text)
    if json_path:
        write_summary(json_path, "train_speed", command.strip(), goals(results), results)
    if write_docs:
        write_section(SECTION, text)


if __name__ == "__main__":
    app()
