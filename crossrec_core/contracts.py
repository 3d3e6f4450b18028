"""Every lake table, defined once. pyarrow and Spark schemas both derive from here.

A :class:`Table` names its location under the lake root, its format, its partition
columns and its data columns. Writers call :meth:`Table.validate` (pyarrow) or build
their Spark DataFrame with :meth:`Table.spark_schema`, so a column can't drift between
the two engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from crossrec_core.errors import CrossrecError

if TYPE_CHECKING:  # pyspark is heavy; only the Spark stages import it
    from pyspark.sql.types import StructType


class ColumnType(StrEnum):
    STRING = "string"
    INT32 = "int32"
    INT64 = "int64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    TIMESTAMP = "timestamp"  # microseconds, UTC
    DATE = "date"
    STRING_LIST = "list<string>"

    def arrow(self) -> pa.DataType:
        return {
            ColumnType.STRING: pa.string(),
            ColumnType.INT32: pa.int32(),
            ColumnType.INT64: pa.int64(),
            ColumnType.FLOAT32: pa.float32(),
            ColumnType.FLOAT64: pa.float64(),
            ColumnType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
            ColumnType.DATE: pa.date32(),
            # Spark's array<string> (containsNull = false) as Parquet stores it.
            ColumnType.STRING_LIST: pa.list_(pa.field("element", pa.string(), nullable=False)),
        }[self]

    def spark(self):  # -> pyspark.sql.types.DataType
        from pyspark.sql import types as T

        return {
            ColumnType.STRING: T.StringType(),
            ColumnType.INT32: T.IntegerType(),
            ColumnType.INT64: T.LongType(),
            ColumnType.FLOAT32: T.FloatType(),
            ColumnType.FLOAT64: T.DoubleType(),
            ColumnType.TIMESTAMP: T.TimestampType(),
            ColumnType.DATE: T.DateType(),
            ColumnType.STRING_LIST: T.ArrayType(T.StringType(), containsNull=False),
        }[self]


class TableFormat(StrEnum):
    PARQUET = "parquet"
    DELTA = "delta"


class Segment(StrEnum):
    """Which way a target user is served."""

    WARM = "warm"  # has target history
    COLD_START = "cold_start"  # source history only
    FALLBACK = "fallback"  # neither (or too little): popularity


# The score a model card records for selection and the gate: NDCG@10 over every
# validation user of the target domain (trainer.validate writes it).
VALIDATION_SEGMENT = "all"
VALIDATION_METRIC = "ndcg@10"


class Split(StrEnum):
    """Role of a features/interactions row."""

    TRAIN = "train"
    VALID_WARM = "valid_warm"  # latest target interactions of warm users
    VALID_COLD = "valid_cold"  # all target interactions of held-out overlapping users


def warm_holdout_size(n: np.ndarray, fraction: float) -> np.ndarray:
    """The one warm-split rule: a warm user with n target interactions gives each
    held-out split (nightly: validation; offline: validation and test) its latest
    max(1, round(fraction x n)) of them, halves rounded up. featurize computes the same
    in Spark (``featurize.warm_holdout_column``, checked against this in
    test_featurize); who is warm at all is ``min_target_interactions``."""
    return np.maximum(1, np.floor(fraction * np.asarray(n, dtype=np.float64) + 0.5)).astype(np.int64)


class StageStatus(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    GATED = "gated"  # the gate kept the previous model; not an error


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Table:
    name: str
    path: str  # relative to the lake root
    format: TableFormat
    partition_by: tuple[Column, ...]
    columns: tuple[Column, ...]
    doc: str = ""
    subdir: str = ""  # a sub-table inside each partition (features/ds=D/<subdir>)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def partition_names(self) -> list[str]:
        return [c.name for c in self.partition_by]

    def arrow_schema(self, with_partitions: bool = False) -> pa.Schema:
        cols = self.columns + (self.partition_by if with_partitions else ())
        return pa.schema([pa.field(c.name, c.type.arrow(), nullable=c.nullable) for c in cols])

    def spark_schema(self, with_partitions: bool = False) -> StructType:
        from pyspark.sql import types as T

        cols = self.columns + (self.partition_by if with_partitions else ())
        return T.StructType([T.StructField(c.name, c.type.spark(), c.nullable) for c in cols])

    def validate(self, data: pa.Table, with_partitions: bool = False) -> pa.Table:
        """Return ``data`` with exactly this table's columns, in order and types.

        Raises ``ContractError`` naming the table and the offending column for a missing
        column, an extra column, a type that does not cast safely, or nulls in a
        non-nullable column.
        """
        schema = self.arrow_schema(with_partitions)
        missing = [n for n in schema.names if n not in data.column_names]
        extra = [n for n in data.column_names if n not in schema.names]
        if missing or extra:
            raise ContractError(f"{self.name}: missing columns {missing}, unexpected columns {extra}")
        columns = []
        for field in schema:
            column = data.column(field.name)
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ContractError(f"{self.name}.{field.name}: cannot cast {column.type} to {field.type}: {err}") from err
            if not field.nullable and column.null_count:
                raise ContractError(f"{self.name}.{field.name}: {column.null_count} null values in a non-null column")
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=schema)


class ContractError(CrossrecError):
    """Data does not match its table's contract."""


_DS = Column("ds", ColumnType.STRING, doc="run date, YYYY-MM-DD (the DAG run's logical date)")
_DOMAIN = Column("domain", ColumnType.STRING)

# Raw landing files carry at least these columns; every value is read as a string first so
# that a bad value is quarantined, not lost to a parse error.
RAW_REQUIRED_COLUMNS = ("user_id", "item_id", "ts")
RAW_OPTIONAL_COLUMNS = ("event_id", "event_type", "value")
RAW_COLUMNS = RAW_REQUIRED_COLUMNS + RAW_OPTIONAL_COLUMNS

RAW = Table(
    name="raw",
    path="raw",
    format=TableFormat.PARQUET,  # or CSV / JSON Lines as delivered
    partition_by=(_DOMAIN, _DS),
    columns=tuple(Column(n, ColumnType.STRING, nullable=True) for n in RAW_COLUMNS),
    doc="landing zone; files as delivered (Parquet, CSV, JSON Lines)",
)

CLEAN_INTERACTIONS = Table(
    name="clean_interactions",
    path="clean/interactions",
    format=TableFormat.PARQUET,
    partition_by=(_DOMAIN, _DS),
    columns=(
        Column("event_id", ColumnType.STRING, doc="given, else derived from (user, item, ts, event_type)"),
        Column("user_id", ColumnType.STRING),
        Column("item_id", ColumnType.STRING),
        Column("event_type", ColumnType.STRING),
        Column("weight", ColumnType.FLOAT64, doc="event-type weight times value; > 0"),
        Column("ts", ColumnType.TIMESTAMP),
    ),
)

QUARANTINE = Table(
    name="quarantine",
    path="clean/quarantine",
    format=TableFormat.PARQUET,
    partition_by=(_DOMAIN, _DS),
    columns=(
        *tuple(Column(n, ColumnType.STRING, nullable=True) for n in RAW_COLUMNS),
        Column("reason", ColumnType.STRING, doc="a QuarantineReason value"),
        Column("source_file", ColumnType.STRING),
        Column("source_row", ColumnType.INT64, nullable=True, doc="1-based row in the file where known"),
        Column("raw_record", ColumnType.STRING, nullable=True, doc="the unparsed line of a malformed record"),
    ),
)


class QuarantineReason(StrEnum):
    MISSING_USER_ID = "missing_user_id"
    MISSING_ITEM_ID = "missing_item_id"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    NON_POSITIVE_VALUE = "non_positive_value"
    OVERSIZE_ID = "oversize_id"
    MALFORMED_RECORD = "malformed_record"


# features/ds=DATE/ holds three sub-tables, swapped into place together.
FEATURES_ROOT = "features"

USER_KEYS = Table(
    name="user_keys",
    path=FEATURES_ROOT,
    subdir="user_keys",
    format=TableFormat.PARQUET,
    partition_by=(_DS,),
    columns=(
        Column("user_id", ColumnType.STRING),
        Column("user_key", ColumnType.INT64, doc="stable across nights; one index for all domains"),
    ),
)

ITEM_KEYS = Table(
    name="item_keys",
    path=FEATURES_ROOT,
    subdir="item_keys",
    format=TableFormat.PARQUET,
    partition_by=(_DS,),
    columns=(
        Column("domain", ColumnType.STRING),
        Column("item_id", ColumnType.STRING),
        Column("item_key", ColumnType.INT64, doc="stable across nights; one index per domain"),
    ),
)

FEATURE_INTERACTIONS = Table(
    name="feature_interactions",
    path=FEATURES_ROOT,
    subdir="interactions",
    format=TableFormat.PARQUET,
    partition_by=(_DS,),
    columns=(
        Column("domain", ColumnType.STRING),
        Column("user_key", ColumnType.INT64),
        Column("item_key", ColumnType.INT64),
        Column("weight", ColumnType.FLOAT64, doc="sum of event weights, exponentially decayed to ds"),
        Column("last_ts", ColumnType.TIMESTAMP),
        Column("split", ColumnType.STRING, doc="a Split value"),
    ),
)

RECOMMENDATIONS = Table(
    name="recommendations",
    path="serving/recommendations",
    format=TableFormat.DELTA,
    partition_by=(_DS, _DOMAIN),
    columns=(
        Column("user_id", ColumnType.STRING),
        Column("rank", ColumnType.INT32, doc="1..K"),
        Column("item_id", ColumnType.STRING),
        Column("score", ColumnType.FLOAT32),
        Column("model_version", ColumnType.STRING, doc="model id: models/ds=DS/model=ID holds its card"),
        Column("segment", ColumnType.STRING, doc="a Segment value"),
        Column(
            "because",
            ColumnType.STRING_LIST,
            doc="up to 3 source item ids that contributed most to the score (item-to-item models; else empty)",
        ),
    ),
)

# The scorer's output, staged as Parquet; `publish` commits these files into RECOMMENDATIONS.
SCORES = Table(
    name="scores",
    path="scores",
    format=TableFormat.PARQUET,
    partition_by=(_DS, _DOMAIN),
    columns=RECOMMENDATIONS.columns,
    doc="scored top-K lists of one night, not yet served",
)

RUN_REPORTS = Table(
    name="run_reports",
    path="serving/run_reports",
    format=TableFormat.DELTA,
    partition_by=(_DS,),
    columns=(
        Column("stage", ColumnType.STRING),
        Column("domain", ColumnType.STRING, doc="the domain a per-domain stage ran for, else 'all'"),
        Column("status", ColumnType.STRING, doc="a StageStatus value"),
        Column("started_at", ColumnType.TIMESTAMP),
        Column("finished_at", ColumnType.TIMESTAMP),
        Column("rows_in", ColumnType.INT64),
        Column("rows_out", ColumnType.INT64),
        Column("rows_quarantined", ColumnType.INT64),
        Column("metrics", ColumnType.STRING, doc="JSON object: stage-specific counts, timings, metrics, error"),
    ),
)

ALERTS = Table(
    name="alerts",
    path="serving/alerts",
    format=TableFormat.DELTA,
    partition_by=(_DS,),
    columns=(
        Column("raised_at", ColumnType.TIMESTAMP),
        Column("kind", ColumnType.STRING, doc="an AlertKind value"),
        Column("dag_id", ColumnType.STRING),
        Column("run_id", ColumnType.STRING),
        Column("task_id", ColumnType.STRING, doc="the failed task, or '' for the DAG run itself"),
        Column("try_number", ColumnType.INT64),
        Column("message", ColumnType.STRING),
        Column("webhook", ColumnType.STRING, doc="posted, not configured, or the post's error"),
    ),
    doc="one row per failed task, failed DAG run or gated night (written by the DAG's callbacks)",
)


class AlertKind(StrEnum):
    TASK_FAILED = "task_failed"  # a task failed for good (retries exhausted, bad input, timeout)
    RUN_FAILED = "run_failed"  # the DAG run failed (e.g. past dagrun_timeout)
    GATED = "gated"  # the gate kept the last good list served


# models/ds=DATE/model=ID/ holds the weights (model.pt, loaded with weights_only=True) and model_card.json.
MODELS_ROOT = "models"

# A dataset's own evaluation set (e.g. CDRIB's valid/test cold-start users), imported
# beside raw/ and never into it, so the nightly pipeline cannot train on it.
HOLDOUT_SPLITS = ("valid", "test")

HOLDOUT = Table(
    name="holdout",
    path="holdout",
    format=TableFormat.PARQUET,
    partition_by=(_DOMAIN, Column("split", ColumnType.STRING, doc="one of HOLDOUT_SPLITS")),
    columns=(Column("user_id", ColumnType.STRING), Column("item_id", ColumnType.STRING)),
    doc="an imported dataset's held-out interactions (cold-start users of the domain)",
)

TABLES = {
    t.name: t
    for t in (
        RAW,
        CLEAN_INTERACTIONS,
        QUARANTINE,
        USER_KEYS,
        ITEM_KEYS,
        FEATURE_INTERACTIONS,
        RECOMMENDATIONS,
        SCORES,
        RUN_REPORTS,
        ALERTS,
        HOLDOUT,
    )
}
