"""Shared fixtures: a temp lake and settings, one local Spark session, the shared datasets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Importing airflow without AIRFLOW_HOME creates ~/airflow: point it at a temp dir first.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="crossrec-airflow-"))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
for key in [k for k in os.environ if k.startswith("CROSSREC_")]:
    del os.environ[key]  # tests start from the embedded defaults

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def settings(lake_root: Path):
    from crossrec_core.config import load_settings

    return load_settings(lake=lake_root, spark={"shuffle_partitions": 2, "master": "local[2]"})


@pytest.fixture
def lake(settings):
    from crossrec_core.lake import Lake

    return Lake(settings.lake)


@pytest.fixture(scope="session")
def spark():
    from crossrec_core.config import load_settings
    from crossrec_core.spark import spark_session

    session = spark_session(load_settings(spark={"shuffle_partitions": 2, "master": "local[2]"}), "crossrec-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (they live beside the repository, never in it)")
    return SHARED_DATA


def fake_model_version(ds: str, model: str = "0000") -> str:
    """A well-formed model version of night ``ds`` for tests that fake the train stage
    (``model``: 4 hex digits telling two fake models of one night apart)."""
    return f"models/ds={ds}/model={ds.replace('-', '')}{model}"


def write_fake_model(lake, ds: str, card: dict | None = None, model: str = "0000") -> str:
    """What the train stage leaves for ``ds`` without training: a model directory holding a
    card, and the candidate pointer naming it. Returns the version."""
    import json

    from crossrec_core.model_store import CANDIDATE_FILE, CARD_FILE

    version = fake_model_version(ds, model)
    directory = lake.root / version
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CARD_FILE).write_text(json.dumps({"name": "dann", "model_version": version, **(card or {})}))
    (directory.parent / CANDIDATE_FILE).write_text(json.dumps({"model_version": version}))
    return version


def write_gate(lake, ds: str, publish: bool, reason: str = "test") -> None:
    """The evaluate stage's decision on the candidate model of ``ds`` (a fake model when none was saved)."""
    import json

    from crossrec_core.lake import MissingPartitionError
    from crossrec_core.model_store import candidate_version

    try:
        version = candidate_version(lake, ds)
    except MissingPartitionError:
        version = write_fake_model(lake, ds)
    (lake.root / version / "gate.json").write_text(json.dumps({"publish": publish, "reason": reason}))


def make_cross_domain_features(seed: int = 0, n_users: int = 120, n_clusters: int = 3):
    """A tiny FeatureSet in which a user's target items follow from their source items.

    Users fall in clusters; each cluster owns a block of source and of target items and a
    user interacts with random items of their cluster's blocks in both domains. Users
    0..9 are cold-start (source history only, target items held out), users 10..19 are
    target-only (no source history), every other user with target history is warm with
    one target item held out."""
    import numpy as np
    import scipy.sparse as sp

    from crossrec_core.contracts import Segment
    from crossrec_core.data import FeatureSet

    rng = np.random.default_rng(seed)
    per_cluster = {"src": 8, "tgt": 10}
    taken = {"src": 4, "tgt": 4}
    cluster = np.arange(n_users) % n_clusters
    picks = {}
    for domain, block in per_cluster.items():
        order = np.argsort(rng.random((n_users, block)), axis=1)[:, : taken[domain]]
        picks[domain] = cluster[:, None] * block + order  # [n_users, taken] item keys
    users = np.repeat(np.arange(n_users), taken["tgt"])
    weights = rng.uniform(0.5, 2.0, size=users.size).astype(np.float32)

    def matrix(rows, cols, values, n_items):
        return sp.csr_matrix((values, (rows, cols)), shape=(n_users, n_items))

    cold, target_only = np.arange(10), np.arange(10, 20)
    n_items = {domain: per_cluster[domain] * n_clusters for domain in per_cluster}
    source_rows = np.repeat(np.arange(n_users), taken["src"])
    keep_source = ~np.isin(source_rows, target_only)
    target_items = picks["tgt"].ravel()
    is_cold = np.isin(users, cold)
    held_out_warm = (np.arange(users.size) % taken["tgt"] == 0) & ~is_cold
    train_target = ~is_cold & ~held_out_warm
    return FeatureSet(
        source="src",
        target="tgt",
        user_ids=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        item_ids={d: np.array([f"{d}{i}" for i in range(n)], dtype=object) for d, n in n_items.items()},
        train={
            "src": matrix(
                source_rows[keep_source], picks["src"].ravel()[keep_source], np.ones(keep_source.sum(), np.float32), n_items["src"]
            ),
            "tgt": matrix(users[train_target], target_items[train_target], weights[train_target], n_items["tgt"]),
        },
        holdout={
            Segment.WARM: matrix(users[held_out_warm], target_items[held_out_warm], weights[held_out_warm], n_items["tgt"]),
            Segment.COLD_START: matrix(users[is_cold], target_items[is_cold], weights[is_cold], n_items["tgt"]),
        },
        ds="2026-01-05",
        window=("2025-12-06", "2026-01-05"),
    )


@pytest.fixture
def tiny_features():
    return make_cross_domain_features()


@pytest.fixture
def single_thread_torch():
    """Tiny tensors gain nothing from threads, and on a busy shared machine OpenMP threads
    spinning against each other make them many times slower (measured 4-13x)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
