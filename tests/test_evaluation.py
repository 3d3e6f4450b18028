"""evaluate_model against brute-force references, on small random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from crossrec_core.config import load_settings
from crossrec_core.contracts import Segment
from crossrec_core.data import FeatureSet
from crossrec_core.errors import InputError, MissingDataError
from crossrec_core.evaluation import evaluate_model, recommend_top_k, sample_negatives
from crossrec_core.metrics import PAD
from crossrec_core.models.fixed import FixedVectors
from crossrec_core.ranking import top_k

N_USERS, N_ITEMS, N_SOURCE_ITEMS = 37, 23, 11


def random_features(seed: int, n_items: int = N_ITEMS) -> FeatureSet:
    """Users 0..9 cold-start (no target train rows), the others warm; holdout disjoint from train."""
    rng = np.random.default_rng(seed)
    interacted = rng.random((N_USERS, n_items)) < 0.3
    held_out = interacted & (rng.random((N_USERS, n_items)) < 0.4)
    cold = np.arange(N_USERS) < 10
    held_out[cold] = interacted[cold]
    train = interacted & ~held_out

    def csr(mask):
        return sp.csr_matrix(mask.astype(np.float32))

    return FeatureSet(
        source="src",
        target="tgt",
        user_ids=np.arange(N_USERS).astype(str),
        item_ids={"src": np.arange(N_SOURCE_ITEMS).astype(str), "tgt": np.arange(n_items).astype(str)},
        train={"src": csr(rng.random((N_USERS, N_SOURCE_ITEMS)) < 0.3), "tgt": csr(train)},
        holdout={Segment.WARM: csr(held_out & ~cold[:, None]), Segment.COLD_START: csr(held_out & cold[:, None])},
    )


def small_integer_vectors(features: FeatureSet, seed: int, dim: int = 2) -> FixedVectors:
    """Given user and item vectors; small integers, so that equal scores (ties) are common."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 3, (features.n_users, dim)), rng.integers(0, 3, (features.n_items("tgt"), dim))
    return FixedVectors(features, load_settings().model, users, items)


def brute_force_ranking(scores: np.ndarray, train: np.ndarray, k: int) -> list[list[int]]:
    """Per user: unseen items by score descending, then item key ascending."""
    ranking = []
    for u in range(len(scores)):
        unseen = [i for i in range(scores.shape[1]) if not train[u, i]]
        ranking.append(sorted(unseen, key=lambda i: (-scores[u, i], i))[:k])
    return ranking


def reference_metrics(ranking: list[list[int]], relevant: list[set[int]], k: int) -> dict[str, float]:
    ndcg, recall, hr, mrr = [], [], [], []
    for ranked, rel in zip(ranking, relevant, strict=True):
        hits = [item in rel for item in ranked[:k]]
        dcg = sum(1 / math.log2(r + 2) for r, hit in enumerate(hits) if hit)
        ndcg.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(k, len(rel)))))
        recall.append(sum(hits) / len(rel))
        hr.append(float(any(hits)))
        mrr.append(1 / (hits.index(True) + 1) if any(hits) else 0.0)
    return {f"ndcg@{k}": np.mean(ndcg), f"recall@{k}": np.mean(recall), f"hr@{k}": np.mean(hr), f"mrr@{k}": np.mean(mrr)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_protocol_block_wise_equals_brute_force(seed):
    features = random_features(seed)
    model = small_integer_vectors(features, seed)
    scores = (model.users @ model.items.T).numpy()
    train = features.train["tgt"].toarray() > 0
    expected: dict[str, dict[str, float]] = {}
    for segment in (Segment.WARM, Segment.COLD_START):
        users = features.holdout_users(segment)
        truth = features.holdout[segment].toarray() > 0
        ranking = brute_force_ranking(scores[users], train[users], 10)
        expected[segment.value] = reference_metrics(ranking, [set(np.flatnonzero(truth[u])) for u in users], 10)
        expected[segment.value]["coverage@10"] = len({i for r in ranking for i in r}) / N_ITEMS
    for block_size in (1, 4, 1000):
        result = evaluate_model(model, features, ks=(10,), block_size=block_size)
        for segment, metrics in expected.items():
            for name, value in metrics.items():
                assert result[segment][name] == pytest.approx(value, abs=1e-12), (block_size, segment, name)
    n_warm, n_cold = (features.holdout_users(s).size for s in (Segment.WARM, Segment.COLD_START))
    assert result["all"]["users"] == n_warm + n_cold
    weighted = (result["warm"]["ndcg@10"] * n_warm + result["cold_start"]["ndcg@10"] * n_cold) / (n_warm + n_cold)
    assert result["all"]["ndcg@10"] == pytest.approx(weighted)


def test_recommendations_exclude_training_items_and_pad_when_none_is_left():
    features = random_features(3)
    train = features.train["tgt"].toarray() > 0
    train[5] = True  # user 5 has seen everything
    features.train["tgt"] = sp.csr_matrix(train.astype(np.float32))
    model = small_integer_vectors(features, 3)
    with torch.no_grad():
        recommended = recommend_top_k(model, features, np.arange(N_USERS), k=N_ITEMS, block_size=5)
    for user, row in enumerate(recommended):
        items = row[row != PAD]
        assert not train[user, items].any()
        assert len(items) == N_ITEMS - train[user].sum()  # every unseen item, once
    assert (recommended[5] == PAD).all()


def test_top_k_breaks_ties_by_lower_item_key():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    _, items = top_k(scores, 2)
    assert items.tolist() == [[1, 2], [0, 1], [0, 1]]
    values, items = top_k(scores, 4)
    assert items.tolist() == [[1, 2, 4, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert values[0].tolist() == [3.0, 3.0, 3.0, 2.0]
    _, items = top_k(torch.arange(6.0).flip(0).repeat(2, 1), 9)  # k above the item count: all items
    assert items.tolist() == [[0, 1, 2, 3, 4, 5]] * 2


@pytest.mark.parametrize("n_items", [N_ITEMS, 3000], ids=["permuted-catalogue", "oversampled-draws"])
def test_sampled_negatives_are_distinct_unseen_items_and_seeded(n_items):
    features = random_features(4, n_items)
    seen = (features.train["tgt"] + features.holdout[Segment.WARM] + features.holdout[Segment.COLD_START]).toarray() > 0
    pair_users = np.repeat(np.arange(N_USERS), 3)
    most_unseen = n_items - int(seen.sum(1).max())
    n_negatives = min(most_unseen, 200)  # small catalogue: all the busiest user allows
    negatives = sample_negatives(features, pair_users, n_negatives, np.random.default_rng(0))
    assert negatives.shape == (len(pair_users), n_negatives)
    assert not seen[pair_users[:, None], negatives].any()
    assert all(len(set(row)) == n_negatives for row in negatives.tolist())
    again = sample_negatives(features, pair_users, n_negatives, np.random.default_rng(0))
    assert (negatives == again).all()
    with pytest.raises(InputError, match=rf"{most_unseen + 1} negatives per pair, but a user has only {most_unseen} unseen items"):
        sample_negatives(features, pair_users, most_unseen + 1, np.random.default_rng(0))


def test_sampled_protocol_equals_brute_force_ranks():
    features = random_features(5)
    model = small_integer_vectors(features, 5)
    scores = (model.users @ model.items.T).numpy()
    n_negatives, k, seed = 6, 3, 11
    result = evaluate_model(
        model, features, segments=(Segment.COLD_START,), ks=(k,), protocol="sampled", n_negatives=n_negatives, seed=seed
    )
    holdout = features.holdout[Segment.COLD_START][features.holdout_users(Segment.COLD_START)]
    users = features.holdout_users(Segment.COLD_START)
    pair_users = users[np.repeat(np.arange(len(users)), np.diff(holdout.indptr))]
    negatives = sample_negatives(features, pair_users, n_negatives, np.random.default_rng(seed))
    ranking = [
        sorted([item, *negs], key=lambda i, u=user: (-scores[u, i], i))
        for user, item, negs in zip(pair_users, holdout.indices, negatives.tolist(), strict=True)
    ]
    expected = reference_metrics(ranking, [{item} for item in holdout.indices], k)
    assert set(result) == {"cold_start", "all"}  # only the requested segment, plus all
    assert result["cold_start"]["users"] == len(pair_users)
    assert "coverage@3" not in result["cold_start"]
    for name, value in expected.items():
        assert result["cold_start"][name] == pytest.approx(value, abs=1e-12), name


def test_empty_segments_are_omitted_and_training_mode_is_restored():
    features = random_features(6)
    features.holdout[Segment.WARM] = sp.csr_matrix((N_USERS, N_ITEMS), dtype=np.float32)
    model = small_integer_vectors(features, 6).train()
    assert set(evaluate_model(model, features, ks=(5,))) == {"cold_start", "all"}
    assert model.training
    del features.holdout[Segment.COLD_START]
    assert evaluate_model(model, features, ks=(5,)) == {}


def test_nan_scores_name_the_users():
    features = random_features(7)
    model = small_integer_vectors(features, 7)
    model.users[features.holdout_users(Segment.COLD_START)[0]] = float("nan")
    with pytest.raises(ValueError, match="produced NaN scores"):
        evaluate_model(model, features, ks=(5,))
    with pytest.raises(InputError, match="protocol must be 'full' or 'sampled'"):
        evaluate_model(model, features, protocol="pairs")


# ---- offline datasets and `crossrec eval` ---------------------------------------------


def write_pairs(directory, features: FeatureSet) -> None:
    """Write a FeatureSet's source train, target train and cold-start holdout in the CDRIB
    layout: the cold-start users split in two halves, valid.txt and test.txt."""
    cold = features.holdout[Segment.COLD_START].tocoo()
    first_half = cold.row < np.median(np.unique(cold.row))
    files = {
        (f"{features.source}_{features.target}", "train.txt"): features.train[features.source].tocoo(),
        (f"{features.target}_{features.source}", "train.txt"): features.train[features.target].tocoo(),
        (f"{features.target}_{features.source}", "valid.txt"): (cold.row[first_half], cold.col[first_half]),
        (f"{features.target}_{features.source}", "test.txt"): (cold.row[~first_half], cold.col[~first_half]),
    }
    for (folder, name), pairs in files.items():
        rows, cols = (pairs.row, pairs.col) if sp.issparse(pairs) else pairs
        (directory / folder).mkdir(parents=True, exist_ok=True)
        np.savetxt(directory / folder / name, np.column_stack([rows, cols]), fmt="%d", delimiter="\t")


def test_load_pairs_builds_valid_and_test_views(tiny_features, tmp_path):
    from crossrec_core.datasets import load_pairs

    write_pairs(tmp_path, tiny_features)
    splits = load_pairs(tmp_path, "src", "tgt", common_users=tiny_features.n_users)  # the fixture's users are one index
    cold = tiny_features.holdout[Segment.COLD_START]
    valid_users, test_users = (s.holdout_users(Segment.COLD_START) for s in (splits.valid, splits.test))
    # User ids are the integers of the files; sorted ids -> keys, here the identity.
    assert splits.test.user_ids.tolist() == [str(u) for u in range(tiny_features.n_users)]
    assert np.union1d(valid_users, test_users).tolist() == tiny_features.holdout_users(Segment.COLD_START).tolist()
    assert not np.intersect1d(valid_users, test_users).size
    assert (splits.test.holdout[Segment.COLD_START][test_users] != (cold[test_users] > 0)).nnz == 0  # implicit: 1
    for view in (splits.valid, splits.test):
        assert (view.train["tgt"] != (tiny_features.train["tgt"] > 0)).nnz == 0
        assert (view.train["src"] != tiny_features.train["src"]).nnz == 0


def test_load_pairs_rejects_warm_users_in_the_cold_start_split_and_bad_rows(tiny_features, tmp_path):
    from crossrec_core.datasets import load_pairs

    write_pairs(tmp_path, tiny_features)
    test_file = tmp_path / "tgt_src" / "test.txt"
    original = test_file.read_text()
    test_file.write_text(original + "50\t1\n")  # user 50 is warm: has target training rows
    with pytest.raises(InputError, match=r"tgt_src/test.txt: 1 users have target training rows.*e.g. user 50"):
        load_pairs(tmp_path, "src", "tgt", common_users=120)
    test_file.write_text(original + "7\tseven\n")
    with pytest.raises(InputError, match=r"tgt_src/test.txt: .*seven"):
        load_pairs(tmp_path, "src", "tgt")
    with pytest.raises(MissingDataError, match=r"nope_tgt/train.txt does not exist"):
        load_pairs(tmp_path, "nope", "tgt")


def test_load_recbole_genre_domains_and_splits(tmp_path):
    from crossrec_core.datasets import load_recbole

    movies = {"m_src1": "Comedy", "m_src2": "Drama Romance", "m_both": "Comedy Sci-Fi", "m_none": "Western"}
    movies |= {f"m_tgt{i}": "Sci-Fi" if i % 2 else "Action Thriller" for i in range(8)}
    items = "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n" + "".join(
        f"{m}\t{m} title\t1999\t{g}\r\n" for m, g in movies.items()
    )
    (tmp_path / "ml-1m.item").write_text(items)
    lines = []
    for u in range(10):  # every user: 1 source rating, 2 of dropped movies, 5 target ratings at times 100..104
        lines += [f"1m_{u}\tm_src{1 + (u % 2)}\t4\t{50 + u}", f"1m_{u}\tm_both\t3\t60", f"1m_{u}\tm_none\t3\t61"]
        lines += [f"1m_{u}\tm_tgt{(u + t) % 8}\t5\t{100 + t}" for t in range(5)]
    (tmp_path / "ml-1m.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n" + "\r\n".join(lines) + "\r\n")
    splits = load_recbole(tmp_path, ["Comedy", "Romance", "Drama"], ["Sci-Fi", "Action", "Thriller"], cold_start_fraction=0.4, seed=3)
    test, valid = splits.test, splits.valid
    assert test.item_ids["source"].tolist() == ["m_src1", "m_src2"]  # m_both and m_none dropped
    assert test.item_ids["target"].tolist() == [f"m_tgt{i}" for i in range(8)]
    assert test.train["source"].nnz == 10
    cold_valid, cold_test = valid.holdout_users(Segment.COLD_START), test.holdout_users(Segment.COLD_START)
    assert len(cold_valid) == len(cold_test) == 2 and not np.intersect1d(cold_valid, cold_test).size
    cold = np.union1d(cold_valid, cold_test)
    for view in (valid, test):
        assert view.train["target"][cold].nnz == 0  # whole target history hidden
    warm = np.setdiff1d(np.arange(10), cold)
    assert test.holdout_users(Segment.WARM).tolist() == valid.holdout_users(Segment.WARM).tolist() == warm.tolist()
    user_of = {u: k for k, u in enumerate(test.user_ids)}
    for u in warm:
        key = user_of[f"1m_{u}"]
        # round(0.2 * 5) = 1: the latest target rating (t=4) is test, the one before (t=3) validation.
        assert test.holdout[Segment.WARM][key].indices.tolist() == [(u + 4) % 8]
        assert valid.holdout[Segment.WARM][key].indices.tolist() == [(u + 3) % 8]
        assert sorted(valid.train["target"][key].indices) == sorted((u + t) % 8 for t in range(3))
    assert (test.train["target"] != valid.train["target"] + valid.holdout[Segment.WARM]).nnz == 0
    with pytest.raises(InputError, match="no movie carries a target genre; genres in the file"):
        load_recbole(tmp_path, ["Comedy"], ["Horror"])


def test_crossrec_eval_pairs_writes_results_table_and_chart(tiny_features, tmp_path):
    import json

    from typer.testing import CliRunner

    from crossrec_core.cli import app
    from crossrec_core.datasets import load_pairs
    from crossrec_core.models.item_knn import ItemKnnCross

    write_pairs(tmp_path / "data", tiny_features)
    out = tmp_path / "out"
    args = [
        "eval",
        "pairs",
        str(tmp_path / "data"),
        "--source",
        "src",
        "--target",
        "tgt",
        "--models",
        "popularity,item_knn_cross",
        "--seeds",
        "2",
        "--negatives",
        "5",
        "--ks",
        "5,10",
        "--out",
        str(out),
        "--split",
        "cdrib",
        "--common-users",
        str(tiny_features.n_users),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "cdrib" / "results.json").read_text())
    records = {(r["model"], r["protocol"], r["segment"], r["metric"]): r for r in payload["results"]}
    assert {(m, p) for m, p, _, _ in records} == {(m, p) for m in ("popularity", "item_knn_cross") for p in ("full", "sampled")}
    assert all(len(r["values"]) == 2 for r in records.values())
    # The runner fits on the validation view and reports the test view.
    splits = load_pairs(tmp_path / "data", "src", "tgt", common_users=tiny_features.n_users)
    model = ItemKnnCross(splits.valid, load_settings().model)
    model.fit_fixed(splits.valid)
    model.set_histories(splits.test)
    expected = evaluate_model(model, splits.test, ks=(5, 10))["cold_start"]["ndcg@10"]
    assert records[("item_knn_cross", "full", "cold_start", "ndcg@10")]["mean"] == pytest.approx(expected)
    assert records[("item_knn_cross", "full", "cold_start", "ndcg@10")]["std"] == 0.0
    table = (out / "cdrib" / "results.md").read_text()
    assert "## full protocol, cold_start" in table and "## sampled protocol, cold_start" in table
    assert "| item_knn_cross | " in table and "crossrec eval pairs" in table
    assert (out / "cdrib" / "ndcg_at_10.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
