"""Top-K ranking metrics, one function each, vectorised over users.

Every function takes the same explicit arguments:

``recommended``
    int array [n_users, K_max] of item keys, best first. ``-1`` pads rows that hold
    fewer than K_max recommendations (a user with few unseen items). A row never
    repeats an item (checked).
``relevant``
    the ground truth: a scipy sparse matrix [n_users, n_items] whose row ``u``
    holds user ``u``'s relevant items (any nonzero value counts as relevant: binary
    relevance), or a list of item-key lists (see :func:`relevance_matrix`).
``k``
    the cut-off; only the first ``k`` columns of ``recommended`` count.

Each returns the mean over the rows of ``recommended``. The definitions follow Spark's
``RankingMetrics`` (pyspark.mllib / org.apache.spark.mllib.evaluation), and the tests
check them against its test-suite values and against Spark itself:

- Recall@K = |hits in top K| / |relevant| (Spark ``recallAt``; not min(K, |relevant|)).
- NDCG@K: binary gains, DCG = sum over hit ranks r (1-based) of 1 / log2(r + 1),
  IDCG = the same sum over ranks 1 .. min(K, |relevant|) (Spark ``ndcgAt``).
- HR@K = 1 when at least one relevant item is in the top K (hit rate).
- MRR@K = 1 / rank of the first relevant item in the top K, 0 when none is.

A row with no relevant items scores 0 in every metric and still counts in the mean,
as in Spark (the evaluator only passes users that have held-out items).
Catalogue coverage is a property of the recommendation lists alone:
|distinct items in everyone's top K| / n_items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from crossrec_core.data import entry_rows

PAD = -1  # marks an empty slot in a row of ``recommended``


def relevance_matrix(item_lists: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    """Ground truth as a binary CSR [len(item_lists), n_items] from lists of item keys."""
    lengths = np.fromiter((len(items) for items in item_lists), dtype=np.int64, count=len(item_lists))
    columns = np.concatenate([np.asarray(items, dtype=np.int64) for items in item_lists]) if lengths.sum() else np.empty(0, np.int64)
    rows = entry_rows(lengths)
    matrix = sp.csr_matrix((np.ones(columns.size, np.float32), (rows, columns)), shape=(len(item_lists), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _as_relevance(relevant: sp.spmatrix | sp.sparray | Sequence[Sequence[int]], min_items: int) -> sp.csr_matrix:
    """CSR ground truth with sorted, unique, nonzero entries; lists get at least
    ``min_items`` columns (enough for every recommended key)."""
    if sp.issparse(relevant):
        matrix = sp.csr_matrix(relevant, copy=True)
        matrix.eliminate_zeros()
        matrix.sum_duplicates()  # also sorts the column indices
        return matrix
    n_items = max(min_items, 1 + max((max(items) for items in relevant if len(items)), default=-1))
    return relevance_matrix(relevant, n_items)


def hits_at_k(recommended: np.ndarray, relevant, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(hits [n_users, k] bool: is the item at each rank relevant, n_relevant [n_users]).

    The building block of every metric below; exposed so that callers computing
    several metrics at several cut-offs can share it."""
    recommended = np.asarray(recommended)
    if recommended.ndim != 2 or not np.issubdtype(recommended.dtype, np.integer):
        raise ValueError(f"recommended must be a 2-d int array [n_users, K], got {recommended.dtype} of shape {recommended.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = recommended[:, :k].astype(np.int64)
    truth = _as_relevance(relevant, int(top.max(initial=PAD)) + 1)
    n_users, n_items = truth.shape
    if n_users != top.shape[0]:
        raise ValueError(f"recommended has {top.shape[0]} rows but the ground truth has {n_users}")
    if top.size and (top.min() < PAD or top.max() >= n_items):
        bad = np.argwhere((top < PAD) | (top >= n_items))[0]
        raise ValueError(f"recommended[{bad[0]}, {bad[1]}] = {top[tuple(bad)]} is not an item key in [0, {n_items}) or {PAD}")
    ordered = np.sort(top, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD)
    if repeated.any():
        row = int(np.argwhere(repeated)[0, 0])
        raise ValueError(f"recommended row {row} repeats an item: {recommended[row, :k].tolist()}")
    # A (row, item) pair as one int64: relevant pairs are sorted (CSR, sorted indices),
    # so membership of every recommended pair is one searchsorted.
    truth_keys = entry_rows(np.diff(truth.indptr)) * n_items + truth.indices
    rec_keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + top
    if not truth_keys.size:
        return np.zeros(top.shape, bool), np.diff(truth.indptr)
    position = np.minimum(np.searchsorted(truth_keys, rec_keys), truth_keys.size - 1)
    # PAD's pair key aliases the previous row's last item: mask it explicitly.
    hits = (top != PAD) & (truth_keys[position] == rec_keys)
    return hits, np.diff(truth.indptr)


def _mean(per_user: np.ndarray) -> float:
    return float(per_user.mean()) if per_user.size else 0.0


def recall_at_k(recommended: np.ndarray, relevant, k: int) -> float:
    """Mean over users of |relevant items in the top k| / |relevant items| (Spark ``recallAt``)."""
    hits, n_relevant = hits_at_k(recommended, relevant, k)
    return _mean(np.divide(hits.sum(1), n_relevant, out=np.zeros(len(hits)), where=n_relevant > 0))


def ndcg_at_k(recommended: np.ndarray, relevant, k: int) -> float:
    """Mean over users of DCG@k / IDCG@k with binary gains and log2 discounts (Spark ``ndcgAt``)."""
    hits, n_relevant = hits_at_k(recommended, relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits @ discounts[: hits.shape[1]]
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(n_relevant, k)]
    return _mean(np.divide(dcg, ideal, out=np.zeros(len(hits)), where=ideal > 0))


def hit_rate_at_k(recommended: np.ndarray, relevant, k: int) -> float:
    """Share of users with at least one relevant item in their top k."""
    hits, _ = hits_at_k(recommended, relevant, k)
    return _mean(np.asarray(hits.any(1), dtype=np.float64))


def mrr_at_k(recommended: np.ndarray, relevant, k: int) -> float:
    """Mean over users of 1 / (rank of the first relevant item in the top k), 0 without one."""
    hits, _ = hits_at_k(recommended, relevant, k)
    first = hits.argmax(1)
    return _mean(np.where(hits.any(1), 1.0 / (first + 1), 0.0))


def catalog_coverage(recommended: np.ndarray, n_items: int, k: int) -> float:
    """Share of the ``n_items`` catalogue that appears in at least one user's top k."""
    top = np.asarray(recommended)[:, :k]
    return np.unique(top[top != PAD]).size / n_items if n_items else 0.0
