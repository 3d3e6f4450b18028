"""crossrec against Spark MLlib ALS, the standard recommender on Spark (not run in CI).

    .venv/bin/python -m bench.als [--data ../shared/data] [--write-docs]

Quality: ALS (implicit preferences) is trained on the SOURCE and TARGET training
interactions of the validation view together (users are shared, so a cold-start user
still gets a factor from their source history; that is ALS's best shot at them), rank
and regParam chosen on validation NDCG@10 over a small grid, then evaluated by crossrec's
own evaluator (full ranking, same splits, same metric code as `crossrec eval`) through
the ALS factors. Scoring: ALS `recommendForAllUsers(K)` against crossrec's block scorer
(`ranking.top_k_for_users`) on the same factors (same users, items, rank and K).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench.common import REPO, Goal, figure, link_figure, machine, two_tower, write_section, write_summary
from crossrec_core.config import load_settings
from crossrec_core.datasets import load_pairs, load_recbole
from crossrec_core.evaluation import evaluate_model

SECTION = "## Against Spark MLlib ALS"
FAR_ABOVE = 2.0  # "far above ALS" for cold-start users, as a factor
GRID = [(rank, reg) for rank in (32, 64) for reg in (0.01, 0.1)]
# name -> (loader, shared data folder, loader arguments, crossrec's results of the same split under docs/results/)
DATASETS = {
    "amazon_cloth_sport": (
        "pairs",
        "amazon-cloth-sport",
        {"source": "cloth", "target": "sport", "split": "cdrib"},
        "amazon_cloth_sport/cdrib",
    ),
    "amazon_sport_cloth": (
        "pairs",
        "amazon-cloth-sport",
        {"source": "sport", "target": "cloth", "split": "cdrib"},
        "amazon_sport_cloth/cdrib",
    ),
    "ml1m_genres": (
        "recbole",
        "movielens-1m",
        {"source_genres": ["Comedy", "Romance", "Drama"], "target_genres": ["Sci-Fi", "Action", "Thriller"]},
        "ml1m_genres",
    ),
}
CROSSREC_MODELS = ("item_knn_cross", "ease_cross", "target_only", "joint_mf", "emcdr", "dann", "mmd", "hybrid")


def load(data: Path, name: str):
    kind, folder, args, _ = DATASETS[name]
    return load_pairs(data / folder, **args) if kind == "pairs" else load_recbole(data / folder, **args)


def ratings(spark, users: np.ndarray, items: np.ndarray, weights: np.ndarray):
    """An ALS input DataFrame, handed to Spark through Arrow."""
    import pandas as pd

    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    return spark.createDataFrame(
        pd.DataFrame({"user": users.astype(np.int32), "item": items.astype(np.int32), "rating": weights.astype(np.float32)})
    )


def fit_als(spark, features, rank: int, reg: float, seed: int = 42):
    """ALS factors (users x rank, target items x rank) from source+target training rows."""
    from pyspark.ml.recommendation import ALS

    joint = sp.hstack([features.train[features.source], features.train[features.target]]).tocoo()
    frame = ratings(spark, joint.row, joint.col, joint.data)
    model = ALS(
        rank=rank,
        regParam=reg,
        maxIter=10,
        implicitPrefs=True,
        alpha=1.0,
        seed=seed,
        coldStartStrategy="drop",
        userCol="user",
        itemCol="item",
        ratingCol="rating",
    ).fit(frame)
    users = np.zeros((features.n_users, rank), dtype=np.float32)  # no factor (no history): zero vector
    items = np.zeros((joint.shape[1], rank), dtype=np.float32)
    for frame_, array in ((model.userFactors, users), (model.itemFactors, items)):
        rows = frame_.toPandas()
        array[rows["id"].to_numpy()] = np.stack(rows["features"].to_numpy())
    return model, users, items[features.n_items(features.source) :]


def quality(spark, data: Path, name: str) -> dict:
    splits = load(data, name)
    best = None
    for rank, reg in GRID:
        _, users, items = fit_als(spark, splits.valid, rank, reg)
        score = evaluate_model(two_tower(splits.valid, users, items), splits.valid, ks=(10,))["all"]["ndcg@10"]
        print(f"{name}: ALS rank {rank} reg {reg}: validation ndcg@10 {score:.4f}", flush=True)
        if best is None or score > best[0]:
            best = (score, rank, reg, users, items)
    _, rank, reg, users, items = best
    test = evaluate_model(two_tower(splits.test, users, items), splits.test, ks=(10,))
    return {
        "dataset": name,
        "rank": rank,
        "reg": reg,
        "test": {s: {m: test[s][m] for m in ("ndcg@10", "recall@10", "users")} for s in test},
    }


def crossrec_rows(name: str) -> dict[str, dict[str, float]]:
    """Mean full-protocol NDCG@10 per (model, segment) from crossrec's results of the same split."""
    path = REPO / "docs" / "results" / DATASETS[name][3] / "results.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run the crossrec eval command of docs/RESULTS.md for {name} first")
    out: dict[str, dict[str, float]] = {}
    for record in json.loads(path.read_text()).get("results", []):
        if record.get("protocol") == "full" and record.get("metric") == "ndcg@10":
            out.setdefault(record["model"], {})[record["segment"]] = record["mean"]
    return out


def scoring_speed(spark, users: int, items: int, rank: int, k: int) -> dict:
    """ALS recommendForAllUsers vs crossrec's block scorer on the same random factors."""
    from pyspark.ml.recommendation import ALS

    from crossrec_core.data import FeatureSet
    from crossrec_core.ranking import top_k_for_users as top_k

    rng = np.random.default_rng(0)
    rows = rng.integers(0, users, users * 5)
    frame = ratings(spark, rows, rng.integers(0, items, users * 5), np.ones(users * 5))
    model = ALS(rank=rank, maxIter=1, implicitPrefs=True, seed=0, userCol="user", itemCol="item").fit(frame)
    started = time.perf_counter()
    model.recommendForAllUsers(k).write.mode("overwrite").format("noop").save()
    als_seconds = time.perf_counter() - started
    user_factors = model.userFactors.toPandas()
    item_factors = model.itemFactors.toPandas().sort_values("id")
    n_users, n_items = len(user_factors), len(item_factors)
    empty = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    features = FeatureSet(
        source="src",
        target="tgt",
        user_ids=np.arange(n_users).astype(str),
        item_ids={"src": np.array([], dtype=str), "tgt": np.arange(n_items).astype(str)},
        train={"src": sp.csr_matrix((n_users, 0), dtype=np.float32), "tgt": empty},
    )
    model_vectors = two_tower(features, np.stack(user_factors["features"].to_numpy()), np.stack(item_factors["features"].to_numpy()))
    started = time.perf_counter()
    top_k(model_vectors, features, "tgt", np.arange(n_users), k, block_size=4096)
    crossrec_seconds = time.perf_counter() - started
    return {
        "users": n_users,
        "items": n_items,
        "rank": rank,
        "k": k,
        "als_seconds": als_seconds,
        "crossrec_seconds": crossrec_seconds,
        "speedup": als_seconds / crossrec_seconds,
    }


def plot(rows: list[tuple[str, float, float, float]]) -> str:
    """NDCG@10 of ALS, crossrec's best and item_knn_cross per dataset and segment."""
    import numpy as np

    fig, ax = figure(8.0, 4.0)
    x = np.arange(len(rows))
    for offset, (label, column) in zip((-0.27, 0, 0.27), (("Spark ALS", 1), ("crossrec best", 2), ("item_knn_cross", 3)), strict=True):
        ax.bar(x + offset, [row[column] for row in rows], 0.27, label=label)
    ax.set_xticks(x, [row[0] for row in rows], rotation=15, ha="right")
    ax.set_ylabel("NDCG@10 (full ranking, test)")
    ax.set_title("Quality against Spark MLlib ALS")
    ax.legend()
    return link_figure(fig, "als_quality")


def section(results: list[dict], speed: dict, command: str) -> tuple[str, list[Goal]]:
    """The docs section and its goals."""
    goals: list[Goal] = []
    lines = [
        SECTION,
        "",
        f"`{command}`; {machine()}.",
        "",
        "Quality, full ranking, NDCG@10 on the test split (ALS: best of rank {32, 64} x regParam {0.01, 0.1} on validation, "
        "10 iterations, implicit preferences, trained on source + target, so a cold-start user has an ALS factor from "
        "their source history and needs no fallback). crossrec columns: means from docs/results/. "
        f"Goals: crossrec's best above ALS for warm users, at least {FAR_ABOVE:g}x ALS for cold-start users.",
        "",
        "| dataset | segment | users | ALS | crossrec best | which | item_knn_cross | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    bars = []
    for r in results:
        ours = crossrec_rows(r["dataset"])
        for segment, metrics in r["test"].items():
            if segment == "all":
                continue
            candidates = {m: v[segment] for m, v in ours.items() if m in CROSSREC_MODELS and segment in v}
            best = max(candidates, key=candidates.get) if candidates else None
            factor = FAR_ABOVE if segment == "cold_start" else 1.0
            goals.append(
                Goal(
                    f"{r['dataset']} {segment}: crossrec's best NDCG@10 against {factor:g}x ALS's",
                    candidates.get(best, 0.0),
                    factor * metrics["ndcg@10"],
                )
            )
            met = goals[-1].met
            lines.append(
                f"| {r['dataset']} (ALS rank {r['rank']}, reg {r['reg']}) | {segment} | {metrics['users']:,} | "
                f"{metrics['ndcg@10']:.4f} | {candidates.get(best, float('nan')):.4f} | {best or 'n/a'} | "
                f"{ours.get('item_knn_cross', {}).get(segment, float('nan')):.4f} | {'met' if met else 'NOT met'} |"
            )
            bars.append(
                (
                    f"{r['dataset']} {segment}",
                    metrics["ndcg@10"],
                    candidates.get(best, float("nan")),
                    ours.get("item_knn_cross", {}).get(segment, float("nan")),
                )
            )
    speed_goal = Goal("scoring speed-up of crossrec over ALS recommendForAllUsers", speed["speedup"], 5)
    goals.append(speed_goal)
    lines += [
        "",
        f"Scoring: {speed['users']:,} users x {speed['items']:,} items, rank {speed['rank']}, K = {speed['k']}: "
        f"ALS `recommendForAllUsers` {speed['als_seconds']:.1f} s (Spark local[2], result consumed by a no-op sink); "
        f"crossrec `ranking.top_k_for_users` (torch, 2 threads) {speed['crossrec_seconds']:.1f} s on the same factors: "
        f"**{speed['speedup']:.1f}x** (goal >= 5x: {speed_goal.verdict}).",
        "",
        plot(bars),
    ]
    return "\n".join(lines) + "\n", goals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--score-users", type=int, default=20_000)
    parser.add_argument("--score-items", type=int, default=10_000)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--json", type=Path, help="write a machine-readable summary (goals, verdicts) here")
    args = parser.parse_args(argv)
    from crossrec_core.spark import spark_session

    spark = spark_session(
        load_settings(spark={"driver_memory": "4g", "shuffle_partitions": 4, "conf": {"spark.ui.showConsoleProgress": "false"}}),
        "crossrec-bench-als",
    )
    results = [quality(spark, args.data, name) for name in args.datasets.split(",")]
    speed = scoring_speed(spark, args.score_users, args.score_items, rank=64, k=50)
    print(json.dumps({"quality": results, "speed": speed}, default=float))
    command = (
        "python -m bench.als"
        + (f" --datasets {args.datasets}" if args.datasets != ",".join(DATASETS) else "")
        + (f" --score-users {args.score_users} --score-items {args.score_items}" if args.score_users != 20_000 else "")
    )
    text, goals = section(results, speed, command)
    print(text)
    if args.json:
        write_summary(args.json, "als", command, goals, {"quality": results, "speed": speed})
    if args.write_docs:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
