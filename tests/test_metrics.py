"""Ranking metrics: Spark's published test vectors, Spark itself, and properties."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from crossrec_core.metrics import (
    PAD,
    catalog_coverage,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    relevance_matrix,
)

# org.apache.spark.mllib.evaluation.RankingMetricsSuite ("Ranking metrics: MAP, NDCG"):
# three users, the third without relevant items (it scores 0 and still counts).
SUITE_PREDICTIONS = np.array([[1, 6, 2, 7, 8, 3, 9, 10, 4, 5], [4, 1, 5, 6, 2, 7, 3, 8, 9, 10], [1, 2, 3, 4, 5] + [PAD] * 5])
SUITE_LABELS = [[1, 2, 3, 4, 5], [1, 2, 3], []]


@pytest.mark.parametrize("relevant", [SUITE_LABELS, relevance_matrix(SUITE_LABELS, 11)], ids=["lists", "csr"])
def test_spark_ranking_metrics_suite_values(relevant):
    eps = 1e-5
    assert ndcg_at_k(SUITE_PREDICTIONS, relevant, 3) == pytest.approx(1 / 3, abs=eps)
    assert ndcg_at_k(SUITE_PREDICTIONS, relevant, 5) == pytest.approx(0.328788, abs=eps)
    assert ndcg_at_k(SUITE_PREDICTIONS, relevant, 10) == pytest.approx(0.487913, abs=eps)
    assert ndcg_at_k(SUITE_PREDICTIONS, relevant, 15) == pytest.approx(ndcg_at_k(SUITE_PREDICTIONS, relevant, 10), abs=eps)
    expected_recall = {1: 1 / 15, 2: 8 / 45, 3: 11 / 45, 4: 11 / 45, 5: 16 / 45, 10: 2 / 3, 15: 2 / 3}
    for k, expected in expected_recall.items():
        assert recall_at_k(SUITE_PREDICTIONS, relevant, k) == pytest.approx(expected, abs=eps), k


def test_spark_few_predictions_suite_values():
    """SPARK-14886: fewer predictions than K (here padded) and an empty prediction list."""
    predictions = np.array([[1, 6, 2], [PAD, PAD, PAD]])
    labels = [[1, 2, 3, 4, 5], [1, 2, 3]]
    assert ndcg_at_k(predictions, labels, 1) == pytest.approx(0.5, abs=1e-5)
    assert ndcg_at_k(predictions, labels, 2) == pytest.approx(0.30657, abs=1e-5)


def test_hit_rate_mrr_and_coverage_on_the_suite_rankings():
    # user 1 hits at rank 1; user 2's first relevant item (1) is at rank 2; user 3 has none.
    assert hit_rate_at_k(SUITE_PREDICTIONS, SUITE_LABELS, 1) == pytest.approx(1 / 3)
    assert hit_rate_at_k(SUITE_PREDICTIONS, SUITE_LABELS, 2) == pytest.approx(2 / 3)
    assert mrr_at_k(SUITE_PREDICTIONS, SUITE_LABELS, 1) == pytest.approx(1 / 3)
    assert mrr_at_k(SUITE_PREDICTIONS, SUITE_LABELS, 10) == pytest.approx((1 + 1 / 2) / 3)
    # top 1 over the three users: items {1, 4}; top 2: {1, 6, 4, 2}; PAD never counts.
    assert catalog_coverage(SUITE_PREDICTIONS, 20, 1) == pytest.approx(2 / 20)
    assert catalog_coverage(SUITE_PREDICTIONS, 20, 2) == pytest.approx(4 / 20)
    assert catalog_coverage(SUITE_PREDICTIONS, 11, 10) == pytest.approx(10 / 11)


def test_metrics_agree_with_spark_ranking_evaluator_on_random_data(spark):
    """pyspark.ml's RankingEvaluator runs Spark's RankingMetrics on a DataFrame (JVM only)."""
    from pyspark.ml.evaluation import RankingEvaluator

    rng = np.random.default_rng(7)
    n_users, n_items, depth = 40, 60, 12
    predictions = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :depth]
    labels = [rng.choice(n_items, size=rng.integers(0, 9), replace=False).tolist() for _ in range(n_users)]
    frame = spark.createDataFrame(
        [(p.astype(float).tolist(), [float(i) for i in lab]) for p, lab in zip(predictions, labels, strict=True)],
        "prediction array<double>, label array<double>",
    ).cache()
    # Label sets have 0..8 items: k = 5 cuts some of them (IDCG over k), k = 12 none (IDCG over |labels|).
    for ours, spark_name, k in ((ndcg_at_k, "ndcgAtK", 5), (ndcg_at_k, "ndcgAtK", 12), (recall_at_k, "recallAtK", 5)):
        expected = RankingEvaluator(metricName=spark_name, k=k).evaluate(frame)
        assert ours(predictions, labels, k) == pytest.approx(expected, abs=1e-9), (spark_name, k)


def test_bad_recommendation_rows_are_named():
    with pytest.raises(ValueError, match="row 1 repeats an item"):
        ndcg_at_k(np.array([[0, 1], [2, 2]]), [[0], [2]], 2)
    with pytest.raises(ValueError, match=r"recommended\[0, 1\] = 9 is not an item key in \[0, 5\)"):
        recall_at_k(np.array([[0, 9]]), relevance_matrix([[0]], 5), 2)
    with pytest.raises(ValueError, match="3 rows but the ground truth has 2"):
        hit_rate_at_k(np.zeros((3, 2), dtype=int), relevance_matrix([[0], [1]], 5), 2)


@st.composite
def ranking_cases(draw):
    """(recommended [users, K] distinct keys per row, relevant lists, n_items, k)."""
    n_items = draw(st.integers(3, 25))
    n_users = draw(st.integers(1, 6))
    depth = draw(st.integers(1, n_items))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    recommended = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :depth]
    relevant = [rng.choice(n_items, size=rng.integers(1, n_items + 1), replace=False).tolist() for _ in range(n_users)]
    return recommended, relevant, n_items, draw(st.integers(1, depth + 2))


METRICS = (ndcg_at_k, recall_at_k, hit_rate_at_k, mrr_at_k)


@settings(max_examples=60, deadline=None)
@given(ranking_cases())
def test_every_metric_lies_in_unit_interval(case):
    recommended, relevant, n_items, k = case
    for metric in METRICS:
        assert 0.0 <= metric(recommended, relevant, k) <= 1.0
    assert 0.0 <= catalog_coverage(recommended, n_items, k) <= 1.0


@settings(max_examples=60, deadline=None)
@given(ranking_cases())
def test_perfect_ranking_scores_one(case):
    _, relevant, n_items, k = case
    # Each user's relevant items first, then the others: the ideal ranking.
    perfect = np.array([rel + [i for i in range(n_items) if i not in rel] for rel in relevant])
    assert ndcg_at_k(perfect, relevant, k) == pytest.approx(1.0)
    assert hit_rate_at_k(perfect, relevant, k) == 1.0
    assert mrr_at_k(perfect, relevant, k) == 1.0
    expected_recall = np.mean([min(k, len(rel)) / len(rel) for rel in relevant])
    assert recall_at_k(perfect, relevant, k) == pytest.approx(expected_recall)


@settings(max_examples=80, deadline=None)
@given(ranking_cases(), st.data())
def test_moving_a_relevant_item_up_never_lowers_ndcg_or_mrr(case, data):
    recommended, relevant, _, k = case
    user = data.draw(st.integers(0, len(recommended) - 1))
    row = recommended[user]
    relevant_positions = [p for p in range(1, len(row)) if row[p] in relevant[user]]
    if not relevant_positions:
        return  # nothing to move in this ranking
    position = data.draw(st.sampled_from(relevant_positions))
    target = data.draw(st.integers(0, position - 1))
    moved = recommended.copy()
    moved[user] = np.insert(np.delete(row, position), target, row[position])
    assert ndcg_at_k(moved, relevant, k) >= ndcg_at_k(recommended, relevant, k) - 1e-12
    assert mrr_at_k(moved, relevant, k) >= mrr_at_k(recommended, relevant, k) - 1e-12


def test_explicit_zeros_and_duplicate_entries_in_ground_truth():
    """A stored 0 is not relevant; a (user, item) stored twice counts once."""
    truth = sp.csr_matrix((np.array([0.0, 1.0, 1.0]), (np.array([0, 0, 0]), np.array([1, 2, 2]))), shape=(1, 4))
    assert recall_at_k(np.array([[2, 1]]), truth, 2) == 1.0
    assert ndcg_at_k(np.array([[1, 2]]), truth, 2) == pytest.approx(1 / np.log2(3))
