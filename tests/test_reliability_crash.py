"""kill -9 of a stage's process at a random point, then the date again: the result equals
an uninterrupted run's, a reader meanwhile only ever sees a complete partition, and a
killed training resumes from its checkpoint. One trial per stage here;
``python -m bench.reliability`` repeats them with many seeds (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bench.reliability import DS, job, partition_digest, prepare_night, run_killed, trial
from crossrec_core.model_store import MODEL_FILE, candidate_version, model_dir

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """One uninterrupted night, every stage as its own job."""
    return prepare_night(tmp_path_factory.mktemp("crash") / "lake")


@pytest.mark.parametrize("stage", ["clean", "featurize", "train", "score"])
def test_a_killed_stage_leaves_a_complete_partition_and_the_rerun_equals_the_uninterrupted_run(night, stage):
    assert night.baseline[stage] is not None
    result = trial(stage, seed=len(stage), night=night)
    assert result["kill_landed"]  # the job was still running: this was a crash, not a late no-op
    assert result["reader_saw_only_complete"]  # never a partial or mixed partition
    assert result["rerun_ok"] and result["rerun_equal"]
    staging = night.lake.root / "_staging"
    assert not staging.exists() or not any(staging.iterdir())  # nothing left half-written aside


def test_a_killed_training_resumes_from_its_checkpoint(night):
    lake, settings, env = night.lake, night.settings, night.env
    shutil.rmtree(model_dir(lake, candidate_version(lake, DS)).parent)  # a night whose training never finished
    assert run_killed("train", night, seed=11).landed
    rerun = subprocess.run(job("train", lake.root, settings), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    subprocess.run(job("evaluate", lake.root, settings), env=env, check=True, capture_output=True)
    card = json.loads((model_dir(lake, candidate_version(lake, DS)) / "model_card.json").read_text())
    assert card["training"]["resumed_from_epoch"] >= 1
    assert partition_digest(lake, "train", settings) == night.baseline["train"]  # resumed = same weights as uninterrupted


def test_a_truncated_model_file_fails_scoring_clearly_and_the_served_list_stays(night):
    from crossrec_core.contracts import RECOMMENDATIONS
    from crossrec_core.serving import snapshot

    settings, lake, env = night.settings, night.lake, night.env
    served_version = snapshot(lake, RECOMMENDATIONS).version
    model_file = model_dir(lake, candidate_version(lake, DS)) / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:100])

    scored = subprocess.run(job("score", lake.root, settings), env=env, capture_output=True, text=True)

    assert scored.returncode == 2  # a contract violation: Airflow does not retry it, publish never runs
    assert f"model file {model_file} is corrupt or truncated" in scored.stderr
    assert "Traceback" not in scored.stderr
    assert snapshot(lake, RECOMMENDATIONS).version == served_version
