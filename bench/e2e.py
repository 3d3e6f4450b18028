"""One nightly run end to end through Airflow (`airflow dags test`, as `make run` does) on
synthetic logs of EVENTS events over both domains, one day (not run in CI).

    .venv/bin/python -m bench.e2e [--events 1000000] [--write-docs]

Time per task comes from run_reports (each stage's own seconds); the DAG's wall clock
includes Airflow's task start-up and each job's process (and Spark JVM) start.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import Goal, figure, link_figure, machine, write_section, write_summary
from crossrec_core.config import load_settings
from crossrec_core.demo import run_nights
from crossrec_core.ingest.demo_data import EVENTS_PER_USER_PER_DAY, TARGET_VOLUME, generate_demo_data
from crossrec_core.lake import Lake
from crossrec_core.reports import read_run_reports

SECTION = "## End-to-end nightly run"
DS = "2026-03-10"
GOAL_SECONDS = 600


def run(events: int, workdir: Path, model: str) -> dict:
    settings = load_settings(lake=workdir / "lake", model={"name": model})
    lake = Lake(settings.lake)
    source_events = round(events / (1 + TARGET_VOLUME))
    users = max(20, source_events // EVENTS_PER_USER_PER_DAY)
    generate_demo_data(lake, settings, users=users, days=1, seed=11, bad_fraction=0.01, end_date=DS, events_per_day=source_events)
    os.environ["CROSSREC_MODEL__NAME"] = model  # the DAG's default param, read at parse time
    started = time.perf_counter()
    run_nights(settings, workdir / "airflow_home", [DS], progress=lambda line: print(line, flush=True))
    wall = time.perf_counter() - started
    stages = [
        {
            **{k: r[k] for k in ("stage", "domain", "status", "rows_in", "rows_out", "rows_quarantined")},
            "seconds": json.loads(r["metrics"]).get("seconds"),
        }
        for r in read_run_reports(lake, DS).to_pylist()
    ]
    return {"events": events, "users": users, "model": model, "wall_seconds": wall, "stages": stages}


def plot(result: dict) -> str:
    """Seconds per task of the night."""
    fig, ax = figure(7.0, 3.5)
    stages = [s for s in result["stages"] if s["seconds"] is not None]
    labels = [s["stage"] if s["domain"] == "all" else f"{s['stage']} {s['domain']}" for s in stages]
    ax.barh(labels[::-1], [s["seconds"] for s in stages][::-1])
    ax.set_xlabel("stage seconds")
    ax.set_title(f"Nightly run, {result['events']:,} events, model {result['model']}: {result['wall_seconds']:.0f} s wall clock")
    return link_figure(fig, "e2e")


def goals(result: dict) -> list[Goal]:
    return [Goal("whole DAG run, wall-clock seconds", result["wall_seconds"], GOAL_SECONDS, at_most=True)]


def section(result: dict, command: str) -> str:
    lines = [
        SECTION,
        "",
        f"`{command}`; {machine()}.",
        f"{result['events']:,} raw events over both domains ({result['users']:,} users), one night, model "
        f"`{result['model']}`, through `airflow dags test crossrec_nightly` (SQLite, local[2] Spark via spark-submit).",
        "",
        "| task | domain | rows in | rows out | quarantined | stage seconds |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["stages"]:
        lines.append(
            f"| {s['stage']} | {s['domain']} | {s['rows_in']:,} | {s['rows_out']:,} | {s['rows_quarantined']:,} | {s['seconds']:.1f} |"
        )
    met = goals(result)[0].verdict
    lines += [
        "",
        f"Whole DAG run, wall clock (Airflow and process start-up included): **{result['wall_seconds']:.0f} s**; "
        f"goal <= {GOAL_SECONDS} s: {met}.",
        "",
        plot(result),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--model", default="auto", help="model param of the run (default: the config's auto)")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--json", type=Path, help="write a machine-readable summary (goals, verdicts) here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crossrec-e2e-") as workdir:
        result = run(args.events, Path(workdir), args.model)
    command = f"python -m bench.e2e --events {args.events}" + (f" --model {args.model}" if args.model != "auto" else "")
    text = section(result, command)
    print(text)
    if args.json:
        write_summary(args.json, "e2e", command, goals(result), result)
    if args.write_docs:
        write_section(SECTION, text)
    return result


if __name__ == "__main__":
    main()
