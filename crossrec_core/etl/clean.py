"""Stage ``clean`` for one (domain, ds): raw landing files -> clean interactions + quarantine.

Every raw row ends in exactly one place: ``clean/interactions``, ``clean/quarantine`` (with
one reason) or the count of removed duplicates. Each count is taken on its own: rows_in
by a pass over the raw files that evaluates no rule, rows_quarantined and rows_out by
reading back what was written, duplicates_removed as the copies the de-duplication drops
(counted as it drops them). The stage fails with :class:`RowCountMismatchError`, naming
the partition, unless ``rows_in = rows_out + rows_quarantined + duplicates_removed``;
the new clean partition then does not replace the previous one.

A raw partition whose files hold no rows is an empty delivery: a warning in the run
report's ``metrics.warnings``, or the stage fails (:class:`EmptyDeliveryError`) when
``fail_on_empty_delivery`` is set.

Normalisation
  * ids (user, item, event) are trimmed of surrounding whitespace; an id that still holds
    a control character (U+0000-U+001F, U+007F-U+009F) is a ``malformed_record``: such ids
    break CSV exports and log lines, and the derived event id joins fields with U+001F.
  * ``ts`` is epoch seconds, epoch milliseconds or ISO-8601. A number whose magnitude is
    above 1e11 is milliseconds (1e11 s is the year 5138, 1e11 ms is 1973-03-03); an
    ISO-8601 string must start with a whole date YYYY-MM-DD (Spark alone would read
    ``T05:00:00`` as today and ``2026-11`` as November 1st); without a zone it is UTC.
    The result is a UTC timestamp.
  * ``event_type`` is trimmed and matched exactly against ``event_weights``; missing or
    empty means ``default_event_type``.
  * ``weight = event_weights[event_type] * value``, ``value`` defaulting to 1.0.

Quarantine reasons, checked in this priority order (a row gets the first that applies):
  1. ``malformed_record``: unparseable record (CSV field count, invalid JSON), an id of a
     type that cannot be an id (a list or object, a fractional number: ``bad_id_type``
     of raw_files), an id with a control character, or any contract field holding
     U+FFFD: bytes that were not UTF-8 (or were already lost upstream), so two different
     ids may read the same;
  2. ``missing_user_id``, 3. ``missing_item_id``: null, empty or whitespace only;
  4. ``oversize_id``: an id longer than ``max_id_length`` characters;
  5. ``bad_timestamp``: unparseable, not finite, or before ``earliest_valid_ts``;
  6. ``future_timestamp``: after the end of ds plus ``future_tolerance_hours``;
  7. ``unknown_event_type``: not a key of ``event_weights``;
  8. ``non_positive_value``: value present but not a finite number > 0 (NaN, 0, -1, "abc").

De-duplication: by ``event_id`` when given, else by (user_id, item_id, ts, event_type),
whose SHA-256 becomes the event id. Of duplicates the smallest (ts, user_id, item_id,
event_type, weight) is kept, so the choice does not depend on file order.
"""

from __future__ import annotations

import logging
import operator
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.compute as pc
import pyarrow.dataset as pads

from crossrec_core.config import Settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, QUARANTINE, RAW, RAW_COLUMNS, QuarantineReason
from crossrec_core.errors import InputError
from crossrec_core.etl.frames import write_parquet
from crossrec_core.etl.raw_files import RawFile, RawInputError, list_raw_files, local_name, naming_unreadable_files, read_raw
from crossrec_core.lake import Lake, dir_size
from crossrec_core.reports import StageReport, stage_run
from crossrec_core.spark import spark_session

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Observation

log = logging.getLogger(__name__)

# Whitespace trimmed from ids and fields (btrim takes a set of characters).
WHITESPACE = " \t\n\r\f\v\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
CONTROL_CHARACTER = r"\p{Cc}"
MILLISECONDS_ABOVE = 1e11
KEY_SEPARATOR = "\u001f"
MAX_FILES_IN_MESSAGE = 3
REPLACEMENT_CHARACTER = "\ufffd"  # what a reader makes of bytes that are not UTF-8
ISO_DATE_START = r"^\d{4}-\d{2}-\d{2}([T ]|$)"


class QuarantineThresholdError(InputError):
    """Too large a share of a partition's rows was quarantined."""


class EmptyDeliveryError(RawInputError):
    """The raw partition's files hold no rows, and ``fail_on_empty_delivery`` is set."""


class RowCountMismatchError(RuntimeError):
    """rows_in != clean + quarantined + duplicates: a row was lost or counted twice.

    Not bad input: a file changed while it was read, or a bug; a retry reads again."""


def _trimmed(column: Column) -> Column:
    """``column`` without surrounding WHITESPACE.

    btrim searches the whole set for the first and the last character of every value;
    few values have whitespace to trim, and a hash lookup of their two end characters
    finds those."""
    from pyspark.sql import functions as F

    ends = F.substring(column, 1, 1).isin(*WHITESPACE) | F.substring(column, -1, 1).isin(*WHITESPACE)
    return F.when(ends, F.btrim(column, F.lit(WHITESPACE))).otherwise(column)


def _is_blank(column: Column) -> Column:
    from pyspark.sql import functions as F

    return F.coalesce(F.length(column) == 0, F.lit(True))


def _any(conditions: Iterable[Column]) -> Column:
    """OR of ``conditions``, a null counting as False."""
    from pyspark.sql import functions as F

    return F.coalesce(reduce(operator.or_, conditions), F.lit(False))


def _parse_ts(text: Column, number: Column) -> Column:
    """Epoch seconds, epoch milliseconds (> 1e11) or ISO-8601 with a whole date (no zone =
    UTC) -> timestamp.

    ``number`` is ``text`` cast to double (null when not a number)."""
    from pyspark.sql import functions as F

    finite = ~F.isnan(number) & (F.abs(number) < float("inf"))
    micros = F.round(F.when(F.abs(number) > MILLISECONDS_ABOVE, number * 1e3).otherwise(number * 1e6)).try_cast("long")
    # the session time zone is UTC (spark.py), so a zone-less string is read as UTC
    iso = F.when(text.rlike(ISO_DATE_START), text.try_cast("timestamp"))
    return F.when(number.isNull(), iso).when(finite, F.timestamp_micros(micros))


def validate(raw: DataFrame, settings: Settings, ds: str) -> DataFrame:
    """``raw`` plus the normalised fields (``clean_*``) and ``reason`` (null for a clean row)."""
    from pyspark.sql import functions as F

    end_of_ds = datetime.fromisoformat(ds).replace(tzinfo=UTC) + timedelta(days=1)
    latest_ts = end_of_ds + timedelta(hours=settings.future_tolerance_hours)
    weights = F.create_map(*[F.lit(x) for pair in settings.event_weights.items() for x in pair])

    # Step by step, so that every intermediate value is computed once per row.
    trimmed = raw.select(
        "*", *[_trimmed(F.col(c)).alias(f"trimmed_{c}") for c in ("user_id", "item_id", "event_id", "ts", "event_type", "value")]
    )
    parsed = trimmed.select(
        "*",
        F.col("trimmed_ts").try_cast("double").alias("ts_number"),
        F.coalesce(F.nullif(F.col("trimmed_event_type"), F.lit("")), F.lit(settings.default_event_type)).alias("clean_event_type"),
        F.when(_is_blank(F.col("trimmed_value")), F.lit(1.0)).otherwise(F.col("trimmed_value").try_cast("double")).alias("clean_value"),
    )
    frame = parsed.select(
        *raw.columns,
        F.col("trimmed_user_id").alias("clean_user_id"),
        F.col("trimmed_item_id").alias("clean_item_id"),
        F.nullif(F.col("trimmed_event_id"), F.lit("")).alias("given_event_id"),
        _parse_ts(F.col("trimmed_ts"), F.col("ts_number")).alias("clean_ts"),
        "clean_event_type",
        (F.try_element_at(weights, F.col("clean_event_type")) * F.col("clean_value")).alias("clean_weight"),
    )
    ids = [F.col("clean_user_id"), F.col("clean_item_id"), F.col("given_event_id")]
    lost_bytes = _any(F.col(c).contains(REPLACEMENT_CHARACTER) for c in RAW_COLUMNS)
    ts, weight = F.col("clean_ts"), F.col("clean_weight")
    rules: list[tuple[QuarantineReason, Column]] = [
        (
            QuarantineReason.MALFORMED_RECORD,
            F.col("raw_record").isNotNull() | F.col("bad_id_type") | lost_bytes | _any(c.rlike(CONTROL_CHARACTER) for c in ids),
        ),
        (QuarantineReason.MISSING_USER_ID, _is_blank(F.col("clean_user_id"))),
        (QuarantineReason.MISSING_ITEM_ID, _is_blank(F.col("clean_item_id"))),
        (QuarantineReason.OVERSIZE_ID, _any(F.length(c) > settings.max_id_length for c in ids)),
        (QuarantineReason.BAD_TIMESTAMP, F.coalesce(ts < F.lit(settings.earliest_valid_ts), F.lit(True))),
        (QuarantineReason.FUTURE_TIMESTAMP, ts > F.lit(latest_ts)),
        (QuarantineReason.UNKNOWN_EVENT_TYPE, ~F.map_contains_key(weights, F.col("clean_event_type"))),
        (QuarantineReason.NON_POSITIVE_VALUE, ~F.coalesce((weight > 0) & ~F.isnan(weight) & (weight < float("inf")), F.lit(False))),
    ]
    (first_code, first_condition), *later_rules = rules
    reason = F.when(first_condition, F.lit(first_code.value))  # one CASE: the first rule that holds
    for code, condition in later_rules:
        reason = reason.when(condition, F.lit(code.value))
    derived_event_id = F.sha2(
        F.concat_ws(KEY_SEPARATOR, "clean_user_id", "clean_item_id", F.unix_micros(ts).cast("string"), "clean_event_type"),
        256,
    )
    return frame.select("*", reason.alias("reason"), F.coalesce("given_event_id", derived_event_id).alias("clean_event_id"))


@dataclass
class _Counts:
    """Where the rows went: how many were read, and the quarantined ones by reason and by file."""

    rows_in: int
    reasons: Counter[str]
    bad_rows_per_file: Counter[str]

    @property
    def rows_quarantined(self) -> int:
        return sum(self.reasons.values())


# (file_path, block_start, first row_id in the split, rows of the file before the split, plain file name)
_FileSplit = tuple[str, int, int, int, str]


def _file_splits(raw: DataFrame) -> tuple[int, list[_FileSplit]]:
    """The number of raw rows, and where each file split starts in its file.

    Spark reads each split of a file in order and numbers rows consecutively within a
    split (monotonically_increasing_id), so a row's number in its file is its offset in
    the split plus the rows of the file's earlier splits. No rule is evaluated: the
    readers yield the same rows whichever columns are read (PERMISSIVE mode keeps every
    record), so this pass reads little more than the files' row structure."""
    from pyspark.sql import functions as F

    splits = raw.groupBy("file_path", "block_start").agg(F.count(F.lit(1)).alias("rows"), F.min("row_id").alias("first_row_id"))
    numbered: list[_FileSplit] = []
    rows_before: Counter[str] = Counter()
    for split in sorted(splits.collect(), key=lambda s: (s.file_path, s.block_start)):  # one entry per split: small
        numbered.append((split.file_path, split.block_start, split.first_row_id, rows_before[split.file_path], local_name(split.file_path)))
        rows_before[split.file_path] += split.rows
    return rows_before.total(), numbered


def _quarantined(rows: DataFrame, splits: list[_FileSplit]) -> DataFrame:
    from pyspark.sql import functions as F

    spark = rows.sparkSession
    blocks = spark.createDataFrame(
        splits,
        "file_path string, block_start long, first_row_id long, rows_before long, source_file string",
    )
    return (
        rows.filter(F.col("reason").isNotNull())
        .join(F.broadcast(blocks), ["file_path", "block_start"])
        .withColumn("source_row", F.col("row_id") - F.col("first_row_id") + F.col("rows_before") + 1)
    )


def _written_counts(rows_in: int, quarantine: Path) -> _Counts:
    """The quarantine counts, read back from the written file (Arrow, no extra Spark pass)."""
    written = pads.dataset(quarantine, format="parquet").to_table(columns=["reason", "source_file"])

    def tally(column: str) -> Counter[str]:
        return Counter({entry["values"]: entry["counts"] for entry in pc.value_counts(written[column]).to_pylist()})

    return _Counts(rows_in, tally("reason"), tally("source_file"))


def _deduplicated(rows: DataFrame, removed: Observation) -> DataFrame:
    """One row per event id: the smallest (ts, user, item, event type, weight), whatever the file order.

    ``removed`` counts the copies dropped (``duplicates``) as the write runs, in the same
    pass, not derived from the other counts.

    The rows are shuffled by event id and each partition is sorted once, by event id and
    then that order, which is all the window needs; left to plan the window alone, Spark
    also sorts every row before the shuffle, to drop copies early that are rare here."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = ["clean_ts", "clean_user_id", "clean_item_id", "clean_event_type", "clean_weight"]
    first = Window.partitionBy("clean_event_id").orderBy(*order)
    return (
        rows.filter(F.col("reason").isNull())
        .repartition("clean_event_id")
        .sortWithinPartitions("clean_event_id", *order)
        .withColumn("copy", F.row_number().over(first))
        .observe(removed, F.count_if(F.col("copy") > 1).alias("duplicates"))
        .filter(F.col("copy") == 1)
        .select(
            F.col("clean_event_id").alias("event_id"),
            F.col("clean_user_id").alias("user_id"),
            F.col("clean_item_id").alias("item_id"),
            F.col("clean_event_type").alias("event_type"),
            F.col("clean_weight").alias("weight"),
            F.col("clean_ts").alias("ts"),
        )
    )


def _threshold_message(domain: str, ds: str, counts: _Counts, threshold: float, quarantine_path) -> str:
    share = counts.rows_quarantined / counts.rows_in
    files = ", ".join(f"{name} ({n} bad rows)" for name, n in counts.bad_rows_per_file.most_common(MAX_FILES_IN_MESSAGE))
    reasons = ", ".join(f"{reason}={n}" for reason, n in counts.reasons.most_common())
    return (
        f"clean {domain} ds={ds}: {counts.rows_quarantined} of {counts.rows_in} rows ({share:.1%}) quarantined, "
        f"above quarantine_threshold {threshold:.1%}. Most bad rows in: {files}. Top reasons: {reasons}. "
        f"The rows are kept in {quarantine_path}"
    )


def _check_identity(domain: str, ds: str, rows_in: int, rows_clean: int, rows_quarantined: int, duplicates: int) -> None:
    accounted = rows_clean + rows_quarantined + duplicates
    if accounted != rows_in:
        raise RowCountMismatchError(
            f"clean {domain} ds={ds}: rows do not add up: raw/domain={domain}/ds={ds} holds {rows_in} rows, but "
            f"clean {rows_clean} + quarantined {rows_quarantined} + duplicates {duplicates} = {accounted} "
            f"({abs(rows_in - accounted)} row(s) {'unaccounted for' if accounted < rows_in else 'counted twice'}); "
            "the previous clean partition is kept"
        )


def _empty_delivery(settings: Settings, ds: str, domain: str, files: list[RawFile], report: StageReport) -> None:
    message = f"empty delivery: raw/domain={domain}/ds={ds} holds {len(files)} file(s) and no rows"
    if settings.fail_on_empty_delivery:
        raise EmptyDeliveryError(f"clean {domain} ds={ds}: {message} (fail_on_empty_delivery is set)")
    log.warning("clean %s ds=%s: %s", domain, ds, message)
    report.metrics.setdefault("warnings", []).append(message)


def clean(settings: Settings, ds: str, domain: str) -> StageReport:
    """Validate, quarantine and de-duplicate the raw files of (domain, ds)."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    lake = Lake(settings.lake)
    with stage_run(lake, "clean", ds, domain) as report:
        files = list_raw_files(lake.require_partition(RAW, domain=domain, ds=ds))
        report.bytes_in = sum(f.size for f in files)
        report.metrics["files"] = len(files)
        log.info("clean %s ds=%s: reading %d raw files, %d bytes", domain, ds, len(files), report.bytes_in)
        with report.setup("spark_session"):
            spark = spark_session(settings, "crossrec-clean")
        raw = read_raw(spark, files).withColumn("row_id", F.monotonically_increasing_id())
        # Each output reads the raw files again: that costs less than caching every raw and
        # derived column of every row, and keeps memory flat as the input grows.
        rows = validate(raw, settings, ds)
        with naming_unreadable_files():
            rows_in, splits = _file_splits(raw)
            report.rows_in = rows_in
            if rows_in == 0:
                _empty_delivery(settings, ds, domain, files, report)
            with lake.replace_partition(QUARANTINE, domain=domain, ds=ds) as staged:
                # quarantine is small: one file, in file order
                write_parquet(_quarantined(rows, splits), QUARANTINE, staged, "source_file", "source_row", files=1)
                counts = _written_counts(rows_in, staged)
            report.rows_quarantined = counts.rows_quarantined
            report.metrics.update(reasons=dict(counts.reasons), bad_rows_per_file=dict(counts.bad_rows_per_file))
            log.info("clean %s ds=%s: %d rows read, %d quarantined", domain, ds, counts.rows_in, counts.rows_quarantined)
            with lake.replace_partition(CLEAN_INTERACTIONS, domain=domain, ds=ds) as staged:
                removed = Observation("removed_duplicates")
                write_parquet(_deduplicated(rows, removed), CLEAN_INTERACTIONS, staged, "event_id")  # sorted by the dedup already
                report.rows_out = pads.dataset(staged, format="parquet").count_rows()
                report.metrics["duplicates_removed"] = removed.get["duplicates"]
                _check_identity(domain, ds, rows_in, report.rows_out, report.rows_quarantined, report.metrics["duplicates_removed"])
        report.bytes_out = sum(dir_size(lake.partition_path(table, domain=domain, ds=ds))[0] for table in (CLEAN_INTERACTIONS, QUARANTINE))
        if counts.rows_in and counts.rows_quarantined / counts.rows_in > settings.quarantine_threshold:
            raise QuarantineThresholdError(
                _threshold_message(domain, ds, counts, settings.quarantine_threshold, lake.partition_path(QUARANTINE, domain=domain, ds=ds))
            )
        return report
