"""``item_knn_cross``: cross-domain item co-occurrence, no learning; the bar for learned models.

Score of target item j for user u::

    score(u, j) = sum over u's source items i of C[i, j] / pop(j) ** alpha

C[i, j] = number of users who, in training, interacted with source item i AND target item
j (so only users active in both domains count); pop(j) = number of target training users
of j; alpha = ``settings.knn_popularity_exponent`` (0: raw co-occurrence, 1: divided by
popularity). Interactions count once whatever their weight (multi-hot).

As a two-tower model: a user vector is the user's source multi-hot (a sparse row over
source items) and the target item vectors are the columns of C / pop ** alpha, both
sparse; :func:`~crossrec_core.models.base.dot_scores` multiplies them sparse x sparse.
One extra "fallback" dimension gives users whose source items co-occur with nothing
(no source history, or only items nobody else took to the target) the popularity
ranking (pop(j) / max pop) instead of an all-zero row. Remaining ties go to the lower
item key (crossrec_core.evaluation.top_k).

The fitted matrix is stored as three dense buffers (CSR indptr, indices, values of the
[n_source_items + 1, n_target_items] matrix), so that the state_dict loads with
``torch.load(weights_only=True)``; the histories that user vectors are built from are
not part of the state: :meth:`set_histories` gives them (the current night's features).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet
from crossrec_core.models.base import Recommender


def _csr_tensor(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A torch CSR tensor from valid CSR arrays (no invariant check)."""
    with warnings.catch_warnings():
        # torch flags every CSR tensor as "beta"; the operations used here (construct,
        # transpose, CSR @ CSR, to_dense) are the stable core of it.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(indptr, indices, values, size=size, check_invariants=False)


def _multi_hot(matrix: sp.csr_matrix) -> sp.csr_matrix:
    binary = matrix.astype(bool).astype(np.float32)
    binary.eliminate_zeros()
    return binary


class ItemKnnCross(Recommender):
    name = "item_knn_cross"
    learned = False
    fitted_buffers = ("weights_indptr", "weights_indices", "weights_values")

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__(features, settings)
        n_rows = features.n_items(self.source) + 1  # source items + the fallback row
        self.register_buffer("weights_indptr", torch.zeros(n_rows + 1, dtype=torch.long))
        self.register_buffer("weights_indices", torch.zeros(0, dtype=torch.long))
        self.register_buffer("weights_values", torch.zeros(0))
        self.register_buffer("n_target_items", torch.tensor(features.n_items(self.target)))
        self._histories: sp.csr_matrix | None = None

    @property
    def n_source_items(self) -> int:
        return len(self.weights_indptr) - 2

    def fit_fixed(self, features: FeatureSet) -> None:
        source, target = _multi_hot(features.train[self.source]), _multi_hot(features.train[self.target])
        cooccurrence = (source.T @ target).tocsr()  # [n_source_items, n_target_items], users in both domains
        popularity = np.asarray(target.sum(axis=0)).ravel()
        alpha = self.settings.knn_popularity_exponent
        scale = np.divide(1.0, popularity**alpha, out=np.zeros(popularity.size), where=popularity > 0)
        fallback = sp.csr_matrix(popularity[None, :] / max(popularity.max(initial=0), 1))
        weights = sp.vstack([cooccurrence.multiply(scale[None, :]), fallback], format="csr", dtype=np.float32)
        weights.eliminate_zeros()
        device = self.weights_values.device
        self.weights_indptr = torch.from_numpy(weights.indptr.astype(np.int64)).to(device)
        self.weights_indices = torch.from_numpy(weights.indices.astype(np.int64)).to(device)
        self.weights_values = torch.from_numpy(weights.data).to(device)
        self.n_target_items.fill_(target.shape[1])
        self.set_histories(features)

    def set_histories(self, features: FeatureSet) -> None:
        # Source items newer than the fitted matrix co-occur with nothing yet: dropped.
        history = _multi_hot(features.train[self.source])[:, : self.n_source_items]
        has_cooccurrence = (np.diff(self.weights_indptr.cpu().numpy())[: self.n_source_items] > 0).astype(np.float32)
        fallback = sp.csr_matrix((history @ has_cooccurrence == 0).astype(np.float32)[:, None])
        self._histories = sp.hstack([history, fallback], format="csr", dtype=np.float32)

    def _check_domain(self, domain: str) -> None:
        if domain != self.target:
            raise ValueError(f"item_knn_cross scores the target domain {self.target!r} only, not {domain!r}")

    def user_vectors(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        self._check_domain(domain)
        if self._histories is None:
            raise RuntimeError("item_knn_cross has no user histories: call fit_fixed or set_histories first")
        rows = self._histories[user_keys.cpu().numpy()]
        device = self.weights_values.device
        return _csr_tensor(
            torch.from_numpy(rows.indptr.astype(np.int64)).to(device),
            torch.from_numpy(rows.indices.astype(np.int64)).to(device),
            torch.from_numpy(rows.data).to(device),
            size=rows.shape,
        )

    def item_vectors(self, domain: str) -> torch.Tensor:
        """[n_target_items, n_source_items + 1] sparse CSC (the transpose of the stored CSR)."""
        self._check_domain(domain)
        size = (len(self.weights_indptr) - 1, int(self.n_target_items))
        return _csr_tensor(self.weights_indptr, self.weights_indices, self.weights_values, size).t()
