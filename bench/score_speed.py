"""Scoring speed at nightly scale on the CPU (not run in CI).

    .venv/bin/python -m bench.score_speed [--users 100000] [--items 50000] [--dim 64] [-k 50]
        [--block-sizes 256,1024,4096] [--threads 2] [--write-docs]

Synthetic target domain: ``--users`` users with ``--history`` random target items each
(excluded from their lists), ``--items`` items, a ``target_only`` model of dimension
``--dim`` (random weights: speed does not depend on them). For every block size:

* plain torch matmul FLOP/s on the same shapes (user blocks @ item matrix^T into a
  preallocated block, nothing else), the reference;
* the scorer (``ranking.top_k_for_users``: scores, seen-item mask, exact top-K with the tie rule):
  users/s and effective FLOP/s = 2 * users * items * dim / seconds, as a ratio to the
  matmul reference;
* the matmul reference plus torch.topk(K + 1) of each block, nothing else: the ratio a
  scorer keeping torch.topk's exact selection can reach at best;
* peak resident memory during the scorer above the RSS before it, against the block
  budget (block_size x items float32 scores).

Then the whole job with the block size of most users/s: ``score_to_partition`` (segments,
popularity fallback, scoring, Parquet written) plus the Delta commit of
``publish_scores``, in seconds. ``--write-docs`` replaces the "## Scoring" section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import scipy.sparse as sp
import torch
import typer

from bench.common import REPO, Goal, figure, link_figure, write_section, write_summary

sys.path.insert(0, str(REPO))  # run as a script from anywhere

from crossrec_core import ranking, scoring
from crossrec_core.config import load_settings
from crossrec_core.data import FeatureSet
from crossrec_core.lake import Lake
from crossrec_core.model_store import model_id, model_version
from crossrec_core.models.base import build_model
from crossrec_core.publish import publish_scores

SECTION = "## Scoring"
GOAL_RATIO, GOAL_SECONDS = 0.95, 60.0
DS = "2026-01-05"
PAGE = os.sysconf("SC_PAGE_SIZE")

app = typer.Typer(add_completion=False)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


@contextmanager
def peak_rss(interval: float = 0.02):
    """Yield a dict whose "peak" is the highest RSS sampled while the block ran."""
    found = {"start": rss_bytes(), "peak": rss_bytes()}
    running = threading.Event()
    running.set()

    def sample():
        while running.is_set():
            found["peak"] = max(found["peak"], rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        running.clear()
        thread.join()


def synthetic_features(n_users: int, n_items: int, history: int, seed: int = 0, source_history: int = 0) -> FeatureSet:
    """Random target histories of ``history`` items per user; with ``source_history``,
    as many source items per user over a source catalogue as large as the target's (what
    the hybrid's memory path reads), else an empty source domain."""
    rng = np.random.default_rng(seed)

    def histories(length: int, n_columns: int) -> sp.csr_matrix:
        rows = np.repeat(np.arange(n_users), length)
        return sp.csr_matrix((np.ones(rows.size, np.float32), (rows, rng.integers(0, n_columns, rows.size))), shape=(n_users, n_columns))

    n_source = n_items if source_history else 1
    return FeatureSet(
        source="src",
        target="tgt",
        user_ids=np.array([f"user{i}" for i in range(n_users)], dtype=object),
        item_ids={
            "src": np.array([f"s{i}" for i in range(n_source)], dtype=object),
            "tgt": np.array([f"item{i}" for i in range(n_items)], dtype=object),
        },
        train={"src": histories(source_history, n_source), "tgt": histories(history, n_items)},
    )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def clocks():
    """Wall and CPU seconds of the block (CPU time: comparable on a machine shared with other jobs)."""
    found = {}
    wall, cpu = time.perf_counter(), cpu_seconds()
    yield found
    found["wall"], found["cpu"] = time.perf_counter() - wall, cpu_seconds() - cpu


def matmul_clocks(users: torch.Tensor, items: torch.Tensor, block_size: int, k: int | None = None) -> dict:
    """Plain GEMM over the same user blocks into one reused output block; with ``k``,
    each block's torch.topk(k + 1) too (the selection the scorer's tie rule needs)."""
    out = torch.empty(block_size, items.shape[0])
    with clocks() as spent:
        for start in range(0, users.shape[0], block_size):
            block = users[start : start + block_size]
            torch.matmul(block, items.T, out=out[: block.shape[0]])
            if k is not None:
                torch.topk(out[: block.shape[0]], k + 1, dim=1)
    return spent


def measure_block(model, features: FeatureSet, k: int, block_size: int) -> dict:
    n_users, n_items = features.n_users, features.n_items("tgt")
    with torch.inference_mode():
        users = model.user_vectors("tgt", torch.arange(n_users))
        items = model.item_vectors("tgt")
        reference = matmul_clocks(users, items, block_size)
        with_top_k = matmul_clocks(users, items, block_size, k)
    keys = np.arange(n_users)
    with peak_rss() as memory, clocks() as spent:
        ranking.top_k_for_users(model, features, "tgt", keys, k, block_size)
    flops = 2 * n_users * n_items * users.shape[1]
    return {
        "block_size": block_size,
        "matmul_gflops": flops / reference["wall"] / 1e9,
        "scorer_seconds": spent["wall"],
        "users_per_second": n_users / spent["wall"],
        "scorer_gflops": flops / spent["wall"] / 1e9,
        "ratio": reference["wall"] / spent["wall"],
        "ceiling": reference["wall"] / with_top_k["wall"],
        "topk_ratio": with_top_k["wall"] / spent["wall"],  # the scorer against matmul + torch.topk
        "cpu_ratio": reference["cpu"] / spent["cpu"],
        "peak_mib": (memory["peak"] - memory["start"]) / 2**20,
        "budget_mib": block_size * n_items * 4 / 2**20,
    }


def end_to_end(model, features: FeatureSet, k: int, block_size: int, spark_master: str | None = None) -> dict:
    """The whole job; with ``spark_master``, through the Spark backend on that master."""
    backend = {"backend": "spark"} if spark_master else {}
    with tempfile.TemporaryDirectory(prefix="crossrec-score-bench-") as root:
        settings = load_settings(
            lake=root,
            domains={"source": "src", "target": "tgt"},
            model={"dim": model.settings.dim, "device": "cpu"},
            score={"k": k, "block_size": block_size, **backend},
            **({"spark": {"master": spark_master}} if spark_master else {}),
        )
        lake = Lake(root)
        started = time.perf_counter()
        result = scoring.score_to_partition(lake, DS, features, model, model_version(DS, model_id(model)), settings)
        scored = time.perf_counter()
        published = publish_scores(lake, DS, "tgt")
        finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "score_seconds": scored - started,
        "publish_seconds": finished - scored,
        "rows": published.rows,
        "bytes": published.bytes,
        "users_per_second": result.users / (finished - started),
    }


def plot(blocks: list[dict]) -> str:
    """Plain matmul and scorer GFLOP/s per block size."""
    import numpy as np

    fig, ax = figure()
    x = np.arange(len(blocks))
    ax.bar(x - 0.2, [b["matmul_gflops"] for b in blocks], 0.4, label="torch matmul (the limit)")
    ax.bar(x + 0.2, [b["scorer_gflops"] for b in blocks], 0.4, label="crossrec scorer (matmul + exclusion + top-K)")
    ax.set_xticks(x, [f"{b['block_size']:,}" for b in blocks])
    ax.set_xlabel("users per block")
    ax.set_ylabel("effective GFLOP/s")
    ax.set_title("Scoring throughput against the machine's matmul")
    ax.legend()
    return link_figure(fig, "scoring")


def goals(blocks: list[dict], job: dict, hybrid_job: dict | None) -> list[Goal]:
    best = max(blocks, key=lambda b: b["topk_ratio"])
    measured = [
        Goal(f"scorer / (matmul + torch.topk), wall clock, block size {best['block_size']:,}", best["topk_ratio"], GOAL_RATIO),
        Goal("whole score job incl. the Delta commit, seconds", job["seconds"], GOAL_SECONDS, at_most=True),
    ]
    if hybrid_job:
        measured.append(
            Goal("whole score job of the hybrid incl. the Delta commit, seconds", hybrid_job["seconds"], GOAL_SECONDS, at_most=True)
        )
    return measured


def report(command: str, shape: dict, blocks: list[dict], job: dict, hybrid_job: dict | None, spark_job: dict | None, threads: int) -> str:
    best = max(blocks, key=lambda b: b["ratio"])
    ratio_goal, job_goal, *hybrid_goal = goals(blocks, job, hybrid_job)
    load = os.getloadavg()
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, {os.cpu_count()} cores (load average "
        f"{load[0]:.1f} at the end), Python {platform.python_version()}, "
        f"torch {torch.__version__} (CPU, {threads} threads).  ",
        f"Shape: {shape['users']:,} users x {shape['items']:,} items, d={shape['dim']}, K={shape['k']}, "
        f"{shape['history']} seen items per user excluded; model target_only (random weights).",
        "",
        "| block size | matmul GFLOP/s | scorer GFLOP/s | ratio (wall) | ratio (CPU time) | matmul + topk alone: ratio | scorer / (matmul + topk) | users/s | scorer s | peak MiB over start | block budget MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in blocks:
        lines.append(
            f"| {b['block_size']:,} | {b['matmul_gflops']:.1f} | {b['scorer_gflops']:.1f} | {b['ratio']:.2f} | {b['cpu_ratio']:.2f} | {b['ceiling']:.2f} | {b['topk_ratio']:.2f} "
            f"| {b['users_per_second']:,.0f} | {b['scorer_seconds']:.1f} | {b['peak_mib']:,.0f} | {b['budget_mib']:,.0f} |"
        )
    lines += [
        "",
        f"Whole job with block size {job['block_size']:,} (`score_to_partition`: segments, popularity fallback, "
        f"scoring, Parquet; then the Delta commit of `publish_scores`): {job['seconds']:.1f} s "
        f"({job['score_seconds']:.1f} s scoring and Parquet, {job['publish_seconds']:.1f} s commit), "
        f"{job['rows']:,} rows, {job['bytes'] / 2**20:,.0f} MiB, {job['users_per_second']:,.0f} users/s.",
        "",
        f"Goals: scorer >= {GOAL_RATIO}x the matmul + torch.topk reference: {ratio_goal.verdict} ({ratio_goal.measured:.2f}; "
        f"against the plain matmul: best {best['ratio']:.2f} at block size {best['block_size']:,}, CPU time {best['cpu_ratio']:.2f}); "
        f"whole job <= {GOAL_SECONDS:.0f} s: {job_goal.verdict} ({job['seconds']:.1f} s).",
        "",
    ]
    if hybrid_job:
        lines += [
            f"The hybrid (memory + transfer path, random weights, its memory support built from synthetic histories of "
            f"{shape['source_history']} source items per user over {shape['items']:,} source items; block size "
            f"{hybrid_job['block_size']:,}): whole job {hybrid_job['seconds']:.1f} s ({hybrid_job['score_seconds']:.1f} s scoring "
            f"and Parquet, {hybrid_job['publish_seconds']:.1f} s commit), {hybrid_job['users_per_second']:,.0f} users/s; "
            f"goal <= {GOAL_SECONDS:.0f} s: {hybrid_goal[0].verdict}.",
            "",
        ]
    if spark_job:
        lines += [
            f"The Spark backend (the same block function in `mapInArrow` tasks) on `{spark_job['master']}`, block size "
            f"{spark_job['block_size']:,}: whole job {spark_job['seconds']:.1f} s ({spark_job['score_seconds']:.1f} s scoring and "
            f"Parquet, session start included; {spark_job['publish_seconds']:.1f} s commit), {spark_job['users_per_second']:,.0f} users/s.",
            "",
        ]
    lines += [
        '"matmul + topk alone": the matmul reference with each block\'s torch.topk(K + 1) added and nothing else, '
        "the ceiling of any scorer that keeps torch.topk's exact selection.",
        "",
        plot(blocks),
    ]
    return "\n".join(lines) + "\n"


@app.command()
def main(
    users: Annotated[int, typer.Option(help="target users")] = 100_000,
    items: Annotated[int, typer.Option(help="target items")] = 50_000,
    dim: Annotated[int, typer.Option(help="vector dimension")] = 64,
    k: Annotated[int, typer.Option("-k", help="recommendations per user")] = 50,
    history: Annotated[int, typer.Option(help="seen target items per user (excluded)")] = 20,
    block_sizes: Annotated[str, typer.Option(help="comma-separated block sizes to try")] = "256,1024,4096",
    threads: Annotated[int, typer.Option(help="torch threads")] = 2,
    source_history: Annotated[int, typer.Option(help="source items per user of the hybrid's whole-job run; 0: no hybrid run")] = 10,
    spark_master: Annotated[
        str | None, typer.Option(help="also run the whole job through the Spark backend on this master (spark://HOST:PORT)")
    ] = None,
    write_docs: Annotated[bool, typer.Option(help="write the results into docs/BENCHMARKS.md")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write a machine-readable summary (goals, verdicts) here")] = None,
) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    features = synthetic_features(users, items, history)
    model = build_model("target_only", features, load_settings(model={"dim": dim, "device": "cpu"}).model).eval()
    blocks = []
    for block_size in (int(b) for b in block_sizes.split(",")):
        blocks.append(measure_block(model, features, k, block_size))
        b = blocks[-1]
        print(
            f"block {block_size}: matmul {b['matmul_gflops']:.1f} GFLOP/s, scorer {b['scorer_gflops']:.1f} GFLOP/s "
            f"(ratio {b['ratio']:.2f}, CPU-time ratio {b['cpu_ratio']:.2f}), {b['users_per_second']:,.0f} users/s, "
            f"peak +{b['peak_mib']:,.0f} MiB",
            flush=True,
        )
    best = max(blocks, key=lambda b: b["users_per_second"])["block_size"]
    job = {"block_size": best, **end_to_end(model, features, k, best)}
    print(f"whole job (block {best}): {job['seconds']:.1f} s", flush=True)
    hybrid_job = None
    if source_history:
        with_source = synthetic_features(users, items, history, source_history=source_history)
        hybrid = build_model("hybrid", with_source, load_settings(model={"dim": dim, "device": "cpu"}).model).eval()
        hybrid_job = {"block_size": best, **end_to_end(hybrid, with_source, k, best)}
        print(f"whole job of the hybrid (block {best}): {hybrid_job['seconds']:.1f} s", flush=True)
    spark_job = None
    if spark_master:
        spark_job = {"block_size": best, "master": spark_master, **end_to_end(model, features, k, best, spark_master)}
        print(f"whole job through the Spark backend on {spark_master}: {spark_job['seconds']:.1f} s", flush=True)
    command = "python -m bench.score_speed " + " ".join(sys.argv[1:])
    shape = {"users": users, "items": items, "dim": dim, "k": k, "history": history, "source_history": source_history}
    text = report(command.strip(), shape, blocks, job, hybrid_job, spark_job, threads)
    print(text)
    if json_path:
        results = {"blocks": blocks, "job": job, "hybrid_job": hybrid_job, "spark_job": spark_job}
        write_summary(json_path, "score_speed", command.strip(), goals(blocks, job, hybrid_job), results)
    if write_docs:
        write_section(SECTION, text)


if __name__ == "__main__":
    app()
