"""``crossrec sql``: DuckDB over the current Delta snapshots, read-only and confined."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_serving import USERS, publish_night, scores_table
from typer.testing import CliRunner

from crossrec_core.cli import app
from crossrec_core.config import QuerySettings, load_settings
from crossrec_core.lake import Lake
from crossrec_core.query import QueryFailed, QueryRefused, QueryStopped, run_query

LIMITS = load_settings().query


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
        LIMITS,
    )
    assert result.to_pylist() == [
        {"ds": "2026-01-05", "rows": 100, "users": 20, "status": "success", "rows_out": 100},
        {"ds": "2026-01-06", "rows": 24, "users": 8, "status": "success", "rows_out": 24},  # not the replaced 100
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "DESCRIBE recommendations",
        "SHOW TABLES",
        "EXPLAIN SELECT * FROM recommendations",
        "SUMMARIZE run_reports",
        "FROM recommendations LIMIT 1",
        "EXPLAIN ANALYZE SELECT count(*) FROM recommendations",
    ],
)
def test_describe_show_explain_are_allowed(served_lake, sql):
    assert run_query(served_lake, sql, LIMITS).num_rows >= 1


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
        run_query(served_lake, sql, LIMITS)
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
        run_query(served_lake, sql.format(lake=served_lake.root), LIMITS)


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
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "DROP statements are refused" in done.stderr and "Traceback" not in done.stderr


# Would run for hours: 1e12 rows, nothing for the optimizer to skip.
ENDLESS_CROSS_JOIN = "SELECT sum(a.range * b.range) FROM range(1000000) a CROSS JOIN range(1000000) b"


def test_a_long_query_is_stopped_at_the_timeout(served_lake):
    with pytest.raises(QueryStopped, match=r"query stopped after 0\.5 s \(limit query\.timeout_seconds"):
        run_query(served_lake, ENDLESS_CROSS_JOIN, QuerySettings(timeout_seconds=0.5, memory_limit=LIMITS.memory_limit))


def test_a_query_past_the_memory_limit_is_stopped(served_lake):
    with pytest.raises(QueryStopped, match=r"needs more memory than the limit 20MB \(query\.memory_limit"):
        run_query(served_lake, "SELECT list(range) FROM range(50000000)", QuerySettings(timeout_seconds=60, memory_limit="20MB"))


def test_the_sql_command_takes_its_limits_from_config_and_flags(served_lake, tmp_path):
    config = tmp_path / "limits.yaml"
    config.write_text("query:\n  timeout_seconds: 0.5\n")
    crossrec = Path(sys.executable).with_name("crossrec")
    from_config = subprocess.run(
        [str(crossrec), "sql", ENDLESS_CROSS_JOIN, "--config", str(config), "--lake", str(served_lake.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    from_flag = subprocess.run(
        [str(crossrec), "sql", ENDLESS_CROSS_JOIN, "--timeout", "0.7", "--config", str(config), "--lake", str(served_lake.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert from_config.returncode == from_flag.returncode == 2
    assert "query stopped after 0.5 s" in from_config.stderr and "query stopped after 0.7 s" in from_flag.stderr


def test_ctrl_c_stops_a_running_query_at_once(served_lake):
    crossrec = Path(sys.executable).with_name("crossrec")
    process = subprocess.Popen(
        [str(crossrec), "--verbose", "sql", ENDLESS_CROSS_JOIN, "--timeout", "3600", "--lake", str(served_lake.root)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        # SIGINT handled as in an interactive shell, even if this test runs with it ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in process.stderr:  # wait until DuckDB runs the query
            if "query running" in line:
                break
        process.send_signal(signal.SIGINT)
        # Ignoring SIGINT would run into the one-hour limit: this wait would fail first.
        returncode = process.wait(timeout=60)
    finally:
        process.kill()
    assert returncode == 130
    assert "query stopped by Ctrl-C" in process.stderr.read()
