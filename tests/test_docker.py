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
    assert all(
        line.split("=", 1)[1] in ("replace-me", "airflow") for line in example.splitlines() if "=" in line and not line.startswith("#")
    )
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


LAKE_UID = 50000


def lake_services(compose) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if "lake:/lake" in s.get("volumes", [])}


def final_user(dockerfile: Path) -> str:
    users = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
    return users[-1]


def test_one_uid_owns_the_lake_volume_for_airflow_and_spark(compose):
    services = lake_services(compose)
    init = services.pop("lake-init")
    assert init["user"] == "0:0" and init["restart"] == "no"
    assert f"chown {LAKE_UID}:0 /lake" in " ".join(init["command"])
    assert {"airflow-worker", "airflow-worker-gpu", "spark-master", "spark-worker"} <= set(services)
    for name, service in services.items():
        assert service["user"] == f"{LAKE_UID}:0", name
        assert service["depends_on"]["lake-init"]["condition"] == "service_completed_successfully", name
    # the images run as that uid too, so a container started without compose's `user:` agrees
    assert final_user(DOCKER / "airflow" / "Dockerfile") == "airflow"  # uid 50000 in apache/airflow images
    spark_image = (DOCKER / "spark" / "Dockerfile").read_text()
    assert final_user(DOCKER / "spark" / "Dockerfile") == str(LAKE_UID)
    assert re.search(rf"useradd --uid {LAKE_UID} --gid 0\b", spark_image)
    # the worker keeps executor directories where that uid may write (pyspark's own folder is root's)
    work_dir = re.search(r"SPARK_WORKER_DIR=(\S+)", spark_image).group(1)
    assert re.search(rf"install -d -o {LAKE_UID} -g 0 -m 0775 {re.escape(work_dir)}\b", spark_image)


def test_long_running_services_have_healthchecks_and_restart_policies(compose):
    services = compose["services"]
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"lake-init", "airflow-init"}
    for name, service in services.items():
        if name in one_shot:
            continue
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name
        check = service.get("healthcheck") or {}
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "retries"} <= set(check), name
        for needed, condition in (service.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], f"{name} waits for {needed}, which has no healthcheck"
    assert services["spark-worker"]["depends_on"]["spark-master"]["condition"] == "service_healthy"
    assert "/json/" in " ".join(services["spark-master"]["healthcheck"]["test"])  # the master's own status page


def test_no_architecture_specific_path_and_java_home_derived_from_the_installed_java():
    for path in sorted(p for p in DOCKER.rglob("*") if p.is_file() and p.name != ".env" and p.suffix != ".md"):
        text = path.read_text()
        assert not re.search(r"amd64|arm64|x86_64|aarch64", text), f"{path.relative_to(REPO)} names an architecture"
    for dockerfile in (DOCKER / "airflow" / "Dockerfile", DOCKER / "spark" / "Dockerfile"):
        text = dockerfile.read_text()
        java_home = re.search(r"JAVA_HOME=(\S+)", text).group(1)
        assert re.search(rf'readlink -f "\$\(command -v java\)".*\s{re.escape(java_home)}$', text, re.MULTILINE), dockerfile


def test_no_container_advertises_a_fixed_spark_local_ip(compose):
    # SPARK_LOCAL_IP=0.0.0.0 makes drivers and workers advertise an address nobody can
    # reach; containers keep Spark's default (their own address) or settings.spark keys
    for path in (DOCKER / "compose.yaml", DOCKER / "airflow" / "Dockerfile", DOCKER / "spark" / "Dockerfile"):
        assert "SPARK_LOCAL_IP" not in path.read_text(), path
    for name in ("airflow-worker", "airflow-worker-gpu"):
        assert compose["services"][name]["environment"]["CROSSREC_SPARK__BIND_ADDRESS"] == "0.0.0.0"
