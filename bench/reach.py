"""How far item-to-item evidence reaches on a CDRIB pair, on the VALIDATION users only (not run in CI).

    .venv/bin/python -m bench.reach [--data ../shared/data] [--epochs 5]

For amazon cloth -> sport and sport -> cloth (disjoint split: the validation users are
never test users), prints, for the cold-start validation users:

- which share of their held-out target items co-occurs (in training, through users
  active in both domains) with at least one item of their source history: no
  item-to-item model can rank the other items above popularity;
- NDCG@10 (full ranking) of item_knn_cross, ease_cross and dann, and the per-user
  oracle that keeps, for each user, the better of item_knn_cross and a learned model:
  how much a perfect switch between the count and the learned model could add;
- two ways to reach further with single-domain co-occurrence, which every table of the
  product leaves unused: the source history expanded through source item-item cosine
  similarity (``expand``) and the scores smoothed through target item-item cosine
  similarity (``smooth``), each over a small grid.

docs/RESULTS.md ("How far co-occurrence reaches") quotes its output.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from crossrec_core.config import load_settings
from crossrec_core.contracts import Segment
from crossrec_core.data import FeatureSet
from crossrec_core.datasets import load_pairs
from crossrec_core.metrics import hits_at_k
from crossrec_core.models.item_knn import ItemKnnCross, multi_hot
from crossrec_core.ranking import top_k
from crossrec_core.trainer import fit_model

K = 10


def per_user_ndcg(scores: np.ndarray, truth: sp.csr_matrix, excluded: sp.csr_matrix) -> np.ndarray:
    """NDCG@10 of each row of a dense score matrix (excluded items never ranked)."""
    masked = torch.from_numpy(scores.astype(np.float32))
    masked[torch.from_numpy(excluded.nonzero()[0]), torch.from_numpy(excluded.nonzero()[1])] = -torch.inf
    recommended = top_k(masked, K)[1].numpy()
    hits, n_relevant = hits_at_k(recommended, truth, K)
    discounts = 1.0 / np.log2(np.arange(2, K + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(n_relevant, K)]
    return np.divide(hits @ discounts[: hits.shape[1]], ideal, out=np.zeros(len(hits)), where=ideal > 0)


def cosine(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Item-item cosine similarity of a user x item multi-hot matrix, diagonal removed."""
    gram = (matrix.T @ matrix).tocsr().astype(np.float32)
    scale = sp.diags(1.0 / np.sqrt(np.maximum(gram.diagonal(), 1.0)))
    similarity = (scale @ gram @ scale).tocsr()
    similarity.setdiag(0)
    similarity.eliminate_zeros()
    return similarity


def model_scores(name: str, features: FeatureSet, users: np.ndarray, **settings) -> np.ndarray:
    model, _ = fit_model(name, features, load_settings(model=settings).model, progress=False)
    with torch.no_grad():
        return model.score(features.target, torch.from_numpy(users), model.item_vectors(features.target)).numpy()


def report(label: str, features: FeatureSet, epochs: int) -> None:
    source, target = features.source, features.target
    truth_all = features.holdout[Segment.COLD_START]
    users = np.flatnonzero(np.diff(truth_all.indptr) > 0)
    truth, excluded = truth_all[users], features.excluded(target, users)
    history, bought = multi_hot(features.train[source]), multi_hot(features.train[target])
    knn = ItemKnnCross(features, load_settings().model)
    weights = knn.fit_weights(history, bought)  # the item_knn_cross weights of the defaults
    popularity = np.asarray(bought.sum(axis=0)).ravel()
    tie_break = 1e-9 * popularity  # users or items the evidence misses: by popularity, as the models' fallback

    reached = (history[users] @ (history.T @ bought)).tocsr().astype(bool)
    held_out_reached = truth.multiply(reached).nnz / truth.nnz
    users_reached = np.mean(np.diff(truth.multiply(reached).tocsr().indptr) > 0)
    print(f"\n## {label}: {len(users)} cold-start validation users, {truth.nnz} held-out items")
    print(
        f"held-out items that co-occur with the user's source history: {held_out_reached:.1%}; users with at least one: {users_reached:.1%}"
    )

    ndcg: dict[str, np.ndarray] = {}
    scores: dict[str, Callable[[], np.ndarray]] = {
        "item_knn_cross": lambda: (history[users] @ weights).toarray() + tie_break,
        "ease_cross (lambda 16)": lambda: model_scores("ease_cross", features, users, linear_l2=[16.0]),
        f"dann ({epochs} epochs)": lambda: model_scores("dann", features, users, epochs=epochs),
    }
    for name, score in scores.items():
        ndcg[name] = per_user_ndcg(score(), truth, excluded)
    print("| scorer | validation NDCG@10 |\n|---|---:|")
    for name, values in ndcg.items():
        print(f"| {name} | {values.mean():.4f} |")
    knn_ndcg = ndcg["item_knn_cross"]
    for name, values in ndcg.items():
        if name != "item_knn_cross":
            print(f"| per-user best of item_knn_cross and {name} (oracle) | {np.maximum(knn_ndcg, values).mean():.4f} |")
    source_similarity, target_similarity = cosine(history), cosine(bought)
    for gamma in (0.1, 0.3, 1.0):
        expanded = history[users] + gamma * (history[users] @ source_similarity)
        print(
            f"| item_knn_cross, history expanded by source similarity x {gamma:g} | "
            f"{per_user_ndcg((expanded @ weights).toarray() + tie_break, truth, excluded).mean():.4f} |"
        )
    for delta in (0.1, 0.3):
        knn_scores = history[users] @ weights
        smoothed = knn_scores + delta * (knn_scores @ target_similarity)
        print(
            f"| item_knn_cross, scores smoothed by target similarity x {delta:g} | "
            f"{per_user_ndcg(smoothed.toarray() + tie_break, truth, excluded).mean():.4f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=5, help="dann's epochs (the RESULTS tables' cap)")
    args = parser.parse_args()
    for source, target in (("cloth", "sport"), ("sport", "cloth")):
        features = load_pairs(args.data / "amazon-cloth-sport", source, target, split="disjoint").valid
        report(f"amazon {source} -> {target}", features, args.epochs)


if __name__ == "__main__":
    main()
