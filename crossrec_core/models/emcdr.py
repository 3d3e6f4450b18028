"""EMCDR (Man et al., IJCAI 2017) with a task-oriented mapping (as TMCDR and PTUPCDR).

Each domain has its own matrix factorisation (user and item tables). A mapping MLP
(d -> 2d -> d, tanh, as in the paper) turns a user's source profile into a target-domain
user vector. The profile is the weighted mean of the source-item factors of the user's
source history (its ``history_length`` most recent items): a fold-in, built the same way
for a cold-start user as for a training user, where an ID factor of a user with a
handful of interactions is mostly noise. The paper fits the mapping with squared error
towards the users' target factors; those factors are noisy for the same reason, and the
mapping's conditional mean was nearly one vector for everyone (it ranked like
popularity). Here the mapping is trained on what it is for: the mapped source profiles
of overlapping users rank their TARGET items against negatives shared by the batch
(mf.shared_ranking_loss), in the same steps as both factorisations. The profiles enter
detached, so that the source factors are shaped by the source task alone, as PTUPCDR
keeps its source embeddings fixed.

Serving the target domain: warm users get their target factors, cold-start users
(source history only) their mapped source profile. Serving the source domain: source
factors.
"""

from __future__ import annotations

import torch
from torch import nn

from crossrec_core.batches import batch_key, padded_histories
from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet
from crossrec_core.models.base import Recommender
from crossrec_core.models.mf import embedding_table, in_domain_loss, shared_ranking_loss, table_weight


class EMCDR(Recommender):
    name = "emcdr"
    source_history: torch.Tensor
    source_history_weights: torch.Tensor

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__(features, settings)
        dim = settings.dim
        self.users = nn.ModuleDict({d: embedding_table(features.n_users, dim) for d in features.domains})
        self.items = nn.ModuleDict({d: embedding_table(features.n_items(d), dim) for d in features.domains})
        self.mapping = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim))
        self.set_histories(features)

    def set_histories(self, features: FeatureSet) -> None:
        # Who has target history (served by target factors) and who source history.
        for domain in features.domains:
            has_history = torch.from_numpy(features.train[domain].indptr[1:] > features.train[domain].indptr[:-1])
            self.register_buffer(f"has_history_{domain}", has_history, persistent=False)
        items, weights = padded_histories(features.train[self.source], self.settings.history_length, features.recency.get(self.source))
        self.register_buffer("source_history", items, persistent=False)
        self.register_buffer("source_history_weights", weights, persistent=False)

    def source_profile(self, user_keys: torch.Tensor) -> torch.Tensor:
        """The weighted mean of the factors of the users' source items."""
        weights = self.source_history_weights[user_keys]
        vectors = self.items[self.source](self.source_history[user_keys])
        return (weights[:, :, None] * vectors).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-6)

    def _has_history(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"has_history_{domain}")[user_keys]

    def user_vectors(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        own = self.users[domain](user_keys)
        if domain != self.target:
            return own
        mapped = self.mapping(self.source_profile(user_keys))
        cold = ~self._has_history(self.target, user_keys) & self._has_history(self.source, user_keys)
        return torch.where(cold[:, None], mapped, own)

    def item_vectors(self, domain: str) -> torch.Tensor:
        return table_weight(self.items, domain)

    def shared_negatives(self) -> dict[str, int]:
        return {self.target: self.settings.cross_negatives}

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = in_domain_loss(self, lambda domain, users: self.users[domain](users), lambda domain, keys: self.items[domain](keys), batch)
        target_users = batch[batch_key("users", self.target)]
        overlap = torch.nonzero(self._has_history(self.source, target_users)).squeeze(1)
        mapped = self.mapping(self.source_profile(target_users[overlap]).detach())
        return loss + shared_ranking_loss(mapped, table_weight(self.items, self.target), batch, self.target, overlap)
