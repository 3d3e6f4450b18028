"""The one top-K: what the nightly scorer serves and what offline metrics are computed on.

:func:`block_top_k` scores a block of users with the model's score hook
(:meth:`~crossrec_core.models.base.Recommender.score`) into one reused score block
(:class:`ScoreBlock`), sets every excluded item (the user's known interactions) to
-inf, takes the exact top K with a deterministic tie rule (:func:`top_k`) and refuses
NaN scores naming the users. ``crossrec_core.scoring`` (local and Spark backends) and
``crossrec_core.evaluation`` both call it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from crossrec_core.data import FeatureSet, entry_rows
from crossrec_core.metrics import PAD
from crossrec_core.models.base import Recommender


class ScoreBlock:
    """One reusable [rows, n_items] float32 score block per scorer: the dense product of
    every block of users lands in the same memory (a fresh block per batch costs about
    as much as the product itself, in page faults)."""

    def __init__(self) -> None:
        self.data: torch.Tensor | None = None

    def take(self, rows: int, items: int, device: torch.device) -> torch.Tensor:
        if self.data is None or self.data.shape[0] < rows or self.data.shape[1] != items or self.data.device != device:
            self.data = torch.empty((rows, items), dtype=torch.float32, device=device)
        return self.data[:rows]


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, item keys) of the k best scores per row, best first; among equal scores the
    lower item key ranks first (``torch.topk`` leaves ties in an unspecified order)."""
    k = min(k, scores.shape[1])
    values, indices = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
    # More than k items score >= the k-th value iff the (k+1)-th equals it: then topk's pick
    # among the equal items is arbitrary and the lowest keys must be chosen.
    boundary_tie = (
        values[:, k] == values[:, k - 1] if values.shape[1] > k else torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    )
    values, indices = values[:, :k], indices[:, :k].contiguous()
    kth = values[:, -1:]
    if boundary_tie.any():
        rows, row_kth = scores[boundary_tie], kth[boundary_tie]
        above, equal = rows > row_kth, rows == row_kth
        room = k - above.sum(1, keepdim=True)
        chosen = above | (equal & (equal.cumsum(1, dtype=torch.int32) <= room))
        indices[boundary_tie] = chosen.nonzero()[:, 1].view(-1, k)
    indices = indices.sort(dim=1).values  # ascending keys, so that the stable sort keeps them ascending within ties
    values, order = scores.gather(1, indices).sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, order)


def block_top_k(
    model: Recommender,
    item_vectors: torch.Tensor,
    domain: str,
    user_keys: np.ndarray,
    excluded: sp.csr_matrix,
    k: int,
    device: torch.device,
    block: ScoreBlock,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one block of users: (item keys [n, k'] int64, scores [n, k'] float32),
    k' = min(k, n_items); ``excluded`` rows (one per user) are never recommended. Slots
    beyond a user's remaining items hold item ``PAD`` (-1) and score -inf. Call under
    ``torch.no_grad()`` with the model in eval mode."""
    keys = torch.as_tensor(user_keys, dtype=torch.long, device=device)
    out = block.take(len(keys), item_vectors.shape[0], device)
    scores = model.score(domain, keys, item_vectors, out=out).float()
    if excluded.nnz:
        rows = torch.as_tensor(entry_rows(np.diff(excluded.indptr)), device=device)
        scores[rows, torch.as_tensor(excluded.indices, dtype=torch.long, device=device)] = -torch.inf
    values, items = top_k(scores, k)
    nan_rows = torch.isnan(values).any(1)  # torch.topk ranks NaN above every number
    if nan_rows.any():
        bad = np.asarray(user_keys)[nan_rows.cpu().numpy()]
        raise ValueError(f"model {model.name!r} produced NaN scores in domain {domain!r} for user keys {bad[:5].tolist()}")
    items = torch.where(values == -torch.inf, PAD, items)
    return items.cpu().numpy(), values.cpu().numpy()


def top_k_for_users(
    model: Recommender,
    features: FeatureSet,
    domain: str,
    user_keys: np.ndarray,
    k: int,
    block_size: int,
    device: str | torch.device = "cpu",
    exclude_known: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(item keys [n, k'] int64, scores [n, k'] float32), best first, for ``user_keys``,
    block by block through :func:`block_top_k`; each user's known items
    (``FeatureSet.excluded``) never ranked; ``PAD``/-inf fill the slots of users with
    fewer remaining items. Memory: one [block_size, n_items] score block, reused."""
    device = torch.device(device)
    user_keys = np.asarray(user_keys, dtype=np.int64)
    width = min(k, features.n_items(domain))
    items = np.full((len(user_keys), width), PAD, dtype=np.int64)
    scores = np.full((len(user_keys), width), -np.inf, dtype=np.float32)
    block = ScoreBlock()
    with torch.no_grad():
        item_vectors = model.item_vectors(domain)
        for start in range(0, len(user_keys), block_size):
            rows = slice(start, start + block_size)
            excluded = features.excluded(domain, user_keys[rows], known=exclude_known)
            items[rows], scores[rows] = block_top_k(model, item_vectors, domain, user_keys[rows], excluded, k, device, block)
    return items, scores
