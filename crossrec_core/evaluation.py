"""Offline evaluation of any :class:`~crossrec_core.models.base.Recommender` on the target domain.

Two protocols (DESIGN.md, Evaluation):

``full``
    every held-out user ranks ALL target items except the items they are known to have
    (target training history, and ``FeatureSet.known``, e.g. a test user's validation
    items, as serving does; ``exclude_known=False`` gives CDRIB's unmasked ranking);
    the top K (K = max(ks)), from the serving top-K code, is compared with their
    held-out items.
``sampled``
    every held-out (user, item) pair is ranked against ``n_negatives`` items drawn
    uniformly, without replacement, from the target items the user never interacted
    with (train or holdout), as in the CDRIB paper. Each pair is one row of the metric
    means, with a single relevant item. Coverage is not reported: the candidate lists
    are random.

Ties are broken deterministically: among equal scores the lower item key ranks first
(:func:`crossrec_core.ranking.top_k`), in both protocols. Users are scored in blocks of
``block_size`` with the model's score hook (``model.score``), so memory is
O(block_size x n_items), flat in the number of users. Metric definitions:
:mod:`crossrec_core.metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

import numpy as np
import scipy.sparse as sp
import torch

from crossrec_core.contracts import Segment
from crossrec_core.data import FeatureSet, entry_rows
from crossrec_core.errors import InputError
from crossrec_core.metrics import PAD, catalog_coverage, hit_rate_at_k, mrr_at_k, ndcg_at_k, recall_at_k
from crossrec_core.models.base import Recommender
from crossrec_core.ranking import top_k_for_users

log = logging.getLogger(__name__)

RANKING_METRICS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "hr": hit_rate_at_k, "mrr": mrr_at_k}
ALL_SEGMENTS = "all"
Protocol = Literal["full", "sampled"]
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)


def _device_of(model: Recommender, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _score_blocks(
    model: Recommender, target: str, users: np.ndarray, block_size: int, device: torch.device
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows of ``users``, scores [rows, n_target_items]) block by block, through the
    model's score hook; NaN is an error."""
    item_vectors = model.item_vectors(target)
    for start in range(0, len(users), block_size):
        rows = slice(start, start + block_size)
        keys = torch.as_tensor(users[rows], dtype=torch.long, device=device)
        scores = model.score(target, keys, item_vectors).float()
        if torch.isnan(scores.sum()):  # one cheap reduction; the exact per-row check only when it fires
            bad = users[rows][torch.isnan(scores).any(1).cpu().numpy()]
            raise ValueError(f"model {model.name!r} produced NaN scores for target users {bad[:5].tolist()} (keys)")
        yield rows, scores


def recommend_top_k(
    model: Recommender,
    features: FeatureSet,
    users: np.ndarray,
    k: int,
    block_size: int = 2048,
    device: str | torch.device | None = None,
    exclude_known: bool = True,
) -> np.ndarray:
    """Target item keys [len(users), k], best first, from the serving top-K
    (:func:`crossrec_core.ranking.top_k_for_users`): each user's target training items
    and, with ``exclude_known``, their known non-history items (``FeatureSet.known``)
    never ranked; ties to the lower key; PAD where a user has fewer than k items left."""
    items, _ = top_k_for_users(model, features, features.target, users, k, block_size, _device_of(model, device), exclude_known)
    return items


def _pair_keys(matrix: sp.csr_matrix) -> np.ndarray:
    """Sorted int64 keys user * n_items + item of the nonzeros of a CSR matrix."""
    matrix = matrix.tocsr(copy=True)
    matrix.sum_duplicates()
    return entry_rows(np.diff(matrix.indptr)) * matrix.shape[1] + matrix.indices


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    position = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[position] == keys


def _repeated_in_row(matrix: np.ndarray) -> np.ndarray:
    """True at all but one occurrence of each value of a row."""
    order = np.argsort(matrix, axis=1)
    ordered = np.take_along_axis(matrix, order, axis=1)
    repeated_sorted = np.zeros(matrix.shape, bool)
    repeated_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    repeated = np.zeros(matrix.shape, bool)
    np.put_along_axis(repeated, order, repeated_sorted, axis=1)
    return repeated


def sample_negatives(features: FeatureSet, pair_users: np.ndarray, n_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """[len(pair_users), n_negatives] distinct target item keys per row that the row's user
    never interacted with (target train or any holdout), uniformly at random.

    Vectorised: each row draws a few more candidates than it needs (uniform draws, or a
    random permutation of the whole catalogue when that is not much larger), keeps the
    first ``n_negatives`` that are unseen and not repeated, and only the rare rows left
    short draw again."""
    n_items = features.n_items(features.target)
    seen = features.train[features.target].astype(bool)
    for matrix in features.holdout.values():
        seen = seen + matrix.astype(bool)
    seen_keys = _pair_keys(seen)
    most_seen = int(np.diff(seen.indptr)[pair_users].max(initial=0))
    if n_negatives > n_items - most_seen:
        raise InputError(
            f"sampled protocol: {n_negatives} negatives per pair, but a user has only {n_items - most_seen} "
            f"unseen items of {n_items} in target domain {features.target!r}; lower n_negatives or use the full protocol"
        )
    # Expected losses: repeats (about n^2 / 2N) and seen items (n * seen / N); 25% slack.
    n_draws = int(1.25 * (n_negatives + n_negatives**2 / (2 * n_items) + n_negatives * most_seen / n_items)) + 32
    negatives = np.empty((len(pair_users), n_negatives), dtype=np.int64)
    pending = np.arange(len(pair_users))
    while pending.size:
        if n_draws >= n_items:
            candidates = rng.permuted(np.tile(np.arange(n_items, dtype=np.int64), (pending.size, 1)), axis=1)
            usable = np.ones(candidates.shape, bool)
        else:
            candidates = rng.integers(0, n_items, size=(pending.size, n_draws))
            usable = ~_repeated_in_row(candidates)
        if seen_keys.size:
            usable &= ~_in_sorted(pair_users[pending, None].astype(np.int64) * n_items + candidates, seen_keys)
        kept = usable & (np.cumsum(usable, axis=1) <= n_negatives)
        complete = kept.sum(1) == n_negatives
        negatives[pending[complete]] = candidates[complete][kept[complete]].reshape(-1, n_negatives)
        pending = pending[~complete]
    return negatives


def _sampled_ranking(model, features, users, holdout, n_negatives, k, block_size, device, seed) -> tuple[np.ndarray, sp.csr_matrix]:
    """One row per held-out (user, item) pair of ``holdout`` (rows: ``users``): the positive
    item at its rank among the sampled candidates when that rank is below k, PAD elsewhere;
    plus the one-item ground truth."""
    n_items = features.n_items(features.target)
    pair_row = entry_rows(np.diff(holdout.indptr))  # pairs are grouped by user (CSR)
    positives = holdout.indices.astype(np.int64)
    negatives = sample_negatives(features, users[pair_row], n_negatives, np.random.default_rng(seed))
    ranks = np.empty(len(pair_row), dtype=np.int64)
    for rows, scores in _score_blocks(model, features.target, users, block_size, device):
        pairs = slice(holdout.indptr[rows.start], holdout.indptr[min(rows.stop, len(users))])
        local_user = torch.as_tensor(pair_row[pairs] - rows.start, device=device)
        positive = torch.as_tensor(positives[pairs], device=device)
        negative = torch.as_tensor(negatives[pairs], device=device)
        positive_score = scores[local_user, positive][:, None]
        negative_score = scores[local_user[:, None], negative]
        # Same tie rule as the full protocol: an equal-scored negative with a lower key ranks first.
        ahead = (negative_score > positive_score) | ((negative_score == positive_score) & (negative < positive[:, None]))
        ranks[pairs] = ahead.sum(1).cpu().numpy()
    recommended = np.full((len(pair_row), k), PAD, dtype=np.int64)
    hit = ranks < k
    recommended[np.flatnonzero(hit), ranks[hit]] = positives[hit]
    truth = sp.csr_matrix((np.ones(len(pair_row), np.float32), (np.arange(len(pair_row)), positives)), shape=(len(pair_row), n_items))
    return recommended, truth


def _metrics(recommended: np.ndarray, truth: sp.csr_matrix, ks: Sequence[int], n_items: int, coverage: bool) -> dict[str, float]:
    result: dict[str, float] = {"users": int(truth.shape[0])}
    for k in ks:
        for name, metric in RANKING_METRICS.items():
            result[f"{name}@{k}"] = metric(recommended, truth, k)
        if coverage:
            result[f"coverage@{k}"] = catalog_coverage(recommended, n_items, k)
    return result


def evaluate_model(
    model: Recommender,
    features: FeatureSet,
    segments: Sequence[Segment] = (Segment.WARM, Segment.COLD_START),
    ks: Sequence[int] = (10, 20, 50),
    protocol: Protocol = "full",
    n_negatives: int = 999,
    block_size: int = 2048,
    seed: int = 0,
    device: str | torch.device | None = None,
    exclude_known: bool = True,
) -> dict[str, dict[str, float]]:
    """Target-domain metrics per segment and over all evaluated rows.

    Returns ``{"warm": {"ndcg@10": ..., "recall@10": ..., "hr@10": ..., "mrr@10": ...,
    "coverage@10": ..., "users": n}, "cold_start": {...}, "all": {...}}``. Segments
    without held-out users are omitted (an empty dict when none has any). ``users``
    counts the metric rows: users (full) or held-out pairs (sampled). ``seed`` drives
    the negative sampling only. ``exclude_known``: see the full protocol above."""
    if protocol not in ("full", "sampled"):
        raise InputError(f"protocol must be 'full' or 'sampled', got {protocol!r}")
    if not ks or min(ks) < 1:
        raise InputError(f"ks must be positive cut-offs, got {list(ks)}")
    started = time.perf_counter()
    device = _device_of(model, device)
    k = max(ks)
    n_items = features.n_items(features.target)
    per_segment: dict[str, tuple[np.ndarray, sp.csr_matrix]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for segment in segments:
                users = features.holdout_users(segment)
                if not users.size:
                    continue
                holdout = features.holdout[segment][users]
                if protocol == "full":
                    per_segment[Segment(segment).value] = (
                        recommend_top_k(model, features, users, k, block_size, device, exclude_known),
                        holdout,
                    )
                else:
                    per_segment[Segment(segment).value] = _sampled_ranking(
                        model, features, users, holdout, n_negatives, k, block_size, device, seed
                    )
    finally:
        model.train(was_training)
    if not per_segment:
        return {}
    coverage = protocol == "full"
    results = {name: _metrics(recs, truth, ks, n_items, coverage) for name, (recs, truth) in per_segment.items()}
    recs_all = np.concatenate([recs for recs, _ in per_segment.values()])
    truth_all = sp.vstack([truth for _, truth in per_segment.values()], format="csr")
    results[ALL_SEGMENTS] = _metrics(recs_all, truth_all, ks, n_items, coverage)
    log.debug("evaluated %s (%s protocol) on %d rows in %.2fs", model.name, protocol, truth_all.shape[0], time.perf_counter() - started)
    return results
