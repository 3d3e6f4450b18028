"""A two-tower model that serves vectors computed elsewhere (e.g. Spark ALS factors, or
given vectors in a test), so crossrec's evaluator and scorer can rank with them."""

from __future__ import annotations

import numpy as np
import torch

from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet
from crossrec_core.models.base import Recommender


class FixedVectors(Recommender):
    """User and item vectors of the target domain, fixed at construction. Not
    registered (no ``name``): nothing to train, nothing for ``model: auto`` to pick."""

    name = ""  # unregistered
    learned = False
    users: torch.Tensor
    items: torch.Tensor

    def __init__(self, features: FeatureSet, settings: ModelSettings, users: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor):
        super().__init__(features, settings)
        self.register_buffer("users", torch.as_tensor(users, dtype=torch.float32))
        self.register_buffer("items", torch.as_tensor(items, dtype=torch.float32))
        self.eval()

    def user_vectors(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        return self.users[user_keys]

    def item_vectors(self, domain: str) -> torch.Tensor:
        return self.items
