"""kill -9 of a stage's process at a random point, then the date again: the result equals
an uninterrupted run's, a reader meanwhile only ever sees a complete partition, and a
killed training resumes from its checkpoint. (bench/reliability.py repeats this with
many seeds and records the counts in docs/RELIABILITY.md.)"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crossrec_core.config import load_settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, FEATURE_INTERACTIONS, SCORES
from crossrec_core.lake import Lake
from crossrec_core.model_store import MODEL_FILE, model_dir, model_version

REPO = Path(__file__).resolve().parent.parent
DS = "2026-03-10"
pytestmark = [pytest.mark.spark, pytest.mark.slow]


def partition_digest(lake: Lake, stage: str, settings) -> str | None:
    """A digest of what ``stage`` serves to readers for DS (None: nothing there yet)."""
    if stage == "train":
        path = model_dir(lake, model_version(DS)) / MODEL_FILE
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    table, values = {
        "clean": (CLEAN_INTERACTIONS, {"domain": settings.target}),
        "featurize": (FEATURE_INTERACTIONS, {}),
        "score": (SCORES, {"domain": settings.target}),
    }[stage]
    if not lake.partition_path(table, ds=DS, **values).exists():
        return None
    rows = lake.read_parquet_partition(table, ds=DS, **values)
    rows = rows.sort_by([(name, "ascending") for name in rows.column_names if name not in ("weight", "score")])
    return hashlib.sha256(repr(rows.to_pydict()).encode()).hexdigest()


@dataclass
class Reader:
    """Polls the partition while the stage runs; records every digest it saw."""

    lake: Lake
    stage: str
    settings: object
    seen: set = field(default_factory=set)
    vanished: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.seen.add(partition_digest(self.lake, self.stage, self.settings))
            except FileNotFoundError:  # the files it listed were swapped away: a retry, not a partial view
                self.vanished += 1


def job(stage: str, lake_root: Path, settings) -> list[str]:
    args = [sys.executable, str(REPO / "jobs" / f"{stage}.py"), "--ds", DS, "--lake", str(lake_root)]
    return args + (["--domain", settings.target] if stage == "clean" else [])


def run_killed(stage: str, lake_root: Path, settings, seed: int, env: dict) -> float:
    """Start the job, kill -9 its whole process group at a random point; return when."""
    rng = random.Random(seed)
    process = subprocess.Popen(job(stage, lake_root, settings), env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.perf_counter()
    if stage == "train":  # kill after a checkpoint exists, at a random point of a later epoch
        checkpoints = lake_root / "models" / "_checkpoints"
        while process.poll() is None and not any(checkpoints.rglob("*.pt")):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
    else:
        time.sleep(rng.uniform(0.5, {"clean": 12.0, "featurize": 12.0, "score": 2.5}[stage]))
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def night(tmp_path_factory, spark):
    """One uninterrupted night (in-process), its digests per stage, and a job environment."""
    from crossrec_core.etl.clean import clean
    from crossrec_core.etl.featurize import featurize
    from crossrec_core.ingest.demo_data import generate_demo_data

    root = tmp_path_factory.mktemp("crash") / "lake"
    overrides = {"model": {"name": "dann", "epochs": 6, "patience": 6, "dim": 16}, "spark": {"shuffle_partitions": 2}}
    settings = load_settings(lake=root, **overrides)
    lake = Lake(root)
    generate_demo_data(lake, settings, users=300, days=1, seed=5, bad_fraction=0.02, end_date=DS)
    for domain in settings.domains.all:
        clean(settings, DS, domain)
    featurize(settings, DS)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "CROSSREC_MODEL__NAME": "dann", "CROSSREC_MODEL__EPOCHS": "6",
           "CROSSREC_MODEL__PATIENCE": "6", "CROSSREC_MODEL__DIM": "16", "CROSSREC_SPARK__SHUFFLE_PARTITIONS": "2"}
    for stage in ("train", "evaluate", "score", "publish"):  # in their own processes, as the kills below (same torch threads)
        subprocess.run(job(stage, root, settings), env=env, check=True, capture_output=True)
    baseline = {stage: partition_digest(lake, stage, settings) for stage in ("clean", "featurize", "train", "score")}
    return settings, lake, baseline, env


@pytest.mark.parametrize("stage", ["clean", "featurize", "train", "score"])
def test_a_killed_stage_leaves_a_complete_partition_and_the_rerun_equals_the_uninterrupted_run(night, stage):
    settings, lake, baseline, env = night
    assert baseline[stage] is not None
    reader = Reader(lake, stage, settings)
    polling = threading.Thread(target=reader.run)
    polling.start()
    try:
        run_killed(stage, lake.root, settings, seed=len(stage), env=env)
    finally:
        reader.stop.set()
        polling.join()
    assert reader.seen == {baseline[stage]}  # never a partial or mixed partition
    assert partition_digest(lake, stage, settings) == baseline[stage]

    rerun = subprocess.run(job(stage, lake.root, settings), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert partition_digest(lake, stage, settings) == baseline[stage]
    if stage == "train":  # a new model voids the gate decision kept beside the old one: the DAG gates it again
        subprocess.run(job("evaluate", lake.root, settings), env=env, check=True, capture_output=True)
    staging = lake.root / "_staging"
    assert not staging.exists() or not any(staging.iterdir())  # nothing left half-written aside


def test_a_killed_training_resumes_from_its_checkpoint(night):
    settings, lake, baseline, env = night
    shutil.rmtree(model_dir(lake, model_version(DS)))  # a night whose training never finished
    run_killed("train", lake.root, settings, seed=11, env=env)
    rerun = subprocess.run(job("train", lake.root, settings), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    card = json.loads((model_dir(lake, model_version(DS)) / "model_card.json").read_text())
    assert card["training"]["resumed_from_epoch"] >= 1
    assert partition_digest(lake, "train", settings) == baseline["train"]  # resumed = same weights as uninterrupted


def test_a_truncated_model_file_fails_scoring_clearly_and_the_served_list_stays(night):
    from crossrec_core.contracts import RECOMMENDATIONS
    from crossrec_core.serving import snapshot

    settings, lake, _, env = night
    served_version = snapshot(lake, RECOMMENDATIONS).version
    model_file = model_dir(lake, model_version(DS)) / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:100])

    scored = subprocess.run(job("score", lake.root, settings), env=env, capture_output=True, text=True)

    assert scored.returncode == 2  # a contract violation: Airflow does not retry it, publish never runs
    assert f"model file {model_file} is corrupt or truncated" in scored.stderr
    assert "Traceback" not in scored.stderr
    assert snapshot(lake, RECOMMENDATIONS).version == served_version
