"""Training data as tensors: FeatureSet CSR matrices -> shuffled batches with negatives.

Everything is vectorised: a CSR matrix becomes (user, item, weight) tensors
(:func:`csr_coordinates`, rows from :func:`~crossrec_core.data.entry_rows`); negatives are drawn uniformly among the items that are
not the user's training positives (:class:`NegativeSampler`, exact, no rejection).

A batch is a flat dict of tensors keyed ``"<field>:<domain>"`` (:func:`batch_key`):
``users``, ``positives``, ``negatives`` ([rows, n_negatives]) and ``weights`` per
trained domain; for the domains a model asks for, also ``shared_negatives`` ([n]
distinct items for all rows) and ``shared_excluded`` ([rows, n], True where a shared
negative is a positive of the row's user, left out of that row's loss). One epoch visits every training interaction of every trained domain
once; each step takes a slice of every domain's permutation, sized so that all
domains finish together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from crossrec_core.data import FeatureSet, entry_rows
from crossrec_core.errors import MissingDataError


def batch_key(field: str, domain: str) -> str:
    return f"{field}:{domain}"


def tensor_entry_rows(lengths: torch.Tensor) -> torch.Tensor:
    """:func:`~crossrec_core.data.entry_rows` for torch: the row of every stored entry,
    from the rows' lengths (``torch.diff(indptr)``), on their device."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


def tensor_row_entries(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(which selected row, position in the CSR arrays) of every stored entry of some rows
    of a CSR matrix, the rows given by their ``starts`` (``indptr[rows]``) and ``lengths``."""
    rows = tensor_entry_rows(lengths)
    first_of_row = torch.cumsum(lengths, 0) - lengths
    return rows, starts[rows] + torch.arange(rows.numel(), device=rows.device) - first_of_row[rows]


def csr_coordinates(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, value) arrays of a CSR matrix, rows expanded from ``indptr``."""
    rows = entry_rows(np.diff(matrix.indptr))
    return rows, matrix.indices.astype(np.int64), matrix.data.astype(np.float32)


class NegativeSampler:
    """Uniform negatives: items that are not a training positive of the same user.

    Exact, without rejection: a draw is a rank r among the user's n_items - n_pos
    negatives, mapped to the item with ``r + #{positives p_j : p_j - j <= r}`` (p_j - j
    counts the negatives before the user's j-th positive). ``torch.searchsorted`` over
    the sorted ``user * n_items + p_j - j`` codes counts that for a whole batch at once.
    """

    def __init__(self, matrix: sp.csr_matrix, device: torch.device | str = "cpu"):
        matrix = matrix.copy()
        matrix.sum_duplicates()  # also sorts the indices of every row
        rows, columns, _ = csr_coordinates(matrix)
        self.n_items = matrix.shape[1]
        starts = matrix.indptr[:-1].astype(np.int64)
        rank_in_row = np.arange(rows.size) - starts[rows]
        self.negatives_before = torch.from_numpy(rows * self.n_items + columns - rank_in_row).to(device)
        self.row_starts = torch.from_numpy(starts).to(device)
        self.items = torch.from_numpy(columns).to(device)  # every row's positives, ascending
        self.n_negatives = torch.from_numpy(self.n_items - np.diff(matrix.indptr).astype(np.int64)).to(device)
        self.full_users = np.flatnonzero(np.diff(matrix.indptr) >= self.n_items)

    def sample(self, users: torch.Tensor, n_negatives: int, generator: torch.Generator) -> torch.Tensor:
        """[len(users), n_negatives] item keys, none a positive of its row's user."""
        available = self.n_negatives[users]
        if bool((available <= 0).any()):
            stuck = torch.unique(users[available <= 0])
            raise ValueError(f"users {stuck[:10].tolist()} interacted with all {self.n_items} items: no negative exists")
        draws = torch.rand((users.numel(), n_negatives), generator=generator, device=users.device, dtype=torch.float64)
        ranks = (draws * available[:, None]).long().minimum(available[:, None] - 1)
        codes = users[:, None] * self.n_items + ranks
        positives_before = torch.searchsorted(self.negatives_before, codes, right=True) - self.row_starts[users][:, None]
        return ranks + positives_before

    def shared(self, users: torch.Tensor, n_negatives: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(negatives [n] distinct item keys drawn uniformly, excluded [len(users), n]: the
        negative is a training positive of the row's user), n = min(n_negatives, n_items).

        The mask costs one pass over the users' positives, each looked up in an item ->
        drawn-column table: exact and O(positives), not O(rows x n)."""
        device = users.device
        n = min(n_negatives, self.n_items)
        negatives = torch.randperm(self.n_items, generator=generator, device=device)[:n]
        drawn_column = torch.full((self.n_items,), -1, dtype=torch.long, device=device)
        drawn_column[negatives] = torch.arange(n, device=device)
        rows, entries = tensor_row_entries(self.row_starts[users], self.n_items - self.n_negatives[users])
        positives = self.items[entries]
        columns = drawn_column[positives]
        hit = columns >= 0
        excluded = torch.zeros((len(users), n), dtype=torch.bool, device=device)
        excluded[rows[hit], columns[hit]] = True
        return negatives, excluded


@dataclass
class DomainExamples:
    """The training interactions of one domain, on the training device."""

    users: torch.Tensor
    items: torch.Tensor
    weights: torch.Tensor
    sampler: NegativeSampler

    @property
    def size(self) -> int:
        return self.users.numel()


class InteractionBatches:
    """Shuffled (user, positive, negatives, weight) batches over the trained domains."""

    def __init__(
        self,
        features: FeatureSet,
        domains: tuple[str, ...],
        batch_size: int,
        n_negatives: int,
        device: torch.device | str = "cpu",
        shared_negatives: dict[str, int] | None = None,
    ):
        self.domains = domains
        self.batch_size = batch_size
        self.n_negatives = n_negatives
        self.shared_negatives = shared_negatives or {}
        self.examples: dict[str, DomainExamples] = {}
        for domain in domains:
            matrix = features.train[domain]
            sampler = NegativeSampler(matrix, device)
            rows, columns, values = csr_coordinates(matrix)
            # A user who interacted with every item has no negative: nothing to rank.
            keep = ~np.isin(rows, sampler.full_users)
            self.examples[domain] = DomainExamples(
                users=torch.from_numpy(rows[keep]).to(device),
                items=torch.from_numpy(columns[keep]).to(device),
                weights=torch.from_numpy(values[keep]).to(device),
                sampler=sampler,
            )
        if self.n_examples == 0:
            raise MissingDataError(f"no training interactions in domains {list(domains)}")

    @property
    def n_examples(self) -> int:
        return sum(e.size for e in self.examples.values())

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        steps = self.steps_per_epoch
        orders = {domain: torch.randperm(e.size, generator=generator, device=e.users.device) for domain, e in self.examples.items()}
        chunk = {domain: math.ceil(e.size / steps) for domain, e in self.examples.items()}
        for step in range(steps):
            batch: dict[str, torch.Tensor] = {}
            for domain, e in self.examples.items():
                rows = orders[domain][step * chunk[domain] : (step + 1) * chunk[domain]]
                users = e.users[rows]
                batch[batch_key("users", domain)] = users
                batch[batch_key("positives", domain)] = e.items[rows]
                batch[batch_key("negatives", domain)] = e.sampler.sample(users, self.n_negatives, generator)
                batch[batch_key("weights", domain)] = e.weights[rows]
                if domain in self.shared_negatives:
                    shared, excluded = e.sampler.shared(users, self.shared_negatives[domain], generator)
                    batch[batch_key("shared_negatives", domain)] = shared
                    batch[batch_key("shared_excluded", domain)] = excluded
            yield batch


def padded_histories(matrix: sp.csr_matrix, length: int, recency: sp.csr_matrix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's ``length`` most recent items (by ``recency``, the event times of the
    same interactions, where known; else the heaviest: nightly weights are decayed to
    ds, so the most recent and strongest) as [n_users, length] item keys and weights;
    padding has item 0 and weight 0, so it never contributes to a pooled vector."""
    rows, columns, values = csr_coordinates(matrix)
    rank_by = values
    if recency is not None:
        recency = recency.tocsr(copy=True)
        recency.sum_duplicates()
        if recency.shape != matrix.shape or recency.nnz != matrix.nnz or not np.array_equal(recency.indices, matrix.indices):
            raise ValueError(
                f"recency {recency.shape} with {recency.nnz} entries does not match the interactions {matrix.shape}, {matrix.nnz}"
            )
        rank_by = recency.data
    order = np.lexsort((-rank_by, rows))  # by user, first kept first
    rows, columns, values = rows[order], columns[order], values[order]
    position = np.arange(rows.size) - matrix.indptr[rows]
    keep = position < length
    items = np.zeros((matrix.shape[0], length), dtype=np.int64)
    weights = np.zeros((matrix.shape[0], length), dtype=np.float32)
    items[rows[keep], position[keep]] = columns[keep]
    weights[rows[keep], position[keep]] = values[keep]
    return torch.from_numpy(items), torch.from_numpy(weights)
