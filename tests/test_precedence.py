"""Configuration precedence: explicit arguments (CLI flags, DAG trigger params) >
CROSSREC_* environment > YAML file > embedded defaults; an unknown CROSSREC_* variable
fails at start, naming it."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from crossrec_core.config import ConfigError, load_settings
from crossrec_core.jobs import argument_parser, job_settings
from crossrec_core.orchestration import stage_arguments
from crossrec_core.stages import STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load(resources.files("crossrec_core").joinpath("defaults.yaml").read_text())


@pytest.fixture
def yaml_file(tmp_path):
    """A config file that sets the model, K and the epochs away from the defaults."""
    path = tmp_path / "crossrec.yaml"
    path.write_text("model:\n  name: emcdr\n  epochs: 7\nscore:\n  k: 30\n")
    assert DEFAULTS["model"]["name"] != "emcdr" and DEFAULTS["model"]["epochs"] != 7 and DEFAULTS["score"]["k"] != 30
    return path


def test_embedded_defaults_when_nothing_else_is_set():
    settings = load_settings()
    assert (settings.model.name, settings.model.epochs, settings.score.k) == (
        DEFAULTS["model"]["name"],
        DEFAULTS["model"]["epochs"],
        DEFAULTS["score"]["k"],
    )


def test_yaml_file_beats_defaults(yaml_file, monkeypatch):
    assert load_settings(yaml_file).model.name == "emcdr"
    monkeypatch.setenv("CROSSREC_CONFIG", str(yaml_file))
    settings = load_settings()
    assert (settings.model.name, settings.model.epochs, settings.score.k) == ("emcdr", 7, 30)


def test_environment_beats_yaml_file_key_by_key(yaml_file, monkeypatch):
    monkeypatch.setenv("CROSSREC_MODEL__NAME", "popularity")
    settings = load_settings(yaml_file)
    # the variable replaces one key; the file's other keys in the same section stay
    assert (settings.model.name, settings.model.epochs, settings.score.k) == ("popularity", 7, 30)


def test_explicit_arguments_beat_environment(yaml_file, monkeypatch):
    monkeypatch.setenv("CROSSREC_MODEL__NAME", "popularity")
    monkeypatch.setenv("CROSSREC_SCORE__K", "5")
    settings = load_settings(yaml_file, model={"name": "dann"})
    assert (settings.model.name, settings.model.epochs, settings.score.k) == ("dann", 7, 5)


def test_dag_trigger_params_beat_the_workers_environment(monkeypatch, tmp_path):
    """The DAG's trigger params reach the job as arguments (stage_arguments); the job's
    settings keep them over CROSSREC_* variables set on the worker."""
    monkeypatch.setenv("CROSSREC_MODEL__NAME", "popularity")
    monkeypatch.setenv("CROSSREC_SCORE__K", "5")
    monkeypatch.setenv("CROSSREC_MODEL__WARM_START", "true")
    params = {"source_domain": "movies", "target_domain": "books", "model": "dann", "k": 20, "retrain_from_scratch": True}
    arguments = stage_arguments(load_settings(lake=tmp_path), "train", "2026-01-02", params)

    settings = job_settings(argument_parser(STAGES["train"]).parse_args(arguments))

    assert (settings.model.name, settings.score.k, settings.model.warm_start) == ("dann", 20, False)
    assert (settings.source, settings.target, settings.lake) == ("movies", "books", tmp_path.resolve())


def test_cli_flag_beats_environment(monkeypatch, tmp_path, capsys):
    """``--lake`` of a command wins over CROSSREC_LAKE (the error names the table it looked for)."""
    from crossrec_core.cli import run

    monkeypatch.setenv("CROSSREC_LAKE", str(tmp_path / "from-env"))
    with pytest.raises(SystemExit):
        run(["recs", "u1", "--lake", str(tmp_path / "from-flag")])
    shown = capsys.readouterr().err
    assert f"no Delta table at {tmp_path / 'from-flag'}" in shown and "from-env" not in shown


@pytest.mark.parametrize(
    ("variable", "unknown"),
    [
        ("CROSSREC_MODLE__NAME", "'modle'"),
        ("CROSSREC_MODEL__NAEM", "'model.naem'"),
        ("CROSSREC_SCORE__K__MAX", "'score.k' has no sub-keys"),
    ],
)
def test_an_unknown_crossrec_variable_fails_naming_it(monkeypatch, variable, unknown):
    monkeypatch.setenv(variable, "dann")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert variable in str(err.value) and unknown in str(err.value)


def test_documented_variables_and_mapping_keys_stay_valid(monkeypatch, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("gate:\n  tolerance: 0.2\n")
    monkeypatch.setenv("CROSSREC_CONFIG", str(config))
    monkeypatch.setenv("CROSSREC_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("CROSSREC_HOME", "/opt/crossrec")
    monkeypatch.setenv("CROSSREC_BENCH_DOCS", str(tmp_path / "BENCHMARKS.md"))
    monkeypatch.setenv("CROSSREC_EVENT_WEIGHTS__SHARE", "2.5")  # event_weights is a mapping: any key
    monkeypatch.setenv("CROSSREC_SPARK__CONF__SPARK.EXECUTOR.MEMORY", "2g")

    settings = load_settings()

    assert settings.gate.tolerance == 0.2 and settings.lake == tmp_path / "lake"
    assert settings.event_weights["share"] == 2.5 and settings.spark.conf["spark.executor.memory"] == "2g"


def test_a_job_with_a_misspelt_variable_exits_2_naming_it(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CROSSREC_MODLE__NAME": "dann"}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "jobs" / "report.py"), "--ds", "2026-01-02", "--lake", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "CROSSREC_MODLE__NAME" in done.stderr and "Traceback" not in done.stderr
