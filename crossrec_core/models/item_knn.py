"""Item-to-item models from source history to target items: ``item_knn_cross`` and ``ease_cross``.

Both score target item j for user u as::

    score(u, j) = sum over u's source items i of W[i, j]

with a fixed [n_source_items, n_target_items] sparse weight matrix W, and differ in W:

``item_knn_cross`` (no learning; the bar for learned models)
    W[i, j] = C[i, j] / pop(j) ** alpha: C[i, j] = number of users who, in training,
    interacted with source item i AND target item j (so only users active in both
    domains count); pop(j) = number of target training users of j; alpha =
    ``settings.knn_popularity_exponent`` (0: raw co-occurrence, 1: divided by popularity).
``ease_cross`` (a cross-domain linear model, EASE/SLIM style)
    W = argmin ||Y - X W||^2 + lambda ||W||^2 = (X^T X + lambda I)^-1 X^T Y over the users
    active in both domains (X: their source multi-hot, Y: their target multi-hot), solved
    by conjugate gradients in blocks of target columns (no dense inverse, memory bounded
    by the block), then the ``linear_keep`` largest-magnitude weights of each target item
    kept. lambda: each of ``settings.linear_l2`` is fitted and the best on target
    validation kept (:meth:`tuning_grid`, the trainer's choice, never the test split).

Interactions count once whatever their weight (multi-hot). As a two-tower model: a user
vector is the user's source multi-hot (a sparse row over source items) and the target
item vectors are the columns of W, both sparse;
:func:`~crossrec_core.models.base.dot_scores` multiplies them sparse x sparse. One
extra "fallback" dimension gives users whose source items reach nothing (no source
history, or only items with no weight) the popularity ranking (pop(j) / max pop)
instead of an all-zero row. Remaining ties go to the lower item key
(crossrec_core.ranking.top_k).

:meth:`ItemToItemModel.explain` names, for a recommended item j, the user's source items
i with the largest positive W[i, j] (the ``because`` column).

The fitted matrix is stored as three dense buffers (CSR indptr, indices, values of the
[n_source_items + 1, n_target_items] matrix), so that the state_dict loads with
``torch.load(weights_only=True)``; the histories that user vectors are built from are
not part of the state: :meth:`set_histories` gives them (the current night's features).
"""

from __future__ import annotations

import logging
import time
import warnings
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from crossrec_core.batches import tensor_entry_rows
from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet, entry_rows
from crossrec_core.models.base import Memo, Recommender

log = logging.getLogger(__name__)

CG_MAX_ITERATIONS = 50
CG_TOLERANCE = 1e-3  # relative residual of every column: ranks need no more
CG_COLUMN_BLOCK = 64  # target columns solved at once: a narrow block keeps the products in cache and stops with its own slowest column
EXPLAIN_LOOKUPS = 4_000_000  # (user, history item, recommended item) lookups per chunk


def csr_tensor(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A torch CSR tensor from valid CSR arrays (no invariant check)."""
    with warnings.catch_warnings():
        # torch flags every CSR tensor as "beta"; the operations used here (construct,
        # transpose, CSR @ CSR, to_dense) are the stable core of it.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(indptr, indices, values, size=size, check_invariants=False)


def scipy_csr_tensor(matrix: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A torch CSR tensor of a scipy CSR matrix (float32 values)."""
    return csr_tensor(
        torch.from_numpy(matrix.indptr.astype(np.int64)).to(device),
        torch.from_numpy(matrix.indices.astype(np.int64)).to(device),
        torch.from_numpy(matrix.data.astype(np.float32)).to(device),
        size=matrix.shape,
    )


def multi_hot(matrix: sp.csr_matrix) -> sp.csr_matrix:
    binary = matrix.astype(bool).astype(np.float32)
    binary.eliminate_zeros()
    return binary


def padded_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The column keys of ``rows`` of a CSR matrix as [len(rows), longest] keys and a
    presence mask (padding: key 0, absent)."""
    block = matrix[rows]
    lengths = np.diff(block.indptr)
    width = max(int(lengths.max(initial=0)), 1)
    position = np.arange(block.nnz) - np.repeat(block.indptr[:-1], lengths)
    owner = entry_rows(lengths)
    keys = np.zeros((len(rows), width), dtype=np.int64)
    present = np.zeros((len(rows), width), dtype=bool)
    keys[owner, position] = block.indices
    present[owner, position] = True
    return torch.from_numpy(keys), torch.from_numpy(present)


PairWeights = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pair_weights(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, n_columns: int) -> PairWeights:
    """``weight_of(sources, targets)`` for :func:`top_contributors`: the stored weight of
    each (row, column) pair of a sorted CSR matrix, 0 where none. The entries' codes
    row * n_columns + column ascend, so one binary search finds a pair; they are built
    once per call of this function, not per lookup."""
    entry_codes = tensor_entry_rows(torch.diff(indptr)) * n_columns + indices

    def weight_of(sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not len(entry_codes):
            return torch.zeros(sources.shape, dtype=values.dtype, device=sources.device)
        codes = (sources * n_columns + targets).flatten()
        position = torch.searchsorted(entry_codes, codes).clamp_max(len(entry_codes) - 1)
        return torch.where(entry_codes[position] == codes, values[position], 0.0).view_as(sources)

    return weight_of


def top_contributors(history: torch.Tensor, present: torch.Tensor, item_keys: torch.Tensor, weight_of, n: int) -> torch.Tensor:
    """[users, k, n] history items with the largest positive weight towards each of
    ``item_keys`` [users, k] (-1 where fewer have one); ``weight_of(history_items,
    target_items)`` gives the item-to-item weights of equally shaped key tensors (0
    where none). Chunked over users so that the lookups stay bounded."""
    users, k = item_keys.shape
    out = torch.full((users, k, n), -1, dtype=torch.long, device=item_keys.device)
    if users == 0 or k == 0:
        return out
    step = max(1, EXPLAIN_LOOKUPS // max(1, history.shape[1] * k))
    for start in range(0, users, step):
        rows = slice(start, start + step)
        # Look up present history items only: histories are padded to the longest.
        owner, position = torch.nonzero(present[rows], as_tuple=True)
        targets = item_keys[rows][owner]  # [P, k]
        sources = history[rows][owner, position][:, None].expand_as(targets)
        weights = torch.zeros((*present[rows].shape, k), device=item_keys.device)  # [u, L, k]
        weights[owner, position] = weight_of(sources, targets.clamp_min(0)).masked_fill(targets < 0, 0.0)
        best, where = weights.topk(min(n, weights.shape[1]), dim=1)  # [u, n', k]
        chosen = history[rows].gather(1, where.flatten(1)).view_as(where)
        chosen = torch.where(best > 0, chosen, -1).transpose(1, 2)  # [u, k, n']
        out[rows, :, : chosen.shape[2]] = chosen
    return out


class ItemToItemModel(Recommender):
    """A fixed sparse source -> target weight matrix scored against source histories."""

    learned = False
    fitted_tensors = ("weights_indptr", "weights_indices", "weights_values")
    weights_indptr: torch.Tensor
    weights_indices: torch.Tensor
    weights_values: torch.Tensor
    n_target_items: torch.Tensor

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__(features, settings)
        n_rows = features.n_items(self.source) + 1  # source items + the fallback row
        self.register_buffer("weights_indptr", torch.zeros(n_rows + 1, dtype=torch.long))
        self.register_buffer("weights_indices", torch.zeros(0, dtype=torch.long))
        self.register_buffer("weights_values", torch.zeros(0))
        self.register_buffer("n_target_items", torch.tensor(features.n_items(self.target)))
        self._histories: sp.csr_matrix | None = None
        self._pair_weights: Memo[PairWeights] = Memo()

    @property
    def n_source_items(self) -> int:
        return len(self.weights_indptr) - 2

    @abstractmethod
    def fit_weights(self, source: sp.csr_matrix, target: sp.csr_matrix) -> sp.csr_matrix:
        """W [n_source_items, n_target_items] from the multi-hot training matrices."""

    def fit_fixed(self, features: FeatureSet) -> None:
        source, target = multi_hot(features.train[self.source]), multi_hot(features.train[self.target])
        popularity = np.asarray(target.sum(axis=0)).ravel()
        fallback = sp.csr_matrix(popularity[None, :] / max(popularity.max(initial=0), 1))
        weights = sp.vstack([self.fit_weights(source, target), fallback], format="csr", dtype=np.float32)
        weights.eliminate_zeros()
        weights.sort_indices()
        device = self.weights_values.device
        self.weights_indptr = torch.from_numpy(weights.indptr.astype(np.int64)).to(device)
        self.weights_indices = torch.from_numpy(weights.indices.astype(np.int64)).to(device)
        self.weights_values = torch.from_numpy(weights.data).to(device)
        self.n_target_items.fill_(target.shape[1])
        self.set_histories(features)

    def set_histories(self, features: FeatureSet) -> None:
        # Source items newer than the fitted matrix have no weights yet: dropped.
        history = multi_hot(features.train[self.source])[:, : self.n_source_items]
        has_weights = (np.diff(self.weights_indptr.cpu().numpy())[: self.n_source_items] > 0).astype(np.float32)
        fallback = sp.csr_matrix((history @ has_weights == 0).astype(np.float32)[:, None])
        self._histories = sp.hstack([history, fallback], format="csr", dtype=np.float32)

    def _check_domain(self, domain: str) -> None:
        if domain != self.target:
            raise ValueError(f"{self.name} scores the target domain {self.target!r} only, not {domain!r}")

    def _user_histories(self) -> sp.csr_matrix:
        if self._histories is None:
            raise RuntimeError(f"{self.name} has no user histories: call fit_fixed or set_histories first")
        return self._histories

    def user_vectors(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        self._check_domain(domain)
        return scipy_csr_tensor(self._user_histories()[user_keys.cpu().numpy()], self.weights_values.device)

    def item_vectors(self, domain: str) -> torch.Tensor:
        """[n_target_items, n_source_items + 1] sparse CSC (the transpose of the stored CSR)."""
        self._check_domain(domain)
        size = (len(self.weights_indptr) - 1, int(self.n_target_items))
        return csr_tensor(self.weights_indptr, self.weights_indices, self.weights_values, size).t()

    def explain(self, domain: str, user_keys: torch.Tensor, item_keys: torch.Tensor, n: int) -> torch.Tensor:
        self._check_domain(domain)
        device = self.weights_values.device
        history, present = padded_rows(self._user_histories()[:, : self.n_source_items], user_keys.cpu().numpy())
        tensors = (self.weights_indptr, self.weights_indices, self.weights_values)
        weight_of = self._pair_weights.get(tensors, lambda: pair_weights(*tensors, int(self.n_target_items)))
        return top_contributors(history.to(device), present.to(device), item_keys.to(device), weight_of, n)


class ItemKnnCross(ItemToItemModel):
    name = "item_knn_cross"

    def fit_weights(self, source: sp.csr_matrix, target: sp.csr_matrix) -> sp.csr_matrix:
        cooccurrence = (source.T @ target).tocsr()  # [n_source_items, n_target_items], users in both domains
        popularity = np.asarray(target.sum(axis=0)).ravel()
        alpha = self.settings.knn_popularity_exponent
        scale = np.divide(1.0, popularity**alpha, out=np.zeros(popularity.size), where=popularity > 0)
        return cooccurrence.multiply(scale[None, :]).tocsr()


class EaseCross(ItemToItemModel):
    name = "ease_cross"

    def tuning_grid(self) -> list[dict[str, Any]]:
        return [{"linear_l2": [l2]} for l2 in self.settings.linear_l2]

    def fit_weights(self, source: sp.csr_matrix, target: sp.csr_matrix) -> sp.csr_matrix:
        both = np.flatnonzero((np.diff(source.indptr) > 0) & (np.diff(target.indptr) > 0))
        x = source[both].tocsr()
        y = target[both].tocsr()
        l2 = self.settings.linear_l2[0]
        started = time.perf_counter()
        weights = ridge_weights(x, y, l2, self.settings.linear_keep)
        log.info(
            "ease_cross: lambda %g over %d users active in both domains, %d x %d weights kept %d, %.1f s",
            l2,
            len(both),
            x.shape[1],
            y.shape[1],
            weights.nnz,
            time.perf_counter() - started,
        )
        return weights


def ridge_weights(x: sp.csr_matrix, y: sp.csr_matrix, l2: float, keep: int) -> sp.csr_matrix:
    """argmin_W ||Y - X W||^2 + l2 ||W||^2, each column's ``keep`` largest-magnitude
    weights kept. Conjugate gradients (Jacobi-preconditioned), all columns of a block at
    once, on the smaller of the two equivalent systems: (X^T X + l2 I) W = X^T Y over the
    items, or (X X^T + l2 I) A = Y over the users with W = X^T A. The products go through
    the sparse X (torch CSR, multi-threaded), never a dense Gram matrix or inverse."""
    x = x.astype(np.float32).tocsr()
    n_users, n_source = x.shape
    n_target = y.shape[1]
    over_users = n_users < n_source
    operator = x.T.tocsr() if over_users else x  # M: the system is (M^T M + l2 I) Z = rhs
    rhs_all = (y if over_users else x.T @ y).astype(np.float32).tocsc()
    diagonal = torch.from_numpy(np.asarray(operator.multiply(operator).sum(axis=0)).ravel().astype(np.float32)) + l2
    operator_tensor, operator_t_tensor = scipy_csr_tensor(operator), scipy_csr_tensor(operator.T.tocsr())
    keep = min(keep, n_source)
    rows, columns, values = [], [], []
    for start in range(0, n_target, CG_COLUMN_BLOCK):
        stop = min(start + CG_COLUMN_BLOCK, n_target)
        rhs = torch.from_numpy(rhs_all[:, start:stop].toarray())
        solution = _conjugate_gradients(lambda z: (operator_t_tensor @ (operator_tensor @ z)).add_(z, alpha=l2), rhs, diagonal)
        if over_users:
            solution = operator_tensor @ solution  # W = X^T A; the operator is X^T
        top = solution.abs().topk(keep, dim=0).indices  # [keep, columns]
        rows.append(top.flatten().numpy())
        columns.append(np.broadcast_to(np.arange(start, stop), top.shape).ravel())
        values.append(solution.gather(0, top).flatten().numpy())
    weights = sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=(n_source, n_target))
    weights.eliminate_zeros()
    return weights


def _column_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # A product and a sum over rows: torch.linalg.vecdot and einsum are several times
    # slower on a tall [rows, columns] block.
    return (a * b).sum(0)


def _conjugate_gradients(apply, rhs: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """Solve A Z = rhs column by column (A symmetric positive definite, given by ``apply``;
    ``diagonal``: A's diagonal, the Jacobi preconditioner)."""
    inverse_diagonal = diagonal.reciprocal()[:, None]
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    preconditioned = residual * inverse_diagonal
    direction = preconditioned.clone()
    products = _column_dots(residual, preconditioned)
    targets = CG_TOLERANCE**2 * _column_dots(rhs, rhs)
    for _ in range(CG_MAX_ITERATIONS):
        if bool((_column_dots(residual, residual) <= targets).all()):
            break
        applied = apply(direction)
        step = products / _column_dots(direction, applied).clamp_min(1e-30)
        solution.addcmul_(step, direction)
        residual.addcmul_(step, applied, value=-1)
        torch.mul(residual, inverse_diagonal, out=preconditioned)
        new_products = _column_dots(residual, preconditioned)
        direction.mul_(new_products / products.clamp_min(1e-30)).add_(preconditioned)
        products = new_products
    return solution
