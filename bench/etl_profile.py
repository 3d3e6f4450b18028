"""Where the ETL's time goes: Spark's own event log of one night of clean + featurize (CI runs a smoke size).

    .venv/bin/python -m bench.etl_profile [--events 5000000] [--write-docs] [--json PATH]

Lands the same synthetic night as bench.etl, runs clean(source), clean(target) and
featurize in one session with Spark's event log on, then reads the log back: every SQL
execution (what the stage code asked Spark to do), its wall time, its Spark stages, tasks,
input and shuffle bytes, and its physical plan as ``explain("formatted")`` prints it (the
event log keeps that text, ``spark.sql.ui.explainMode``). ``--write-docs`` writes
docs/ETL_PROFILE.md.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from bench.common import DOCS, REPO, machine, write_summary
from bench.etl import SOURCE, TARGET, etl_stages, land

PAGE = DOCS.with_name("ETL_PROFILE.md")
METRICS = {
    "input_bytes": "internal.metrics.input.bytesRead",
    "shuffle_write_bytes": "internal.metrics.shuffle.write.bytesWritten",
    "shuffle_read_bytes": "internal.metrics.shuffle.read.remoteBytesRead",
    "shuffle_local_read_bytes": "internal.metrics.shuffle.read.localBytesRead",
    "output_bytes": "internal.metrics.output.bytesWritten",
    "executor_cpu_ns": "internal.metrics.executorCpuTime",
}

app = typer.Typer(add_completion=False)


def run_night(root: Path, events: int, event_log: Path) -> dict[str, tuple[float, float]]:
    """The three stages on a fresh lake; each stage's (start, end) epoch milliseconds."""
    from crossrec_core.config import load_settings

    conf = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": event_log.as_uri(), "spark.eventLog.compress": "false"}
    settings = load_settings(lake=root, domains={"source": SOURCE, "target": TARGET}, spark={"conf": conf})
    land(root, events, seed=events)
    windows = {}
    for name, stage in etl_stages(settings):
        started = time.time() * 1000
        stage()
        windows[name.replace("_", " ")] = (started, time.time() * 1000)
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    assert session is not None
    session.stop()  # flushes the event log
    return windows


def read_event_log(event_log: Path) -> list[dict]:
    """Per SQL execution: description, wall seconds, Spark stages, tasks, summed metrics, plan."""
    executions: dict[int, dict] = {}
    stage_execution: dict[int, int] = {}
    stage_metrics: dict[int, dict] = {}
    # Spark 4 writes a rolling log: eventlog_v2_<app>/events_<n>_<app> files, in order
    for path in sorted(event_log.rglob("events_*"), key=lambda p: int(p.name.split("_")[1])):
        for line in path.read_text().split("\n"):  # one event a line (splitlines would also cut at U+2028 inside plans)
            if not line:
                continue
            event = json.loads(line)
            kind = event["Event"]
            if kind.endswith("SparkListenerSQLExecutionStart"):
                executions[event["executionId"]] = {
                    "id": event["executionId"],
                    "description": event["description"],
                    "start": event["time"],
                    "plan": event["physicalPlanDescription"],
                    "seconds": 0.0,  # until its end event
                    "stages": 0,
                    "tasks": 0,
                    **{metric: 0 for metric in METRICS},
                }
            elif kind.endswith("SparkListenerSQLExecutionEnd"):
                execution = executions[event["executionId"]]
                execution["seconds"] = (event["time"] - execution["start"]) / 1000
            elif kind == "SparkListenerJobStart":
                execution = (event.get("Properties") or {}).get("spark.sql.execution.id")
                for stage in event["Stage IDs"]:
                    if execution is not None:
                        stage_execution[stage] = int(execution)
            elif kind == "SparkListenerStageCompleted":
                info = event["Stage Info"]
                values = {a["Name"]: a.get("Value", 0) for a in info.get("Accumulables", [])}
                stage_metrics[info["Stage ID"]] = {
                    "tasks": info["Number of Tasks"],
                    **{metric: int(values.get(name, 0)) for metric, name in METRICS.items()},
                }
    for stage, metrics in stage_metrics.items():
        execution = executions.get(stage_execution.get(stage, -1))
        if execution is None:
            continue
        execution["stages"] += 1
        for key, value in metrics.items():
            execution[key] += value
    return sorted(executions.values(), key=lambda e: e["start"])


def profile(events: int) -> tuple[dict[str, tuple[float, float]], list[dict]]:
    with tempfile.TemporaryDirectory(prefix="crossrec-etl-profile-") as tmp:
        event_log = Path(tmp) / "events"
        event_log.mkdir()
        windows = run_night(Path(tmp) / "lake", events, event_log)
        return windows, read_event_log(event_log)


def page(events: int, windows: dict[str, tuple[float, float]], executions: list[dict], command: str) -> str:
    mib = 2**20
    lines = [
        "# Where the ETL's time goes",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}.  ",
        f"One synthetic night of {events:,} raw events (bench.etl's generator), clean(source), clean(target) and "
        "featurize in one fresh session (the first stage pays the JVM's warm-up), Spark's event log on. "
        "Per SQL execution (a query the stage code ran): wall seconds, Spark stages and tasks, bytes read, "
        'shuffled and written, and executor CPU; then each execution\'s physical plan as `explain("formatted")` prints it.',
        "",
    ]
    plans = []
    for stage, (start, end) in windows.items():
        inside = [e for e in executions if start <= e["start"] <= end]
        spark_seconds = sum(e["seconds"] for e in inside)
        lines += [
            f"## {stage}: {(end - start) / 1000:.1f} s, of which {spark_seconds:.1f} s in {len(inside)} SQL executions",
            "",
            "| # | what | seconds | Spark stages | tasks | input MiB | shuffle write MiB | shuffle read MiB | output MiB | executor CPU s |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in inside:
            what = e["description"].splitlines()[0].replace(f"{REPO}/", "")[:80].replace("|", "/")
            read = e["shuffle_read_bytes"] + e["shuffle_local_read_bytes"]
            lines.append(
                f"| {e['id']} | `{what}` | {e['seconds']:.2f} | {e['stages']} | {e['tasks']} | "
                f"{e['input_bytes'] / mib:,.1f} | {e['shuffle_write_bytes'] / mib:,.1f} | {read / mib:,.1f} | "
                f"{e['output_bytes'] / mib:,.1f} | {e['executor_cpu_ns'] / 1e9:.1f} |"
            )
            plans += [f"### execution {e['id']} ({stage}): `{what}`", "", "```", e["plan"].strip(), "```", ""]
        lines.append("")
    return "\n".join([*lines, "## Physical plans", "", *plans])


@app.command()
def main(
    events: Annotated[int, typer.Option(help="raw events of the night")] = 5_000_000,
    write_docs: Annotated[bool, typer.Option("--write-docs", help=f"write {PAGE.name}")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write a machine-readable summary here")] = None,
) -> None:
    windows, executions = profile(events)
    command = f"python -m bench.etl_profile --events {events}" + (" --write-docs" if write_docs else "")
    text = page(events, windows, executions, command)
    if json_path:  # a profile, no goals of its own (bench.etl holds the ETL goals)
        stages = {stage: {"seconds": (end - start) / 1000} for stage, (start, end) in windows.items()}
        write_summary(
            json_path,
            "etl_profile",
            command,
            [],
            {"stages": stages, "executions": [{k: v for k, v in e.items() if k != "plan"} for e in executions]},
        )
    if write_docs:
        PAGE.write_text(text)
        print(f"wrote {PAGE}")
    else:
        print(text)


if __name__ == "__main__":
    app()
