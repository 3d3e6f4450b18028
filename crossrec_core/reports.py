"""Stage bookkeeping: every stage logs and records what it read and wrote.

``with stage_run(lake, "clean", ds, domain="cloth") as report:`` times the stage, logs
its counts (rows, bytes, seconds) and writes one row to ``serving/run_reports`` whether
the stage succeeds or fails. A rerun of the same (ds, stage, domain) replaces its row.

Where a small night's time goes is mostly not the data: a stage's seconds are split into
fixed cost and data work. ``startup_seconds``: from the start of the job's process (for
a Spark application, of the JVM that spark-submit started) to the stage's start:
interpreter, imports, JVM; charged to the first stage a process runs. ``setup_seconds``:
set-up inside the stage (``with report.setup("spark_session"):``). Data work = seconds -
setup; a cold JVM's class loading and compilation during the first queries count as
data work (they cannot be told apart from it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
import pyarrow as pa

from crossrec_core.contracts import RUN_REPORTS, StageStatus
from crossrec_core.lake import Lake

log = logging.getLogger(__name__)

ALL_DOMAINS = "all"


@dataclass
class StageReport:
    stage: str
    ds: str
    domain: str = ALL_DOMAINS
    status: StageStatus = StageStatus.SUCCESS
    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def setup(self, what: str) -> Iterator[None]:
        """Time fixed set-up work of the stage (e.g. the Spark session) as ``setup_seconds[what]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            setup = self.metrics.setdefault("setup_seconds", {})
            setup[what] = round(setup.get(what, 0.0) + time.perf_counter() - started, 3)


_startup_charged = False


def _startup_seconds() -> float | None:
    """Seconds since this job's process started (a Spark application's: since its JVM
    did, the process that spark-submit started and that started this one), the first
    time it is asked in a process; None afterwards."""
    global _startup_charged
    if _startup_charged:
        return None
    _startup_charged = True
    process = psutil.Process()
    if "PYSPARK_GATEWAY_PORT" in os.environ and process.parent() is not None:  # started by spark-submit's JVM
        process = process.parent()
    return round(time.time() - process.create_time(), 3)


def _record(lake: Lake, report: StageReport, started_at: datetime, finished_at: datetime) -> None:
    row = {
        "stage": report.stage,
        "domain": report.domain,
        "status": str(report.status),
        "started_at": started_at,
        "finished_at": finished_at,
        "rows_in": report.rows_in,
        "rows_out": report.rows_out,
        "rows_quarantined": report.rows_quarantined,
        "metrics": json.dumps({"bytes_in": report.bytes_in, "bytes_out": report.bytes_out, **report.metrics}, default=str, sort_keys=True),
        "ds": report.ds,
    }
    key = {"ds": report.ds, "stage": report.stage, "domain": report.domain}
    lake.replace_delta_rows(RUN_REPORTS, pa.Table.from_pylist([row]), where=key)


@contextmanager
def stage_run(lake: Lake, stage: str, ds: str, domain: str = ALL_DOMAINS) -> Iterator[StageReport]:
    report = StageReport(stage=stage, ds=ds, domain=domain)
    startup = _startup_seconds()
    if startup is not None:
        report.metrics["startup_seconds"] = startup
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    log.info("stage %s started: ds=%s domain=%s lake=%s", stage, ds, domain, lake.root)
    try:
        yield report
    except BaseException as err:
        report.status = StageStatus.FAILED
        report.metrics["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        seconds = time.perf_counter() - clock
        report.metrics["seconds"] = round(seconds, 3)
        log.info(
            "stage %s %s: ds=%s domain=%s read %d rows (%d bytes), wrote %d rows (%d bytes), quarantined %d, %.2f s",
            stage,
            report.status,
            ds,
            domain,
            report.rows_in,
            report.bytes_in,
            report.rows_out,
            report.bytes_out,
            report.rows_quarantined,
            seconds,
        )
        _record(lake, report, started_at, datetime.now(UTC))


def read_run_reports(lake: Lake, ds: str | None = None) -> pa.Table:
    """Run reports (all dates, or one), sorted by start time."""
    dataset = lake.delta_dataset(RUN_REPORTS)
    table = dataset.to_table(filter=(pa.compute.field("ds") == ds) if ds else None)
    return table.sort_by([("ds", "ascending"), ("started_at", "ascending")])
