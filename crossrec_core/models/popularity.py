"""``popularity``: the floor every model must beat, and the fallback for unknown users.

Item vector = log1p(sum of the item's target training weights) (d = 1); user vector = 1.
With decayed weights (nightly features) recent popularity counts more; on offline data
(weight 1 per interaction) it is the log of the item's interaction count. Every user
gets the same ranking; equal popularity is broken by the lower item key (the
evaluator's and scorer's tie rule, crossrec_core.evaluation.top_k).
"""

from __future__ import annotations

import numpy as np
import torch

from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet
from crossrec_core.models.base import Recommender


class Popularity(Recommender):
    name = "popularity"
    learned = False
    fitted_tensors = ("item_popularity",)
    item_popularity: torch.Tensor

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__(features, settings)
        self.register_buffer("item_popularity", torch.zeros(features.n_items(self.target), 1))

    def fit_fixed(self, features: FeatureSet) -> None:
        weights = np.asarray(features.train[self.target].sum(axis=0), dtype=np.float32).reshape(-1, 1)
        self.item_popularity = torch.from_numpy(np.log1p(weights)).to(self.item_popularity.device)

    def _check_domain(self, domain: str) -> None:
        if domain != self.target:
            raise ValueError(f"popularity serves the target domain {self.target!r} only, not {domain!r}")

    def user_vectors(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        self._check_domain(domain)
        return torch.ones(len(user_keys), 1, device=self.item_popularity.device)

    def item_vectors(self, domain: str) -> torch.Tensor:
        self._check_domain(domain)
        return self.item_popularity
