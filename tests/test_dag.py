"""The DAG file: loads without errors, stays light to parse, is wired as designed, and
validates trigger params; the orchestration helpers classify failures."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DAG_FILE = REPO / "dags" / "crossrec_nightly.py"

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.dags["crossrec_nightly"]


def test_importing_the_dag_file_loads_no_heavy_library():
    """The dag-processor parses the file again and again: it must not pay for torch,
    Spark or the data libraries (a parse-time figure would be a timed test: none here)."""
    probe = (
        f"import sys, runpy; runpy.run_path({str(DAG_FILE)!r}); "
        "print(*[m for m in ('torch', 'pyspark', 'pandas', 'pyarrow', 'duckdb') if m in sys.modules])"
    )
    # airflow itself imported first: what the dag-processor has loaded already
    code = f"import airflow.sdk, airflow.providers.apache.spark.operators.spark_submit; {probe}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert result.stdout.strip().splitlines()[-1:] in ([], [""])


def test_the_stages_that_read_model_cards_only_do_not_load_torch():
    """evaluate, the gate task and publish read a model's card and version, never its
    weights: each is a process of its own every night and must not pay torch's import."""
    from crossrec_core.stages import declared

    modules = [declared(stage).function.split(":")[0] for stage in ("evaluate", "publish")]
    code = f"import sys, crossrec_core.jobs, crossrec_core.gate, {', '.join(modules)}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert result.stdout.strip() == "False"


def test_tasks_are_the_stages_wired_like_the_pipeline_diagram(dag):
    downstream = {task.task_id: sorted(task.downstream_task_ids) for task in dag.tasks}
    assert downstream == {
        "wait_for_raw_source": ["clean_source"],
        "wait_for_raw_target": ["clean_target"],
        "clean_source": ["featurize"],
        "clean_target": ["featurize"],
        "featurize": ["train"],
        "train": ["evaluate"],
        "evaluate": ["gate"],
        "gate": ["score"],
        "score": ["publish"],
        "publish": ["report"],
        "report": [],
    }
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.get_task("report").trigger_rule == "all_done"  # reports (and fails) after any failure
    assert type(dag.get_task("clean_source")).__name__ == "StageSparkSubmitOperator"
    clean = dag.get_task("clean_source")
    assert clean.application.endswith("crossrec_core/jobs.py") and clean.application_args[0] == "clean"
    outlets = {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets}
    assert set(outlets) == {"clean_source", "clean_target", "featurize", "publish"}
    assert outlets["publish"][0].endswith("/serving/recommendations")


def test_transient_failures_retry_with_backoff(dag):
    train = dag.get_task("train")
    assert train.retries == 2 and train.retry_exponential_backoff == 2.0
    assert dag.get_task("report").retries == 0


def test_params_reject_an_unknown_model_and_out_of_range_k(dag):
    from airflow.sdk.definitions.param import ParamsDict

    params = dag.params
    params.validate()
    for name, bad in (("model", "deepfm"), ("k", 0), ("k", 5000), ("source_domain", "../etc"), ("retrain_from_scratch", "yes")):
        trial = ParamsDict({**{k: params.get_param(k) for k in params}})
        with pytest.raises(Exception, match=r"Invalid input|is not"):
            trial[name] = bad
            trial.validate()
    model_param = params.get_param("model")
    import crossrec_core.models  # noqa: F401  registers every model
    from crossrec_core.models.base import Recommender

    assert set(model_param.schema["enum"]) == {"auto", *Recommender.registry}


def test_the_torch_queue_routes_train_and_score(monkeypatch):
    monkeypatch.setenv("CROSSREC_ORCHESTRATION__TORCH_QUEUE", "gpu")
    import runpy

    namespace = runpy.run_path(str(DAG_FILE))
    dag = namespace["crossrec_nightly"]()
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert queues["train"] == queues["score"] == "gpu"
    assert queues["clean_source"] != "gpu"


def test_stage_arguments_carry_the_run_params():
    from crossrec_core.config import load_settings
    from crossrec_core.orchestration import stage_arguments

    settings = load_settings(lake="/data/lake")
    params = {"source_domain": "movies", "target_domain": "books", "model": "dann", "k": 20, "retrain_from_scratch": True}
    assert stage_arguments(settings, "train", "2026-01-02", params) == [
        "--ds",
        "2026-01-02",
        "--lake",
        "/data/lake",
        "--source",
        "movies",
        "--target",
        "books",
        "--model",
        "dann",
        "-k",
        "20",
        "--retrain",
    ]
    assert stage_arguments(settings, "clean", "2026-01-02", params, domain="books")[-2:] == ["--domain", "books"]


def test_exit_code_2_fails_without_retry_and_others_retry():
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from crossrec_core.orchestration import raise_for_exit

    raise_for_exit("train", "2026-01-02", 0, "")
    with pytest.raises(AirflowFailException, match="not retried"):
        raise_for_exit("train", "2026-01-02", 2, "missing partition features/ds=2026-01-02")
    with pytest.raises(AirflowException, match="exited with 137") as caught:
        raise_for_exit("train", "2026-01-02", 137, "Killed")
    assert not isinstance(caught.value, AirflowFailException)


def run_context(ds: str | None = None, logical_date: str | None = None, **params) -> dict:
    """The part of an Airflow task context the crossrec tasks read: params and the dag run."""
    from types import SimpleNamespace

    logical = datetime.fromisoformat(logical_date).replace(tzinfo=UTC) if logical_date else None
    dag_run = SimpleNamespace(dag_id="crossrec_nightly", run_id="manual__test", logical_date=logical, run_after=datetime.now(UTC))
    return {"params": {"ds": ds, **params}, "dag_run": dag_run}


def test_a_missing_raw_day_times_out_naming_the_path(tmp_path):
    from airflow.sdk.exceptions import AirflowSensorTimeout

    from crossrec_core.orchestration import RawPartitionSensor

    sensor = RawPartitionSensor(task_id="wait_for_raw_source", lake=tmp_path, domain="movies", poke_interval=0.01, timeout=0.05)
    context = run_context(logical_date="2026-01-02")
    with pytest.raises(AirflowSensorTimeout, match=r"raw/domain=movies/ds=2026-01-02 did not arrive within"):
        sensor.execute(context)
    partition = tmp_path / "raw" / "domain=movies" / "ds=2026-01-02"
    partition.mkdir(parents=True)
    (partition / "events.csv").write_text("user_id,item_id,ts\nu,i,1\n")
    assert sensor.poke(context) is True


def test_marker_mode_waits_for_the_success_file_not_the_first_data_file(tmp_path):
    from airflow.sdk.exceptions import AirflowSensorTimeout

    from crossrec_core.orchestration import RawPartitionSensor

    sensor = RawPartitionSensor(
        task_id="wait_for_raw_source", lake=tmp_path, domain="movies", success_marker=True, poke_interval=0.01, timeout=0.05
    )
    context = run_context(ds="2026-01-02")
    partition = tmp_path / "raw" / "domain=movies" / "ds=2026-01-02"
    partition.mkdir(parents=True)
    (partition / "part-1.csv").write_text("user_id,item_id,ts\nu,i,1\n")  # the delivery is still arriving

    assert sensor.poke(context) is False
    with pytest.raises(AirflowSensorTimeout, match=r"raw/domain=movies/ds=2026-01-02/_SUCCESS did not arrive within"):
        sensor.execute(context)
    (partition / "_SUCCESS").touch()
    assert sensor.poke(context) is True


def test_the_marker_mode_is_set_from_config(monkeypatch):
    import runpy

    monkeypatch.setenv("CROSSREC_ORCHESTRATION__RAW_SUCCESS_MARKER", "true")
    dag = runpy.run_path(str(DAG_FILE))["crossrec_nightly"]()
    assert dag.get_task("wait_for_raw_source").success_marker and dag.get_task("wait_for_raw_target").success_marker


def test_every_task_has_its_configured_time_limit_and_the_run_one(monkeypatch):
    import runpy
    from datetime import timedelta

    monkeypatch.setenv("CROSSREC_ORCHESTRATION__STAGE_TIMEOUT_MINUTES__TRAIN", "7")
    monkeypatch.setenv("CROSSREC_ORCHESTRATION__DAGRUN_TIMEOUT_MINUTES", "600")
    dag = runpy.run_path(str(DAG_FILE))["crossrec_nightly"]()

    from crossrec_core.config import load_settings

    defaults = load_settings().orchestration.stage_timeout_minutes
    assert dag.dagrun_timeout == timedelta(minutes=600)
    assert dag.get_task("train").execution_timeout == timedelta(minutes=7)
    for task in dag.tasks:
        if task.task_id.startswith("wait_for_raw_"):
            continue  # sensors: raw_wait_minutes
        stage = task.task_id.removesuffix("_source").removesuffix("_target")
        if stage != "train":
            assert task.execution_timeout == timedelta(minutes=defaults[stage]), task.task_id
    assert all(task.on_failure_callback for task in dag.tasks) and dag.on_failure_callback


def test_timeouts_must_cover_every_task_and_outlast_the_raw_wait():
    from crossrec_core.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"stage_timeout_minutes\.trian"):
        load_settings(orchestration={"stage_timeout_minutes": {"trian": 5}})
    with pytest.raises(ConfigError, match="must exceed raw_wait_minutes"):
        load_settings(orchestration={"dagrun_timeout_minutes": 60, "raw_wait_minutes": 360})
    with pytest.raises(ConfigError, match=r"stage_timeout_minutes.train.*greater than 0"):
        load_settings(orchestration={"stage_timeout_minutes": {"train": 0}})


def test_the_ds_param_wins_and_a_run_without_logical_date_uses_it(dag):
    from airflow.sdk.exceptions import AirflowFailException

    from crossrec_core.orchestration import resolve_ds

    assert resolve_ds({"ds": "2026-01-02"}, run_context(logical_date=None)["dag_run"]) == "2026-01-02"
    assert resolve_ds({"ds": "2026-01-02"}, run_context(logical_date="2026-05-05")["dag_run"]) == "2026-01-02"
    assert resolve_ds({"ds": None}, run_context(logical_date="2026-05-05")["dag_run"]) == "2026-05-05"
    with pytest.raises(AirflowFailException, match="no logical date and no 'ds' param"):
        resolve_ds({"ds": None}, run_context()["dag_run"])

    # the Spark tasks' templated arguments render with the DAG's own Jinja environment
    clean = dag.get_task("clean_source")
    context = run_context(ds="2026-01-02", source_domain="movies", target_domain="books", model="auto", k=10, retrain_from_scratch=False)
    rendered = clean.render_template(clean.application_args, context, jinja_env=dag.get_template_env())
    assert rendered[:3] == ["clean", "--ds", "2026-01-02"] and rendered[-2:] == ["--domain", "movies"]


def test_the_ds_param_accepts_only_a_calendar_date(dag):
    from airflow.sdk.definitions.param import ParamsDict

    params = dag.params
    for bad in ("2026-13-01", "20261105", "2026-W45-1", "2026-02-30", "yesterday"):
        trial = ParamsDict({k: params.get_param(k) for k in params})
        with pytest.raises(Exception, match=r"Invalid input|is not"):
            trial["ds"] = bad
            trial.validate()
    trial = ParamsDict({k: params.get_param(k) for k in params})
    trial["ds"] = "2026-02-28"
    assert trial.validate()["ds"] == "2026-02-28"


def test_on_kill_stops_the_stage_and_every_process_it_started(tmp_path, monkeypatch):
    """A killed task (timeout, marked failed) must not leave its training running."""
    import threading
    import time

    from airflow.sdk.exceptions import AirflowException

    from crossrec_core import orchestration
    from crossrec_core.config import load_settings

    pids = tmp_path / "pids"
    (tmp_path / "train.py").write_text(
        "import subprocess, sys, time, os\n"
        "child = subprocess.Popen(['sleep', '600'])  # e.g. a data loader worker\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('training', flush=True)\n"
        "time.sleep(600)\n"
    )
    monkeypatch.setattr(orchestration, "job_command", lambda stage: [sys.executable, str(tmp_path / f"{stage}.py")])
    task = orchestration.StageJobOperator(task_id="train", settings=load_settings(lake=tmp_path / "lake"), stage="train")
    context = run_context(ds="2026-01-02", source_domain="movies", target_domain="books", model="auto", k=10, retrain_from_scratch=False)
    failures: list[BaseException] = []

    def execute():
        try:
            task.execute(context)
        except BaseException as err:
            failures.append(err)

    runner = threading.Thread(target=execute)
    runner.start()
    while not (pids.exists() and pids.read_text()):
        assert runner.is_alive(), failures
        time.sleep(0.05)
    job, grandchild = map(int, pids.read_text().split())

    task.on_kill()
    runner.join(timeout=60)

    assert not runner.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], AirflowException) and "exited with -15" in str(failures[0])
    for pid in (job, grandchild):
        assert not alive(pid), f"process {pid} survived on_kill"


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper has ended)."""
    import time

    for _ in range(100):  # an orphaned grandchild is reaped by init shortly after it dies
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


def test_every_declared_stage_is_a_task_run_as_declared(dag):
    from typing import get_args

    from crossrec_core.config import TimedTask
    from crossrec_core.stages import STAGE_LIST, Engine

    assert set(get_args(TimedTask)) == {stage.name for stage in STAGE_LIST} | {"gate"}  # every task has a timeout
    for stage in STAGE_LIST:
        tasks = [t for t in dag.tasks if t.task_id == stage.name or t.task_id.startswith(f"{stage.name}_")]
        assert len(tasks) == (2 if stage.per_domain else 1), stage.name
        for task in tasks:
            assert type(task).__name__ == ("StageSparkSubmitOperator" if stage.engine is Engine.SPARK else "StageJobOperator"), task.task_id


def test_a_torch_queue_routes_the_stages_declared_for_it(tmp_path):
    from crossrec_core import orchestration
    from crossrec_core.config import load_settings
    from crossrec_core.stages import STAGE_LIST, Engine, Queue

    settings = load_settings(lake=tmp_path / "lake", orchestration={"torch_queue": "gpu"})
    for stage in (s for s in STAGE_LIST if s.engine is Engine.PYTHON):
        task = orchestration.StageJobOperator(settings=settings, stage=stage.name)
        assert (task.queue == "gpu") is (stage.queue is Queue.TORCH), stage.name
        assert task.execution_timeout == orchestration.task_timeout(settings, stage.name)


def test_every_stage_job_accepts_the_arguments_orchestration_gives_it():
    from crossrec_core.config import load_settings
    from crossrec_core.jobs import argument_parser
    from crossrec_core.orchestration import stage_arguments
    from crossrec_core.stages import STAGE_LIST

    settings = load_settings(lake="/data/lake")
    params = {"source_domain": "movies", "target_domain": "books", "model": "dann", "k": 20, "retrain_from_scratch": True}
    for stage in STAGE_LIST:
        arguments = stage_arguments(settings, stage.name, "2026-01-02", params, domain="books" if stage.per_domain else None)
        parsed = argument_parser(stage).parse_args(arguments)  # argparse exits 2 on an argument the job does not take
        assert parsed.ds == "2026-01-02" and parsed.lake == "/data/lake", stage.name
        assert (getattr(parsed, "model", None) == "dann") is ("model" in stage.params), stage.name


def test_what_each_stage_reads_and_writes_is_a_table_of_the_contracts():
    from crossrec_core import contracts
    from crossrec_core.stages import STAGE_LIST

    known = {t.path for t in vars(contracts).values() if isinstance(t, contracts.Table)} | {contracts.FEATURES_ROOT, contracts.MODELS_ROOT}
    for stage in STAGE_LIST:
        assert set(stage.reads) | set(stage.writes) <= known, stage.name
