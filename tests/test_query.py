"""``crossrec sql``: DuckDB over the current Delta snapshots, read-only and confined."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_serving import USERS, publish_night, scores_table
from typer.testing import CliRunner

from crossrec_core.cli import app
from crossrec_core.lake import Lake
from crossrec_core.query import QueryFailed, QueryRefused, run_query


@pytest.fixture(scope="module")
def served_lake(tmp_path_factory):
    """Read-only tests share one lake: two nights, the second one published twice."""
    lake_root = tmp_path_factory.mktemp("query") / "lake"
    lake = Lake(lake_root)
    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 5, "2026-01-05", seed=1))
    publish_night(lake_root, lake, "2026-01-06", scores_table(USERS, 5, "2026-01-06", seed=2))
    publish_night(lake_root, lake, "2026-01-06", scores_table(USERS[:8], 3, "2026-01-06", seed=3))  # a re-run replaces
    return lake


def test_select_joins_recommendations_and_run_reports_of_the_current_snapshot(served_lake):
    result = run_query(
        served_lake,
        """
        WITH served AS (SELECT ds, count(*) AS rows, count(DISTINCT user_id) AS users FROM recommendations GROUP BY ds)
        SELECT s.ds, s.rows, s.users, r.status, r.rows_out
        FROM served s JOIN run_reports r ON r.ds = s.ds AND r.stage = 'publish'
        ORDER BY s.ds
        """,
    )
    assert result.to_pylist() == [
        {"ds": "2026-01-05", "rows": 100, "users": 20, "status": "success", "rows_out": 100},
        {"ds": "2026-01-06", "rows": 24, "users": 8, "status": "success", "rows_out": 24},  # not the replaced 100
    ]


@pytest.mark.parametrize(
    "sql",
    ["DESCRIBE recommendations", "SHOW TABLES", "EXPLAIN SELECT * FROM recommendations", "SUMMARIZE run_reports",
     "FROM recommendations LIMIT 1", "EXPLAIN ANALYZE SELECT count(*) FROM recommendations"],
)
def test_describe_show_explain_are_allowed(served_lake, sql):
    assert run_query(served_lake, sql).num_rows >= 1


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO recommendations VALUES ('u', 1, 'i', 1.0, 'm', 'warm', '2026-01-05', 'tgt')",
        "CREATE TABLE stolen AS SELECT * FROM recommendations",
        "DROP VIEW recommendations",
        "DELETE FROM recommendations",
        "COPY (SELECT * FROM recommendations) TO '/tmp/crossrec-leak.csv'",
        "ATTACH '/tmp/crossrec-other.db' AS other",
        "INSTALL delta",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "PRAGMA enable_profiling",
        "SELECT 1; DROP VIEW recommendations",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "SELEC nonsense",
    ],
)
def test_anything_but_one_read_only_statement_is_refused(served_lake, sql):
    with pytest.raises(QueryRefused):
        run_query(served_lake, sql)
    assert not Path("/tmp/crossrec-leak.csv").exists() and not Path("/tmp/crossrec-other.db").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('{lake}/serving/recommendations/**/*.parquet')",
    ],
)
def test_file_access_from_a_select_is_refused(served_lake, sql):
    with pytest.raises(QueryFailed, match="disabled by configuration"):
        run_query(served_lake, sql.format(lake=served_lake.root))


def test_sql_command_prints_csv_and_json(served_lake):
    query = "SELECT user_id, rank FROM recommendations WHERE ds = '2026-01-06' AND user_id = 'u1' ORDER BY rank"
    runner = CliRunner()

    as_csv = runner.invoke(app, ["sql", query, "--format", "csv", "--lake", str(served_lake.root)])
    as_json = runner.invoke(app, ["sql", query, "--format", "json", "--lake", str(served_lake.root)])
    as_table = runner.invoke(app, ["sql", query, "--lake", str(served_lake.root)])

    assert as_csv.exit_code == as_json.exit_code == as_table.exit_code == 0
    assert list(csv.DictReader(io.StringIO(as_csv.stdout))) == [{"user_id": "u1", "rank": str(r)} for r in (1, 2, 3)]
    assert json.loads(as_json.stdout) == [{"user_id": "u1", "rank": r} for r in (1, 2, 3)]
    assert "3 rows" in as_table.stdout


def test_a_refused_statement_exits_2_with_one_clear_line(served_lake):
    crossrec = Path(sys.executable).with_name("crossrec")
    done = subprocess.run(
        [str(crossrec), "sql", "DROP VIEW recommendations", "--lake", str(served_lake.root)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "DROP statements are refused" in done.stderr and "Traceback" not in done.stderr
