"""crossrec_nightly: raw logs of two domains -> top-K recommendations of the target domain.

    wait_for_raw_source -> clean_source --+
                                          +-> featurize -> train -> evaluate -> gate -> score -> publish -> report
    wait_for_raw_target -> clean_target --+

Wiring only: every task runs a stage of crossrec_core as its own process (see
crossrec_core/orchestration.py). Configuration: crossrec's YAML/env settings
(CROSSREC_CONFIG, CROSSREC_*). The night is the trigger param ``ds`` when given, else
the run's logical date. Every task has a time limit (orchestration.stage_timeout_minutes)
and the run one (dagrun_timeout_minutes); a failure or a gated night records an alert
(serving/alerts) and posts it to the webhook of the ``crossrec_alerts`` connection.
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, dag, task

from crossrec_core import orchestration
from crossrec_core.config import TimedTask, load_settings

settings = load_settings()
assets = orchestration.assets(settings)


@dag(
    dag_id="crossrec_nightly",
    schedule=settings.orchestration.schedule,
    start_date=orchestration.start_datetime(settings),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=orchestration.dagrun_timeout(settings),
    on_failure_callback=orchestration.AlertOnRunFailure(settings),
    params=orchestration.dag_params(settings),
    user_defined_macros=orchestration.dag_macros(),
    default_args=orchestration.default_args(settings),
    tags=["crossrec"],
    doc_md=__doc__,
)
def crossrec_nightly():
    cleaned = []
    for role in ("source", "target"):
        domain = orchestration.PARAM_TEMPLATES[f"{role}_domain"]
        wait = orchestration.RawPartitionSensor(
            task_id=f"wait_for_raw_{role}",
            lake=settings.lake,
            domain=domain,
            success_marker=settings.orchestration.raw_success_marker,
            poke_interval=settings.orchestration.raw_poke_seconds,
            timeout=settings.orchestration.raw_wait_minutes * 60,
            mode=settings.orchestration.sensor_mode,
            retries=0,
        )
        clean = orchestration.spark_stage(settings, "clean", domain=domain, task_id=f"clean_{role}", outlets=[assets[f"clean_{role}"]])
        wait >> clean
        cleaned.append(clean)

    featurize = orchestration.spark_stage(settings, "featurize", task_id="featurize", outlets=[assets["features"]])

    def stage(name: TimedTask, **kwargs):
        return orchestration.StageJobOperator(settings=settings, stage=name, **kwargs)

    @task.short_circuit(ignore_downstream_trigger_rules=False, execution_timeout=orchestration.task_timeout(settings, "gate"))
    def gate(**context):
        return orchestration.gate(settings, context)

    train = stage("train")
    evaluate = stage("evaluate")
    score = stage("score")
    publish = stage("publish", outlets=[assets["recommendations"]])
    report = stage("report", trigger_rule=TriggerRule.ALL_DONE, retries=0)

    cleaned >> featurize >> train >> evaluate >> gate() >> score >> publish >> report


crossrec_nightly()
