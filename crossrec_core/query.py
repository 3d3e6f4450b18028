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
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from crossrec_core.contracts import ALERTS, RECOMMENDATIONS, RUN_REPORTS
from crossrec_core.lake import Lake

QUERY_TABLES = {"recommendations": RECOMMENDATIONS, "run_reports": RUN_REPORTS, "alerts": ALERTS}
_EXPLAIN_KEYWORDS = {"explain", "analyze"}


class QueryRefused(ValueError):
    """The SQL is not a single read-only statement."""


class QueryFailed(ValueError):
    """DuckDB could not run the query (syntax, unknown table or column, permission)."""


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
        raise QueryRefused(
            f"{kind.name} statements are refused: the SQL interface is read-only "
            "(SELECT, WITH, DESCRIBE, SHOW, EXPLAIN)"
        )


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the current snapshots registered, then locked."""
    connection = duckdb.connect(":memory:")
    for name, table in QUERY_TABLES.items():
        if lake.delta_exists(table):
            connection.register(name, lake.delta_dataset(table))
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


def run_query(lake: Lake, sql: str) -> pa.Table:
    """The result of one read-only statement over the lake's serving tables."""
    check_read_only(sql)
    connection = connect(lake)
    try:
        return connection.execute(sql).to_arrow_table()
    except duckdb.Error as err:
        raise QueryFailed(f"query failed: {err}") from None
    finally:
        connection.close()
