"""The one model interface: the trainer, evaluator and scorer never special-case a model.

Every model has two towers, ``user_vectors(domain, user_keys)`` and
``item_vectors(domain)``, and ONE score hook, :meth:`Recommender.score`, that the
trainer's validation, the evaluator and the nightly scorer all call for a block of
users; its default is the dot product of the towers (:func:`dot_scores`: dense or
sparse operands, e.g. item_knn_cross's source-history multi-hot against co-occurrence
columns). A model may add to it inside its own module (the hybrid's item-to-item path
and item bias). Models with an item-to-item path also answer :meth:`Recommender.explain`
(the source items behind a recommendation). Learned models implement
``calculate_loss``; fixed models (popularity, item_knn_cross, ease_cross) compute
everything in ``fit_fixed`` and are never handed to the optimiser.

Models are parametrised by domain name, never by copy-pasted source/target paths.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from crossrec_core.batches import tensor_entry_rows
from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet


class Recommender(nn.Module, ABC):
    """Base class of every crossrec model, registered by ``name``."""

    name: ClassVar[str]
    learned: ClassVar[bool] = True  # False: no optimiser, fit_fixed does the work
    # Buffers and parameters whose shape load_state_dict takes from the file (fitted to
    # the data the model was built on, not to the features it is rebuilt with).
    fitted_tensors: ClassVar[tuple[str, ...]] = ()
    # Tensors never copied from another night's model (their rows are not stable keys).
    not_warm_started: ClassVar[tuple[str, ...]] = ()
    registry: ClassVar[dict[str, type[Recommender]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if getattr(cls, "name", None):
            Recommender.registry[cls.name] = cls

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__()
        self.source = features.source
        self.target = features.target
        self.settings = settings
        # Domains whose interactions the trainer batches (learned models).
        self.train_domains: tuple[str, ...] = features.domains

    # ---- the face every consumer uses -------------------------------------------------
    @abstractmethod
    def user_vectors(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        """Vectors [len(user_keys), d] that serve ``domain`` for these users, built from
        whatever the model knows of them (ids, or history in either domain)."""

    @abstractmethod
    def item_vectors(self, domain: str) -> torch.Tensor:
        """Vectors [n_items(domain), d] (dense, or a sparse COO/CSR tensor)."""

    def score(self, domain: str, user_keys: torch.Tensor, item_vectors: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [len(user_keys), n_items(domain)] of a block of users; ``item_vectors``
        is ``self.item_vectors(domain)``, computed once per run by the caller. ``out``:
        a float32 block the dense product may be written into (see :func:`dot_scores`)."""
        return dot_scores(self.user_vectors(domain, user_keys), item_vectors, out=out)

    def explain(self, domain: str, user_keys: torch.Tensor, item_keys: torch.Tensor, n: int) -> torch.Tensor | None:
        """Source item keys [len(user_keys), k, n] that contributed most to the score of
        each of ``item_keys`` [len(user_keys), k] (-1 where fewer did), or None for a
        model without an item-to-item path."""
        return None

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training loss for one batch (learned models)."""
        raise NotImplementedError(f"{self.name} is not trained by gradient descent")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.fitted_tensors:
            if prefix + name in state_dict:
                if name in self._parameters:
                    current, saved = self._parameters[name], state_dict[prefix + name]
                    if current.shape != saved.shape:  # same shape: copied in place (an optimiser may hold it)
                        self._parameters[name] = nn.Parameter(saved.detach().clone().to(current.device), current.requires_grad)
                else:
                    self._buffers[name] = state_dict[prefix + name].detach().clone().to(self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fit_fixed(self, features: FeatureSet) -> None:
        """Closed-form fitting (models with ``learned = False``)."""

    def tuning_grid(self) -> list[dict[str, Any]]:
        """Settings updates the trainer fits one by one, keeping the best on target
        validation (a fixed model's hyper-parameters, e.g. ease_cross's ridge penalty)."""
        return [{}]

    def set_histories(self, features: FeatureSet) -> None:
        """Give the model the interaction histories it builds user vectors from (the
        current night's features at scoring time). History-free models ignore it."""

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Schedules that depend on training progress (DANN's reversal weight)."""

    def shared_negatives(self) -> dict[str, int]:
        """Domains whose batches also carry negatives shared by all rows, and how many
        (``shared_ranking_loss``); most models need none."""
        return {}


def dot_scores(user_vectors: torch.Tensor, item_vectors: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Scores [users, items] = user_vectors @ item_vectors.T, dense or sparse operands.

    ``out``: a contiguous float32 [users, items] tensor that dense and sparse x sparse
    products are written into (a block scorer reuses one: allocating a fresh block per
    batch costs about as much as the product itself, in page faults)."""
    if user_vectors.layout != torch.strided and item_vectors.layout != torch.strided:
        # Both sparse (item_knn_cross): CSR @ CSR is torch's fast sparse product; an item
        # matrix stored as CSC transposes to CSR for free.
        product = torch.sparse.mm(user_vectors.to_sparse_csr(), item_vectors.t().to_sparse_csr())
        dense = out.zero_() if out is not None else torch.zeros(product.shape, dtype=product.dtype, device=product.device)
        return add_sparse_(dense, product)
    if item_vectors.is_sparse or item_vectors.layout == torch.sparse_csr:
        dense_users = user_vectors.to_dense() if user_vectors.is_sparse else user_vectors
        return torch.sparse.mm(item_vectors, dense_users.T).T
    if user_vectors.is_sparse or user_vectors.layout == torch.sparse_csr:
        return torch.sparse.mm(user_vectors, item_vectors.T)
    if out is not None and user_vectors.dtype == item_vectors.dtype == out.dtype:
        return torch.matmul(user_vectors, item_vectors.T, out=out)
    return user_vectors @ item_vectors.T


def add_sparse_(dense: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``dense += matrix`` in place for a sparse CSR ``matrix`` of the same shape: one
    scatter of its stored entries (CSR ``to_dense`` is several times slower and
    allocates a second dense block)."""
    rows = tensor_entry_rows(torch.diff(matrix.crow_indices()))
    return dense.index_put_((rows, matrix.col_indices()), matrix.values(), accumulate=True)


Derived = TypeVar("Derived")


class Memo(Generic[Derived]):
    """The last value that ``build`` derived from some tensors, rebuilt only when one of
    them changed: in place (its version counter, which optimiser steps and
    ``load_state_dict`` bump), replaced or moved (its storage). The scorer asks for a
    model's per-run constants (e.g. the hybrid's item-to-item weights) once per block."""

    def __init__(self) -> None:
        self._key: tuple[tuple[int, int], ...] | None = None
        self._value: Derived | None = None

    def get(self, tensors: tuple[torch.Tensor, ...], build: Callable[[], Derived]) -> Derived:
        key = tuple((tensor.data_ptr(), tensor._version) for tensor in tensors)
        if self._value is None or key != self._key:
            self._value, self._key = build(), key
        return self._value


def build_model(name: str, features: FeatureSet, settings: ModelSettings) -> Recommender:
    """Instantiate a registered model by name (importing the model modules first)."""
    import crossrec_core.models  # noqa: F401  registers every model

    try:
        cls = Recommender.registry[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(Recommender.registry)}") from None
    return cls(features, settings)
