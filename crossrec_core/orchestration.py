"""What the Airflow DAG needs beyond wiring: run params, job command lines, the raw-data
sensor, failure classification and the gate's short-circuit.

Every stage runs as its own process (``jobs/<stage>.py``: spark-submit for the Spark
stages, the environment's Python for the torch and Delta stages), so the Airflow worker
never imports Spark or torch. Exit code 2 means a contract violation (bad input, missing
data, bad config): retrying cannot help, so the task fails at once; any other failure is
treated as transient and retried with exponential backoff.

This module is imported by the DAG file at parse time: keep its top-level imports light
(no torch, pyspark, pandas, pyarrow).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, BaseSensorOperator, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from crossrec_core.config import DOMAIN_NAME_PATTERN, MODEL_NAMES, Settings
from crossrec_core.errors import EXPECTED_FAILURE_EXIT
from crossrec_core.spark import DRIVER_JAVA_OPTIONS

log = logging.getLogger(__name__)

JOBS_DIR = Path(__file__).resolve().parent.parent / "jobs"

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
    domain_schema = {"type": "string", "pattern": DOMAIN_NAME_PATTERN.pattern}
    return {
        "model": Param(
            settings.model.name, enum=["auto", *MODEL_NAMES],
            description="Model to train; 'auto' trains every configured candidate and keeps the best on target validation NDCG@10.",
        ),
        "k": Param(settings.score.k, type="integer", minimum=1, maximum=1000, description="Recommendations per user."),
        "retrain_from_scratch": Param(
            False, type="boolean", description="Ignore the published model's weights (no warm start).",
        ),
        "source_domain": Param(settings.source, **domain_schema, description="Source (data-rich) domain name."),
        "target_domain": Param(settings.target, **domain_schema, description="Target (served) domain name."),
    }


def start_datetime(settings: Settings) -> datetime:
    return datetime.combine(settings.orchestration.start_date, time(), tzinfo=UTC)


def default_args(settings: Settings) -> dict[str, Any]:
    orchestration = settings.orchestration
    return {
        "retries": orchestration.retries,
        "retry_delay": timedelta(seconds=orchestration.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=orchestration.max_retry_delay_seconds),
    }


def stage_arguments(settings: Settings, stage: str, ds: str, params: Mapping[str, Any], domain: str | None = None) -> list[str]:
    """The command-line arguments of ``jobs/<stage>.py`` for one run (values may be Jinja)."""
    arguments = ["--ds", ds, "--lake", str(Path(settings.lake).resolve())]
    arguments += ["--source", str(params["source_domain"]), "--target", str(params["target_domain"])]
    if domain is not None:
        arguments += ["--domain", domain]
    if stage in ("train", "score"):
        arguments += ["--model", str(params["model"]), "-k", str(params["k"])]
    if stage == "train" and str(params["retrain_from_scratch"]).lower() == "true":
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


def run_job(settings: Settings, stage: str, ds: str, params: Mapping[str, Any]) -> None:
    """Run ``jobs/<stage>.py`` as a child process, streaming its output to the task log."""
    command = [sys.executable, str(JOBS_DIR / f"{stage}.py"), *stage_arguments(settings, stage, ds, params)]
    log.info("running %s", " ".join(command))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    last_lines: list[str] = []
    for line in process.stdout:
        log.info("%s", line.rstrip())
        last_lines = [*last_lines[-4:], line.rstrip()]
    raise_for_exit(stage, ds, process.wait(), "\n".join(last_lines))


def raise_for_exit(stage: str, ds: str | None, exit_code: int, output_tail: str) -> None:
    """Fail the task by the job's exit code: 2 (the crossrec error family) without retry,
    any other non-zero code with the task's retries."""
    if exit_code == EXPECTED_FAILURE_EXIT:
        raise AirflowFailException(f"{stage} for ds={ds} failed on bad input or missing data (not retried):\n{output_tail}")
    if exit_code:
        raise AirflowException(f"{stage} for ds={ds} exited with {exit_code} (retried if retries remain):\n{output_tail}")


class StageSparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator that classifies a failure by the exit code of the spark-submit
    process, as :func:`run_job` does: exit 2 fails without retry, others keep the retries."""

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


def spark_stage(settings: Settings, stage: str, domain: str | None = None, **kwargs: Any) -> StageSparkSubmitOperator:
    """The spark-submit task of a Spark stage (master from the ``spark_default`` connection)."""
    return StageSparkSubmitOperator(
        application=str(JOBS_DIR / f"{stage}.py"),
        application_args=stage_arguments(settings, stage, "{{ ds }}", PARAM_TEMPLATES, domain=domain),
        conn_id=settings.orchestration.spark_conn_id,
        name=f"crossrec_{stage}",
        conf={
            "spark.ui.enabled": "false",
            "spark.driver.memory": settings.spark.driver_memory,
            "spark.driver.extraJavaOptions": DRIVER_JAVA_OPTIONS,
            **settings.spark.conf,
        },
        env_vars={"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"},
        **kwargs,
    )


class RawPartitionSensor(BaseSensorOperator):
    """Waits for ``raw/domain=D/ds=DS`` to hold data files; on timeout, fails naming the path."""

    template_fields = ("domain",)

    def __init__(self, *, lake: Path, domain: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lake = str(lake)
        self.domain = domain

    def raw_path(self, ds: str) -> Path:
        from crossrec_core.contracts import RAW
        from crossrec_core.lake import Lake

        return Lake(self.lake).partition_path(RAW, domain=self.domain, ds=ds)

    def poke(self, context) -> bool:
        path = self.raw_path(context["ds"])
        ready = path.is_dir() and any(p.is_file() and not p.name.startswith((".", "_")) for p in path.rglob("*"))
        log.info("raw partition %s %s", path, "is ready" if ready else "is not there yet")
        return ready

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowSensorTimeout as err:
            raise AirflowSensorTimeout(
                f"raw partition {self.raw_path(context['ds'])} did not arrive within {self.timeout:.0f} s: {err}"
            ) from err


def gate_allows_publishing(settings: Settings, ds: str) -> bool:
    """The evaluate stage's decision; False skips score and publish (the served list stays)."""
    from crossrec_core.lake import Lake
    from crossrec_core.serving import gate_decision

    decision = gate_decision(Lake(settings.lake), ds)
    log.log(logging.INFO if decision["publish"] else logging.WARNING,
            "gate for ds=%s: %s: %s", ds, "publish" if decision["publish"] else "KEEP THE SERVED MODEL", decision.get("reason"))
    return bool(decision["publish"])
