"""Find and read every raw landing file of one partition, every value as a string.

Supported files (several formats in one partition are all read):

* ``.parquet``: columns are cast to string, whatever their Parquet type;
* ``.csv`` / ``.csv.gz``: a header line names the columns (matched case-insensitively,
  in any order; unknown columns are ignored); PERMISSIVE parsing, so a malformed line
  (wrong number of fields, unclosed quote) becomes a row with its raw line in
  ``raw_record`` instead of failing the read;
* ``.jsonl`` / ``.json`` / ``.jsonl.gz`` / ``.json.gz``: JSON Lines, one object per line;
  a line that is not JSON becomes a row with its raw line in ``raw_record``.

Files whose name starts with ``.`` or ``_`` (markers, checksums) are not data. Any other
file, a CSV or Parquet file lacking a required column, or a corrupt file stops the stage
with :class:`RawInputError` naming the file: nothing is skipped silently. An empty file
contributes no rows.

Every row also carries ``file_path`` (as Spark names the file) and ``block_start`` (the
byte offset of the file split it was read from), from which the caller numbers the rows
of each file.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from crossrec_core.contracts import RAW_COLUMNS, RAW_REQUIRED_COLUMNS
from crossrec_core.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

CORRUPT_COLUMN = "_corrupt_record"
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
                f"{path}: unsupported raw file type; expected .parquet, .csv, .jsonl or .json "
                "(CSV and JSON Lines may be .gz-compressed)"
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


def _with_origin(frame: DataFrame, values: dict[str, object], raw_record: object) -> DataFrame:
    """The common shape of every reader: raw columns as strings, raw line, file, split."""
    from pyspark.sql import functions as F

    columns = [F.lit(None).cast("string").alias(c) if values.get(c) is None else values[c].alias(c) for c in RAW_COLUMNS]
    return frame.select(
        *columns,
        (F.lit(None).cast("string") if raw_record is None else raw_record).alias("raw_record"),
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
    for header, group in by_header.items():
        # Columns are bound by position, every one a string; fields carry the header's own
        # names where they are usable, so Spark's header check has nothing to warn about.
        names = [name if name and header.count(name) == 1 and name != CORRUPT_COLUMN else f"_c{i}" for i, name in enumerate(header)]
        schema = T.StructType([T.StructField(n, T.StringType()) for n in (*names, CORRUPT_COLUMN)])
        frame = (
            spark.read.schema(schema)
            .options(header=True, enforceSchema=True, mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT_COLUMN)
            .csv([_spark_path(f.path) for f in group])
        )
        positions = {name: F.col(f"`{field}`") for name, field in zip(header, names, strict=True) if name in RAW_COLUMNS}
        yield _with_origin(frame, positions, F.col(CORRUPT_COLUMN))


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
    yield _with_origin(frame, {c: F.col(c) for c in RAW_COLUMNS}, F.col(CORRUPT_COLUMN))


def _read_parquet(spark: SparkSession, files: list[RawFile]) -> Iterable[DataFrame]:
    from pyspark.sql import functions as F

    by_types: dict[tuple[tuple[str, str], ...], list[RawFile]] = defaultdict(list)
    for raw in files:
        try:
            schema = pq.read_schema(raw.path)
        except (pa.ArrowException, OSError) as err:
            raise RawInputError(f"{raw.path}: unreadable Parquet file: {err}") from err
        _check_columns(raw.path, schema.names)
        # Spark reads one schema per load: group files whose raw columns have the same types.
        by_types[tuple((c, str(schema.field(c).type)) for c in RAW_COLUMNS if c in schema.names)].append(raw)
    for types, group in by_types.items():
        frame = spark.read.parquet(*[_spark_path(f.path) for f in group])
        yield _with_origin(frame, {c: F.col(c).cast("string") for c, _ in types}, None)


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
            [T.StructField(c, T.StringType()) for c in (*RAW_COLUMNS, "raw_record", "file_path")]
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
