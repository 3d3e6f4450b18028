"""ETL throughput: clean (both domains) + featurize on synthetic raw logs (not run in CI).

    .venv/bin/python -m bench.etl [--sizes 1000000,5000000] [--write-docs]

Each size runs in its own process (so that its peak memory is its own): a vectorised
generator lands one night of raw logs (source domain: 70 % of the events, two Parquet
files; target: 30 %, two CSV files; 0.2 % bad rows, 0.5 % duplicate rows), a 20k-event
warm-up night runs first (JVM start excluded; the JIT compiler is still busy during the
measured night, at 1M events with about as much CPU as the tasks), then clean(source),
clean(target) and featurize run with the embedded default settings (Spark local[2],
driver memory 2g, 4 shuffle partitions). Peak memory = max over samples every 0.2 s of
the RSS of this Python process plus its children (the driver JVM). ``--write-docs``
replaces the "## ETL (clean + featurize)" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import typer

from bench.common import REPO, Goal, figure, link_figure, write_section, write_summary
from bench.duckdb_clean import clean_partition

SECTION = "## ETL (clean + featurize)"
DS = "2026-03-10"
SOURCE, TARGET = "movies", "books"
# the goals: >= 150,000 events/s and Spark clean within 3x DuckDB from 5M events up, and
# 5M taking at most 5.5x the 1M time
GOAL_EVENTS, BASE_EVENTS = 5_000_000, 1_000_000
GOAL_EVENTS_PER_S = 150_000
GOAL_SCALING = 5.5
GOAL_DUCKDB_RATIO = 3
WARM_UP_EVENTS = 20_000

app = typer.Typer(add_completion=False)


def _prefixed(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def domain_events(rng: np.random.Generator, n: int, users: tuple[int, int], n_items: int, item_prefix: str) -> pa.Table:
    """``n`` raw events as strings, popular items more frequent, 0.2 % bad, 0.5 % repeated."""
    unique = n - n // 200
    day_start = int(datetime.fromisoformat(DS).replace(tzinfo=UTC).timestamp())
    user = rng.integers(users[0], users[1], unique)
    item = (n_items * rng.random(unique) ** 2).astype(np.int64)  # skewed popularity
    events = pa.table(
        {
            "user_id": _prefixed("u", user),
            "item_id": _prefixed(item_prefix, item),
            "ts": pc.cast(pa.array(day_start + rng.integers(0, 86_400, unique)), pa.string()),
            "event_type": pa.array(np.array(["view", "click", "purchase"])[rng.choice(3, unique, p=[0.8, 0.15, 0.05])]),
            "value": pa.nulls(unique, pa.string()),
        }
    )
    bad = pa.array(rng.random(unique) < 0.002)
    events = events.set_column(0, "user_id", pc.if_else(bad, pa.scalar(None, pa.string()), events["user_id"]))
    repeated = events.take(pa.array(rng.integers(0, unique, n - unique)))
    return pa.concat_tables([events, repeated]).take(pa.array(rng.permutation(n)))


def land(lake: Path, events: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users = max(1_000, events // 25)
    n_source = int(events * 0.7)
    source = domain_events(rng, n_source, (int(n_users * 0.3), n_users), max(100, events // 250), "m")
    target = domain_events(rng, events - n_source, (0, int(n_users * 0.6)), max(100, events // 500), "b")
    for domain, table, write, suffix in ((SOURCE, source, pq.write_table, "parquet"), (TARGET, target, pacsv.write_csv, "csv")):
        partition = lake / "raw" / f"domain={domain}" / f"ds={DS}"
        partition.mkdir(parents=True)
        half = table.num_rows // 2
        write(table.slice(0, half), partition / f"part-0.{suffix}")
        write(table.slice(half), partition / f"part-1.{suffix}")


class PeakMemory:
    """Max RSS of this process plus its children (the driver JVM), sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in (me, *me.children(recursive=True)):
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def etl_stages(settings) -> list[tuple[str, Callable[[], Any]]]:
    """The night's ETL in order, each stage by name: clean(source), clean(target), featurize."""
    from crossrec_core.etl.clean import clean
    from crossrec_core.etl.featurize import featurize

    return [
        ("clean_source", lambda: clean(settings, DS, SOURCE)),
        ("clean_target", lambda: clean(settings, DS, TARGET)),
        ("featurize", lambda: featurize(settings, DS)),
    ]


def run_night(root: Path, events: int) -> dict:
    from crossrec_core.config import load_settings

    settings = load_settings(lake=root, domains={"source": SOURCE, "target": TARGET})
    land(root, events, seed=events)
    seconds = {}
    for name, stage in etl_stages(settings):
        started = time.perf_counter()
        report = stage()
        seconds[name] = time.perf_counter() - started
        seconds[f"{name}_rows_out"] = report.rows_out
    for role, domain in (("source", SOURCE), ("target", TARGET)):  # the single-node reference, same input
        reference = clean_partition(root / "raw" / f"domain={domain}" / f"ds={DS}", root / "duckdb" / domain, settings, DS)
        seconds[f"duckdb_clean_{role}"] = reference["seconds"]
        seconds[f"duckdb_clean_{role}_rows_out"] = reference["rows_clean"]
    return seconds


def measure(events: int) -> dict:
    """One size in this process: warm-up night, then the measured night."""
    from crossrec_core.config import load_settings
    from crossrec_core.spark import spark_session

    with tempfile.TemporaryDirectory(prefix="crossrec-bench-etl-") as tmp:
        spark_session(load_settings(), "crossrec-bench-etl")
        run_night(Path(tmp) / "warm-up", WARM_UP_EVENTS)
        with PeakMemory() as memory:
            result = run_night(Path(tmp) / "lake", events)
    return {"events": events, **result, "peak_rss_mib": memory.peak / 2**20}


def clean_ratio(result: dict) -> float:
    return (result["clean_source"] + result["clean_target"]) / (result["duckdb_clean_source"] + result["duckdb_clean_target"])


def plot(results: list[dict]) -> str:
    """Seconds per stage against raw events (a straight line is linear scaling)."""
    fig, ax = figure()
    events = [r["events"] for r in results]
    series = {
        "clean source": [r["clean_source"] for r in results],
        "clean target": [r["clean_target"] for r in results],
        "featurize": [r["featurize"] for r in results],
        "end to end": [r["clean_source"] + r["clean_target"] + r["featurize"] for r in results],
        "DuckDB clean, both domains": [r["duckdb_clean_source"] + r["duckdb_clean_target"] for r in results],
    }
    for label, seconds in series.items():
        ax.plot(events, seconds, marker="o", label=label, linestyle="--" if label.startswith("DuckDB") else "-")
    ax.set_xlabel("raw events (both domains)")
    ax.set_ylabel("seconds")
    ax.set_title("ETL time against input size (Spark local[2])")
    ax.grid(alpha=0.3)
    ax.legend()
    return link_figure(fig, "etl_scaling")


def goals(results: list[dict]) -> list[Goal]:
    """The goals of the sizes measured (from GOAL_EVENTS events up; scaling when both ends ran)."""
    totals = {r["events"]: r["clean_source"] + r["clean_target"] + r["featurize"] for r in results}
    found = []
    for r in results:
        if r["events"] >= GOAL_EVENTS:
            found.append(Goal(f"events/s end to end at {r['events']:,} events", r["events"] / totals[r["events"]], GOAL_EVENTS_PER_S))
            found.append(Goal(f"Spark clean / DuckDB at {r['events']:,} events", clean_ratio(r), GOAL_DUCKDB_RATIO, at_most=True))
    if GOAL_EVENTS in totals and BASE_EVENTS in totals:
        found.append(
            Goal(
                f"{GOAL_EVENTS:,}-event time / {BASE_EVENTS:,}-event time",
                totals[GOAL_EVENTS] / totals[BASE_EVENTS],
                GOAL_SCALING,
                at_most=True,
            )
        )
    return found


def table(results: list[dict], command: str) -> str:
    memory_gib = psutil.virtual_memory().total / 2**30
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{memory_gib:.0f} GiB; load average {os.getloadavg()[0]:.1f} at the end.  ",
        "Data: synthetic, one night; source 70 % of events in 2 Parquet files, target 30 % in 2 CSV files; "
        "0.2 % bad rows, 0.5 % duplicates. Settings: embedded defaults (Spark local[2], driver 2g, 4 shuffle partitions). "
        "events/s = raw events / seconds; end to end = clean source + clean target + featurize (JVM start and a "
        f"{WARM_UP_EVENTS:,}-event warm-up night excluded). Peak RSS = Python + driver JVM.",
        "",
        "| raw events | clean source (s) | clean target (s) | featurize (s) | end to end (s) | events/s end to end | feature rows | peak RSS (MiB) | DuckDB clean, both domains (s) | Spark clean / DuckDB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        total = r["clean_source"] + r["clean_target"] + r["featurize"]
        lines.append(
            f"| {r['events']:,} | {r['clean_source']:.1f} | {r['clean_target']:.1f} | {r['featurize']:.1f} | {total:.1f} "
            f"| {r['events'] / total:,.0f} | {r['featurize_rows_out']:,} | {r['peak_rss_mib']:,.0f} "
            f"| {r['duckdb_clean_source'] + r['duckdb_clean_target']:.1f} | {clean_ratio(r):.1f}x |"
        )
    worst = max(clean_ratio(r) for r in results)
    lines += [
        "",
        "DuckDB reference: bench/duckdb_clean.py, the same rules in one SQL pass (2 threads) on the same raw files; "
        "clean rows: "
        + "; ".join(
            f"{r['events']:,} events: Spark {r['clean_source_rows_out'] + r['clean_target_rows_out']:,}, "
            f"DuckDB {r['duckdb_clean_source_rows_out'] + r['duckdb_clean_target_rows_out']:,}"
            for r in results
        )
        + ".",
        f"Spark clean / DuckDB: worst {worst:.1f}x.",
        "",
    ]
    lines += [f"Goal: {goal.what}: {goal.verdict} ({goal.measured:,.2f})." for goal in goals(results)]
    totals = {r["events"]: r["clean_source"] + r["clean_target"] + r["featurize"] for r in results}
    sizes = sorted(totals)
    if len(sizes) > 1:  # linear means the time grows no faster than the events
        steps = [
            f"{big:,} / {small:,}: {totals[big] / totals[small]:.2f}x the time for {big / small:g}x the events"
            for small, big in itertools.pairwise(sizes)
        ]
        lines.append("Scaling: " + "; ".join(steps) + ".")
    lines += ["", plot(results)]
    return "\n".join(lines) + "\n"


@app.command()
def main(
    sizes: Annotated[str, typer.Option(help="comma-separated raw event counts")] = "1000000,5000000",
    write_docs: Annotated[bool, typer.Option("--write-docs", help="write the table into docs/BENCHMARKS.md")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write a machine-readable summary (goals, verdicts) here")] = None,
    one: Annotated[int, typer.Option(hidden=True, help="internal: measure one size in this process")] = 0,
) -> None:
    if one:
        print(json.dumps(measure(one)))
        return
    results = []
    for events in (int(s) for s in sizes.split(",")):
        print(f"measuring {events:,} events ...", file=sys.stderr, flush=True)
        child = subprocess.run(
            [sys.executable, "-m", "bench.etl", "--one", str(events)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
        )
        if child.returncode:
            sys.exit(f"{events} events failed:\n{child.stderr[-3000:]}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    command = "python -m bench.etl" + (f" --sizes {sizes}" if sizes != "1000000,5000000" else "") + (" --write-docs" if write_docs else "")
    text = table(results, command)
    print(text)
    if json_path:
        write_summary(json_path, "etl", command, goals(results), results)
    if write_docs:
        write_section(SECTION, text)


if __name__ == "__main__":
    app()
