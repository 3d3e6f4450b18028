"""Nightly runs end to end through Airflow (`airflow dags test`, as `make run` does) on
synthetic logs of EVENTS events over both domains, one night per size (not run in CI).

    .venv/bin/python -m bench.e2e [--events 22000,1000000] [--write-docs]

Where each night's time goes: the DAG's wall clock; each Airflow task's duration (from
Airflow's metadata DB); and, from run_reports, each stage's fixed cost (its job
process's start-up: interpreter, imports, JVM; the Spark session) and its data work
(crossrec_core.reports). What no stage sees (Airflow's task start, operators,
subprocesses, the metadata DB) is the wall clock minus start-up and stage seconds.
Goals: a demo-size night (<= 50,000 events) within 45 s, 1,000,000 events within 10 min.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
from pathlib import Path

from bench.common import Goal, figure, link_figure, machine, write_section, write_summary
from crossrec_core.config import load_settings
from crossrec_core.demo import run_nights
from crossrec_core.ingest.demo_data import EVENTS_PER_USER_PER_DAY, TARGET_VOLUME, generate_demo_data
from crossrec_core.lake import Lake
from crossrec_core.pipeline import summarise

SECTION = "## End-to-end nightly run"
DS = "2026-03-10"
SMALL_NIGHT_EVENTS = 50_000  # a demo-size night (`make run` delivers about 22,000 a night)
GOAL_SECONDS = {"small": 45, "large": 600}


def goal_seconds(events: int) -> int:
    return GOAL_SECONDS["small" if events <= SMALL_NIGHT_EVENTS else "large"]


def airflow_task_seconds(airflow_home: Path) -> dict[str, float]:
    """Each task's duration in the (only) DAG run of this Airflow home's SQLite metadata DB."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        return dict(db.execute("SELECT task_id, duration FROM task_instance ORDER BY start_date").fetchall())


def run(events: int, workdir: Path, model: str) -> dict:
    settings = load_settings(lake=workdir / "lake", model={"name": model})
    lake = Lake(settings.lake)
    source_events = round(events / (1 + TARGET_VOLUME))
    users = max(20, source_events // EVENTS_PER_USER_PER_DAY)
    generate_demo_data(lake, settings, users=users, days=1, seed=11, bad_fraction=0.01, end_date=DS, events_per_day=source_events)
    os.environ["CROSSREC_MODEL__NAME"] = model  # the DAG's default param, read at parse time
    # the night's `airflow dags test` alone (run_nights first migrates the metadata DB)
    wall = run_nights(settings, workdir / "airflow_home", [DS], progress=lambda line: print(line, flush=True))[DS]
    stages = []
    for row in summarise(lake, DS):
        metrics = json.loads(row["metrics"])
        stages.append(
            {
                **{k: row[k] for k in ("stage", "domain", "status", "rows_in", "rows_out", "rows_quarantined", "seconds", "data_seconds")},
                "startup_seconds": metrics.get("startup_seconds", 0.0),
                "setup_seconds": sum(metrics.get("setup_seconds", {}).values()),
                "candidates": {
                    name: {"validation": score, "seconds": metrics["candidate_seconds"][name]}
                    for name, score in metrics.get("candidates", {}).items()
                },
            }
        )
    tasks = airflow_task_seconds(workdir / "airflow_home")
    return {"events": events, "users": users, "model": model, "wall_seconds": wall, "stages": stages, "airflow_tasks": tasks}


def plot(result: dict) -> str:
    """Seconds per stage of the night: start-up, set-up and data work stacked."""
    fig, ax = figure(7.0, 3.5)
    stages = [s for s in result["stages"] if s["seconds"] is not None][::-1]
    labels = [s["stage"] if s["domain"] == "all" else f"{s['stage']} {s['domain']}" for s in stages]
    left = [0.0] * len(stages)
    for part, label in (("startup_seconds", "start-up"), ("setup_seconds", "set-up"), ("data_seconds", "data work")):
        widths = [s[part] for s in stages]
        ax.barh(labels, widths, left=left, label=label)
        left = [x + w for x, w in zip(left, widths, strict=True)]
    ax.set_xlabel("seconds")
    ax.legend(loc="lower right")
    ax.set_title(f"Nightly run, {result['events']:,} events, model {result['model']}: {result['wall_seconds']:.0f} s wall clock")
    return link_figure(fig, f"e2e_{result['events']}")


def goals(results: list[dict]) -> list[Goal]:
    return [
        Goal(f"DAG run of {r['events']:,} events, wall-clock seconds", r["wall_seconds"], goal_seconds(r["events"]), at_most=True)
        for r in results
    ]


def _score(value: float | None) -> str:
    return "no holdout" if value is None else f"{value:.4f}"


def night_lines(result: dict) -> list[str]:
    lines = [
        f"### {result['events']:,} raw events ({result['users']:,} users), model `{result['model']}`",
        "",
        "| stage | domain | rows in | rows out | quarantined | start-up s | set-up s | data work s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["stages"]:
        lines.append(
            f"| {s['stage']} | {s['domain']} | {s['rows_in']:,} | {s['rows_out']:,} | {s['rows_quarantined']:,} "
            f"| {s['startup_seconds']:.1f} | {s['setup_seconds']:.1f} | {s['data_seconds']:.1f} |"
        )
    startup = sum(s["startup_seconds"] for s in result["stages"])
    setup = sum(s["setup_seconds"] for s in result["stages"])
    data = sum(s["data_seconds"] for s in result["stages"])
    unseen = result["wall_seconds"] - startup - setup - data
    tasks = ", ".join(f"{task} {seconds:.1f}" for task, seconds in result["airflow_tasks"].items())
    goal = Goal("", result["wall_seconds"], goal_seconds(result["events"]), at_most=True)
    candidates = next((s["candidates"] for s in result["stages"] if s["stage"] == "train"), {})
    if candidates:
        fits = ", ".join(f"{name} {c['seconds']:.1f} s ({_score(c['validation'])})" for name, c in candidates.items())
        lines += ["", f"The train task, candidate by candidate (fit and validation; validation NDCG@10): {fits}."]
    lines += [
        "",
        f"Airflow task durations (s): {tasks}.",
        "",
        f"Whole DAG run, wall clock: **{result['wall_seconds']:.0f} s** = start-up {startup:.0f} s + set-up {setup:.0f} s + "
        f"data work {data:.0f} s + what no stage sees (Airflow, operators, subprocesses) {unseen:.0f} s; "
        f"goal <= {goal.target:.0f} s: {goal.verdict}.",
        "",
        plot(result),
        "",
    ]
    return lines


def section(results: list[dict], command: str) -> str:
    lines = [
        SECTION,
        "",
        f"`{command}`; {machine()}.",
        "One night per size through `airflow dags test crossrec_nightly` (SQLite, local[2] Spark via spark-submit). "
        "Start-up: from the job process's start (a Spark job's: its JVM's) to the stage's start; set-up: the Spark "
        "session; data work: the rest of the stage, a cold JVM's class loading and compilation included.",
        "",
    ]
    for result in results:
        lines += night_lines(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default="22000,1000000", help="comma-separated night sizes")
    parser.add_argument("--model", default="auto", help="model param of the run (default: the config's auto)")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--json", type=Path, help="write a machine-readable summary (goals, verdicts) here")
    args = parser.parse_args(argv)
    results = []
    for events in (int(n) for n in args.events.split(",")):
        with tempfile.TemporaryDirectory(prefix="crossrec-e2e-") as workdir:
            results.append(run(events, Path(workdir), args.model))
    command = f"python -m bench.e2e --events {args.events}" + (f" --model {args.model}" if args.model != "auto" else "")
    text = section(results, command)
    print(text)
    if args.json:
        write_summary(args.json, "e2e", command, goals(results), results)
    if args.write_docs:
        write_section(SECTION, text)
    return results


if __name__ == "__main__":
    main()
