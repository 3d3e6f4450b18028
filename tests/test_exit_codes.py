"""One error family: the crossrec errors (bad config, bad input, missing data, contract
violations) exit 2 with one line and are not retried; anything else keeps its traceback,
exits 1 and is retried. Bad CLI arguments exit 2 with one line; ``recs`` of an unknown
user exits 1. The Spark stages are classified by spark-submit's exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import write_gate
from test_serving import USERS, publish_night, scores_table

from crossrec_core.cli import run
from crossrec_core.config import ConfigError
from crossrec_core.contracts import SCORES, ContractError
from crossrec_core.errors import EXPECTED_FAILURE_EXIT, CrossrecError
from crossrec_core.jobs import main as job_main
from crossrec_core.lake import Lake, LakeError

REPO_ROOT = Path(__file__).resolve().parents[1]
CROSSREC = Path(sys.executable).with_name("crossrec")


def test_the_expected_errors_are_one_family():
    for error in (ConfigError, ContractError, LakeError):
        assert issubclass(error, CrossrecError)
    for other in (ValueError, FileNotFoundError, pa.ArrowInvalid, RuntimeError):
        assert not issubclass(other, CrossrecError)


@pytest.fixture(scope="module")
def served_lake(tmp_path_factory):
    lake_root = tmp_path_factory.mktemp("exit-codes") / "lake"
    lake = Lake(lake_root)
    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 5, "2026-01-05"))
    return lake


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``crossrec ARGV`` through the console entry point: (exit code, stderr)."""
    with pytest.raises(SystemExit) as done:
        run(argv)
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["recs", "u1", "-k", "0"], "-k"),
        (["vacuum", "--keep-days", "-1"], "--keep-days"),
        (["restore", "--version", "-1"], "--version"),
        (["recs", "u1", "--domain", "tgt", "--version", "999"], "no version 999"),
        (["run", "--ds", "2026-02-30"], "2026-02-30"),
        (["run", "--ds", "2026-01-05", "-k", "0"], "-k"),
        (["sql", "SELECT 1", "--timeout", "0"], "query.timeout_seconds"),
        (["sql", "SELECT 1", "--memory-limit", "lots"], "query.memory_limit"),
        (["recs", "u1", "--bogus"], "--bogus"),
        (["recs"], "Missing argument 'user_id'"),
    ],
)
def test_a_bad_argument_exits_2_with_one_line(served_lake, capsys, argv, named):
    code, stderr = run_cli([*argv, "--lake", str(served_lake.root)], capsys)
    assert code == EXPECTED_FAILURE_EXIT
    assert len(stderr.strip().splitlines()) == 1 and named in stderr and "Traceback" not in stderr


def test_missing_data_exits_2_with_one_line(tmp_path, capsys):
    code, stderr = run_cli(
        ["eval", "pairs", str(tmp_path / "nowhere"), "--source", "a", "--target", "b", "--out", str(tmp_path / "out")], capsys
    )
    assert code == EXPECTED_FAILURE_EXIT
    assert len(stderr.strip().splitlines()) == 1 and "nowhere/a_b" in stderr and "does not exist" in stderr


def test_recs_of_an_unknown_user_exits_1_as_its_help_says(served_lake, capsys):
    code, stderr = run_cli(["recs", "nobody", "--domain", "tgt", "--lake", str(served_lake.root)], capsys)
    assert code == 1 and "'nobody' has no recommendations" in stderr
    assert run_cli(["recs", "u1", "--domain", "tgt", "--lake", str(served_lake.root)], capsys)[0] == 0


def test_the_installed_command_keeps_the_exit_codes(served_lake):
    unknown = subprocess.run(
        [str(CROSSREC), "recs", "nobody", "--domain", "tgt", "--lake", str(served_lake.root)], capture_output=True, text=True, timeout=120
    )
    bad_k = subprocess.run(
        [str(CROSSREC), "recs", "u1", "-k", "0", "--lake", str(served_lake.root)], capture_output=True, text=True, timeout=120
    )
    assert unknown.returncode == 1
    assert bad_k.returncode == 2 and len(bad_k.stderr.strip().splitlines()) == 1 and "Traceback" not in bad_k.stderr


def corrupt_scores(lake: Lake, ds: str) -> None:
    """A night whose scores file is not Parquet: pyarrow raises ArrowInvalid (a ValueError)."""
    write_gate(lake, ds, publish=True)
    directory = lake.partition_path(SCORES, ds=ds, domain="tgt")
    directory.mkdir(parents=True)
    (directory / "part-0.parquet").write_bytes(b"not parquet at all")


def test_a_job_exits_2_on_a_crossrec_error_and_keeps_other_errors(lake, capsys):
    job_args = ["--ds", "2026-01-07", "--lake", str(lake.root), "--source", "src", "--target", "tgt"]
    assert job_main(["publish", *job_args]) == EXPECTED_FAILURE_EXIT  # nothing trained: missing data
    stderr = capsys.readouterr().err
    assert "no model trained for ds=2026-01-07" in stderr and "Traceback" not in stderr

    corrupt_scores(lake, "2026-01-07")
    with pytest.raises(pa.ArrowInvalid):  # not swallowed: the process exits 1 with its traceback
        job_main(["publish", *job_args])


def test_a_job_process_exits_1_with_a_traceback_on_other_errors(lake):
    corrupt_scores(lake, "2026-01-07")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "jobs" / "publish.py"),
            "--ds",
            "2026-01-07",
            "--lake",
            str(lake.root),
            "--source",
            "src",
            "--target",
            "tgt",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ArrowInvalid" in done.stderr


@pytest.fixture
def fake_spark_submit(tmp_path, monkeypatch):
    """Puts a ``spark-submit`` that exits with a given code first on PATH."""

    def install(exit_code: int) -> None:
        binary = tmp_path / "bin" / "spark-submit"
        binary.parent.mkdir(exist_ok=True)
        binary.write_text(f"#!/bin/sh\necho 'fake spark-submit: job failed'\nexit {exit_code}\n")
        binary.chmod(0o755)
        monkeypatch.setenv("PATH", f"{binary.parent}:{os.environ['PATH']}")

    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[1]"}')
    return install


@pytest.mark.parametrize(("exit_code", "retried"), [(2, False), (1, True), (137, True)])
def test_spark_stage_failure_is_classified_by_the_process_exit_code(settings, fake_spark_submit, exit_code, retried):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from crossrec_core.orchestration import spark_stage

    fake_spark_submit(exit_code)
    task = spark_stage(settings, "featurize", task_id="featurize")

    with pytest.raises(AirflowException) as failed:
        task.execute({"ds": "2026-01-02"})

    assert isinstance(failed.value, AirflowFailException) is not retried
    assert "fake spark-submit: job failed" in str(failed.value)
