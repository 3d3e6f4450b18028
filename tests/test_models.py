"""The learned models: one interface, correct negatives and histories, transfer paths."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from crossrec_core.batches import InteractionBatches, NegativeSampler, batch_key, padded_histories
from crossrec_core.config import load_settings
from crossrec_core.contracts import Segment
from crossrec_core.data import FeatureSet
from crossrec_core.models.base import build_model, dot_scores
from crossrec_core.models.encoders import _GradientReversal, gaussian_mmd

pytestmark = pytest.mark.usefixtures("single_thread_torch")

LEARNED = ("target_only", "joint_mf", "emcdr", "dann", "mmd")


def model_settings(**overrides):
    return load_settings(model={"dim": 8, "batch_size": 64, "negatives": 3, "device": "cpu", **overrides}).model


def one_batch(model, features, seed=0):
    batches = InteractionBatches(features, model.train_domains, 64, 3, shared_negatives=model.shared_negatives())
    return next(batches.epoch(torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("name", LEARNED)
def test_every_learned_model_honours_the_interface(name, tiny_features):
    torch.manual_seed(0)
    model = build_model(name, tiny_features, model_settings())
    assert model.name == name and model.learned
    keys = torch.arange(tiny_features.n_users)
    served = (tiny_features.target,) if name == "target_only" else tiny_features.domains
    for domain in served:
        users = model.user_vectors(domain, keys)
        items = model.item_vectors(domain)
        assert users.shape == (tiny_features.n_users, 8) and users.dtype == torch.float32
        assert items.shape == (tiny_features.n_items(domain), 8) and items.dtype == torch.float32
        assert dot_scores(users, items).shape == (tiny_features.n_users, tiny_features.n_items(domain))
    with pytest.raises((ValueError, KeyError), match="nowhere"):
        model.item_vectors("nowhere")

    loss = model.calculate_loss(one_batch(model, tiny_features))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    untrained = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not untrained, f"parameters that the loss never reaches: {untrained}"


def test_target_only_does_not_serve_the_source_domain(tiny_features):
    model = build_model("target_only", tiny_features, model_settings())
    with pytest.raises(ValueError, match="target_only serves domains \\['tgt'\\], not 'src'"):
        model.user_vectors("src", torch.arange(3))


def test_negatives_are_never_positives_and_cover_every_negative_uniformly():
    rng = np.random.default_rng(1)
    dense = rng.random((50, 12)) < 0.8  # most items are positives
    dense[:, 0] = False  # every user keeps at least one negative
    dense[7] = True
    dense[7, 5] = False  # user 7 has exactly one negative: item 5
    sampler = NegativeSampler(sp.csr_matrix(dense.astype(np.float32)))
    users = torch.from_numpy(rng.integers(0, 50, size=20000))
    negatives = sampler.sample(users, 5, torch.Generator().manual_seed(0))
    assert negatives.shape == (20000, 5)
    assert not dense[users.numpy()[:, None], negatives.numpy()].any()
    assert set(negatives[users == 7].unique().tolist()) == {5}
    # every negative of every user is drawn, about equally often
    drawn = np.zeros((50, 12))
    np.add.at(drawn, (users.numpy()[:, None].repeat(5, 1), negatives.numpy()), 1)
    assert ((drawn > 0) == ~dense).all()
    share = drawn / drawn.sum(1, keepdims=True)
    expected = (~dense) / (~dense).sum(1, keepdims=True)
    assert np.abs(share - expected).max() < 0.12


@pytest.mark.parametrize("n_negatives", [4, 12, 50])
def test_shared_negatives_are_distinct_and_mask_exactly_each_rows_own_positives(n_negatives):
    rng = np.random.default_rng(2)
    dense = rng.random((40, 12)) < 0.5
    sampler = NegativeSampler(sp.csr_matrix(dense.astype(np.float32)))
    users = torch.from_numpy(rng.integers(0, 40, size=300))
    negatives, excluded = sampler.shared(users, n_negatives, torch.Generator().manual_seed(0))
    assert len(negatives) == min(n_negatives, 12) and negatives.unique().numel() == len(negatives)
    assert torch.equal(excluded, torch.from_numpy(dense[users.numpy()[:, None], negatives.numpy()]))


def test_a_user_with_every_item_has_no_examples_and_cannot_be_sampled():
    matrix = sp.csr_matrix(np.array([[1, 1, 1], [1, 0, 0]], dtype=np.float32))
    sampler = NegativeSampler(matrix)
    with pytest.raises(ValueError, match=r"users \[0\] interacted with all 3 items"):
        sampler.sample(torch.tensor([0, 1]), 2, torch.Generator().manual_seed(0))
    features = FeatureSet(
        "a", "b", np.array(["x", "y"]), {"a": np.array(["i", "j", "k"]), "b": np.array(["i", "j", "k"])}, {"a": matrix, "b": matrix}
    )
    batches = InteractionBatches(features, ("b",), 8, 1)
    assert batches.n_examples == 1  # only user 1's interaction remains
    batch = next(batches.epoch(torch.Generator().manual_seed(0)))
    assert batch[batch_key("users", "b")].tolist() == [1]
    assert batch[batch_key("negatives", "b")].item() in (1, 2)


def test_batches_visit_every_interaction_once_per_epoch(tiny_features):
    batches = InteractionBatches(tiny_features, tiny_features.domains, 50, 2)
    seen = {d: [] for d in tiny_features.domains}
    for batch in batches.epoch(torch.Generator().manual_seed(3)):
        for d in tiny_features.domains:
            seen[d].append(batch[batch_key("users", d)] * 1000 + batch[batch_key("positives", d)])
    for d in tiny_features.domains:
        matrix = tiny_features.train[d].tocoo()
        expected = np.sort(matrix.row.astype(np.int64) * 1000 + matrix.col)
        assert np.array_equal(np.sort(torch.cat(seen[d]).numpy()), expected)


def test_padded_histories_keep_the_heaviest_items():
    matrix = sp.csr_matrix(np.array([[0.5, 3.0, 0, 2.0], [0, 0, 0, 0], [0, 0, 1.0, 0]], dtype=np.float32))
    items, weights = padded_histories(matrix, 2)
    assert items.tolist() == [[1, 3], [0, 0], [2, 0]]
    assert weights.tolist() == [[3.0, 2.0], [0.0, 0.0], [1.0, 0.0]]


def test_gradient_reversal_flips_and_scales_the_gradient():
    inputs = torch.randn(4, 3, requires_grad=True)
    _GradientReversal.apply(inputs, 0.3).sum().backward()
    assert torch.allclose(inputs.grad, torch.full((4, 3), -0.3))


def test_dann_reversal_weight_follows_the_schedule(tiny_features):
    model = build_model("dann", tiny_features, model_settings())
    model.on_epoch_start(0, 10)
    assert model.reversal_weight == 0.0
    model.on_epoch_start(5, 10)
    assert model.reversal_weight == pytest.approx(2 / (1 + np.exp(-5)) - 1)


def test_mmd_separates_shifted_samples():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=generator)
    same = torch.randn(200, 4, generator=generator)
    assert gaussian_mmd(x, same) < 0.05
    assert gaussian_mmd(x, same + 2.0) > 10 * gaussian_mmd(x, same)


def test_cold_start_users_are_served_from_their_source_side(tiny_features):
    cold = torch.from_numpy(tiny_features.holdout_users(Segment.COLD_START))
    warm = torch.arange(20, 25)  # history in both domains
    target_only = torch.arange(10, 15)  # no source history
    emcdr = build_model("emcdr", tiny_features, model_settings())
    with torch.no_grad():
        # the mapping of the mean of their source items' factors: cold users have no useful ID factor
        source_items = [torch.from_numpy(tiny_features.train["src"][int(user)].indices) for user in cold]
        profiles = torch.stack([emcdr.items["src"](items).mean(0) for items in source_items])
        assert torch.allclose(emcdr.user_vectors("tgt", cold), emcdr.mapping(profiles), atol=1e-6)
        assert torch.equal(emcdr.user_vectors("tgt", warm), emcdr.users["tgt"](warm))
    dann = build_model("dann", tiny_features, model_settings())
    with torch.no_grad():
        assert torch.equal(dann.user_vectors("tgt", cold), dann.encode("src", cold) * dann.logit_scale())
        assert torch.equal(dann.user_vectors("tgt", target_only), dann.encode("tgt", target_only) * dann.logit_scale())
        both = torch.nn.functional.normalize(dann.encode("tgt", warm) + dann.encode("src", warm), dim=-1)
        assert torch.allclose(dann.user_vectors("tgt", warm), both * dann.logit_scale())


def test_history_encoding_excludes_the_positive(tiny_features):
    """In-domain training must not see the item it is asked to rank."""
    model = build_model("dann", tiny_features, model_settings())
    matrix = tiny_features.train["tgt"]
    user = int(tiny_features.users_with_history("tgt")[0])
    own = matrix.indices[matrix.indptr[user] : matrix.indptr[user + 1]]
    keep = matrix.data[matrix.indptr[user] : matrix.indptr[user + 1]]
    reduced = sp.csr_matrix((keep[1:], (np.full(len(own) - 1, user), own[1:])), shape=matrix.shape)
    other = build_model("dann", tiny_features, model_settings())
    other.load_state_dict(model.state_dict())
    other.set_histories(FeatureSet(**{**tiny_features.__dict__, "train": {**tiny_features.train, "tgt": reduced}}))
    users = torch.tensor([user])
    with torch.no_grad():
        excluded = model.encode("tgt", users, exclude_items=torch.tensor([int(own[0])]))
        assert torch.allclose(excluded, other.encode("tgt", users), atol=1e-6)


def test_the_hybrid_serves_transfer_plus_memory_plus_bias_and_follows_its_weights(tiny_features):
    """The served score is cos / T + the sum of M over the user's source history + the
    item bias, and it follows every change of M: an optimiser step in place and a
    loaded state (the scorer derives M once per state, not once per block)."""
    torch.manual_seed(0)
    model = build_model("hybrid", tiny_features, model_settings()).eval()
    target, keys = tiny_features.target, torch.arange(tiny_features.n_users)
    history = getattr(model, f"history_{tiny_features.source}")
    present = getattr(model, f"history_weights_{tiny_features.source}") > 0

    def expected() -> torch.Tensor:
        memory = torch.zeros(len(model.memory_indptr) - 1, tiny_features.n_items(target))
        rows = torch.repeat_interleave(torch.arange(len(memory)), torch.diff(model.memory_indptr))
        memory[rows, model.memory_indices] = model.memory_weights()
        reached = torch.where(present[:, :, None], memory[history], 0.0).sum(1)
        transfer = dot_scores(model.user_vectors(target, keys), model.item_vectors(target))
        return transfer + reached + model.item_bias

    def served() -> torch.Tensor:
        return model.score(target, keys, model.item_vectors(target))

    with torch.no_grad():
        assert model.memory_indices.numel() > 0
        torch.testing.assert_close(served(), expected())
        model.memory_values.add_(torch.rand_like(model.memory_values))  # as an optimiser step does
        model.item_bias.add_(1.0)
        torch.testing.assert_close(served(), expected())
        other = build_model("hybrid", tiny_features, model_settings())
        other.memory_values.normal_()
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(served(), expected())


@pytest.mark.parametrize("dense_block", [False, True], ids=["scatter", "dense-block"])
def test_the_hybrids_training_logits_are_the_memory_sums_with_the_user_left_out(tiny_features, monkeypatch, dense_block):
    """The memory logits that training ranks (positive first, then the shared negatives)
    are the sums of M over each row's source history, minus, in the positive's column, the
    row's own share of every count it is part of; the L2 penalty counts a correction once
    per row that reaches it. Both ways of computing the product give them, with the same
    gradients."""
    from crossrec_core.models import hybrid

    monkeypatch.setattr(hybrid, "prefer_dense_block", lambda products, cells: dense_block)
    torch.manual_seed(0)
    model = build_model("hybrid", tiny_features, model_settings(memory_l2=0.5))
    with torch.no_grad():
        model.memory_values.normal_()
    source, target = tiny_features.source, tiny_features.target
    keys = torch.from_numpy(tiny_features.users_with_history(source)).repeat(2)
    n_target = tiny_features.n_items(target)
    positives = torch.randint(n_target, (len(keys),), generator=torch.Generator().manual_seed(1))
    negatives = torch.randperm(n_target, generator=torch.Generator().manual_seed(2))[: n_target // 2]

    logits, penalty = model._memory_logits(keys, positives, negatives)
    (logits.sum() + penalty).backward()

    weights = model.memory_weights().detach()
    rows = torch.repeat_interleave(torch.arange(len(model.memory_indptr) - 1), torch.diff(model.memory_indptr))
    memory = torch.zeros(len(model.memory_indptr) - 1, n_target).index_put((rows, model.memory_indices), weights)
    stored = torch.zeros(memory.shape, dtype=torch.bool).index_put((rows, model.memory_indices), torch.tensor(True))
    corrections = torch.zeros(memory.shape).index_put((rows, model.memory_indices), model.memory_values.detach())
    history = getattr(model, f"history_{source}")
    present = getattr(model, f"history_weights_{source}") > 0
    scale = model.memory_log_scale.exp().detach()
    expected_penalty = torch.zeros(())
    for row, (key, positive) in enumerate(zip(keys.tolist(), positives.tolist(), strict=True)):
        items = history[key][present[key]]
        sums = memory[items].sum(0)
        own = stored[items, positive].sum() * scale * model.memory_user_share[positive]
        torch.testing.assert_close(logits[row, 0].detach(), sums[positive] - own)
        torch.testing.assert_close(logits[row, 1:].detach(), sums[negatives])
        expected_penalty += 0.5 * corrections[items].square().sum() / len(keys)
    torch.testing.assert_close(penalty.detach(), expected_penalty)
    # d(logits.sum() + penalty) / d correction[i, j]: one per (row with i in its history,
    # logit column of item j), plus 2 * 0.5 * correction * (rows with i) / rows.
    reach = torch.zeros(memory.shape)
    rows_with = torch.zeros(len(memory))
    for key, positive in zip(keys.tolist(), positives.tolist(), strict=True):
        items = history[key][present[key]]
        columns = torch.cat([torch.tensor([positive]), negatives])
        reach.index_put_(
            (items[:, None].expand(-1, len(columns)), columns[None, :].expand(len(items), -1)), torch.tensor(1.0), accumulate=True
        )
        rows_with[items] += 1
    expected_grad = reach + corrections * rows_with[:, None] / len(keys)
    torch.testing.assert_close(model.memory_values.grad, expected_grad[rows, model.memory_indices])
    # d / d log(scale): scale x the count part of every logit, the user's share left out
    counts = torch.zeros(memory.shape).index_put((rows, model.memory_indices), model.memory_counts)
    count_part = torch.zeros(())
    for key, positive in zip(keys.tolist(), positives.tolist(), strict=True):
        items = history[key][present[key]]
        sums = counts[items].sum(0)
        count_part += sums[positive] - stored[items, positive].sum() * model.memory_user_share[positive] + sums[negatives].sum()
    torch.testing.assert_close(model.memory_log_scale.grad, scale * count_part)
