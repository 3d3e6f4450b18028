"""Alerts: a row in ``serving/alerts`` for each failed task, failed DAG run or gated night,
and an optional JSON POST to a webhook.

The DAG's callbacks (crossrec_core/orchestration.py) build an :class:`Alert` from the
Airflow context and call :func:`raise_alert`. The webhook's address comes from an Airflow
connection (``orchestration.alerts_conn_id``), so a token in it lives in Airflow's secrets,
never in crossrec's config. The row is written whether or not the post succeeds, and
names the post's outcome: ``crossrec sql "SELECT * FROM alerts"`` shows every alert.

Top-level imports stay light: the DAG file imports this module's caller at parse time.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from crossrec_core.contracts import ALERTS, AlertKind
from crossrec_core.lake import Lake

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 10
NOT_CONFIGURED = "not configured"
POSTED = "posted"


@dataclass(frozen=True)
class Webhook:
    """Where to POST alerts: a URL and extra headers (e.g. a bearer token)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Alert:
    ds: str
    kind: AlertKind
    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    message: str
    raised_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def payload(self) -> dict[str, str | int]:
        """The webhook's JSON body; ``text`` makes it readable as is in Slack-style hooks."""
        where = f"{self.dag_id}.{self.task_id}" if self.task_id else self.dag_id
        return {
            **{k: v for k, v in asdict(self).items() if k != "raised_at"},
            "kind": str(self.kind),
            "raised_at": self.raised_at.isoformat(),
            "text": f"crossrec {self.kind} ds={self.ds} {where} ({self.run_id}): {self.message}",
        }


def post(webhook: Webhook, alert: Alert) -> None:
    """POST the alert as JSON; raises on a network error or a non-2xx answer."""
    request = urllib.request.Request(
        webhook.url,
        data=json.dumps(alert.payload()).encode(),
        headers={"Content-Type": "application/json", **webhook.headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as answer:
        answer.read()


def record(lake: Lake, alert: Alert, webhook_outcome: str) -> None:
    """Write the alert's row; recording the same alert again (same run, task, try and
    kind) replaces its row instead of adding one."""
    import pyarrow as pa

    row = {
        "raised_at": alert.raised_at,
        "kind": str(alert.kind),
        "dag_id": alert.dag_id,
        "run_id": alert.run_id,
        "task_id": alert.task_id,
        "try_number": alert.try_number,
        "message": alert.message,
        "webhook": webhook_outcome,
        "ds": alert.ds,
    }
    key: dict[str, str | int] = {
        "ds": alert.ds,
        "run_id": alert.run_id,
        "task_id": alert.task_id,
        "kind": str(alert.kind),
        "try_number": alert.try_number,
    }
    lake.replace_delta_rows(ALERTS, pa.Table.from_pylist([row]), where=key)


def raise_alert(lake: Lake, alert: Alert, webhook: Webhook | None) -> str:
    """Post the alert (when a webhook is configured), then record it with the post's
    outcome. A failed post is logged, not raised: the row still tells the story."""
    outcome = NOT_CONFIGURED
    if webhook is not None:
        try:
            post(webhook, alert)
            outcome = POSTED
        except Exception as err:  # any failure to notify must not hide the alert itself
            outcome = f"post failed: {type(err).__name__}: {err}"
            log.warning("alert webhook %s: %s", webhook.url, outcome)
    record(lake, alert, outcome)
    log.warning("alert recorded (%s): %s", outcome, alert.payload()["text"])
    return outcome
