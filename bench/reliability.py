"""Crash trials: kill -9 a stage's process at a random point, then rerun the date; count
how often readers saw only complete partitions and the rerun equalled an uninterrupted
run (not run in CI; tests/test_reliability_crash.py runs one trial per stage).

    .venv/bin/python -m bench.reliability [--seeds 10] [--write-docs]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from bench.common import DOCS, Goal, machine, write_section, write_summary
from crossrec_core.config import load_settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, FEATURE_INTERACTIONS, SCORES
from crossrec_core.lake import Lake, MissingPartitionError
from crossrec_core.model_store import MODEL_FILE, candidate_version, model_dir
from crossrec_core.stages import STAGES

DS = "2026-03-10"
KILLED_STAGES = ("clean", "featurize", "train", "score")
SECTION = "## Crash trials (kill -9, then rerun)"
# Enough epochs (no early stop) that a kill after the first checkpoint lands mid-training:
# an epoch of this tiny night takes about 15 ms.
MODEL = {"name": "dann", "epochs": 40, "patience": 40, "dim": 16}
JOB_ENV = {
    "SPARK_LOCAL_IP": "127.0.0.1",
    "CROSSREC_SPARK__SHUFFLE_PARTITIONS": "2",
    **{f"CROSSREC_MODEL__{key.upper()}": str(value) for key, value in MODEL.items()},
}
TRAIN_KILL_WINDOW_S = 0.3  # after the first checkpoint appears


def partition_digest(lake: Lake, stage: str, settings) -> str | None:
    """A digest of what ``stage`` serves to readers for DS (None: nothing there yet)."""
    if stage == "train":
        try:
            path = model_dir(lake, candidate_version(lake, DS)) / MODEL_FILE
        except MissingPartitionError:  # no model trained yet
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    table, values = {
        "clean": (CLEAN_INTERACTIONS, {"domain": settings.target}),
        "featurize": (FEATURE_INTERACTIONS, {}),
        "score": (SCORES, {"domain": settings.target}),
    }[stage]
    if not lake.partition_path(table, ds=DS, **values).exists():
        return None
    rows = lake.read_parquet_partition(table, ds=DS, **values)
    sortable = [
        name for name in rows.column_names if name not in ("weight", "score") and not pa.types.is_list(rows.schema.field(name).type)
    ]
    rows = rows.sort_by([(name, "ascending") for name in sortable])
    return hashlib.sha256(repr(rows.to_pydict()).encode()).hexdigest()


@dataclass
class Reader:
    """Polls the partition while the stage runs; records every digest it saw."""

    lake: Lake
    stage: str
    settings: object
    seen: set = field(default_factory=set)
    vanished: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.seen.add(partition_digest(self.lake, self.stage, self.settings))
            except (FileNotFoundError, MissingPartitionError):  # swapped away while listed: a retry, not a partial view
                self.vanished += 1


def job(stage: str, lake_root: Path, settings, domain: str | None = None) -> list[str]:
    """The job's command line; ``clean`` runs for ``domain`` (default: the target)."""
    args = [sys.executable, "-P", "-m", "crossrec_core.jobs", stage, "--ds", DS, "--lake", str(lake_root)]  # as Airflow runs it
    return args + (["--domain", domain or settings.target] if STAGES[stage].per_domain else [])


@dataclass(frozen=True)
class Night:
    """One uninterrupted night: what each stage serves (digests) and how long its job took."""

    settings: object
    lake: Lake
    baseline: dict
    seconds: dict
    env: dict


@dataclass(frozen=True)
class Kill:
    after_s: float
    landed: bool  # the process was still running: a crash trial, not a late no-op


def run_killed(stage: str, night: Night, seed: int) -> Kill:
    """Start the job, kill -9 its whole process group at a random point of its run;
    return when, and whether the process was still running then."""
    rng = random.Random(seed)
    process = subprocess.Popen(
        job(stage, night.lake.root, night.settings),
        env=night.env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.perf_counter()
    if stage == "train":  # kill after a checkpoint exists, at a random point of a later epoch
        checkpoints = night.lake.root / "models" / "_checkpoints"
        while process.poll() is None and not any(checkpoints.rglob("*.pt")):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, TRAIN_KILL_WINDOW_S))
    else:  # anywhere from JVM start to the final swap of an uninterrupted run
        time.sleep(rng.uniform(0.1, 0.9) * night.seconds[stage])
    landed = process.poll() is None
    if landed:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return Kill(round(time.perf_counter() - started, 2), landed)


def prepare_night(root: Path) -> Night:
    """One uninterrupted night, every stage as its own job (as the kills will run them)."""
    from crossrec_core.ingest.demo_data import generate_demo_data

    settings = load_settings(lake=root, model=MODEL, spark={"shuffle_partitions": 2})
    lake = Lake(root)
    generate_demo_data(lake, settings, users=300, days=1, seed=5, bad_fraction=0.02, end_date=DS)
    env = {**os.environ, **JOB_ENV}
    seconds = {}
    for stage in ("clean", "featurize", "train", "evaluate", "score", "publish"):
        started = time.perf_counter()
        domains = settings.domains.all if stage == "clean" else (None,)
        for domain in domains:
            subprocess.run(job(stage, root, settings, domain), env=env, check=True, capture_output=True)
        seconds[stage] = (time.perf_counter() - started) / len(domains)
    baseline = {stage: partition_digest(lake, stage, settings) for stage in KILLED_STAGES}
    return Night(settings, lake, baseline, seconds, env)


def trial(stage: str, seed: int, night: Night) -> dict:
    """One kill and rerun; what the reader saw and whether the rerun matched."""
    reader = Reader(night.lake, stage, night.settings)
    polling = threading.Thread(target=reader.run)
    polling.start()
    try:
        kill = run_killed(stage, night, seed)
    finally:
        reader.stop.set()
        polling.join()
    rerun = subprocess.run(job(stage, night.lake.root, night.settings), env=night.env, capture_output=True, text=True)
    if stage == "train":  # a new model voids the gate decision kept beside the old one: gate it again
        subprocess.run(job("evaluate", night.lake.root, night.settings), env=night.env, check=True, capture_output=True)
    return {
        "stage": stage,
        "seed": seed,
        "killed_after_s": kill.after_s,
        "kill_landed": kill.landed,
        "reader_saw_only_complete": reader.seen == {night.baseline[stage]},
        "reader_retries": reader.vanished,
        "rerun_ok": rerun.returncode == 0,
        "rerun_equal": partition_digest(night.lake, stage, night.settings) == night.baseline[stage],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--stages", default=",".join(KILLED_STAGES))
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--json", type=Path, help="write a machine-readable summary (goals, verdicts) here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="crossrec-crash-") as workdir:
        night = prepare_night(Path(workdir) / "lake")
        for stage in args.stages.split(","):
            for seed in range(args.seeds):
                results.append(trial(stage, seed, night))
                print(json.dumps(results[-1]), flush=True)
    lines = [
        SECTION,
        "",
        f"`python -m bench.reliability --seeds {args.seeds}`; {machine()}.",
        "",
        "| stage | trials | killed mid-run | reader saw only complete partitions | rerun succeeded | rerun equal to uninterrupted run | reader retries (files swapped away mid-read) |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in args.stages.split(","):
        rows = [r for r in results if r["stage"] == stage]
        lines.append(
            f"| {stage} | {len(rows)} | {sum(r['kill_landed'] for r in rows)} | {sum(r['reader_saw_only_complete'] for r in rows)} | "
            f"{sum(r['rerun_ok'] for r in rows)} | {sum(r['rerun_equal'] for r in rows)} | {sum(r['reader_retries'] for r in rows)} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.json:
        goals = [
            Goal(f"{stage}: share of trials {what}", sum(r[field] for r in rows) / len(rows), 1.0)
            for stage in args.stages.split(",")
            if (rows := [r for r in results if r["stage"] == stage])
            for field, what in (
                ("reader_saw_only_complete", "whose reader saw only complete partitions"),
                ("rerun_equal", "whose rerun equals an uninterrupted run"),
            )
        ]
        write_summary(args.json, "reliability", f"python -m bench.reliability --seeds {args.seeds}", goals, results)
    if args.write_docs:
        write_section(SECTION, text, page=DOCS.parent / "RELIABILITY.md")


if __name__ == "__main__":
    main()
