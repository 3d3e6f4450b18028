"""Read-only SQL over the serving Delta tables with DuckDB.

The tables ``recommendations`` and ``run_reports`` are the current Delta snapshots,
registered as Arrow datasets (``Lake.delta_dataset``: crash-free, partition pruning;
DuckDB's own delta extension needs the network). Two locks keep a query read-only and
inside the lake:

1. the statement is parsed by DuckDB (``duckdb.extract_statements``) and refused unless
   it is exactly one SELECT (which covers WITH, DESCRIBE, SHOW, SUMMARIZE, FROM ...) or
   EXPLAIN of one (EXPLAIN ANALYZE runs its statement, so that must be a SELECT too);
2. the connection is in memory, with ``enable_external_access=false`` (no file,
   extension or network access: read_csv('/etc/passwd'), COPY, ATTACH, INSTALL fail)
   and its configuration locked so that a query can't turn it back on.

A query runs in a worker thread under two limits, ``query.timeout_seconds`` and DuckDB's
``memory_limit`` (``query.memory_limit``); the calling thread waits and, on the timeout
or on Ctrl-C (SIGINT), stops the query with ``DuckDBPyConnection.interrupt()`` (DuckDB
does not see a signal while it runs, so the query cannot wait in the main thread).
"""

from __future__ import annotations

import logging
import threading
import time

import duckdb
import pyarrow as pa

from crossrec_core.config import QuerySettings
from crossrec_core.contracts import ALERTS, RECOMMENDATIONS, RUN_REPORTS
from crossrec_core.errors import InputError
from crossrec_core.lake import Lake

log = logging.getLogger(__name__)

SIGNAL_POLL_SECONDS = 0.1
QUERY_TABLES = {"recommendations": RECOMMENDATIONS, "run_reports": RUN_REPORTS, "alerts": ALERTS}
_EXPLAIN_KEYWORDS = {"explain", "analyze"}


class QueryRefused(InputError):
    """The SQL is not a single read-only statement."""


class QueryFailed(InputError):
    """DuckDB could not run the query (syntax, unknown table or column, permission)."""


class QueryStopped(InputError):
    """The query passed a limit (time or memory) and was stopped."""


def _parse(sql: str) -> list[duckdb.Statement]:
    try:
        return duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise QueryRefused(f"not valid SQL: {err}") from None


def _explained(sql: str) -> str:
    """The statement an EXPLAIN [ANALYZE] statement explains (DuckDB's tokenizer finds it)."""
    for position, kind in duckdb.tokenize(sql):
        word = sql[position:].split(None, 1)[0].lower() if kind == duckdb.token_type.keyword else ""
        if word not in _EXPLAIN_KEYWORDS:
            return sql[position:]
    return ""


def check_read_only(sql: str) -> None:
    """Raise :class:`QueryRefused` unless ``sql`` is one SELECT-like statement."""
    statements = _parse(sql)
    if len(statements) != 1:
        raise QueryRefused(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _parse(_explained(sql))
        if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
            raise QueryRefused("EXPLAIN is allowed for a single SELECT only")
    elif kind != duckdb.StatementType.SELECT:
        raise QueryRefused(f"{kind.name} statements are refused: the SQL interface is read-only (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN)")


def connect(lake: Lake, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the current snapshots registered, then locked."""
    connection = duckdb.connect(":memory:")
    for name, table in QUERY_TABLES.items():
        if lake.delta_exists(table):
            connection.register(name, lake.delta_dataset(table))
    connection.execute("SET memory_limit = ?", [memory_limit])
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


def _stop(connection: duckdb.DuckDBPyConnection, finished: threading.Event) -> None:
    """Interrupt the query until it has ended (an interrupt that comes before the query
    has started is lost, so it is repeated)."""
    while not finished.wait(SIGNAL_POLL_SECONDS):
        connection.interrupt()


def run_query(lake: Lake, sql: str, limits: QuerySettings) -> pa.Table:
    """The result of one read-only statement over the lake's serving tables; stopped
    (:class:`QueryStopped`) past ``limits.timeout_seconds`` or ``limits.memory_limit``,
    and at once on Ctrl-C (KeyboardInterrupt)."""
    check_read_only(sql)
    connection = connect(lake, limits.memory_limit)
    outcome: dict[str, pa.Table | BaseException] = {}
    # An Event, not Thread.join: a join interrupted by KeyboardInterrupt can leave the
    # Thread looking finished while its query still runs.
    finished = threading.Event()

    def execute() -> None:
        try:
            outcome["result"] = connection.execute(sql).to_arrow_table()
        except BaseException as err:  # handed to the waiting thread
            outcome["error"] = err
        finally:
            finished.set()

    try:
        threading.Thread(target=execute, name="crossrec-sql", daemon=True).start()
        log.debug("query running (limits: %g s, %s)", limits.timeout_seconds, limits.memory_limit)
        deadline = time.monotonic() + limits.timeout_seconds
        # Short waits: SIGINT may reach one of DuckDB's threads, and the main thread only
        # runs Python's handler (KeyboardInterrupt) when it wakes up.
        while not finished.wait(SIGNAL_POLL_SECONDS) and time.monotonic() < deadline:
            pass
    finally:  # the time limit, Ctrl-C or any other exit: stop the query, then close
        timed_out = not finished.is_set()
        _stop(connection, finished)
        connection.close()
    if timed_out:
        raise QueryStopped(
            f"query stopped after {limits.timeout_seconds:g} s (limit query.timeout_seconds; "
            "`crossrec sql --timeout SECONDS` sets it for one query)"
        )
    error = outcome.get("error")
    if isinstance(error, duckdb.OutOfMemoryException):
        raise QueryStopped(
            f"query stopped: it needs more memory than the limit {limits.memory_limit} (query.memory_limit; "
            f"`crossrec sql --memory-limit SIZE` sets it for one query): {error}"
        )
    if isinstance(error, duckdb.Error):
        raise QueryFailed(f"query failed: {error}")
    if error is not None:
        raise error
    return outcome["result"]
