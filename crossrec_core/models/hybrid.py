"""``hybrid``: an item-to-item memorisation path plus DANN's aligned transfer path, learned end to end.

Score of target item j for user u (``settings.hybrid_paths`` switches the paths, for
ablations)::

    score(u, j) = cos(v(u), e_j) / T             transfer: dann's history encoder
                + sum over i in H(u) of M[i, j]  memory: learned source -> target item weights
                + b_j                            item bias

* transfer: v(u) is the vector that :class:`~crossrec_core.models.encoders.DANN` builds
  from the user's history (source history for a cold-start user), aligned across domains
  by the domain classifier behind gradient reversal; T is dann's temperature (a
  learned one let the transfer path take over from the memory path on the training
  users and lose the cold-start users).
* memory: H(u) is the user's source history (the ``history_length`` most recent items);
  M lives on the source -> target item pairs that co-occur among users active in both
  domains (at most ``linear_keep`` per source item, the strongest): a learned scale (the
  memory path's temperature) times ``item_knn_cross``'s statistics (co-occurrence / popularity ** alpha) plus learned
  per-pair corrections, L2-regularised towards 0 (``memory_l2``), so M starts as the
  count and departs from it where training supports it. The scale starts at 1 / T,
  lowered where the count's scores run large: they grow with the data's density, and
  summed over long dense histories they saturate the softmax. So the scale starts at most
  at ``MEMORY_LEAD`` / (T x the mean best count score of the users active in both
  domains): a typical user's best memory score starts at no more than ``MEMORY_LEAD``
  times a perfect transfer match.
  In training a user's own co-occurrences are left out of the counts (a cold-start user
  is never in them). A single dense user vector cannot hold the sparse item-to-item
  co-purchase signal; this path memorises it, the transfer path ranks what it misses.

Training adds to dann's loss (in-domain terms, alignment) a cross-domain term on
overlapping users that ranks their target items by the FULL score above the negatives
shared by the batch, so the model optimises the cold-start task directly.

The support of M is fixed when the model is built from the training features; it is
stored with the weights (its shape is taken from the file when a model is loaded) and is
never warm-started from another night's model (the pairs differ).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from crossrec_core.batches import batch_key, tensor_row_entries
from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet, entry_rows
from crossrec_core.models.base import Memo, add_sparse_, dot_scores
from crossrec_core.models.encoders import DANN, TEMPERATURE
from crossrec_core.models.item_knn import PairWeights, csr_tensor, multi_hot, pair_weights, top_contributors
from crossrec_core.models.mf import shared_candidate_logits, shared_softmax_loss


def memory_support(features: FeatureSet, alpha: float, keep: int) -> tuple[sp.csr_matrix, np.ndarray, float]:
    """(item_knn_cross's weights C[i, j] / pop(j) ** alpha [n_source, n_target] with the
    ``keep`` largest of each source row kept (sorted CSR), 1 / pop(j) ** alpha: what one
    user adds to every weight of a column, the mean over users active in both domains of
    their largest summed weight: how large the count's scores run on this data)."""
    source, target = multi_hot(features.train[features.source]), multi_hot(features.train[features.target])
    cooccurrence = (source.T @ target).tocsr()
    popularity = np.asarray(target.sum(axis=0)).ravel()
    scale = np.divide(1.0, popularity**alpha, out=np.zeros(popularity.size), where=popularity > 0)
    weights = cooccurrence.multiply(scale[None, :]).tocsr().astype(np.float32)
    weights.eliminate_zeros()
    lengths = np.diff(weights.indptr)
    if lengths.max(initial=0) > keep:
        rows = entry_rows(lengths)
        order = np.lexsort((-weights.data, rows))  # by row, strongest first
        rank = np.arange(weights.nnz) - weights.indptr[rows[order]]
        kept = order[rank < keep]
        weights = sp.csr_matrix((weights.data[kept], (rows[kept], weights.indices[kept])), shape=weights.shape)
    weights.sort_indices()
    both = np.flatnonzero((np.diff(source.indptr) > 0) & (np.diff(target.indptr) > 0))
    # in blocks of users: a block's summed weights are users x reached targets
    blocks = np.array_split(both, max(1, math.ceil(len(both) / TOP_SCORE_BLOCK)))
    top_scores = np.concatenate(
        [(source[block] @ weights).max(axis=1).toarray().ravel() for block in blocks if len(block)] or [np.zeros(1)]
    )
    return weights, scale.astype(np.float32), float(top_scores.mean())


def prefer_dense_block(products: int, cells: int) -> bool:
    """Multiply through a dense block of ``cells`` numbers rather than scatter ``products``
    additions one by one, when the block is the smaller of the two: filled once, it is
    multiplied by vectorised multiply-adds, far cheaper each than a scattered addition."""
    return products > cells


TOP_SCORE_BLOCK = 4096  # users per block when measuring how large the count's scores run
MEMORY_LEAD = 8.0  # on dense data a typical best memory score starts at this many times a perfect transfer match


class Hybrid(DANN):
    name = "hybrid"
    fitted_tensors = ("memory_indptr", "memory_indices", "memory_counts", "memory_values", "memory_user_share")
    not_warm_started = fitted_tensors
    memory_indptr: torch.Tensor
    memory_indices: torch.Tensor
    memory_counts: torch.Tensor
    memory_user_share: torch.Tensor

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__(features, settings)
        support, user_share, top_score = memory_support(features, settings.knn_popularity_exponent, settings.linear_keep)
        self.register_buffer("memory_indptr", torch.from_numpy(support.indptr.astype(np.int64)))
        self.register_buffer("memory_indices", torch.from_numpy(support.indices.astype(np.int64)))
        self.register_buffer("memory_counts", torch.from_numpy(support.data.astype(np.float32)))  # item_knn_cross's weights
        self.register_buffer("memory_user_share", torch.from_numpy(user_share))
        self.memory_values = nn.Parameter(torch.zeros(support.nnz))  # learned corrections, L2 towards 0
        self.memory_log_scale = nn.Parameter(torch.tensor(math.log(min(1.0, MEMORY_LEAD / max(top_score, 1e-6)) / TEMPERATURE)))
        self.item_bias = nn.Parameter(torch.zeros(features.n_items(self.target)))
        self.paths = frozenset(settings.hybrid_paths)
        self._serving_memory: Memo[tuple[torch.Tensor, PairWeights]] = Memo()
        self._support_pairs: Memo[PairWeights] = Memo()

    def memory_weights(self) -> torch.Tensor:
        """M = scale * item_knn_cross's weights + learned corrections, per stored pair."""
        return self.memory_log_scale.exp() * self.memory_counts + self.memory_values

    def serving_memory(self) -> tuple[torch.Tensor, PairWeights]:
        """(M per stored pair, detached; its pair lookup for explanations), derived once
        per state of the memory's tensors: scoring reads them for every block."""
        tensors = (self.memory_indptr, self.memory_indices, self.memory_counts, self.memory_values, self.memory_log_scale)

        def build() -> tuple[torch.Tensor, PairWeights]:
            values = self.memory_weights().detach()
            return values, pair_weights(self.memory_indptr, self.memory_indices, values, len(self.item_bias))

        return self._serving_memory.get(tensors, build)

    def _memory_history(self, user_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source history [B, L] item keys (clipped to the memory's rows) and presence."""
        items = getattr(self, f"history_{self.source}")[user_keys]
        present = (getattr(self, f"history_weights_{self.source}")[user_keys] > 0) & (items < len(self.memory_indptr) - 1)
        return torch.where(present, items, 0), present

    def score(self, domain: str, user_keys: torch.Tensor, item_vectors: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if domain != self.target:
            return super().score(domain, user_keys, item_vectors, out)
        if "transfer" in self.paths:
            scores = dot_scores(self.user_vectors(domain, user_keys), item_vectors, out=out)
        else:
            scores = out.zero_() if out is not None else item_vectors.new_zeros(len(user_keys), item_vectors.shape[0])
        if "memory" in self.paths:
            add_sparse_(scores, self._memory_scores(user_keys))
        return scores.add_(self.item_bias)

    def _memory_scores(self, user_keys: torch.Tensor) -> torch.Tensor:
        """[B, n_target] sparse CSR sum of M over each user's source history: multi-hot @ M, sparse x sparse."""
        items, present = self._memory_history(user_keys)
        counts = present.sum(1)
        history = csr_tensor(
            torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]),
            items[present],
            torch.ones(int(counts.sum()), device=items.device),
            size=(len(user_keys), len(self.memory_indptr) - 1),
        )
        memory = csr_tensor(
            self.memory_indptr, self.memory_indices, self.serving_memory()[0], size=(len(self.memory_indptr) - 1, len(self.item_bias))
        )
        return torch.sparse.mm(history, memory)

    def cross_domain_loss(
        self, batch: dict[str, torch.Tensor], users: torch.Tensor, overlap: torch.Tensor, unit_tables: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Overlapping users' target items ranked by the full score (transfer + memory +
        bias) against the batch's shared negatives."""
        keys = users[overlap]
        positives = batch[batch_key("positives", self.target)][overlap]
        negatives = batch[batch_key("shared_negatives", self.target)]
        if "transfer" in self.paths:
            source_built = self.encode(self.source, keys, unit_items=unit_tables[self.source])
            logits = shared_candidate_logits(source_built * self.logit_scale(), unit_tables[self.target], batch, self.target, overlap)
        else:
            logits = unit_tables[self.target].new_zeros(len(keys), 1 + len(negatives))
        logits = logits + torch.cat([self.item_bias[positives, None], self.item_bias[negatives][None, :].expand(len(keys), -1)], dim=1)
        penalty = logits.new_zeros(())
        if "memory" in self.paths:
            memory, penalty = self._memory_logits(keys, positives, negatives)
            logits = logits + memory
        return shared_softmax_loss(logits, batch, self.target, overlap) + penalty

    def _memory_logits(self, keys: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory logits [rows, 1 + n] of each row's positive and the shared negatives, the
        L2 penalty of the corrections the rows reach), with gradients to M.

        Scores = the rows' source multi-hot H @ M restricted to the candidate columns C,
        one of two ways (:func:`prefer_dense_block`): scatter every product of an H entry
        with a weight of its source item's row in C (sparse histories), or gather
        M[reached items, C] into a dense block and multiply (dense histories, where each
        row reaches most of the catalogue through its many items)."""
        items, present = self._memory_history(keys)
        rows, history = torch.nonzero(present)[:, 0], items[present]
        columns, column_of_candidate = torch.unique(torch.cat([positives, negatives]), return_inverse=True)
        column = torch.full((len(self.item_bias),), -1, dtype=torch.long, device=keys.device)
        column[columns] = torch.arange(len(columns), device=keys.device)
        reached, reached_of_history, reach = torch.unique(history, return_inverse=True, return_counts=True)
        starts = self.memory_indptr[reached]
        owner, entries = tensor_row_entries(starts, self.memory_indptr[reached + 1] - starts)
        corrections = self.memory_values[entries]
        # Each row that reaches a correction pays its L2 once.
        penalty = self.settings.memory_l2 * (reach[owner] * corrections.square()).sum() / max(len(keys), 1)
        entry_column = column[self.memory_indices[entries]]
        in_block = entry_column >= 0
        owner, entry_column = owner[in_block], entry_column[in_block]
        scale = self.memory_log_scale.exp()
        values = scale * self.memory_counts[entries[in_block]] + corrections[in_block]
        lengths = torch.bincount(owner, minlength=len(reached))
        if not prefer_dense_block(int(lengths[reached_of_history].sum()), len(reached) * len(columns)):
            history_entry, position = tensor_row_entries(
                (torch.cumsum(lengths, 0) - lengths)[reached_of_history], lengths[reached_of_history]
            )
            scores = values.new_zeros(len(keys), len(columns)).index_put(
                (rows[history_entry], entry_column[position]), values[position], accumulate=True
            )
        else:
            block = values.new_zeros(len(reached), len(columns)).index_put((owner, entry_column), values)
            histories = torch.sparse_coo_tensor(
                torch.stack([rows, reached_of_history]), values.new_ones(len(rows)), (len(keys), len(reached)), check_invariants=False
            )
            scores = torch.sparse.mm(histories, block)
        # Leave the user out: their own co-occurrence is in every count of their
        # positive's column (once per history item paired with it), which a cold-start
        # user's never is.
        own_pairs = torch.zeros(len(keys), device=keys.device).index_add_(0, rows, (self._support()(history, positives[rows]) > 0).float())
        positive = (
            scores.gather(1, column_of_candidate[: len(keys), None]).squeeze(1) - scale * self.memory_user_share[positives] * own_pairs
        )
        return torch.cat([positive[:, None], scores[:, column_of_candidate[len(keys) :]]], dim=1), penalty

    def _support(self) -> PairWeights:
        """Lookup of the stored pairs' counts (0: not in the support)."""
        tensors = (self.memory_indptr, self.memory_indices, self.memory_counts)
        return self._support_pairs.get(tensors, lambda: pair_weights(*tensors, len(self.item_bias)))

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "transfer" in self.paths:
            return super().calculate_loss(batch)
        users = batch[batch_key("users", self.target)]
        overlap = torch.nonzero(self.has_history(self.source, users)).squeeze(1)
        return self.cross_domain_loss(batch, users, overlap, {self.target: self.unit_items(self.target)})

    def explain(self, domain: str, user_keys: torch.Tensor, item_keys: torch.Tensor, n: int) -> torch.Tensor | None:
        if domain != self.target or "memory" not in self.paths:
            return None
        items, present = self._memory_history(user_keys)
        return top_contributors(items, present, item_keys, self.serving_memory()[1], n)
