"""The library installs anywhere: a wheel built from the repository, installed into a
folder outside the checkout, generates sample data and runs every stage of a night as
Airflow runs them (``python -m crossrec_core.jobs STAGE``), with nothing taken from the
repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crossrec_core.contracts import RECOMMENDATIONS
from crossrec_core.lake import Lake
from crossrec_core.pipeline import summarise
from crossrec_core.serving import snapshot
from crossrec_core.stages import STAGE_LIST, Engine

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
DS = "2026-03-02"
UNSHIPPED = (".git", ".venv", "lake", "airflow_home", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")


def test_a_wheel_installed_outside_the_checkout_runs_demo_data_and_every_stage(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = shutil.copytree(REPO, tmp_path / "source", symlinks=True, ignore=shutil.ignore_patterns(*UNSHIPPED))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(source)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("crossrec-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    # the installed copy comes first; the dependencies come from this environment
    env = {**os.environ, "PYTHONPATH": str(site), "CROSSREC_LAKE": str(tmp_path / "lake")}

    def run(*arguments: str) -> str:
        done = subprocess.run([sys.executable, *arguments], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{arguments}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    located = run("-c", "import crossrec_core, crossrec_core.jobs as j; print(crossrec_core.__file__); print(j.__file__)")
    assert all(Path(line).is_relative_to(site) for line in located.split()), located
    # the DAG file travels with the package (what `crossrec demo` points Airflow at)
    shipped = site / "crossrec_core" / "airflow_dags" / "crossrec_nightly.py"
    assert shipped.read_text() == (REPO / "dags" / "crossrec_nightly.py").read_text()
    run("-m", "crossrec_core", "demo-data", "--users", "150", "--days", "1", "--end-date", DS)
    domains = run("-c", "from crossrec_core.config import load_settings; print(*load_settings().domains.all)").split()
    for stage in STAGE_LIST:
        for domain in domains if stage.per_domain else [None]:
            run("-m", "crossrec_core.jobs", stage.name, "--ds", DS, *(["--domain", domain] if domain else []))
    served = snapshot(Lake(tmp_path / "lake"), RECOMMENDATIONS).dataset.to_table()
    assert served.num_rows > 0 and set(served["ds"].to_pylist()) == {DS}
    # every job is its own process: the run report splits each stage's time into that
    # process's start-up plus the Spark session (fixed) and the rest (data work)
    rows = summarise(Lake(tmp_path / "lake"), DS)
    spark_stages = {stage.name for stage in STAGE_LIST if stage.engine is Engine.SPARK}
    assert {r["stage"] for r in rows if r["status"] == "success"} >= spark_stages
    for row in rows:
        metrics = json.loads(row["metrics"])
        session = metrics.get("setup_seconds", {}).get("spark_session", 0.0)
        assert metrics["startup_seconds"] > 0 and (session > 0) == (row["stage"] in spark_stages), (row["stage"], metrics)
        assert row["fixed_seconds"] == pytest.approx(metrics["startup_seconds"] + session)
        assert row["data_seconds"] == pytest.approx(row["seconds"] - session) and row["data_seconds"] > 0
