"""A real Spark standalone cluster on this host: a master and a worker started from
pyspark's own distribution (``spark-class``). clean and featurize run on it as the DAG
runs them (SparkSubmitOperator on the ``spark_default`` connection), the Spark scoring
backend through the score task (which takes its master from the same connection); each
application shows on the master, and every output row equals a local[2] run's. Kept
small for the suite's time budget: tiny data, one worker, one clean on the cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from crossrec_core import orchestration
from crossrec_core.config import load_settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, FEATURE_INTERACTIONS, ITEM_KEYS, QUARANTINE, SCORES, USER_KEYS
from crossrec_core.ingest.demo_data import generate_demo_data
from crossrec_core.lake import Lake
from crossrec_core.pipeline import stage_function

pytestmark = [pytest.mark.spark, pytest.mark.airflow, pytest.mark.slow]

DS = "2026-03-02"
WORKER_CORES = 3  # more than local[2]'s 2, so shuffle_partitions: auto tells them apart
START_TIMEOUT_SECONDS = 180


@dataclass
class Cluster:
    url: str  # spark://127.0.0.1:PORT
    web_ui: str
    cores: int

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.web_ui}/json/", timeout=10) as answer:
            return json.load(answer)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Master and one worker (WORKER_CORES cores, 1 GiB) on 127.0.0.1, free ports; the
    worker's registration is awaited; both are killed whatever happens."""
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    home = tmp_path_factory.mktemp("spark-cluster")
    # the test machine's cluster lives on the loopback; product code never sets this
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "SPARK_WORKER_DIR": str(home / "work")}
    port, master_ui, worker_ui = free_port(), free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    commands = {
        "master": ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(master_ui)],
        "worker": [
            "org.apache.spark.deploy.worker.Worker",
            url,
            "--host",
            "127.0.0.1",
            "--webui-port",
            str(worker_ui),
            "--cores",
            str(WORKER_CORES),
            "--memory",
            "1g",
            "--work-dir",
            str(home / "work"),
        ],
    }
    processes: dict[str, subprocess.Popen] = {}
    logs = {name: home / f"{name}.log" for name in commands}
    cluster = Cluster(url, f"http://127.0.0.1:{master_ui}", WORKER_CORES)
    try:
        for name, arguments in commands.items():
            with logs[name].open("w") as log:
                processes[name] = subprocess.Popen(
                    [str(spark_class), *arguments],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            died = [name for name, process in processes.items() if process.poll() is not None]
            if died or time.monotonic() > deadline:
                tails = "\n".join(f"--- {name}:\n{logs[name].read_text()[-3000:]}" for name in commands)
                pytest.fail(f"standalone cluster did not come up ({'exited: ' + ', '.join(died) if died else 'timeout'}):\n{tails}")
            try:
                if [w["state"] for w in cluster.state()["workers"]] == ["ALIVE"]:
                    break
            except OSError:
                pass  # the master's web UI is not listening yet
            time.sleep(1)
        yield cluster
    finally:
        for process in reversed(processes.values()):
            stop(process)


def rows(lake: Lake, table, sort_by: list[str], drop: tuple[str, ...] = (), **partition) -> pa.Table:
    data = lake.read_parquet_partition(table, **partition)
    return data.drop_columns([c for c in drop if c in data.column_names]).sort_by([(c, "ascending") for c in sort_by])


def lake_relative(quarantine: pa.Table) -> pa.Table:
    """Quarantine rows name their raw file by its absolute path: the two runs' lakes differ."""
    index = quarantine.column_names.index("source_file")
    relative = pc.replace_substring_regex(quarantine["source_file"], r"^.*/lake/raw/", "raw/")
    return quarantine.set_column(index, "source_file", relative)


def test_clean_featurize_and_spark_scoring_on_a_standalone_cluster_equal_local(cluster, tmp_path, monkeypatch, caplog):
    conf = {
        # modest executors; Spark waits for all the worker's cores before the session
        # starts, so shuffle_partitions: auto sees the cluster's parallelism
        "spark.executor.memory": "512m",
        "spark.cores.max": str(cluster.cores),
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
    }
    model_and_scoring = {"model": {"name": "popularity"}, "score": {"backend": "spark", "k": 5}}
    local = load_settings(lake=tmp_path / "local" / "lake", spark={"master": "local[2]"}, **model_and_scoring)
    # the environment of an Airflow worker: crossrec settings shared by the DAG and its jobs,
    # the Spark connection, spark-submit on PATH
    monkeypatch.setenv("CROSSREC_MODEL__NAME", "popularity")
    monkeypatch.setenv("CROSSREC_SCORE__BACKEND", "spark")
    monkeypatch.setenv("CROSSREC_SCORE__K", "5")
    monkeypatch.setenv("CROSSREC_SPARK__DRIVER_HOST", "127.0.0.1")
    monkeypatch.setenv("CROSSREC_SPARK__CONF", json.dumps(conf))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": cluster.url}))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    on_cluster = load_settings(lake=tmp_path / "cluster" / "lake")
    assert on_cluster.spark.master == "local[2]"  # the connection, not this setting, decides below
    cluster_lake, local_lake = Lake(on_cluster.lake), Lake(local.lake)
    generate_demo_data(cluster_lake, on_cluster, users=60, days=1, seed=5, bad_fraction=0.03, end_date=DS)
    shutil.copytree(cluster_lake.root / "raw", local_lake.root / "raw")

    # the local[2] run: the stages in-process; its model is the one both runs score
    for domain in local.domains.all:
        stage_function("clean")(local, DS, domain=domain)
    stage_function("featurize")(local, DS)
    stage_function("train")(local, DS)
    stage_function("evaluate")(local, DS)
    stage_function("score")(local, DS)

    # the cluster run, as the DAG's tasks run it. One clean on the cluster (target) keeps
    # the test small; the source's clean partition comes from the local run.
    for table in (CLEAN_INTERACTIONS, QUARANTINE):
        source_partition = local_lake.partition_path(table, domain=local.source, ds=DS)
        shutil.copytree(source_partition, cluster_lake.partition_path(table, domain=local.source, ds=DS))
    shutil.copytree(local_lake.root / "models", cluster_lake.root / "models")
    assert orchestration.spark_master(on_cluster) == cluster.url  # what the score task hands its job
    params = {**{name: param.value for name, param in orchestration.dag_params(on_cluster).items()}, "ds": DS}
    context = {"ds": DS, "params": params, "dag_run": None, **orchestration.dag_macros()}
    caplog.set_level("INFO")
    for stage, domain, task_id in (
        ("clean", orchestration.PARAM_TEMPLATES["target_domain"], "clean_target"),
        ("featurize", None, "featurize"),
    ):
        operator = orchestration.spark_stage(on_cluster, stage, domain=domain, task_id=task_id)
        operator.render_template_fields(context)
        operator.execute(context)
    orchestration.follow_job(orchestration.start_job(on_cluster, "score", DS, params), "score", DS)

    apps = cluster.state()
    assert sorted(app["name"] for app in apps["completedapps"]) == ["crossrec-clean", "crossrec-featurize", "crossrec-score"]
    assert not apps["activeapps"]
    # shuffle_partitions: auto took the cluster's cores (the score job's log reaches the task log here;
    # the Spark stages' logs go through the provider's hook)
    assert f"on {cluster.url}: {2 * cluster.cores} shuffle partitions" in caplog.text

    for domain in local.domains.all:
        keys = dict(domain=domain, ds=DS)
        want, got = rows(local_lake, CLEAN_INTERACTIONS, ["event_id"], **keys), rows(cluster_lake, CLEAN_INTERACTIONS, ["event_id"], **keys)
        assert got.num_rows > 0 and got.equals(want), domain
        order = ["source_file", "source_row", "reason"]
        got = lake_relative(rows(cluster_lake, QUARANTINE, order, **keys))
        assert got.num_rows > 0 and got.equals(lake_relative(rows(local_lake, QUARANTINE, order, **keys))), domain
    for table, order in (
        (USER_KEYS, ["user_id"]),
        (ITEM_KEYS, ["domain", "item_id"]),
        (FEATURE_INTERACTIONS, ["domain", "user_key", "item_key"]),
    ):
        want, got = rows(local_lake, table, order, ds=DS), rows(cluster_lake, table, order, ds=DS)
        assert got.num_rows > 0 and got.equals(want), table.name
    order = ["user_id", "rank"]
    want = rows(local_lake, SCORES, order, ds=DS, domain=local.target)
    got = rows(cluster_lake, SCORES, order, ds=DS, domain=on_cluster.target)
    assert got.num_rows == want.num_rows > 0 and got.equals(want)


def test_driver_address_and_shuffle_partitions_come_from_settings():
    from crossrec_core.spark import driver_address_conf, shuffle_partitions

    spark = load_settings().spark
    assert spark.shuffle_partitions == "auto" and shuffle_partitions(spark, 16) == 32
    assert shuffle_partitions(load_settings(spark={"shuffle_partitions": 7}).spark, 16) == 7
    assert driver_address_conf(spark, "local[2]") == {"spark.driver.host": "127.0.0.1"}  # nothing leaves the host
    assert driver_address_conf(spark, "spark://master:7077") == {}  # Spark's default: the host's address
    container = load_settings(spark={"driver_host": "airflow-worker", "bind_address": "0.0.0.0"}).spark
    assert driver_address_conf(container, "spark://master:7077") == {
        "spark.driver.host": "airflow-worker",
        "spark.driver.bindAddress": "0.0.0.0",
    }
    stage = orchestration.spark_stage(load_settings(), "clean", domain="books", task_id="clean_target")
    assert "SPARK_LOCAL_IP" not in stage.env_vars
