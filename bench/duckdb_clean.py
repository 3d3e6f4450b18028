"""A single-node reference of the clean step in DuckDB, for the ETL benchmark only.

Same input (one raw partition: Parquet and CSV files), same rules as
crossrec_core/etl/clean.py (trimmed ids, the quarantine reasons, event weights,
de-duplication on event id or (user, item, ts, event type)), same outputs (clean and
quarantine Parquet). Not a product path: it exists to measure Spark against.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from crossrec_core.config import Settings


def clean_partition(raw_dir: Path, out_dir: Path, settings: Settings, ds: str) -> dict:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = ", ".join(f"('{name}', {weight})" for name, weight in settings.event_weights.items())
    sources = []
    if any(raw_dir.glob("*.parquet")):
        sources.append(
            f"SELECT CAST(user_id AS VARCHAR) AS user_id, CAST(item_id AS VARCHAR) AS item_id, CAST(ts AS VARCHAR) AS ts, "
            f"CAST(event_type AS VARCHAR) AS event_type, CAST(value AS VARCHAR) AS value FROM read_parquet('{raw_dir}/*.parquet', union_by_name=true)"
        )
    if any(raw_dir.glob("*.csv")):
        sources.append(
            f"SELECT user_id, item_id, ts, event_type, value FROM read_csv('{raw_dir}/*.csv', all_varchar=true, header=true, union_by_name=true)"
        )
    connection = duckdb.connect()
    connection.execute("SET threads = 2")
    connection.execute(f"""
        CREATE TEMP TABLE validated AS
        WITH raw AS ({" UNION ALL ".join(sources)}),
        weights(event_type, weight) AS (VALUES {weights}),
        parsed AS (
            SELECT trim(user_id) AS user_id, trim(item_id) AS item_id,
                   coalesce(nullif(trim(event_type), ''), '{settings.default_event_type}') AS event_type,
                   CASE WHEN TRY_CAST(trim(ts) AS DOUBLE) IS NULL THEN TRY_CAST(trim(ts) AS TIMESTAMPTZ)
                        WHEN abs(TRY_CAST(trim(ts) AS DOUBLE)) > 1e11 THEN to_timestamp(TRY_CAST(trim(ts) AS DOUBLE) / 1000)
                        ELSE to_timestamp(TRY_CAST(trim(ts) AS DOUBLE)) END AS ts,
                   CASE WHEN coalesce(trim(value), '') = '' THEN 1.0 ELSE TRY_CAST(trim(value) AS DOUBLE) END AS value
            FROM raw)
        SELECT p.*, w.weight * p.value AS weight,
               CASE WHEN coalesce(p.user_id, '') = '' THEN 'missing_user_id'
                    WHEN coalesce(p.item_id, '') = '' THEN 'missing_item_id'
                    WHEN length(p.user_id) > {settings.max_id_length} OR length(p.item_id) > {settings.max_id_length} THEN 'oversize_id'
                    WHEN p.ts IS NULL OR p.ts < TIMESTAMPTZ '{settings.earliest_valid_ts.isoformat()}' THEN 'bad_timestamp'
                    WHEN p.ts > TIMESTAMPTZ '{ds}' + INTERVAL 1 DAY + INTERVAL {int(settings.future_tolerance_hours)} HOUR THEN 'future_timestamp'
                    WHEN w.weight IS NULL THEN 'unknown_event_type'
                    WHEN NOT coalesce(w.weight * p.value > 0 AND isfinite(w.weight * p.value), false) THEN 'non_positive_value'
               END AS reason
        FROM parsed p LEFT JOIN weights w USING (event_type)
    """)
    connection.execute(f"""
        COPY (SELECT * FROM validated WHERE reason IS NULL
              QUALIFY row_number() OVER (PARTITION BY user_id, item_id, ts, event_type ORDER BY weight) = 1)
        TO '{out_dir}/clean.parquet' (FORMAT parquet)""")
    connection.execute(f"COPY (SELECT * FROM validated WHERE reason IS NOT NULL) TO '{out_dir}/quarantine.parquet' (FORMAT parquet)")
    counts = connection.execute(f"""
        SELECT (SELECT count(*) FROM validated), (SELECT count(*) FROM read_parquet('{out_dir}/clean.parquet')),
               (SELECT count(*) FROM validated WHERE reason IS NOT NULL)""").fetchone()
    rows_in, rows_clean, rows_quarantined = counts
    return {
        "rows_in": rows_in,
        "rows_clean": rows_clean,
        "rows_quarantined": rows_quarantined,
        "duplicates_removed": rows_in - rows_clean - rows_quarantined,
        "seconds": time.perf_counter() - started,
    }
