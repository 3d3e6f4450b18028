"""Evaluation speed: full-ranking evaluate_model on synthetic data (not run in CI).

    .venv/bin/python -m bench.eval_speed [--users 10000] [--items 20000] [--dim 64]

A dense two-tower model with random vectors (the cost of evaluation does not depend on
how the vectors were learned), every user warm with held-out items, ks = (10, 20, 50).
Prints wall and CPU seconds per protocol (on a shared machine the CPU time is the
steadier number); the numbers go to docs/BENCHMARKS.md (Evaluation speed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from bench.common import Goal, machine, two_tower, write_section, write_summary
from crossrec_core.contracts import Segment
from crossrec_core.data import FeatureSet
from crossrec_core.evaluation import evaluate_model

SECTION = "## Evaluation speed"
GOAL_SECONDS = 10


def synthetic_features(n_users: int, n_items: int, per_user: int, held_out: int, seed: int) -> FeatureSet:
    rng = np.random.default_rng(seed)
    # Distinct items per user: a random offset plus a fixed stride never repeats an item.
    items = (rng.integers(0, n_items, (n_users, 1)) + np.arange(per_user + held_out) * 7) % n_items
    users = np.repeat(np.arange(n_users), per_user + held_out)
    is_held_out = np.tile(np.arange(per_user + held_out) >= per_user, n_users)

    def matrix(mask):
        return sp.csr_matrix((np.ones(mask.sum(), np.float32), (users[mask], items.ravel()[mask])), shape=(n_users, n_items))

    return FeatureSet(
        source="src",
        target="tgt",
        user_ids=np.arange(n_users).astype(str),
        item_ids={"src": np.arange(1).astype(str), "tgt": np.arange(n_items).astype(str)},
        train={"src": sp.csr_matrix((n_users, 1), dtype=np.float32), "tgt": matrix(~is_held_out)},
        holdout={Segment.WARM: matrix(is_held_out)},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--train-per-user", type=int, default=20)
    parser.add_argument("--held-out-per-user", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--json", type=Path, help="write a machine-readable summary (goals, verdicts) here")
    args = parser.parse_args(argv)
    features = synthetic_features(args.users, args.items, args.train_per_user, args.held_out_per_user, seed=0)
    generator = torch.Generator().manual_seed(0)
    model = two_tower(
        features,
        torch.randn(features.n_users, args.dim, generator=generator),
        torch.randn(features.n_items(features.target), args.dim, generator=generator),
    )
    print(f"torch threads: {torch.get_num_threads()}; {args.users:,} users x {args.items:,} items, d={args.dim}, block {args.block_size}")
    lines = [
        SECTION,
        "",
        f"`python -m bench.eval_speed --users {args.users} --items {args.items} --dim {args.dim}`; {machine()}; "
        f"torch threads {torch.get_num_threads()}. `evaluate_model` of a random two-tower model, every user warm with "
        f"{args.held_out_per_user} held-out items, K in 10, 20, 50; best and median of {args.repeats} runs.",
        "",
        "| protocol | users | items | wall best (s) | wall median (s) | CPU median (s) | goal < 10 s (full) |",
        "|---|---|---|---|---|---|---|",
    ]
    goals, measured = [], {}
    for protocol in ("full", "sampled"):
        seconds, cpu_seconds = [], []
        for _ in range(args.repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            result = evaluate_model(model, features, protocol=protocol, block_size=args.block_size)
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
        print(
            f"{protocol:<8} wall best {min(seconds):.2f} s, median {np.median(seconds):.2f} s; "
            f"CPU (all threads) median {np.median(cpu_seconds):.2f} s; over {args.repeats} runs "
            f"({result['all']['users']:,} metric rows; ndcg@10 {result['all']['ndcg@10']:.4f})"
        )
        measured[protocol] = {
            "wall_best": min(seconds),
            "wall_median": float(np.median(seconds)),
            "cpu_median": float(np.median(cpu_seconds)),
        }
        if protocol == "full":
            goals.append(
                Goal(f"full protocol, {args.users:,} users x {args.items:,} items, seconds", min(seconds), GOAL_SECONDS, at_most=True)
            )
        goal = goals[-1].verdict if protocol == "full" else ""
        lines.append(
            f"| {protocol} | {args.users:,} | {args.items:,} | {min(seconds):.2f} | {np.median(seconds):.2f} | "
            f"{np.median(cpu_seconds):.2f} | {goal} |"
        )
    if args.json:
        write_summary(args.json, "eval_speed", " ".join(["python -m bench.eval_speed", *sys.argv[1:]]), goals, measured)
    if args.write_docs:
        write_section(SECTION, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
