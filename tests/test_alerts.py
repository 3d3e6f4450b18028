"""Alerts of the nightly DAG: a failed task, a failed run and a gated night each leave a
row in serving/alerts (queryable with `crossrec sql`) and are POSTed to the webhook of the
Airflow connection when it exists; without it nothing is posted and nothing fails."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest
from conftest import write_gate
from typer.testing import CliRunner

from crossrec_core.alerts import Alert, Webhook, raise_alert
from crossrec_core.cli import app
from crossrec_core.contracts import AlertKind

pytestmark = pytest.mark.airflow


@pytest.fixture
def webhook_server():
    """A local HTTP endpoint that keeps every JSON body POSTed to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(self.rfile.read(int(self.headers["Content-Length"]))),
                }
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


def alerts_via_sql(lake_root) -> list[dict]:
    shown = CliRunner().invoke(
        app,
        [
            "sql",
            "SELECT ds, kind, task_id, try_number, message, webhook FROM alerts ORDER BY raised_at",
            "--format",
            "json",
            "--lake",
            str(lake_root),
        ],
    )
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.stdout)


def alert(**overrides) -> Alert:
    fields = {
        "ds": "2026-01-05",
        "kind": AlertKind.TASK_FAILED,
        "dag_id": "crossrec_nightly",
        "run_id": "scheduled__2026-01-05",
        "task_id": "train",
        "try_number": 3,
        "message": "train for ds=2026-01-05 exited with 137",
    }
    return Alert(**{**fields, **overrides})


def test_an_alert_is_posted_as_json_and_recorded_with_the_outcome(lake_root, lake, webhook_server):
    address, received = webhook_server

    outcome = raise_alert(lake, alert(), Webhook(url=f"http://{address}/hook", headers={"Authorization": "Bearer s3cret"}))

    assert outcome == "posted"
    [post] = received
    assert post["path"] == "/hook" and post["headers"]["Authorization"] == "Bearer s3cret"
    assert post["body"]["kind"] == "task_failed" and post["body"]["task_id"] == "train" and post["body"]["ds"] == "2026-01-05"
    assert "exited with 137" in post["body"]["text"]
    assert alerts_via_sql(lake_root) == [
        {
            "ds": "2026-01-05",
            "kind": "task_failed",
            "task_id": "train",
            "try_number": 3,
            "message": "train for ds=2026-01-05 exited with 137",
            "webhook": "posted",
        }
    ]


def test_without_a_webhook_or_with_a_dead_one_the_alert_is_still_recorded(lake_root, lake):
    raise_alert(lake, alert(), None)
    raise_alert(lake, alert(task_id="score"), Webhook(url="http://127.0.0.1:1/hook"))  # nothing listens on port 1
    raise_alert(lake, alert(), None)  # the same alert again replaces its row

    rows = sorted(alerts_via_sql(lake_root), key=lambda r: r["task_id"])
    assert [(r["task_id"], r["webhook"].split(":")[0]) for r in rows] == [("score", "post failed"), ("train", "not configured")]


def test_the_webhook_comes_from_the_airflow_connection_and_is_optional(monkeypatch):
    from crossrec_core.orchestration import alert_webhook

    monkeypatch.delenv("AIRFLOW_CONN_CROSSREC_ALERTS", raising=False)
    assert alert_webhook("crossrec_alerts") is None
    monkeypatch.setenv(
        "AIRFLOW_CONN_CROSSREC_ALERTS",
        json.dumps(
            {
                "conn_type": "http",
                "host": "hooks.example.com",
                "schema": "https",
                "port": 8443,
                "password": "t0ken-value",
                "extra": {"endpoint": "/services/T0/B0"},
            }
        ),
    )
    hook = alert_webhook("crossrec_alerts")
    assert hook.url == "https://hooks.example.com:8443/services/T0/B0"
    assert hook.headers == {"Authorization": "Bearer t0ken-value"}


def airflow_context(ds: str, task_id: str) -> dict:
    """What a task's callbacks read from Airflow's task context."""
    dag_run = SimpleNamespace(dag_id="crossrec_nightly", run_id=f"manual__{ds}", logical_date=None, run_after=datetime.now(UTC))
    return {"params": {"ds": ds}, "dag_run": dag_run, "ti": SimpleNamespace(task_id=task_id, try_number=1)}


def test_failure_callbacks_record_task_and_run_failures_once(lake_root, settings, monkeypatch, webhook_server):
    from crossrec_core.orchestration import AlertOnFailure, AlertOnRunFailure

    address, received = webhook_server
    monkeypatch.setenv("AIRFLOW_CONN_CROSSREC_ALERTS", json.dumps({"conn_type": "http", "host": f"http://{address}"}))
    task_context = airflow_context("2026-01-05", "featurize")

    AlertOnFailure(settings)({**task_context, "exception": RuntimeError("executor lost")})
    # the dag processor's context of a DAG callback: the last task's context, the run's reason
    AlertOnRunFailure(settings)({**task_context, "reason": "task_failure"})  # the task's alert already says why
    AlertOnRunFailure(settings)({"dag": SimpleNamespace(dag_id="crossrec_nightly"), "run_id": "manual__2026-01-05", "reason": "timed_out"})

    rows = alerts_via_sql(lake_root)
    today = datetime.now(UTC).date().isoformat()  # a minimal context names no ds: filed under today
    assert sorted((r["ds"], r["kind"], r["task_id"], r["message"]) for r in rows) == sorted(
        [
            ("2026-01-05", "task_failed", "featurize", "RuntimeError: executor lost"),
            (today, "run_failed", "", "the DAG run failed: timed_out"),
        ]
    )
    assert sorted(p["body"]["kind"] for p in received) == ["run_failed", "task_failed"]


def test_a_gated_night_raises_a_notice_and_a_published_one_does_not(lake_root, lake, settings):
    from crossrec_core.orchestration import gate

    write_gate(lake, "2026-01-05", publish=True)
    write_gate(lake, "2026-01-06", publish=False, reason="ndcg@10 fell 9% below the published model")

    assert gate(settings, airflow_context("2026-01-05", "gate")) is True
    assert gate(settings, airflow_context("2026-01-06", "gate")) is False

    [row] = alerts_via_sql(lake_root)
    assert row["ds"] == "2026-01-06" and row["kind"] == "gated" and "ndcg@10 fell 9%" in row["message"]
