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
