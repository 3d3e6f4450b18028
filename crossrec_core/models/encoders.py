"""History-encoder models that align domains: ``dann`` (adversarial) and ``mmd``.

A user's vector is built from their interaction history in ONE domain: the
``history_length`` most recent items (FeatureSet.recency where event times are known,
else the heaviest: nightly weights are decayed, so the most recent), looked up in that
domain's item table, pooled (``history_pooling``: the weighted mean, or
:class:`AttentionPooling`, the user's interests attending over the items' features) and
passed through ONE :class:`HistoryEncoder` shared by both domains. The same per-domain
item table feeds the encoder and is scored against (tied: half the parameters, and an
item is close to the items it is bought with). Vectors are unit length and scores are
cosine similarities divided by a temperature of 0.1 (unnormalised vectors diverged
under the adversary).

Training, per step (L = sum of, each a sampled softmax, mf.ranking_loss):
* in-domain, in both domains (target weight 1, source ``source_weight``): the vector
  built from a user's history in a domain, with the positive item taken out of that
  history, ranks the positive above the sampled negatives;
* cross-domain, on overlapping users: the vector built from a user's SOURCE history
  ranks their TARGET items. This is what makes transfer work: alignment alone only
  makes the two vector distributions alike, this ties a user's source-built vector to
  what they do in the target domain. It ranks against ``cross_negatives`` negatives
  shared by the batch (mf.shared_ranking_loss), a far larger set than per-row
  negatives at the same cost;
* alignment between source-built and target-built vectors, weighted by
  ``alignment_weight`` (the model's own default unless configured): DANN (Ganin &
  Lempitsky 2015) trains a domain classifier behind a gradient-reversal layer whose
  weight rises as 2 / (1 + exp(-10 p)) - 1 with training progress p = epoch / epochs;
  MMD penalises the maximum mean discrepancy under a sum of Gaussian kernels of several
  bandwidths.

Serving a domain: a user with history only there gets the vector built from it; a
user with history in both domains gets the normalised sum of the two built vectors; a
cold-start user (history only in the other domain) gets the vector built from that
history; a user with neither gets the encoder's output for an empty history.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from crossrec_core.batches import batch_key, padded_histories
from crossrec_core.config import ModelSettings
from crossrec_core.data import FeatureSet
from crossrec_core.models.base import Recommender
from crossrec_core.models.mf import (
    candidates,
    domain_weight,
    embedding_rows,
    embedding_table,
    ranking_loss,
    shared_ranking_loss,
    table_weight,
)

TEMPERATURE = 0.1
MMD_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # multiples of the mean squared distance
MMD_MAX_ROWS = 512  # rows per domain in the O(n^2) kernel; batches are shuffled


class HistoryEncoder(nn.Module):
    """Pooled history vector [B, d] -> unit user vector [B, d] (residual MLP)."""

    def __init__(self, dim: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(pooled + self.transform(pooled), dim=-1)


class AttentionPooling(nn.Module):
    """History pooling by attention: the user's interests (the weighted mean of their
    history) ask, each history item's features answer; items are weighted by the
    softmax of query . key / sqrt(d) plus the log of their interaction weight."""

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        nn.init.zeros_(self.query.weight)  # starts as the weighted mean
        nn.init.zeros_(self.query.bias)

    def forward(self, items: torch.Tensor, weights: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """items [B, L, d], weights [B, L] (0: absent), mean [B, d] -> pooled [B, d]."""
        logits = (self.key(items) @ self.query(mean)[:, :, None]).squeeze(-1) / math.sqrt(items.shape[-1])
        logits = (logits + weights.clamp_min(1e-12).log()).masked_fill(weights <= 0, -torch.inf)
        attention = torch.softmax(logits, dim=1).nan_to_num(0.0)  # an empty history pools to 0
        return (attention[:, :, None] * items).sum(1)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


class AlignedHistoryModel(Recommender):
    """The shared encoder, histories and losses; subclasses define the alignment term."""

    default_alignment_weight: ClassVar[float]

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__(features, settings)
        self.items = nn.ModuleDict({d: embedding_table(features.n_items(d), settings.dim) for d in features.domains})
        self.encoder = HistoryEncoder(settings.dim)
        self.attention = AttentionPooling(settings.dim) if settings.history_pooling == "attention" else None
        self.set_histories(features)

    @property
    def alignment_weight(self) -> float:
        configured = self.settings.alignment_weight
        return self.default_alignment_weight if configured is None else configured

    def shared_negatives(self) -> dict[str, int]:
        return {self.target: self.settings.cross_negatives}

    def set_histories(self, features: FeatureSet) -> None:
        for domain in features.domains:
            items, weights = padded_histories(features.train[domain], self.settings.history_length, features.recency.get(domain))
            self.register_buffer(f"history_{domain}", items, persistent=False)
            self.register_buffer(f"history_weights_{domain}", weights, persistent=False)

    def _other(self, domain: str) -> str:
        if domain not in self.items:
            raise ValueError(f"{self.name} serves domains {list(self.items)}, not {domain!r}")
        return self.source if domain == self.target else self.target

    def has_history(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        # Histories are sorted heaviest first and real weights are > 0.
        return getattr(self, f"history_weights_{domain}")[user_keys, 0] > 0

    def unit_items(self, domain: str) -> torch.Tensor:
        return F.normalize(table_weight(self.items, domain), dim=-1)

    def encode(
        self,
        domain: str,
        user_keys: torch.Tensor,
        exclude_items: torch.Tensor | None = None,
        unit_items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit vectors built from the users' ``domain`` history, optionally each without
        one item (its training positive). The weighted sum is pooled once per distinct
        user (``embedding_bag`` over the non-padding entries); an excluded item's share
        is then subtracted per row."""
        table = self.unit_items(domain) if unit_items is None else unit_items
        users, inverse = torch.unique(user_keys, return_inverse=True)
        items = getattr(self, f"history_{domain}")[users]
        weights = getattr(self, f"history_weights_{domain}")[users]
        if self.attention is not None:
            return self._encode_attention(table, items[inverse], weights[inverse], exclude_items)
        present = weights > 0
        lengths = present.sum(1)
        offsets = torch.cumsum(lengths, 0) - lengths
        sums = F.embedding_bag(items[present], table, offsets, mode="sum", per_sample_weights=weights[present])[inverse]
        totals = weights.sum(1)[inverse]
        if exclude_items is not None:
            excluded = ((items[inverse] == exclude_items[:, None]) * weights[inverse]).sum(1)
            sums = sums - excluded[:, None] * embedding_rows(exclude_items, table)
            totals = totals - excluded
        nonempty = totals > 1e-6
        pooled = torch.where(nonempty[:, None], sums / totals.clamp_min(1e-6)[:, None], torch.zeros_like(sums))
        return self.encoder(pooled)

    def _encode_attention(
        self, table: torch.Tensor, items: torch.Tensor, weights: torch.Tensor, exclude_items: torch.Tensor | None
    ) -> torch.Tensor:
        if exclude_items is not None:
            weights = weights.masked_fill(items == exclude_items[:, None], 0.0)
        vectors = embedding_rows(items, table)  # [B, L, d]
        totals = weights.sum(1, keepdim=True)
        mean = (weights[:, :, None] * vectors).sum(1) / totals.clamp_min(1e-6)
        assert self.attention is not None
        pooled = self.attention(vectors, weights, mean)
        return self.encoder(torch.where(totals > 1e-6, pooled, torch.zeros_like(pooled)))

    def logit_scale(self) -> torch.Tensor | float:
        """What unit-vector cosines are multiplied by to become logits (1 / temperature)."""
        return 1.0 / TEMPERATURE

    def user_vectors(self, domain: str, user_keys: torch.Tensor) -> torch.Tensor:
        other = self._other(domain)
        own, transferred = self.encode(domain, user_keys), self.encode(other, user_keys)
        has_own = self.has_history(domain, user_keys)[:, None]
        has_other = self.has_history(other, user_keys)[:, None]
        combined = F.normalize(own + transferred, dim=-1)
        vectors = torch.where(has_own, torch.where(has_other, combined, own), transferred)
        return vectors * self.logit_scale()

    def item_vectors(self, domain: str) -> torch.Tensor:
        self._other(domain)
        return self.unit_items(domain)

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        unit_tables = {domain: self.unit_items(domain) for domain in self.train_domains}
        loss = torch.zeros((), device=unit_tables[self.target].device)
        built: dict[str, torch.Tensor] = {}
        scored: dict[str, torch.Tensor] = {}
        for domain in self.train_domains:
            unit = unit_tables[domain]
            users, positives = batch[batch_key("users", domain)], batch[batch_key("positives", domain)]
            built[domain] = self.encode(domain, users, exclude_items=positives, unit_items=unit)
            scored[domain] = embedding_rows(candidates(batch, domain), unit)
            loss = loss + domain_weight(self, domain) * ranking_loss(
                built[domain] / TEMPERATURE, scored[domain], batch[batch_key("weights", domain)]
            )
        users = batch[batch_key("users", self.target)]
        overlap = torch.nonzero(self.has_history(self.source, users)).squeeze(1)
        loss = loss + self.cross_domain_loss(batch, users, overlap, unit_tables)
        return loss + self.alignment_weight * self.alignment_loss(built[self.source], built[self.target])

    def cross_domain_loss(
        self, batch: dict[str, torch.Tensor], users: torch.Tensor, overlap: torch.Tensor, unit_tables: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The vectors built from overlapping users' SOURCE history rank their TARGET items."""
        source_built = self.encode(self.source, users[overlap], unit_items=unit_tables[self.source])
        return shared_ranking_loss(source_built * self.logit_scale(), unit_tables[self.target], batch, self.target, overlap)

    @abstractmethod
    def alignment_loss(self, source_built: torch.Tensor, target_built: torch.Tensor) -> torch.Tensor:
        """A penalty that is small when the two sets of (unit) vectors look alike."""


class DANN(AlignedHistoryModel):
    name = "dann"
    default_alignment_weight = 0.1

    def __init__(self, features: FeatureSet, settings: ModelSettings):
        super().__init__(features, settings)
        self.domain_classifier = nn.Sequential(nn.Linear(settings.dim, settings.dim), nn.ReLU(), nn.Linear(settings.dim, 1))
        self.reversal_weight = 0.0

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        progress = epoch / epochs
        self.reversal_weight = 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0

    def alignment_loss(self, source_built: torch.Tensor, target_built: torch.Tensor) -> torch.Tensor:
        vectors = _GradientReversal.apply(torch.cat([source_built, target_built]), self.reversal_weight)
        labels = torch.cat([source_built.new_zeros(len(source_built)), target_built.new_ones(len(target_built))])
        return F.binary_cross_entropy_with_logits(self.domain_classifier(vectors).squeeze(-1), labels)


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared MMD between samples x and y under a sum of Gaussian kernels whose
    bandwidths are multiples of the mean squared pairwise distance (detached)."""
    if len(x) == 0 or len(y) == 0:
        return x.new_zeros(())
    samples = torch.cat([x, y])
    distances = torch.cdist(samples, samples).square()
    scale = distances.detach().mean().clamp_min(1e-6)
    kernel = torch.stack([torch.exp(-distances / (scale * b)) for b in MMD_BANDWIDTHS]).sum(0)
    n = len(x)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


class MMD(AlignedHistoryModel):
    name = "mmd"
    default_alignment_weight = 1.0

    def alignment_loss(self, source_built: torch.Tensor, target_built: torch.Tensor) -> torch.Tensor:
        return gaussian_mmd(source_built[:MMD_MAX_ROWS], target_built[:MMD_MAX_ROWS])
