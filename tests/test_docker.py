"""docker/ checked statically (no Docker engine runs here): the compose file parses, what
it builds exists, the services agree on the lake, the Spark master and the GPU queue, and
no secret is written into it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return dict(line.lower().split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def test_every_build_context_and_dockerfile_exists_and_copies_what_exists(compose):
    builds = [s["build"] for s in compose["services"].values() if "build" in s]
    assert len(builds) >= 3
    for build in builds:
        context = (DOCKER / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert context == REPO and dockerfile.is_file(), build
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY"):
                sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
                assert all((context / s).exists() for s in sources), line


def test_the_cluster_has_its_services(compose):
    services = compose["services"]
    for name in (*AIRFLOW_SERVICES, "airflow-worker-gpu", "postgres", "redis", "spark-master", "spark-worker"):
        assert name in services, name
    assert services["airflow-apiserver"]["command"] == "api-server"
    gpu = services["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "cu" in services["airflow-worker-gpu"]["build"]["args"]["TORCH_INDEX_URL"]


def test_services_agree_on_lake_spark_master_database_and_gpu_queue(compose):
    services = compose["services"]
    spark_master = "spark://spark-master:7077"
    for name in (*AIRFLOW_SERVICES, "airflow-worker-gpu", "spark-master", "spark-worker"):
        service = services[name]
        assert "lake:/lake" in service["volumes"], name
        assert service["environment"]["CROSSREC_LAKE"] == "/lake", name
        assert service["environment"]["CROSSREC_SPARK__MASTER"] == spark_master, name
    for name in (*AIRFLOW_SERVICES, "airflow-worker-gpu"):
        env = services[name]["environment"]
        assert spark_master in env["AIRFLOW_CONN_SPARK_DEFAULT"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    queue = services["airflow-worker"]["environment"]["CROSSREC_ORCHESTRATION__TORCH_QUEUE"]
    assert f"--queues {queue}" in services["airflow-worker-gpu"]["command"]
    assert f"--queues {queue}" not in services["airflow-worker"]["command"]
    assert "spark://spark-master:7077" in services["spark-worker"]["command"]


def test_no_secret_is_committed(compose):
    text = (DOCKER / "compose.yaml").read_text()
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|FERNET|TOKEN", key):
                pytest.fail(f"{name} sets {key} in compose.yaml; secrets belong in docker/.env")
            literal = re.sub(r"\$\{[^}]*\}", "", str(value))  # ${VAR} comes from docker/.env
            assert not re.search(r"://[^/@]*:[^/@]+@", literal), f"{name}.{key} embeds a password"
    assert "replace-me" not in text
    example = (DOCKER / ".env.example").read_text()
    assert all(line.split("=", 1)[1] in ("replace-me", "airflow") for line in example.splitlines() if "=" in line and not line.startswith("#"))
    ignored = subprocess.run(["git", "check-ignore", "docker/.env"], cwd=REPO, capture_output=True, text=True)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"
    assert "docker/.env" in (REPO / ".dockerignore").read_text().splitlines()


def test_images_take_their_python_pins_from_constraints_and_delta_jars_from_the_pinned_delta():
    pinned = pins()
    airflow_image = (DOCKER / "airflow" / "Dockerfile").read_text()
    assert f"apache/airflow:{pinned['apache-airflow']}-python3.11" in airflow_image
    for dockerfile in (DOCKER / "airflow" / "Dockerfile", DOCKER / "spark" / "Dockerfile"):
        text = dockerfile.read_text()
        assert "-c ${CROSSREC_HOME}/constraints.txt" in text
        assert not re.search(r"\b(torch|pyspark|delta-spark)==", text), f"{dockerfile} re-types a pin"
    # the jars are resolved by delta's own helper from the installed (pinned) delta-spark and pyspark
    assert "configure_spark_with_delta_pip" in (DOCKER / "spark" / "fetch_delta_jars.py").read_text()
    assert "fetch_delta_jars.py" in (DOCKER / "spark" / "Dockerfile").read_text()
