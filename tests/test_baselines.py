"""The fixed baselines: popularity and item_knn_cross."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from crossrec_core.config import load_settings
from crossrec_core.contracts import Segment
from crossrec_core.data import FeatureSet
from crossrec_core.evaluation import evaluate_model, recommend_top_k
from crossrec_core.models.base import dot_scores
from crossrec_core.models.item_knn import ItemKnnCross
from crossrec_core.models.popularity import Popularity


def model_settings(alpha: float = 0.5):
    return load_settings(model={"knn_popularity_exponent": alpha}).model


def scores_of(model, features: FeatureSet, users: np.ndarray | None = None) -> np.ndarray:
    users = np.arange(features.n_users) if users is None else users
    with torch.no_grad():
        return dot_scores(model.user_vectors(features.target, torch.as_tensor(users)), model.item_vectors(features.target)).numpy()


def fitted(cls, features: FeatureSet, alpha: float = 0.5):
    model = cls(features, model_settings(alpha))
    model.fit_fixed(features)
    return model


def brute_force_knn_scores(features: FeatureSet, alpha: float) -> np.ndarray:
    """The definition, in loops: sum over u's source items i of C[i, j] / pop(j) ** alpha,
    C[i, j] = users with i and j in training; popularity order for users with no co-occurrence."""
    source = features.train[features.source].toarray() > 0
    target = features.train[features.target].toarray() > 0
    n_users, n_source = source.shape
    n_target = target.shape[1]
    cooccurrence = np.zeros((n_source, n_target))
    for u in range(n_users):
        for i in range(n_source):
            for j in range(n_target):
                cooccurrence[i, j] += source[u, i] and target[u, j]
    popularity = target.sum(0)
    scores = np.zeros((n_users, n_target))
    for u in range(n_users):
        for j in range(n_target):
            if popularity[j]:
                scores[u, j] = sum(cooccurrence[i, j] for i in range(n_source) if source[u, i]) / popularity[j] ** alpha
        if not scores[u].any():
            scores[u] = popularity / popularity.max()
    return scores


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_item_knn_cross_equals_brute_force(tiny_features, alpha):
    model = fitted(ItemKnnCross, tiny_features, alpha)
    expected = brute_force_knn_scores(tiny_features, alpha)
    np.testing.assert_allclose(scores_of(model, tiny_features), expected, rtol=1e-5, atol=1e-6)
    # Users 10..19 have no source history: the popularity fallback, not an all-zero row.
    assert (scores_of(model, tiny_features, np.arange(10, 20)) > 0).any(1).all()


def test_popularity_ranks_by_training_weight_then_lower_item_key():
    n_users = 6
    rows, items, weights = [0, 1, 2, 3, 4, 5, 0], [3, 3, 1, 1, 0, 2, 2], [1, 1, 1, 1, 2, 1, 1]
    features = FeatureSet(
        source="s",
        target="t",
        user_ids=np.arange(n_users).astype(str),
        item_ids={"s": np.array(["s0"]), "t": np.arange(5).astype(str)},
        train={"s": sp.csr_matrix((n_users, 1), dtype=np.float32), "t": sp.csr_matrix((weights, (rows, items)), shape=(n_users, 5))},
    )
    model = fitted(Popularity, features)
    # weights per item: 0 -> 2, 1 -> 2, 2 -> 2, 3 -> 2, 4 -> 0: a four-way tie broken by key.
    with torch.no_grad():
        ranked = recommend_top_k(model, features, np.array([5]), k=5)
    assert ranked.tolist() == [[0, 1, 3, 4, -1]]  # user 5 has item 2 in training: excluded
    np.testing.assert_allclose(scores_of(model, features)[0], np.log1p([2, 2, 2, 2, 0]), rtol=1e-6)


@pytest.mark.parametrize("cls", [Popularity, ItemKnnCross], ids=["popularity", "item_knn_cross"])
def test_fixed_models_survive_weights_only_save_and_load(tiny_features, tmp_path, cls):
    model = fitted(cls, tiny_features)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    fresh = cls(tiny_features, model_settings())  # unfitted: other buffer shapes
    fresh.load_state_dict(state)
    fresh.set_histories(tiny_features)
    np.testing.assert_array_equal(scores_of(fresh, tiny_features), scores_of(model, tiny_features))


def test_item_knn_cross_reuses_a_saved_model_with_a_newer_nights_histories(tiny_features):
    """The scorer loads yesterday's model into a model built from today's features (more
    users and items) and gives it today's histories: old items keep their scores, new
    source items (no co-occurrence yet) are ignored."""
    model = fitted(ItemKnnCross, tiny_features)
    extra_users, extra_source_items = 3, 2
    newer = FeatureSet(
        source="src",
        target="tgt",
        user_ids=np.arange(tiny_features.n_users + extra_users).astype(str),
        item_ids={
            "src": np.arange(tiny_features.n_items("src") + extra_source_items).astype(str),
            "tgt": np.arange(tiny_features.n_items("tgt") + 1).astype(str),
        },
        train={
            domain: sp.vstack(
                [
                    sp.hstack([matrix, sp.csr_matrix((matrix.shape[0], extra))]),
                    sp.csr_matrix(np.ones((extra_users, matrix.shape[1] + extra), np.float32)),
                ],
                format="csr",
            )
            for domain, matrix, extra in (("src", tiny_features.train["src"], extra_source_items), ("tgt", tiny_features.train["tgt"], 1))
        },
    )
    reloaded = ItemKnnCross(newer, model_settings())
    reloaded.load_state_dict(model.state_dict())
    reloaded.set_histories(newer)
    old_users = np.arange(tiny_features.n_users)
    np.testing.assert_array_equal(scores_of(reloaded, newer, old_users), scores_of(model, tiny_features))
    assert scores_of(reloaded, newer).shape == (newer.n_users, tiny_features.n_items("tgt"))


def test_fixed_models_serve_the_target_domain_only(tiny_features):
    for cls in (Popularity, ItemKnnCross):
        with pytest.raises(ValueError, match="target domain 'tgt' only, not 'src'"):
            fitted(cls, tiny_features).item_vectors("src")


@pytest.mark.shared_data
def test_item_knn_cross_beats_popularity_on_real_cold_start_users(shared_data):
    """3,000 amazon users active in both domains plus 300 cold-start test users, cloth ->
    sport, full ranking. (On the whole dataset: 0.221 vs 0.008 on the CDRIB split, docs/RESULTS.md.)"""
    from crossrec_core.datasets import load_pairs

    full = load_pairs(shared_data / "amazon-cloth-sport", "cloth", "sport").test
    rng = np.random.default_rng(0)
    both = np.intersect1d(full.users_with_history("cloth"), full.users_with_history("sport"))
    users = np.union1d(rng.choice(both, 3000, replace=False), rng.choice(full.holdout_users(Segment.COLD_START), 300, replace=False))
    features = FeatureSet(
        source="cloth",
        target="sport",
        user_ids=full.user_ids[users],
        item_ids=full.item_ids,
        train={domain: matrix[users] for domain, matrix in full.train.items()},
        holdout={Segment.COLD_START: full.holdout[Segment.COLD_START][users]},
    )
    ndcg = {
        cls.name: evaluate_model(fitted(cls, features), features, ks=(10,))["cold_start"]["ndcg@10"] for cls in (Popularity, ItemKnnCross)
    }
    assert ndcg["item_knn_cross"] > 0.05
    assert ndcg["item_knn_cross"] > 5 * ndcg["popularity"]


@pytest.mark.parametrize("n_users", [40, 400])  # fewer users than source items: solved over the users
def test_ease_cross_ridge_solves_the_regression_and_keeps_the_largest_weights(n_users):
    """ridge_weights equals the closed form (X^T X + l2 I)^-1 X^T Y on either of its two
    systems, column blocks included, and keeps each column's largest-magnitude weights."""
    from crossrec_core.models import item_knn

    rng = np.random.default_rng(0)
    x = sp.random(n_users, 120, density=0.05, random_state=rng, format="csr", dtype=np.float32)
    x.data[:] = 1.0
    y = sp.random(n_users, 700, density=0.03, random_state=rng, format="csr", dtype=np.float32)
    y.data[:] = 1.0
    dense_x, l2 = x.toarray().astype(np.float64), 4.0
    exact = np.linalg.solve(dense_x.T @ dense_x + l2 * np.eye(120), dense_x.T @ y.toarray())
    assert item_knn.CG_COLUMN_BLOCK < 700  # several blocks
    solved = item_knn.ridge_weights(x, y, l2, keep=120).toarray()
    np.testing.assert_allclose(solved, exact, atol=1e-3 * np.abs(exact).max())
    kept = item_knn.ridge_weights(x, y, l2, keep=5).toarray()
    assert ((kept != 0).sum(0) <= 5).all()
    for column in range(700):
        n = min(5, int((np.abs(exact[:, column]) > 1e-3).sum()))
        assert (kept[:, column] != 0).sum() >= n
        largest = np.sort(np.abs(exact[:, column]))[::-1][:n]
        np.testing.assert_allclose(np.sort(np.abs(kept[:, column]))[::-1][:n], largest, atol=1e-3)
