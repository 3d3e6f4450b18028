"""Smoke run of the benchmark harness on tiny sizes: every benchmark runs and writes its
section (a table with its goal) into the page. Left out here, to keep the suite short:
the end-to-end benchmark (tests/test_e2e_airflow.py runs the same Airflow path), and the
benchmarks on the shared datasets (train_speed, als) and crash trials
(tests/test_reliability_crash.py runs the same trials)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scaling import SIZE_OF, fit_power_law

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def test_the_harness_writes_every_section_with_its_table(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "CROSSREC_BENCH_DOCS": str(page), "SPARK_LOCAL_IP": "127.0.0.1"}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "etl,etl_profile,score_speed,eval_speed,scaling"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    text = page.read_text()
    for section in ("## ETL (clean + featurize)", "## Scoring", "## Evaluation speed"):
        assert text.count(section + "\n") == 1, section
    assert "| protocol | users | items |" in text and "20,000" in text
    assert "goal" in text.lower()
    for plot in ("etl_scaling", "scoring"):  # each drawn beside the page and shown in it
        assert f"![{plot}](bench/{plot}.png)" in text and (tmp_path / "bench" / f"{plot}.png").stat().st_size > 1000
    for name in ("etl", "score_speed", "eval_speed"):  # a machine-readable summary beside the page
        summary = json.loads((tmp_path / "bench" / f"{name}.json").read_text())
        assert summary["benchmark"] == name and summary["results"]
        assert all(isinstance(goal["met"], bool) and goal["measured"] >= 0 for goal in summary["goals"])
    profile = (tmp_path / "ETL_PROFILE.md").read_text()  # Spark's event log of one night, per stage and query
    for stage in ("clean source", "clean target", "featurize"):
        assert f"## {stage}: " in profile, stage
    assert profile.count("== Physical Plan ==") >= 3 and "| # | what | seconds |" in profile
    scaling = (tmp_path / "SCALING.md").read_text()  # beside the page, its ETL curve from etl's summary
    for curve in ("ETL, clean + featurize", "Scoring over users", "Scoring over items", "Training target_only", "Training dann"):
        assert f"### {curve}" in scaling, curve
    fits = json.loads((tmp_path / "bench" / "scaling.json").read_text())["results"]["fits"]
    assert set(fits) == {"etl", "score_users", "score_items", "train_target_only", "train_dann"}
    assert fits["etl"]["b"] is None  # one smoke size: no fit
    curves = json.loads((tmp_path / "bench" / "scaling.json").read_text())["results"]["curves"]
    for curve in set(fits) - {"etl"}:  # each fit is its own curve's (the smoke sizes' timings are noise: no sign asserted)
        points = curves[curve]
        assert fits[curve] == pytest.approx(fit_power_law([p[SIZE_OF[curve]] for p in points], [p["seconds"] for p in points]))
    scoring_goals = json.loads((tmp_path / "bench" / "score_speed.json").read_text())["goals"]
    # scorer / (matmul + topk), whole job seconds, the hybrid's whole job seconds
    assert [g["target"] for g in scoring_goals] == [0.95, 60.0, 60.0] and "hybrid" in scoring_goals[2]["what"]

    again = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "eval_speed"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and page.read_text().count("## Evaluation speed\n") == 1  # replaced, not appended


def test_a_benchmark_without_write_docs_leaves_the_docs_untouched(tmp_path):
    page = tmp_path / "docs" / "BENCHMARKS.md"
    env = {**os.environ, "CROSSREC_BENCH_DOCS": str(page)}
    run = subprocess.run(
        [sys.executable, "-m", "bench.score_speed", "--users", "2000", "--items", "1000", "--block-sizes", "256"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "![scoring](bench/scoring.png)" in run.stdout  # the section is printed
    assert not (tmp_path / "docs").exists()  # neither the page nor its figures are written


def test_the_power_law_fit_recovers_a_known_growth_and_refuses_one_size():
    sizes = [1_000.0, 10_000.0, 100_000.0]
    assert fit_power_law(sizes, [3.0 * n**1.5 for n in sizes]) == pytest.approx({"a": 3.0, "b": 1.5})
    assert fit_power_law([5_000.0, 5_000.0], [1.0, 2.0]) == {"a": None, "b": None}
