"""The trainer, model files and the train stage: repeatable, resumable, transferable."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import make_cross_domain_features

from crossrec_core import trainer, training
from crossrec_core.config import load_settings
from crossrec_core.contracts import Segment
from crossrec_core.model_store import ModelFileError, candidate_version, data_card, load_model, model_dir, read_card, save_model
from crossrec_core.models.base import build_model, dot_scores
from crossrec_core.models.encoders import DANN
from crossrec_core.trainer import fit_model, warm_start

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def model_settings(**overrides):
    values = {"dim": 8, "batch_size": 64, "negatives": 3, "learning_rate": 0.05, "epochs": 3, "patience": 10, "device": "cpu"}
    return load_settings(model={**values, **overrides}).model


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["joint_mf", "dann"])
def test_seeded_cpu_training_is_bit_repeatable(name, tiny_features):
    first, first_history = fit_model(name, tiny_features, model_settings(), progress=False)
    again, again_history = fit_model(name, tiny_features, model_settings(), progress=False)
    other, _ = fit_model(name, tiny_features, model_settings(seed=7), progress=False)
    assert same_weights(first, again)
    assert [e["loss"] for e in first_history.epochs] == [e["loss"] for e in again_history.epochs]
    assert not same_weights(first, other)


def test_dann_transfers_to_cold_start_users(tiny_features):
    """Target items follow from source items: a cold-start user's source history must
    rank their held-out target items far above chance."""
    untrained = trainer.validate(build_model("dann", tiny_features, model_settings()), tiny_features)
    _model, history = fit_model("dann", tiny_features, model_settings(epochs=4), progress=False)
    # 4 of a cluster's 10 target items held out: ranking the cluster first gives ~0.7
    assert history.validation["cold_start"]["ndcg@10"] > 0.6 > 2 * untrained["cold_start"]["ndcg@10"]
    assert history.best_score == history.validation["all"]["ndcg@10"]


def test_early_stopping_stops_and_keeps_the_best_weights(tiny_features, monkeypatch):
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.9, 0.9])
    snapshots = []

    def scripted_validate(model, features, device):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        score = next(scores)
        return {"all": {"ndcg@10": score}, "warm": {"ndcg@10": score}}

    monkeypatch.setattr(trainer, "validate", scripted_validate)
    model, history = fit_model("joint_mf", tiny_features, model_settings(epochs=6, patience=2), progress=False)
    assert len(history.epochs) == 4 and history.stopped_early
    assert history.best_epoch == 2 and history.best_score == 0.3
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())


def test_killed_training_resumes_from_its_checkpoint(tiny_features, tmp_path, monkeypatch):
    settings = model_settings(epochs=4)
    reference, reference_history = fit_model("dann", tiny_features, settings, progress=False)

    real_validate = trainer.validate
    validated = []

    def killed_in_epoch_three(model, features, device):
        if len(validated) == 2:
            raise KeyboardInterrupt  # the process dies after epoch 2's checkpoint
        validated.append(True)
        return real_validate(model, features, device)

    monkeypatch.setattr(trainer, "validate", killed_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        fit_model("dann", tiny_features, settings, checkpoint_dir=tmp_path / "ckpt", progress=False)
    monkeypatch.setattr(trainer, "validate", real_validate)

    started_epochs = []
    real_start = DANN.on_epoch_start
    monkeypatch.setattr(DANN, "on_epoch_start", lambda self, epoch, epochs: (started_epochs.append(epoch), real_start(self, epoch, epochs)))
    metrics_log = tmp_path / "metrics.jsonl"
    resumed, history = fit_model("dann", tiny_features, settings, checkpoint_dir=tmp_path / "ckpt", progress=False, metrics_log=metrics_log)
    assert history.resumed_from_epoch == 2 and started_epochs == [2, 3]
    assert same_weights(resumed, reference)
    assert [e["loss"] for e in history.epochs] == [e["loss"] for e in reference_history.epochs]
    lines = [json.loads(line) for line in metrics_log.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4] and lines[0]["model"] == "dann"


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_features, tmp_path):
    fit_model("joint_mf", tiny_features, model_settings(epochs=1), checkpoint_dir=tmp_path, progress=False)
    _, history = fit_model("joint_mf", tiny_features, model_settings(epochs=1, dim=4), checkpoint_dir=tmp_path, progress=False)
    assert history.resumed_from_epoch == 0 and len(history.epochs) == 1


@pytest.mark.parametrize("name", ["joint_mf", "dann"])
def test_warm_start_copies_old_rows_and_keeps_new_ones(name):
    old_features = make_cross_domain_features(n_users=90, n_clusters=3)
    new_features = make_cross_domain_features(n_users=120, n_clusters=4)  # keys appended in both
    settings = model_settings()
    torch.manual_seed(1)
    old = build_model(name, old_features, settings)
    torch.manual_seed(2)
    fresh = build_model(name, new_features, settings)
    torch.manual_seed(2)
    warmed = build_model(name, new_features, settings)
    copied = warm_start(warmed, old.state_dict())

    assert set(copied) == set(old.state_dict())
    for key, old_tensor in old.state_dict().items():
        new_tensor, init = warmed.state_dict()[key], fresh.state_dict()[key]
        rows = old_tensor.shape[0] if old_tensor.dim() else None
        assert torch.equal(new_tensor[:rows], old_tensor)
        assert torch.equal(new_tensor[rows:], init[rows:])
    assert any(warmed.state_dict()[k].shape[0] > old.state_dict()[k].shape[0] for k in copied)

    _, history = fit_model(name, new_features, model_settings(epochs=1), warm_start_from=old.state_dict(), progress=False)
    assert set(history.warm_started) == set(copied)


@pytest.mark.parametrize("name", ["emcdr", "dann"])
def test_saved_model_loads_with_identical_scores(name, tiny_features, lake):
    model, history = fit_model(name, tiny_features, model_settings(epochs=1), progress=False)
    version = save_model(lake, "2026-01-05", model, {**data_card(tiny_features), "metrics": history.validation})
    save_model(lake, "2026-01-05", model, {**data_card(tiny_features), "metrics": history.validation})  # a rerun replaces
    loaded, card = load_model(lake, version, tiny_features)

    keys = torch.arange(tiny_features.n_users)
    with torch.no_grad():
        for domain in tiny_features.domains:
            expected = dot_scores(model.user_vectors(domain, keys), model.item_vectors(domain))
            assert torch.equal(dot_scores(loaded.user_vectors(domain, keys), loaded.item_vectors(domain)), expected)
    assert re.fullmatch(r"models/ds=2026-01-05/model=[0-9a-f]{12}", version) and card["model_version"] == version
    assert card["name"] == name and card["config"]["dim"] == 8 and card["ds"] == "2026-01-05"
    assert card["n_users"] == tiny_features.n_users and card["n_items"] == {"src": 24, "tgt": 30}
    assert card["data_window"] == ["2025-12-06", "2026-01-05"] and card["metrics"] == history.validation
    assert card["code_version"]["package"] and card["created_at"]
    assert sorted(p.name for p in lake.root.joinpath("models").iterdir()) == ["ds=2026-01-05"]
    assert sorted(p.name for p in lake.root.joinpath("models/ds=2026-01-05").iterdir()) == ["candidate.json", version.split("/")[-1]]
    assert candidate_version(lake, "2026-01-05") == version
    assert not any(lake.root.joinpath("_staging").iterdir())


def test_a_different_model_for_the_same_night_gets_its_own_version_and_leaves_the_first_intact(tiny_features, lake):
    first, _ = fit_model("joint_mf", tiny_features, model_settings(epochs=1), progress=False)
    second, _ = fit_model("joint_mf", tiny_features, model_settings(epochs=1, seed=7), progress=False)
    served = save_model(lake, "2026-01-05", first, data_card(tiny_features))
    served_bytes = (model_dir(lake, served) / "model.pt").read_bytes()
    rerun = save_model(lake, "2026-01-05", second, data_card(tiny_features))
    assert rerun != served and candidate_version(lake, "2026-01-05") == rerun
    assert (model_dir(lake, served) / "model.pt").read_bytes() == served_bytes  # what the served rows link to stays
    again, _ = fit_model("joint_mf", tiny_features, model_settings(epochs=1, seed=7), progress=False)
    assert save_model(lake, "2026-01-05", again, data_card(tiny_features)) == rerun  # same model, same version


def test_truncated_or_missing_model_file_raises_a_clear_error(tiny_features, lake):
    model, _ = fit_model("joint_mf", tiny_features, model_settings(epochs=1), progress=False)
    version = save_model(lake, "2026-01-05", model, data_card(tiny_features))
    path = model_dir(lake, version) / "model.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=f"model file {path} is corrupt or truncated"):
        load_model(lake, version, tiny_features)
    path.unlink()
    with pytest.raises(ModelFileError, match=f"model file {path} does not exist"):
        load_model(lake, version, tiny_features)
    with pytest.raises(ModelFileError, match=r"models/ds=2026-01-06/model=0123456789ab/model_card\.json does not exist"):
        load_model(lake, "models/ds=2026-01-06/model=0123456789ab", tiny_features)
    with pytest.raises(ModelFileError, match="not of the form"):
        load_model(lake, "../elsewhere", tiny_features)


def test_a_model_file_of_other_features_does_not_load(tiny_features, lake):
    model, _ = fit_model("joint_mf", tiny_features, model_settings(epochs=1), progress=False)
    version = save_model(lake, "2026-01-05", model, data_card(tiny_features))
    with pytest.raises(ModelFileError, match="does not fit these features"):
        load_model(lake, version, make_cross_domain_features(n_users=150))


@pytest.mark.shared_data
def test_dann_beats_popularity_on_real_cold_start_users(shared_data):
    """Regression guard on a real subset: 3,000 overlapping amazon users plus 300
    cold-start users, sport (source) -> cloth (target), full ranking."""
    from crossrec_core.data import FeatureSet
    from crossrec_core.datasets import load_pairs
    from crossrec_core.evaluation import evaluate_model

    full = load_pairs(shared_data / "amazon-cloth-sport", source="sport", target="cloth").valid
    rng = np.random.default_rng(0)
    overlap = np.intersect1d(full.users_with_history("sport"), full.users_with_history("cloth"))
    users = np.sort(
        np.concatenate(
            [
                rng.choice(overlap, 3000, replace=False),
                rng.choice(full.holdout_users(Segment.COLD_START), 300, replace=False),
            ]
        )
    )
    rows = {d: full.train[d][users] for d in full.domains}
    held_out = full.holdout[Segment.COLD_START][users]
    items = {d: np.flatnonzero(rows[d].getnnz(axis=0) + (held_out.getnnz(axis=0) if d == "cloth" else 0)) for d in rows}
    features = FeatureSet(  # the subset's users and the items they touched
        source="sport",
        target="cloth",
        user_ids=full.user_ids[users],
        item_ids={d: full.item_ids[d][items[d]] for d in rows},
        train={d: rows[d][:, items[d]] for d in rows},
        holdout={Segment.COLD_START: held_out[:, items["cloth"]]},
    )
    settings = load_settings(model={"epochs": 6, "device": "cpu", "batch_size": 2048}).model
    _, history = fit_model("dann", features, settings, progress=False)
    popularity = build_model("popularity", features, settings)
    popularity.fit_fixed(features)
    popular = evaluate_model(popularity, features, segments=(Segment.COLD_START,), ks=(10,))
    assert history.validation["cold_start"]["ndcg@10"] > 3 * popular["cold_start"]["ndcg@10"]


def write_features(lake, features, ds):
    """Materialise a FeatureSet as the features/ds=DS partition the featurize stage writes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from crossrec_core.contracts import FEATURE_INTERACTIONS, ITEM_KEYS, USER_KEYS, Split
    from crossrec_core.features import MANIFEST

    splits = [(d, Split.TRAIN, features.train[d]) for d in features.domains]
    splits += [
        (features.target, Split.VALID_WARM, features.holdout[Segment.WARM]),
        (features.target, Split.VALID_COLD, features.holdout[Segment.COLD_START]),
    ]
    rows = []
    for domain, split, matrix in splits:
        coo = matrix.tocoo()
        rows.append(
            pa.table(
                {
                    "domain": [domain] * coo.nnz,
                    "user_key": coo.row.astype(np.int64),
                    "item_key": coo.col.astype(np.int64),
                    "weight": coo.data.astype(np.float64),
                    "last_ts": pa.array([0] * coo.nnz, pa.timestamp("us", tz="UTC")),
                    "split": [split.value] * coo.nnz,
                }
            )
        )
    tables = {
        USER_KEYS: pa.table({"user_id": features.user_ids.astype(str), "user_key": np.arange(features.n_users)}),
        ITEM_KEYS: pa.concat_tables(
            [
                pa.table(
                    {
                        "domain": [d] * features.n_items(d),
                        "item_id": features.item_ids[d].astype(str),
                        "item_key": np.arange(features.n_items(d)),
                    }
                )
                for d in features.domains
            ]
        ),
        FEATURE_INTERACTIONS: pa.concat_tables(rows),
    }
    with lake.replace_partition(USER_KEYS, ds=ds) as staged:
        for table, data in tables.items():
            (staged / table.subdir).mkdir()
            pq.write_table(table.validate(data), staged / table.subdir / "part-00000.parquet")
        (staged / MANIFEST).write_text(json.dumps({"window": list(features.window)}))


def stage_settings(lake_root, **model):
    values = {"dim": 8, "batch_size": 64, "negatives": 3, "learning_rate": 0.05, "epochs": 2, "device": "cpu", **model}
    return load_settings(lake=lake_root, domains={"source": "src", "target": "tgt"}, model=values)


def publish(lake, ds, version, features):
    """Stand-in for the publish stage: one recommendations partition naming the model."""
    import pyarrow as pa

    from crossrec_core.contracts import RECOMMENDATIONS

    rows = pa.table(
        {
            "user_id": list(features.user_ids[:2]),
            "rank": [1, 1],
            "item_id": ["tgt0", "tgt1"],
            "score": [1.0, 1.0],
            "model_version": [version, version],
            "segment": ["warm", "warm"],
            "because": [[], []],
            "ds": [ds, ds],
            "domain": [features.target, features.target],
        }
    )
    lake.replace_delta_rows(RECOMMENDATIONS, rows, where={"ds": ds, "domain": features.target})


def test_train_stage_saves_the_model_reports_and_warm_starts_from_the_published_one(lake_root, lake, tiny_features):
    from crossrec_core.reports import read_run_reports

    write_features(lake, tiny_features, "2026-01-05")
    settings = stage_settings(lake_root, name="dann")
    report = training.train_stage(settings, "2026-01-05")
    version = candidate_version(lake, "2026-01-05")
    card = read_card(lake, version)
    assert report.rows_in == sum(tiny_features.train[d].nnz for d in tiny_features.domains)
    assert report.metrics["model"] == "dann" and report.metrics["model_version"] == version
    assert report.metrics["examples_per_second"] > 0 and report.bytes_out > 0
    assert card["metrics"]["all"]["ndcg@10"] == report.metrics["validation"]["all"]["ndcg@10"]
    assert card["training"]["warm_started_from"] is None and card["data_window"] == list(tiny_features.window)
    assert not (lake.root / "models/_checkpoints/ds=2026-01-05").exists()

    training.train_stage(settings, "2026-01-05")  # a rerun replaces, never duplicates
    reports = read_run_reports(lake, "2026-01-05").to_pylist()
    assert [(r["stage"], r["status"]) for r in reports] == [("train", "success")]
    assert candidate_version(lake, "2026-01-05") == version  # bit-repeatable training: the same model

    publish(lake, "2026-01-05", version, tiny_features)
    write_features(lake, tiny_features, "2026-01-06")
    training.train_stage(settings, "2026-01-06")
    card = read_card(lake, candidate_version(lake, "2026-01-06"))
    assert card["training"]["warm_started_from"] == version


def test_auto_keeps_the_best_candidate_and_records_every_score(lake_root, lake, tiny_features):
    write_features(lake, tiny_features, "2026-01-05")
    settings = stage_settings(lake_root, name="auto", candidates=["popularity", "dann"], epochs=4)
    report = training.train_stage(settings, "2026-01-05")
    card = read_card(lake, candidate_version(lake, "2026-01-05"))
    scores = card["selection"]["candidates"]
    assert set(scores) == {"popularity", "dann"}
    seconds = card["selection"]["candidate_seconds"]  # what each candidate cost the night, for the operator
    assert seconds == report.metrics["candidate_seconds"] and set(seconds) == set(scores)
    assert all(isinstance(spent, float) and spent >= 0 for spent in seconds.values())  # no timing compared: tests are not benchmarks
    assert card["name"] == report.metrics["model"] == max(scores, key=scores.get) == "dann"
    assert card["config"]["name"] == "auto"
    loaded, _ = load_model(lake, candidate_version(lake, "2026-01-05"), tiny_features)
    assert loaded.name == "dann"


def _real_subset(features, users: np.ndarray):
    """The users' rows of a FeatureSet (every item kept, keys stay those of the dataset)."""
    from crossrec_core.data import FeatureSet

    return FeatureSet(
        source=features.source,
        target=features.target,
        user_ids=features.user_ids[users],
        item_ids=features.item_ids,
        train={d: features.train[d][users] for d in features.domains},
        holdout={s: m[users] for s, m in features.holdout.items()},
    )


@pytest.mark.shared_data
def test_hybrid_stays_above_item_knn_cross_on_real_cold_start_users(shared_data):
    """Regression guard for the point of the hybrid: on a real subset (3,000 amazon users
    active in both domains plus the disjoint split's cold-start users, cloth -> sport)
    its test NDCG@10 is not below the co-occurrence count it starts from."""
    from crossrec_core.datasets import load_pairs
    from crossrec_core.evaluation import evaluate_model

    splits = load_pairs(shared_data / "amazon-cloth-sport", "cloth", "sport", split="disjoint")
    rng = np.random.default_rng(0)
    both = np.intersect1d(splits.valid.users_with_history("cloth"), splits.valid.users_with_history("sport"))
    cold = np.union1d(splits.valid.holdout_users(Segment.COLD_START), splits.test.holdout_users(Segment.COLD_START))
    users = np.union1d(rng.choice(both, 3000, replace=False), cold)
    valid, test = _real_subset(splits.valid, users), _real_subset(splits.test, users)
    settings = load_settings(model={"epochs": 2, "device": "cpu", "dim": 32}).model
    ndcg = {}
    for name in ("item_knn_cross", "hybrid"):
        model, _ = fit_model(name, valid, settings, progress=False)
        model.set_histories(test)
        ndcg[name] = evaluate_model(model, test, segments=(Segment.COLD_START,), ks=(10,))["cold_start"]["ndcg@10"]
    assert ndcg["item_knn_cross"] > 0.1
    assert ndcg["hybrid"] >= ndcg["item_knn_cross"], ndcg
