"""In-memory interaction data shared by training, evaluation and scoring.

User keys are global (one index across domains), item keys are per domain, exactly as
in features/ (contracts.py). Interactions of one domain and one split are a
``scipy.sparse.csr_matrix`` of shape (n_users, n_items(domain)) holding the decayed
weights, so that every consumer slices users and items with vectorised code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from crossrec_core.contracts import Segment


def entry_rows(lengths: np.ndarray) -> np.ndarray:
    """The row of every stored entry, from the rows' lengths (``np.diff(indptr)`` of a CSR
    matrix, or the lengths of item lists): rows 0, 0, 1, 2, 2, 2 for lengths 2, 1, 3."""
    return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)


@dataclass
class FeatureSet:
    """Everything a model sees for one run (one ds, or one offline dataset split).

    ``train[domain]``: training interactions per domain (n_users x n_items(domain)).
    ``holdout[segment]``: target-domain interactions held out for evaluation, per
    segment (``Segment.WARM``, ``Segment.COLD_START``); a user's held-out items are
    never in ``train[target]``. Cold-start holdout users have no target training rows.
    """

    source: str
    target: str
    user_ids: np.ndarray  # user_ids[user_key] -> external id (str)
    item_ids: dict[str, np.ndarray]  # item_ids[domain][item_key] -> external id (str)
    train: dict[str, sp.csr_matrix]
    holdout: dict[Segment, sp.csr_matrix] = field(default_factory=dict)
    # Target interactions known at evaluation time that are not history (e.g. a test
    # user's validation items): never recommended, never pooled into a user vector.
    known: sp.csr_matrix | None = None
    # Per domain, the same sparsity as ``train`` holding event times: histories keep a
    # user's most recent items (without it, the heaviest weights).
    recency: dict[str, sp.csr_matrix] = field(default_factory=dict)
    ds: str | None = None
    window: tuple[str, str] | None = None  # first and last day of data, for the model card

    @property
    def domains(self) -> tuple[str, str]:
        return (self.source, self.target)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def n_items(self, domain: str) -> int:
        return len(self.item_ids[domain])

    def users_with_history(self, domain: str) -> np.ndarray:
        """User keys with at least one training interaction in ``domain``."""
        return np.flatnonzero(np.diff(self.train[domain].indptr) > 0)

    def excluded(self, domain: str, user_keys: np.ndarray, known: bool = True) -> sp.csr_matrix:
        """Items never to rank for these users: their training items in ``domain`` and,
        for the target with ``known``, the known non-history ones (serving's rule)."""
        matrix = self.train[domain][user_keys]
        if known and domain == self.target and self.known is not None:
            matrix = matrix + self.known[user_keys]
        return matrix

    def holdout_users(self, segment: Segment) -> np.ndarray:
        matrix = self.holdout.get(segment)
        if matrix is None:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(np.diff(matrix.indptr) > 0)

    def segment_of(self, user_keys: np.ndarray, min_history: int = 1) -> np.ndarray:
        """Serving segment per user: warm (target history), cold_start (source only), fallback."""
        target_counts = np.diff(self.train[self.target].indptr)[user_keys]
        source_counts = np.diff(self.train[self.source].indptr)[user_keys]
        return np.where(
            target_counts >= min_history,
            Segment.WARM.value,
            np.where(source_counts >= min_history, Segment.COLD_START.value, Segment.FALLBACK.value),
        )
