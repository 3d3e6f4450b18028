"""crossrec_nightly: raw logs of two domains -> top-K recommendations of the target domain.

    wait_for_raw_source -> clean_source --+
                                          +-> featurize -> train -> evaluate -> gate -> score -> publish -> report
    wait_for_raw_target -> clean_target --+

Wiring only: every task runs a stage of crossrec_core as its own process (see
crossrec_core/orchestration.py). Configuration: crossrec's YAML/env settings
(CROSSREC_CONFIG, CROSSREC_*).
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, dag, task

from crossrec_core import orchestration
from crossrec_core.config import load_settings

settings = load_settings()
assets = orchestration.assets(settings)
torch_queue = {"queue": settings.orchestration.torch_queue} if settings.orchestration.torch_queue else {}


@dag(
    dag_id="crossrec_nightly",
    schedule=settings.orchestration.schedule,
    start_date=orchestration.start_datetime(settings),
    catchup=False,
    max_active_runs=1,
    params=orchestration.dag_params(settings),
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
            poke_interval=settings.orchestration.raw_poke_seconds,
            timeout=settings.orchestration.raw_wait_minutes * 60,
            mode=settings.orchestration.sensor_mode,
            retries=0,
        )
        clean = orchestration.spark_stage(settings, "clean", domain=domain, task_id=f"clean_{role}", outlets=[assets[f"clean_{role}"]])
        wait >> clean
        cleaned.append(clean)

    featurize = orchestration.spark_stage(settings, "featurize", task_id="featurize", outlets=[assets["features"]])

    @task(**torch_queue)
    def train(ds=None, params=None):
        orchestration.run_job(settings, "train", ds, params)

    @task
    def evaluate(ds=None, params=None):
        orchestration.run_job(settings, "evaluate", ds, params)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def gate(ds=None):
        return orchestration.gate_allows_publishing(settings, ds)

    @task(**torch_queue)
    def score(ds=None, params=None):
        # score.backend: spark runs on the spark_default connection's master, like clean and featurize
        orchestration.run_job(settings, "score", ds, params)

    @task(outlets=[assets["recommendations"]])
    def publish(ds=None, params=None):
        orchestration.run_job(settings, "publish", ds, params)

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def report(ds=None, params=None):
        orchestration.run_job(settings, "report", ds, params)

    cleaned >> featurize >> train() >> evaluate() >> gate() >> score() >> publish() >> report()


crossrec_nightly()
