"""Tune item_knn_cross's popularity exponent alpha on the VALIDATION split (not run in CI).

    .venv/bin/python -m bench.knn_alpha [--data ../shared/data] [--alphas 0,0.25,0.5,0.75,1]

For each offline dataset (amazon cloth->sport, sport->cloth, MovieLens genre split),
fits item_knn_cross on the validation view for every alpha and prints validation
NDCG@10 (full ranking) per segment. The test split is not touched: pick alpha here,
report test numbers with `crossrec eval` (docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from crossrec_core.config import load_settings
from crossrec_core.datasets import load_pairs, load_recbole
from crossrec_core.evaluation import evaluate_model
from crossrec_core.models.item_knn import ItemKnnCross


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    args = parser.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    datasets = {
        "amazon cloth->sport": lambda: load_pairs(args.data / "amazon-cloth-sport", "cloth", "sport").valid,
        "amazon sport->cloth": lambda: load_pairs(args.data / "amazon-cloth-sport", "sport", "cloth").valid,
        "ml-1m Comedy,Romance,Drama -> Sci-Fi,Action,Thriller": lambda: (
            load_recbole(args.data / "movielens-1m", ["Comedy", "Romance", "Drama"], ["Sci-Fi", "Action", "Thriller"]).valid
        ),
    }
    print("| dataset | alpha | segment | validation NDCG@10 |\n|---|---|---|---|")
    for name, load in datasets.items():
        features = load()
        for alpha in alphas:
            model = ItemKnnCross(features, load_settings(model={"knn_popularity_exponent": alpha}).model)
            model.fit_fixed(features)
            with torch.no_grad():
                result = evaluate_model(model, features, ks=(10,))
            segments = [s for s in result if s != "all"] if len(result) == 2 else list(result)  # "all" = the one segment
            for segment in segments:
                metrics = result[segment]
                print(f"| {name} | {alpha:g} | {segment} | {metrics['ndcg@10']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
