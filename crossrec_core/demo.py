"""The main job on embedded defaults (``make run`` = ``crossrec demo``).

A local Airflow (SQLite metadata DB under ``./airflow_home``), a local lake, local Spark
and CPU torch: generate a few days of sample logs, run ``crossrec_nightly`` for each day
through real Airflow (``airflow dags test``), then show a warm and a cold-start user's
top 10 and the last night's run report. ``--ui`` starts ``airflow standalone`` instead.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from crossrec_core.config import Settings
from crossrec_core.lake import Lake, LakeError
from crossrec_core.stages import RUN_REPORT_STAGE

log = logging.getLogger(__name__)

# The DAG file ships inside the package (a link to dags/ in the repository), so an
# installed crossrec runs the demo without a checkout.
DAGS_FOLDER = Path(__file__).resolve().parent / "airflow_dags"
DAG_ID = "crossrec_nightly"


class DemoError(LakeError):
    """A step of the demo failed; the message names the step and its log file."""


def airflow_environment(settings: Settings, airflow_home: Path) -> dict[str, str]:
    """The environment of every Airflow command of the demo: local, SQLite, low parallelism."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home.resolve()),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "CROSSREC_LAKE": str(Path(settings.lake).resolve()),
            # spark-submit ships in this environment's bin/; SparkSubmitOperator looks for it on PATH
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": settings.spark.master}))
    return env


def run_logged(command: list[str], env: dict[str, str], log_file: Path, what: str) -> float:
    """Run ``command`` with its output in ``log_file``; return its seconds, or fail naming the log."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log_file.open("w") as out:
        code = subprocess.call(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        raise DemoError(f"{what} failed (exit {code}); full log: {log_file}\n{tail}")
    return time.perf_counter() - started


def airflow(*args: str) -> list[str]:
    command = Path(sys.executable).parent / "airflow"
    if not command.is_file():
        raise DemoError(f"{command} does not exist: the demo runs Airflow (pip install 'crossrec[airflow]')")
    return [str(command), *args]


def demo_days(days: int, end: date | None = None) -> list[str]:
    end = end or date.today() - timedelta(days=1)
    return [(end - timedelta(days=offset)).isoformat() for offset in range(days - 1, -1, -1)]


def run_nights(settings: Settings, airflow_home: Path, days: list[str], progress=print) -> dict[str, float]:
    """Run the DAG for each day through Airflow; fail when a night's report is not a success."""
    from crossrec_core.reports import ALL_DOMAINS, read_run_reports

    env = airflow_environment(settings, airflow_home)
    logs = airflow_home / "demo-logs"
    run_logged(airflow("db", "migrate"), env, logs / "db-migrate.log", "airflow db migrate")
    seconds = {}
    for ds in days:
        progress(f"airflow dags test {DAG_ID} {ds} ...")
        seconds[ds] = run_logged(airflow("dags", "test", DAG_ID, ds), env, logs / f"dags-test-{ds}.log", f"the DAG run of {ds}")
        reports = {(r["stage"], r["domain"]): r["status"] for r in read_run_reports(Lake(settings.lake), ds).to_pylist()}
        if reports.get((RUN_REPORT_STAGE, ALL_DOMAINS)) != "success":
            raise DemoError(f"the DAG run of {ds} did not end with a successful report: {reports}; log: {logs / f'dags-test-{ds}.log'}")
        progress(f"  {ds} done in {seconds[ds]:.0f} s")
    return seconds


def example_users(lake: Lake, domain: str, ds: str) -> dict[str, str]:
    """One user per served segment of (ds, domain), the lowest id of each."""
    import pyarrow.compute as pc

    from crossrec_core.contracts import RECOMMENDATIONS
    from crossrec_core.serving import snapshot

    rows = snapshot(lake, RECOMMENDATIONS).dataset.to_table(
        columns=["user_id", "segment"],
        filter=(pc.field("ds") == ds) & (pc.field("domain") == domain) & (pc.field("rank") == 1),
    )
    first = rows.group_by("segment").aggregate([("user_id", "min")])
    return dict(zip(first["segment"].to_pylist(), first["user_id_min"].to_pylist(), strict=True))


def start_ui(settings: Settings, airflow_home: Path) -> None:
    """``airflow standalone`` on 127.0.0.1:8080 (blocks until interrupted)."""
    env = airflow_environment(settings, airflow_home)
    run_logged(airflow("db", "migrate"), env, airflow_home / "demo-logs" / "db-migrate.log", "airflow db migrate")
    print(
        "Airflow UI: http://127.0.0.1:8080  (user admin; password in "
        f"{airflow_home.resolve() / 'simple_auth_manager_passwords.json.generated'} once it starts)"
    )
    print("Stop with Ctrl-C.")
    subprocess.call(airflow("standalone"), env=env)


def report_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The rows of :func:`crossrec_core.pipeline.summarise` as display strings."""

    def seconds(value: float | None) -> str:
        return "" if value is None else f"{value:.1f}"

    return [
        (
            r["stage"],
            r["domain"],
            r["status"],
            f"{r['rows_in']:,}",
            f"{r['rows_out']:,}",
            f"{r['rows_quarantined']:,}",
            seconds(r["seconds"]),
            seconds(r["fixed_seconds"]),
            seconds(r["data_seconds"]),
        )
        for r in rows
    ]
