"""End to end through real Airflow: `airflow dags test crossrec_nightly DS` (SQLite metadata
DB, local Spark via spark-submit, CPU torch) on a tiny synthetic lake, then the same date
again."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

from crossrec_core.config import load_settings
from crossrec_core.contracts import RECOMMENDATIONS, USER_KEYS
from crossrec_core.demo import run_nights
from crossrec_core.ingest.demo_data import generate_demo_data
from crossrec_core.lake import Lake
from crossrec_core.model_store import candidate_version
from crossrec_core.reports import read_run_reports
from crossrec_core.serving import snapshot
from crossrec_core.stages import STAGES

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow]

DS = "2026-03-02"
K = 5


def served(lake: Lake):
    current = snapshot(lake, RECOMMENDATIONS)
    rows = current.dataset.to_table(filter=(pc.field("ds") == DS) & (pc.field("domain") == "books"))
    return current.version, rows.drop_columns(["ds", "domain"]).sort_by([("user_id", "ascending"), ("rank", "ascending")])


def test_the_nightly_dag_runs_through_airflow_and_a_rerun_changes_no_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSREC_MODEL__NAME", "popularity")  # the DAG's default param; learning is tested elsewhere
    monkeypatch.setenv("CROSSREC_SCORE__K", str(K))
    settings = load_settings(lake=tmp_path / "lake")
    lake = Lake(settings.lake)
    generate_demo_data(lake, settings, users=150, days=1, seed=3, bad_fraction=0.02, end_date=DS)

    run_nights(settings, tmp_path / "airflow_home", [DS])

    reports = read_run_reports(lake, DS).to_pylist()
    ran = sorted((r["stage"], r["domain"]) for r in reports)
    expected = sorted((name, domain) for name, s in STAGES.items() for domain in (settings.domains.all if s.per_domain else ["all"]))
    assert ran == expected
    assert {r["status"] for r in reports} == {"success"}
    clean_books = next(r for r in reports if r["stage"] == "clean" and r["domain"] == "books")
    counts = json.loads(clean_books["metrics"])
    assert clean_books["rows_in"] == clean_books["rows_out"] + clean_books["rows_quarantined"] + counts["duplicates_removed"]
    assert clean_books["rows_quarantined"] > 0  # the sample data's malformed rows went to quarantine

    version, rows = served(lake)
    users = set(lake.read_parquet_partition(USER_KEYS, ds=DS)["user_id"].to_pylist())
    lists = rows.group_by("user_id").aggregate([("rank", "count"), ("rank", "max")])
    assert set(lists["user_id"].to_pylist()) == users
    assert set(lists["rank_count"].to_pylist()) == {K} and set(lists["rank_max"].to_pylist()) == {K}
    assert set(rows["model_version"].to_pylist()) == {candidate_version(lake, DS)}

    airflow_log = (tmp_path / "airflow_home" / "demo-logs" / f"dags-test-{DS}.log").read_text()
    run_nights(settings, tmp_path / "airflow_home", [DS])

    rerun_version, rerun_rows = served(lake)
    assert rerun_version == version + 1  # one new commit replacing the partition
    assert rerun_rows.equals(rows)
    assert len(read_run_reports(lake, DS)) == len(reports)  # one row per stage, replaced, not appended
    assert "clean_source" in airflow_log and "report" in airflow_log
