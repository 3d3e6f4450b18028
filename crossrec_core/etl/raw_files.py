"""Find and read every raw landing file of one partition, every value as a string.

Supported files (several formats in one partition are all read):

* ``.parquet``: only the contract's columns are read (other columns, whatever their
  type, are never decoded) and turned into text:

  - ``ts`` of any timestamp type (seconds to nanoseconds, with or without a time zone,
    legacy INT96; none means UTC) becomes its UTC time; a date its midnight; a number
    stays a number;
  - ids (``user_id``, ``item_id``, ``event_id``) must be text or numbers. Integers are
    written in decimal (``1``); a floating-point or decimal id holding a whole number of
    at most 2**53 is written as that integer (``1.0`` -> ``1``, so one user delivered as
    int64 one day and float64 the next stays one user); any other number (``2.5``, NaN,
    beyond 2**53, where float64 no longer tells neighbouring integers apart) and any
    other type (list, struct, boolean, date, timestamp) is not an id: ``bad_id_type``;
  - bytes that are not UTF-8 in a text column become U+FFFD (which the clean stage
    quarantines);
  - a contract column of a type Spark cannot read (e.g. float16) refuses the file,
    naming it and the column;
* ``.csv`` / ``.csv.gz``: a header line names the columns (matched case-insensitively,
  in any order; unknown columns are ignored); a quoted field may hold newlines (the
  file is parsed whole, one task per file); PERMISSIVE parsing, so a malformed record
  (wrong number of fields) becomes a row with its raw text in ``raw_record`` instead of
  failing the read. An unclosed quote runs to the next quote character or the end of
  the file as one malformed record; a field longer than :data:`MAX_CSV_FIELD_CHARS`
  characters refuses the file. Bytes that are not UTF-8 are read as U+FFFD;
* ``.jsonl`` / ``.json`` / ``.jsonl.gz`` / ``.json.gz``: JSON Lines, one object per line;
  a line that is not JSON (or not UTF-8) becomes a row with its raw line in
  ``raw_record``; an array or object where an id belongs is ``bad_id_type``. An id is
  its text as written: JSON ``1`` and ``1.0`` are two ids, as in CSV.

Files whose name starts with ``.`` or ``_`` (markers, checksums) are not data. Any other
file, a CSV or Parquet file lacking a required column, or a corrupt file stops the stage
with :class:`RawInputError` naming the file: nothing is skipped silently. An empty file
contributes no rows.

Every row also carries ``bad_id_type`` (an id of a type that cannot be an id),
``file_path`` (as Spark names the file) and ``block_start`` (the byte offset of the file
split it was read from), from which the caller numbers the rows of each file.
"""

from __future__ import annotations

import csv
import gzip
import logging
import operator
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from crossrec_core.contracts import RAW_COLUMNS, RAW_REQUIRED_COLUMNS
from crossrec_core.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import DataType

log = logging.getLogger(__name__)

CORRUPT_COLUMN = "_corrupt_record"
ID_COLUMNS = ("user_id", "item_id", "event_id")
MAX_CSV_FIELD_CHARS = 1 << 20  # bounds what an unclosed quote can swallow (and its memory)
LARGEST_EXACT_FLOAT_ID = 2**53
FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
COMPRESSIBLE = frozenset({"csv", "json"})  # Spark decompresses .gz text files by name
_GLOB_CHARS = re.compile(r"([\\\[\]{}*?])")
_FAILED_READ = re.compile(r"Encountered error while reading file (\S+?)\.?\s")
_ROOT_CAUSE = re.compile(r"Caused by: ([^\n]+)")


class RawInputError(InputError):
    """A raw file cannot be read as interactions; the message names the file and why."""


@dataclass(frozen=True)
class RawFile:
    path: Path
    format: str  # parquet, csv or json
    size: int


def list_raw_files(partition: Path) -> list[RawFile]:
    """Every data file under ``partition`` (recursively), sorted by path."""
    files = []
    for path in sorted(partition.rglob("*")):
        relative = path.relative_to(partition).parts
        if not path.is_file() or any(part.startswith((".", "_")) for part in relative):
            continue
        name = path.name.lower()
        compressed = name.endswith(".gz")
        fmt = FORMATS.get(Path(name[:-3] if compressed else name).suffix)
        if fmt is None or (compressed and fmt not in COMPRESSIBLE):
            raise RawInputError(
                f"{path}: unsupported raw file type; expected .parquet, .csv, .jsonl or .json (CSV and JSON Lines may be .gz-compressed)"
            )
        files.append(RawFile(path, fmt, path.stat().st_size))
    return files


def _spark_path(path: Path) -> str:
    # Spark expands glob characters in load paths; a literal file name must escape them.
    return _GLOB_CHARS.sub(r"\\\1", str(path))


def _csv_header(path: Path) -> list[str] | None:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
        raise RawInputError(f"{path}: unreadable CSV file: {err}") from err
    return [name.strip().lower() for name in header] if header else None


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in RAW_REQUIRED_COLUMNS if c not in names]
    if missing:
        raise RawInputError(f"{path}: missing required column(s) {missing}; found columns {names}")
    repeated = sorted({c for c in RAW_COLUMNS if names.count(c) > 1})
    if repeated:
        raise RawInputError(f"{path}: column(s) {repeated} appear more than once in the header")


def _with_origin(frame: DataFrame, values: dict[str, Column], raw_record: Column | None, bad_id_type: Column) -> DataFrame:
    """The common shape of every reader: raw columns as strings, raw line, id type check, file, split."""
    from pyspark.sql import functions as F

    columns = [F.lit(None).cast("string").alias(c) if values.get(c) is None else values[c].alias(c) for c in RAW_COLUMNS]
    return frame.select(
        *columns,
        # Spark keeps a malformed JSON line's bytes as they were: UTF-8 or not
        (F.lit(None).cast("string") if raw_record is None else F.make_valid_utf8(raw_record)).alias("raw_record"),
        F.coalesce(bad_id_type, F.lit(False)).alias("bad_id_type"),
        F.col("_metadata.file_path").alias("file_path"),
        F.col("_metadata.file_block_start").alias("block_start"),
    )


def _read_csv(spark: SparkSession, files: list[RawFile]) -> Iterable[DataFrame]:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    by_header: dict[tuple[str, ...], list[RawFile]] = defaultdict(list)
    for raw in files:
        header = _csv_header(raw.path)
        if header is None:
            log.info("%s: empty file, 0 rows", raw.path)
            continue
        _check_columns(raw.path, header)
        by_header[tuple(header)].append(raw)
    for columns, group in by_header.items():
        # Columns are bound by position, every one a string; fields carry the header's own
        # names where they are usable, so Spark's header check has nothing to warn about.
        names = [name if name and columns.count(name) == 1 and name != CORRUPT_COLUMN else f"_c{i}" for i, name in enumerate(columns)]
        schema = T.StructType([T.StructField(n, T.StringType()) for n in (*names, CORRUPT_COLUMN)])
        frame = (
            spark.read.schema(schema)
            .options(
                header=True,
                enforceSchema=True,
                mode="PERMISSIVE",
                columnNameOfCorruptRecord=CORRUPT_COLUMN,
                multiLine=True,
                maxCharsPerColumn=MAX_CSV_FIELD_CHARS,
            )
            .csv([_spark_path(f.path) for f in group])
        )
        positions = {name: F.col(f"`{field}`") for name, field in zip(columns, names, strict=True) if name in RAW_COLUMNS}
        yield _with_origin(frame, positions, F.col(CORRUPT_COLUMN), F.lit(False))


def _read_json(spark: SparkSession, files: list[RawFile]) -> Iterable[DataFrame]:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if not files:
        return
    schema = T.StructType([T.StructField(c, T.StringType()) for c in (*RAW_COLUMNS, CORRUPT_COLUMN)])
    frame = (
        spark.read.schema(schema)
        .options(mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT_COLUMN)
        .json([_spark_path(f.path) for f in files])
    )
    # With a string schema an array or object arrives as its JSON text.
    structured = reduce(operator.or_, [F.col(c).startswith("[") | F.col(c).startswith("{") for c in ID_COLUMNS])
    yield _with_origin(frame, {c: F.col(c) for c in RAW_COLUMNS}, F.col(CORRUPT_COLUMN), structured)


def parquet_read_type(path: Path, column: str, arrow_type: pa.DataType) -> DataType:
    """The Spark type a raw Parquet column is read as; RawInputError naming the file and
    the column when Spark cannot read it."""
    from pyspark.errors import PySparkException
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import from_arrow_type

    if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "ns":
        return T.LongType()  # Spark has no nanosecond timestamp: read the int64 and convert
    if pa.types.is_uint64(arrow_type):
        return T.DecimalType(20, 0)
    if pa.types.is_dictionary(arrow_type):
        return parquet_read_type(path, column, arrow_type.value_type)
    try:
        return from_arrow_type(arrow_type)
    except (PySparkException, TypeError) as err:
        raise RawInputError(f"{path}: column {column!r} has type {arrow_type}, which the clean stage cannot read") from err


def _parquet_text(column: str, arrow_type: pa.DataType) -> tuple[Column, Column]:
    """A raw Parquet column as text, and whether the row's value cannot be an id (ids only)."""
    from pyspark.sql import functions as F

    value = F.col(f"`{column}`")
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    is_id = column in ID_COLUMNS
    if (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
    ):
        return F.make_valid_utf8(value.cast("string")), F.lit(False)
    if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "ns":
        text = F.timestamp_micros(F.expr(f"`{column}` div 1000")).cast("string")
        return text, F.lit(is_id)
    if pa.types.is_integer(arrow_type):
        return value.cast("string"), F.lit(False)
    if is_id and (pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)):
        whole = (value % 1 == 0) & (F.abs(value) <= LARGEST_EXACT_FLOAT_ID)
        integer = (
            value.cast("long")
            if pa.types.is_floating(arrow_type)
            else value.cast(f"decimal({max(arrow_type.precision - arrow_type.scale, 1)},0)")
        )
        return F.when(whole, integer.cast("string")).otherwise(value.cast("string")), ~whole
    return value.cast("string"), F.lit(is_id)


def raw_parquet_types(path: Path) -> dict[str, pa.DataType]:
    """The contract's columns of a Parquet file and their types; RawInputError naming the
    file (and column) when it is unreadable, lacks a required column or holds a type
    Spark cannot read."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise RawInputError(f"{path}: unreadable Parquet file: {err}") from err
    schema = parquet.schema_arrow
    _check_columns(path, schema.names)
    # pyarrow shows legacy INT96 timestamps as nanoseconds; Spark reads them as timestamps
    int96 = {column.path for column in (parquet.schema.column(i) for i in range(len(parquet.schema))) if column.physical_type == "INT96"}
    types = {c: pa.timestamp("us", tz="UTC") if c in int96 else schema.field(c).type for c in RAW_COLUMNS if c in schema.names}
    for column, arrow_type in types.items():
        parquet_read_type(path, column, arrow_type)
    return types


def _read_parquet(spark: SparkSession, files: list[RawFile]) -> Iterable[DataFrame]:
    from pyspark.sql import types as T

    by_types: dict[tuple[tuple[str, pa.DataType], ...], list[RawFile]] = defaultdict(list)
    for raw in files:
        # Spark reads one schema per load: group files whose raw columns have the same types.
        by_types[tuple(raw_parquet_types(raw.path).items())].append(raw)
    for types, group in by_types.items():
        # An explicit schema of the raw columns alone: other columns are never decoded,
        # so an extra column of a type Spark refuses (nanosecond timestamps) is ignored.
        read_schema = T.StructType([T.StructField(c, parquet_read_type(group[0].path, c, t)) for c, t in types])
        frame = spark.read.schema(read_schema).parquet(*[_spark_path(f.path) for f in group])
        texts = {c: _parquet_text(c, t) for c, t in types}
        bad_id_type = reduce(operator.or_, [bad for c, (_, bad) in texts.items() if c in ID_COLUMNS])
        yield _with_origin(frame, {c: text for c, (text, _) in texts.items()}, None, bad_id_type)


def read_raw(spark: SparkSession, files: list[RawFile]) -> DataFrame:
    """All ``files`` as one DataFrame: RAW_COLUMNS (strings), raw_record, file_path, block_start."""
    from pyspark.sql import types as T

    non_empty = [f for f in files if f.size > 0]
    frames = [
        *_read_csv(spark, [f for f in non_empty if f.format == "csv"]),
        *_read_json(spark, [f for f in non_empty if f.format == "json"]),
        *_read_parquet(spark, [f for f in non_empty if f.format == "parquet"]),
    ]
    if not frames:
        schema = T.StructType(
            [T.StructField(c, T.StringType()) for c in (*RAW_COLUMNS, "raw_record")]
            + [T.StructField("bad_id_type", T.BooleanType()), T.StructField("file_path", T.StringType())]
            + [T.StructField("block_start", T.LongType())]
        )
        return spark.createDataFrame([], schema)
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def local_name(spark_path: str) -> str:
    """The file a Spark ``file_path`` (a URI, percent-encoded) names, as a plain path."""
    parsed = urlparse(spark_path)
    return unquote(parsed.path) if parsed.scheme in ("", "file") else spark_path


@contextmanager
def naming_unreadable_files() -> Iterator[None]:
    """Re-raise Spark's failure to read a file (e.g. a corrupt .gz), in any job run inside,
    as RawInputError naming the file."""
    try:
        yield
    except Exception as err:
        message = str(err)
        match = _FAILED_READ.search(message)
        if match:
            cause = _ROOT_CAUSE.search(message)
            detail = cause.group(1).strip() if cause else "read error"
            raise RawInputError(f"{local_name(match.group(1))}: unreadable file: {detail}") from err
        raise
