"""Matrix factorisation: ``target_only`` (no transfer) and ``joint_mf`` (CMF style).

Both are one model, a user table shared by every trained domain plus one item table
per domain, trained with L = L_target + lambda * L_source over the domains they train:
``target_only`` trains the target domain alone, ``joint_mf`` both, so a user known
only from the source domain still gets a trained vector through the shared table.

target_only serves a cold-start user (no target history) their never-trained,
randomly initialised row: noise, on purpose. It is the honest no-transfer baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from crossrec_core.batches import batch_key
from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet
from crossrec_core.models.base import Recommender

INIT_STD = 0.1


def embedding_rows(keys: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``F.embedding(keys, table)`` through ``index_select``: its backward is a scatter-add,
    faster on the CPU than embedding's dense backward; the values are the same."""
    return table.index_select(0, keys.reshape(-1)).view(*keys.shape, table.shape[1])


class Embedding(nn.Embedding):
    """An ID table whose lookups go through :func:`embedding_rows`."""

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return embedding_rows(keys, self.weight)


def embedding_table(rows: int, dim: int) -> nn.Embedding:
    table = Embedding(rows, dim)
    nn.init.normal_(table.weight, std=INIT_STD)
    return table


def table_weight(tables: nn.ModuleDict, domain: str) -> torch.Tensor:
    """The weight of one domain's embedding table (a ModuleDict hands out plain Modules)."""
    table = tables[domain]
    assert isinstance(table, nn.Embedding)
    return table.weight


def ranking_loss(user_vectors: torch.Tensor, candidate_vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sampled softmax: each row's positive (candidate 0) against its sampled
    negatives (candidates 1..N), cross-entropy over the N + 1 dot products.

    One softmax over all of a row's candidates rather than BPR's independent pairs.
    Shapes: users [B, d], candidates [B, N + 1, d], weights [B]; an empty batch gives 0."""
    logits = torch.linalg.vecdot(user_vectors[:, None, :], candidate_vectors)  # faster than einsum or bmm here
    return _softmax_cross_entropy(logits, weights)


def shared_candidate_logits(
    user_vectors: torch.Tensor, item_table: torch.Tensor, batch: dict[str, torch.Tensor], domain: str, rows: torch.Tensor
) -> torch.Tensor:
    """Dot products [len(rows), 1 + n] of ``domain``'s batch ``rows`` with their positive
    (column 0) and the batch's shared negatives (one matrix product).

    Shapes: user_vectors [len(rows), d], item_table [n_items, d]."""
    positives = embedding_rows(batch[batch_key("positives", domain)][rows], item_table)
    negatives = embedding_rows(batch[batch_key("shared_negatives", domain)], item_table)
    return torch.cat([(user_vectors * positives).sum(-1, keepdim=True), user_vectors @ negatives.T], dim=1)


def shared_softmax_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], domain: str, rows: torch.Tensor) -> torch.Tensor:
    """The weighted sampled softmax over [positive, shared negatives] logits of ``rows``,
    each row's own positives among the shared negatives left out."""
    excluded = batch[batch_key("shared_excluded", domain)][rows]
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(excluded, -torch.inf)], dim=1)
    return _softmax_cross_entropy(logits, batch[batch_key("weights", domain)][rows])


def shared_ranking_loss(
    user_vectors: torch.Tensor, item_table: torch.Tensor, batch: dict[str, torch.Tensor], domain: str, rows: torch.Tensor
) -> torch.Tensor:
    """The weighted sampled softmax of ``domain``'s batch ``rows`` against the batch's
    shared negatives, each row's own positives left out."""
    return shared_softmax_loss(shared_candidate_logits(user_vectors, item_table, batch, domain, rows), batch, domain, rows)


def in_domain_loss(model: Recommender, user_vectors, item_vectors, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over the model's trained domains of the domain-weighted sampled softmax of
    ``user_vectors(domain, users)`` against ``item_vectors(domain, candidates)``."""
    loss = torch.zeros(())
    for domain in model.train_domains:
        users = batch[batch_key("users", domain)]
        term = ranking_loss(
            user_vectors(domain, users), item_vectors(domain, candidates(batch, domain)), batch[batch_key("weights", domain)]
        )
        loss = loss.to(term.device) + domain_weight(model, domain) * term
    return loss


def _softmax_cross_entropy(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over rows of the cross-entropy of column 0 (the positive)."""
    per_row = torch.logsumexp(logits, dim=1) - logits[:, 0]
    return (per_row * weights).sum() / weights.sum().clamp_min(1e-12)


def candidates(batch: dict[str, torch.Tensor], domain: str) -> torch.Tensor:
    """[B, N + 1] item keys: each row's positive, then its negatives."""
    return torch.cat([batch[batch_key("positives", domain)][:, None], batch[batch_key("negatives", domain)]], dim=1)


def domain_weight(model: Recommender, domain: str) -> float:
    """Loss weight of a domain: 1 for the target, lambda (source_weight) for the source."""
    return 1.0 if domain == model.target else model.settings.source_weight


class SharedUserMF(Recommender):
    """One user table for all trained domains, one item table per trained domain."""

    train_domain_roles: tuple[str, ...] = ("source", "target")

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__(features, settings)
        self.train_domains = tuple(getattr(self, role) for role in self.train_domain_roles)
        self.users = embedding_table(features.n_users, settings.dim)
        self.items = nn.ModuleDict({d: embedding_table(features.n_items(d), settings.dim) for d in self.train_domains})

    def _check_domain(self, domain: str) -> None:
        if domain not in self.items:
            raise ValueError(f"{self.name} serves domains {list(self.items)}, not {domain!r}")

    def user_vectors(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        self._check_domain(domain)
        return self.users(user_keys)

    def item_vectors(self, domain: str) -> torch.Tensor:
        self._check_domain(domain)
        return table_weight(self.items, domain)

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return in_domain_loss(self, lambda domain, users: self.users(users), lambda domain, keys: self.items[domain](keys), batch)


class TargetOnlyMF(SharedUserMF):
    name = "target_only"
    train_domain_roles = ("target",)


class JointMF(SharedUserMF):
    name = "joint_mf"
