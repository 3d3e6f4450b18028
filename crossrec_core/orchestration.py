"""What the Airflow DAG needs beyond wiring: run params and the night's date, job command
lines, the stage operator (process group, on_kill), the raw-data sensor, failure
classification, the gate's short-circuit and the alert callbacks.

Every stage runs as its own process (``python -m crossrec_core.jobs STAGE``: spark-submit for the Spark
stages, the environment's Python for the torch and Delta stages), so the Airflow worker
never imports Spark or torch. Exit code 2 means a contract violation (bad input, missing
data, bad config): retrying cannot help, so the task fails at once; any other failure is
treated as transient and retried with exponential backoff.

One Spark master under Airflow: the connection ``orchestration.spark_conn_id``
(``spark_default``). The Spark stages are submitted to it, and the score task, which
starts Spark in-process when ``score.backend`` is ``spark``, gets the same master as its
``spark.master`` setting (:func:`spark_master`).

This module is imported by the DAG file at parse time: keep its top-level imports light
(no torch, pyspark, pandas, pyarrow).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, BaseHook, BaseOperator, BaseSensorOperator, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException, AirflowSensorTimeout

from crossrec_core.config import DOMAIN_NAME_PATTERN, MODEL_NAMES, Settings, TimedTask
from crossrec_core.errors import EXPECTED_FAILURE_EXIT
from crossrec_core.spark import driver_java_options
from crossrec_core.stages import Queue, RunParam, declared

log = logging.getLogger(__name__)

JOBS_MODULE = "crossrec_core.jobs"

KILL_GRACE_SECONDS = 10  # a killed stage's process group gets SIGTERM, then SIGKILL after this
SUCCESS_MARKER = "_SUCCESS"
DS_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# The night's date, for templated operator fields: the trigger param ``ds`` when set, else
# the run's logical date (a manual Airflow 3 run may have none: then ``{{ ds }}`` fails).
DS_TEMPLATE = "{{ crossrec_ds(params, dag_run) }}"

# The run params a manual trigger may set, as Jinja for templated operator fields.
PARAM_TEMPLATES = {
    "source_domain": "{{ params.source_domain }}",
    "target_domain": "{{ params.target_domain }}",
    "model": "{{ params.model }}",
    "k": "{{ params.k }}",
    "retrain_from_scratch": "{{ params.retrain_from_scratch }}",
}


def dag_params(settings: Settings) -> dict[str, Param]:
    """Params of a manual trigger, validated by Airflow (JSON schema) before the run starts."""
    domain_schema: dict[str, Any] = {"type": "string", "pattern": DOMAIN_NAME_PATTERN.pattern}
    return {
        "ds": Param(
            None,
            type=["null", "string"],
            pattern=DS_PATTERN.pattern,
            format="date",
            description="Night to run, YYYY-MM-DD; empty: the run's logical date (a run without one needs it).",
        ),
        "model": Param(
            settings.model.name,
            enum=["auto", *MODEL_NAMES],
            description="Model to train; 'auto' trains every configured candidate and keeps the best on target validation NDCG@10.",
        ),
        "k": Param(settings.score.k, type="integer", minimum=1, maximum=1000, description="Recommendations per user."),
        "retrain_from_scratch": Param(
            False,
            type="boolean",
            description="Ignore the published model's weights (no warm start).",
        ),
        "source_domain": Param(settings.source, **domain_schema, description="Source (data-rich) domain name."),
        "target_domain": Param(settings.target, **domain_schema, description="Target (served) domain name."),
    }


def resolve_ds(params: Mapping[str, Any] | None, dag_run: Any) -> str:
    """The night a run processes: the ``ds`` param when given, else the run's logical date."""
    chosen = (params or {}).get("ds")
    if chosen:
        return parse_param_ds(chosen)
    logical_date = getattr(dag_run, "logical_date", None)
    if logical_date is None:
        raise AirflowFailException(
            "this run has no logical date and no 'ds' param: trigger it with --conf '{\"ds\": \"YYYY-MM-DD\"}' or with a logical date"
        )
    return logical_date.astimezone(UTC).date().isoformat()


def parse_param_ds(value: Any) -> str:
    text = str(value)
    try:
        if DS_PATTERN.match(text):
            return datetime.strptime(text, "%Y-%m-%d").date().isoformat()
    except ValueError:
        pass
    raise AirflowFailException(f"param ds must be a date YYYY-MM-DD, got {value!r}")


def dag_macros() -> dict[str, Any]:
    """``user_defined_macros`` of the DAG: what :data:`DS_TEMPLATE` calls."""
    return {"crossrec_ds": resolve_ds}


def task_timeout(settings: Settings, task: TimedTask) -> timedelta:
    return timedelta(minutes=settings.orchestration.stage_timeout_minutes[task])


def dagrun_timeout(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.orchestration.dagrun_timeout_minutes)


def start_datetime(settings: Settings) -> datetime:
    return datetime.combine(settings.orchestration.start_date, time(), tzinfo=UTC)


def default_args(settings: Settings) -> dict[str, Any]:
    orchestration = settings.orchestration
    return {
        "retries": orchestration.retries,
        "retry_delay": timedelta(seconds=orchestration.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=orchestration.max_retry_delay_seconds),
        "on_failure_callback": AlertOnFailure(settings),
    }


def stage_arguments(settings: Settings, stage: str, ds: str, params: Mapping[str, Any], domain: str | None = None) -> list[str]:
    """The command-line arguments of a stage job for one run (values may be Jinja)."""
    arguments = ["--ds", ds, "--lake", str(Path(settings.lake).resolve())]
    arguments += ["--source", str(params["source_domain"]), "--target", str(params["target_domain"])]
    if domain is not None:
        arguments += ["--domain", domain]
    takes = declared(stage).params
    if RunParam.MODEL in takes:
        arguments += ["--model", str(params["model"])]
    if RunParam.K in takes:
        arguments += ["-k", str(params["k"])]
    if RunParam.RETRAIN in takes and str(params["retrain_from_scratch"]).lower() == "true":
        arguments.append("--retrain")
    return arguments


def assets(settings: Settings) -> dict[str, Asset]:
    """The lake tables other DAGs can follow, by role."""
    root = Path(settings.lake).resolve()
    return {
        "clean_source": Asset(name=f"crossrec_clean_{settings.source}", uri=f"file://{root}/clean/interactions/domain={settings.source}"),
        "clean_target": Asset(name=f"crossrec_clean_{settings.target}", uri=f"file://{root}/clean/interactions/domain={settings.target}"),
        "features": Asset(name="crossrec_features", uri=f"file://{root}/features"),
        "recommendations": Asset(name="crossrec_recommendations", uri=f"file://{root}/serving/recommendations"),
    }


def spark_master(settings: Settings) -> str:
    """The master of the Spark connection, resolved as SparkSubmitHook resolves it for
    the Spark stages' spark-submit (host, ``:port`` when set; YARN without a connection)."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    return SparkSubmitHook(conn_id=settings.orchestration.spark_conn_id)._connection["master"]


def stage_environment(settings: Settings, stage: str) -> dict[str, str]:
    """What a child job gets on top of the worker's environment: score's Spark backend runs
    on the master the Spark stages are submitted to."""
    return {"CROSSREC_SPARK__MASTER": spark_master(settings)} if declared(stage).spark_backend else {}


def job_script() -> str:
    """The file spark-submit runs: crossrec_core/jobs.py wherever the package is installed
    (found, not imported: the DAG file must not load pyarrow)."""
    spec = importlib.util.find_spec(JOBS_MODULE)
    assert spec is not None and spec.origin is not None
    return spec.origin


def job_command(stage: str) -> list[str]:
    """The job of ``stage`` in this Python, from the installed package (no checkout needed)."""
    return [sys.executable, "-P", "-m", JOBS_MODULE, stage]  # -P: see crossrec_core.jobs


def start_job(settings: Settings, stage: str, ds: str, params: Mapping[str, Any]) -> subprocess.Popen:
    """Start the stage's job (:mod:`crossrec_core.jobs`) as a child process leading its own process group, so that
    :func:`stop_job` also reaches whatever it starts (data loader workers, ...)."""
    command = [*job_command(stage), *stage_arguments(settings, stage, ds, params)]
    environment = stage_environment(settings, stage)
    log.info("running %s%s", " ".join(command), "".join(f" ({k}={v})" for k, v in environment.items()))
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
        env={**os.environ, **environment},
    )


def follow_job(process: subprocess.Popen, stage: str, ds: str) -> None:
    """Stream the job's output to the task log and raise for its exit code. Whatever
    interrupts the wait (a timeout, a signal) stops the job's process group first."""
    last_lines: list[str] = []
    assert process.stdout is not None  # start_job pipes it
    try:
        for line in process.stdout:
            log.info("%s", line.rstrip())
            last_lines = [*last_lines[-4:], line.rstrip()]
        exit_code = process.wait()
    except BaseException:
        stop_job(process)
        raise
    raise_for_exit(stage, ds, exit_code, "\n".join(last_lines))


def stop_job(process: subprocess.Popen, grace_seconds: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the job's process group, SIGKILL it after ``grace_seconds``, and reap the job."""
    group = process.pid  # start_new_session: the job leads a group of its own id
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return  # the job and everything it started are gone already
    log.warning("stopping the process group %d of %s", group, process.args)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)  # members that outlived the leader or ignored SIGTERM
    process.wait()


class StageJobOperator(BaseOperator):
    """Runs one torch or Delta stage (``python -m crossrec_core.jobs STAGE``) for the run's ds. When Airflow
    kills the task (timeout, marked failed, cleared), ``on_kill`` stops the job's whole
    process group, so no training keeps running behind a dead task."""

    def __init__(self, *, settings: Settings, stage: TimedTask, **kwargs: Any) -> None:
        """Task id, queue and execution timeout come from the stage's declaration and the
        settings unless given."""
        kwargs.setdefault("task_id", stage)
        kwargs.setdefault("execution_timeout", task_timeout(settings, stage))
        if declared(stage).queue is Queue.TORCH and settings.orchestration.torch_queue:
            kwargs.setdefault("queue", settings.orchestration.torch_queue)
        super().__init__(**kwargs)
        self.settings = settings
        self.stage = stage
        self._process: subprocess.Popen | None = None

    def execute(self, context) -> None:
        ds = resolve_ds(context["params"], context["dag_run"])
        self._process = start_job(self.settings, self.stage, ds, context["params"])
        follow_job(self._process, self.stage, ds)

    def on_kill(self) -> None:
        if self._process is not None:
            stop_job(self._process)


def raise_for_exit(stage: str, ds: str | None, exit_code: int, output_tail: str) -> None:
    """Fail the task by the job's exit code: 2 (the crossrec error family) without retry,
    any other non-zero code with the task's retries."""
    if exit_code == EXPECTED_FAILURE_EXIT:
        raise AirflowFailException(f"{stage} for ds={ds} failed on bad input or missing data (not retried):\n{output_tail}")
    if exit_code:
        raise AirflowException(f"{stage} for ds={ds} exited with {exit_code} (retried if retries remain):\n{output_tail}")


class StageSparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator that classifies a failure by the exit code of the spark-submit
    process, as :func:`raise_for_exit` does for the other jobs: exit 2 fails without retry,
    others keep the retries."""

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowFailException:
            raise
        except AirflowException as err:
            # the hook keeps the spark-submit process it ran; its message is not an interface
            process = self._hook._submit_sp if self._hook is not None else None
            if process is not None and process.returncode is not None:
                raise_for_exit(self.task_id, context.get("ds"), process.returncode, str(err))
            raise


def spark_stage(settings: Settings, stage: TimedTask, domain: str | None = None, **kwargs: Any) -> StageSparkSubmitOperator:
    """The spark-submit task of a Spark stage (master from the ``spark_default`` connection;
    the driver's address and shuffle partitions from ``settings.spark``, see spark_session)."""
    return StageSparkSubmitOperator(
        application=job_script(),
        application_args=[stage, *stage_arguments(settings, stage, DS_TEMPLATE, PARAM_TEMPLATES, domain=domain)],
        conn_id=settings.orchestration.spark_conn_id,
        name=f"crossrec_{stage}",
        conf={
            "spark.ui.enabled": "false",
            "spark.driver.memory": settings.spark.driver_memory,
            "spark.driver.extraJavaOptions": driver_java_options(),
            **settings.spark.conf,
        },
        env_vars={"PYSPARK_PYTHON": sys.executable, "PYTHONSAFEPATH": "1"},  # see crossrec_core.jobs
        execution_timeout=task_timeout(settings, stage),
        **kwargs,
    )


class RawPartitionSensor(BaseSensorOperator):
    """Waits for ``raw/domain=D/ds=DS`` to hold data files, or with ``success_marker`` for
    its ``_SUCCESS`` file (written by the producer once the whole delivery is there); on
    timeout, fails naming the path."""

    template_fields = ("domain",)

    def __init__(self, *, lake: Path, domain: str, success_marker: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lake = str(lake)
        self.domain = domain
        self.success_marker = success_marker

    def raw_path(self, ds: str) -> Path:
        from crossrec_core.contracts import RAW
        from crossrec_core.lake import Lake

        return Lake(self.lake).partition_path(RAW, domain=self.domain, ds=ds)

    def awaited(self, context) -> Path:
        """What this sensor waits for: the partition, or its ``_SUCCESS`` marker."""
        path = self.raw_path(resolve_ds(context["params"], context["dag_run"]))
        return path / SUCCESS_MARKER if self.success_marker else path

    def poke(self, context) -> bool:
        awaited = self.awaited(context)
        if self.success_marker:
            ready = awaited.is_file()
        else:
            ready = awaited.is_dir() and any(p.is_file() and not p.name.startswith((".", "_")) for p in awaited.rglob("*"))
        log.info("raw %s %s", awaited, "is ready" if ready else "is not there yet")
        return ready

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowSensorTimeout as err:
            raise AirflowSensorTimeout(f"raw {self.awaited(context)} did not arrive within {self.timeout:.0f} s: {err}") from err


def gate(settings: Settings, context) -> bool:
    """The ``gate`` task: the evaluate stage's decision for the run's ds. False skips score
    and publish (the served list stays) and raises a ``gated`` alert; the run stays green."""
    from crossrec_core.contracts import AlertKind
    from crossrec_core.gate import gate_decision
    from crossrec_core.lake import Lake

    ds = resolve_ds(context["params"], context["dag_run"])
    decision = gate_decision(Lake(settings.lake), ds)
    log.log(
        logging.INFO if decision["publish"] else logging.WARNING,
        "gate for ds=%s: %s: %s",
        ds,
        "publish" if decision["publish"] else "KEEP THE SERVED MODEL",
        decision.get("reason"),
    )
    if not decision["publish"]:
        _task_alert(settings, context, AlertKind.GATED, ds, f"the gate kept the served model: {decision.get('reason', '')}")
    return bool(decision["publish"])


# ---- alerts ------------------------------------------------------------------------------
def alert_webhook(conn_id: str):
    """The webhook of the Airflow connection ``conn_id`` (None when there is no such
    connection). URL: the connection's host when it holds a scheme (``https://...``), else
    ``schema://host[:port]``, then ``extra.endpoint``; a password becomes a bearer token."""
    from crossrec_core.alerts import Webhook

    try:
        connection = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    host = connection.host or ""
    url = host if "://" in host else f"{connection.schema or 'https'}://{host}"
    if connection.port:
        url += f":{connection.port}"
    url += connection.extra_dejson.get("endpoint", "")
    headers = {"Authorization": f"Bearer {connection.password}"} if connection.password else {}
    return Webhook(url=url, headers=headers)


def raise_alert(
    settings: Settings, kind, ds: str, message: str, *, dag_id: str, run_id: str, task_id: str = "", try_number: int = 0
) -> str:
    """Record an alert (and post it when the webhook connection exists); returns the post's outcome."""
    from crossrec_core.alerts import Alert
    from crossrec_core.alerts import raise_alert as record_and_post
    from crossrec_core.lake import Lake

    alert = Alert(ds=ds, kind=kind, dag_id=dag_id, run_id=run_id, task_id=task_id, try_number=try_number, message=message)
    return record_and_post(Lake(settings.lake), alert, alert_webhook(settings.orchestration.alerts_conn_id))


def _task_alert(settings: Settings, context, kind, ds: str, message: str) -> str:
    task_instance, dag_run = context["ti"], context["dag_run"]
    return raise_alert(
        settings,
        kind,
        ds,
        message,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        task_id=task_instance.task_id,
        try_number=int(task_instance.try_number or 0),
    )


def _alert_ds(context) -> str:
    """The run's ds; a run without one is filed under the day it was created."""
    dag_run = context.get("dag_run")
    try:
        return resolve_ds(context.get("params"), dag_run)
    except AirflowFailException:
        return (getattr(dag_run, "run_after", None) or datetime.now(UTC)).astimezone(UTC).date().isoformat()


class AlertOnFailure:
    """``on_failure_callback`` of every task: a ``task_failed`` alert naming the error
    (called once the task has failed for good: after its last retry, or at once on exit 2)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, context) -> None:
        from crossrec_core.contracts import AlertKind

        error = context.get("exception")
        message = f"{type(error).__name__}: {error}" if error is not None else "failed"
        _task_alert(self.settings, context, AlertKind.TASK_FAILED, _alert_ds(context), message)


class AlertOnRunFailure:
    """``on_failure_callback`` of the DAG (run by Airflow's dag processor): a ``run_failed``
    alert when the run failed for its own reason (``timed_out``: past dagrun_timeout). A run
    failed by a task raises no second alert: the task's names the cause."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, context) -> None:
        from crossrec_core.contracts import AlertKind

        reason = context.get("reason") or "failed"
        if reason == "task_failure":
            return
        raise_alert(
            self.settings,
            AlertKind.RUN_FAILED,
            _alert_ds(context),
            f"the DAG run failed: {reason}",
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
        )
