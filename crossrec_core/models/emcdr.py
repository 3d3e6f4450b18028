"""EMCDR (Man et al., IJCAI 2017): per-domain MF plus a source -> target mapping network.

Each domain has its own matrix factorisation (user and item tables). A mapping MLP
(d -> 2d -> d, tanh, as in the paper) learns to turn a user's source factors into their
target factors on the overlapping users (MSE). The paper trains the mapping after the
factorisations converge; here it trains in the same steps on the detached factors, so
that one trainer and per-epoch validation of cold-start users serve it too: the
mapping chases the current factors without pulling them.

Serving the target domain: warm users get their target factors, cold-start users
(source history only) their mapped source factors. Serving the source domain: source
factors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossrec_core.batches import batch_key
from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet
from crossrec_core.models.base import Recommender
from crossrec_core.models.mf import candidates, domain_weight, embedding_table, ranking_loss


class EMCDR(Recommender):
    name = "emcdr"

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__(features, settings)
        self.train_domains = features.domains
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

    def _has_history(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"has_history_{domain}")[user_keys]

    def user_vectors(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        own = self.users[domain](user_keys)
        if domain != self.target:
            return own
        mapped = self.mapping(self.users[self.source](user_keys))
        cold = ~self._has_history(self.target, user_keys) & self._has_history(self.source, user_keys)
        return torch.where(cold[:, None], mapped, own)

    def item_vectors(self, domain: str) -> torch.Tensor:
        return self.items[domain].weight

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = torch.zeros((), device=self.mapping[0].weight.device)
        for domain in self.train_domains:
            loss = loss + domain_weight(self, domain) * ranking_loss(
                self.users[domain](batch[batch_key("users", domain)]),
                self.items[domain](candidates(batch, domain)),
                batch[batch_key("weights", domain)],
            )
        target_users = batch[batch_key("users", self.target)]
        overlap = torch.unique(target_users[self._has_history(self.source, target_users)])
        if overlap.numel():
            mapped = self.mapping(self.users[self.source](overlap).detach())
            loss = loss + F.mse_loss(mapped, self.users[self.target](overlap).detach())
        return loss
