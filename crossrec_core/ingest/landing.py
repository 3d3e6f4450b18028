"""Landing imported interactions in the raw zone: one atomic partition per (domain, day).

Every importer ends here. A day is written into a staging directory and swapped into
``raw/domain=D/ds=DAY`` by :meth:`Lake.replace_partition`, so re-importing replaces a day
and never duplicates it, and a crash leaves the previous day or the new one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossrec_core.config import DOMAIN_NAME_PATTERN
from crossrec_core.contracts import RAW
from crossrec_core.errors import InputError
from crossrec_core.lake import Lake

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
PROGRESS_STEPS = 10  # long imports log progress every tenth of their days


@dataclass(frozen=True)
class DomainSummary:
    """What one import landed for one domain."""

    domain: str
    days: int
    first_ds: str
    last_ds: str
    rows: int
    users: int | None  # None: not counted here (files landed as delivered; clean counts them)
    items: int | None
    bytes: int
    files: int


@dataclass
class ImportSummary:
    domains: list[DomainSummary]
    details: dict[str, int | str] = field(default_factory=dict)  # importer-specific counts, in print order
    seconds: float = 0.0

    def domain(self, name: str) -> DomainSummary:
        return next(d for d in self.domains if d.domain == name)


def check_domain_name(name: str, option: str = "domain") -> str:
    """``name`` if it is a safe domain name (it becomes a path segment), else InputError."""
    if not DOMAIN_NAME_PATTERN.match(name):
        raise InputError(
            f"{option} {name!r} is not a valid domain name: it must match {DOMAIN_NAME_PATTERN.pattern} "
            "(lower-case letter first, then lower-case letters, digits or underscores; at most 32 characters)"
        )
    return name


def ds_of_day(day: int) -> str:
    """The YYYY-MM-DD of a day number (days since 1970-01-01, UTC)."""
    return str(np.datetime64(int(day), "D"))


def yesterday_utc() -> str:
    """The default last day of an import: the latest complete UTC day."""
    return (datetime.now(UTC).date() - timedelta(days=1)).isoformat()


def day_of_ds(ds: str) -> int:
    return int(np.datetime64(ds, "D").astype(np.int64))


def line_ids(label: str, rows: int) -> pa.Array:
    """Event ids ``<label>:<line>`` (1-based): re-importing a file gives each line the same id."""
    numbers = pa.array(np.arange(1, rows + 1, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(f"{label}:", numbers, "")


def count_distinct(column: pa.Array | pa.ChunkedArray) -> int:
    return pc.count_distinct(column).as_py()


def warn_other_partitions(lake: Lake, domain: str, landed: set[str]) -> None:
    """An import replaces the days it writes; older days of the domain stay. Say so."""
    others = sorted(p["ds"] for p in lake.parquet_partitions(RAW, domain=domain) if p["ds"] not in landed)
    if others:
        log.warning(
            "raw %s also holds %d day(s) this import did not write (%s .. %s); they are left as they were",
            domain,
            len(others),
            others[0],
            others[-1],
        )


def land_daily(lake: Lake, domain: str, rows: pa.Table, day: np.ndarray, file_name: str) -> DomainSummary:
    """Land ``rows`` (raw columns) as one Parquet file per day, ``day[i]`` the day number of row i."""
    clock = time.perf_counter()
    rows = RAW.validate(rows)
    order = np.argsort(day, kind="stable")
    rows, day = rows.take(order), day[order]
    days, starts = np.unique(day, return_index=True)
    ends = np.append(starts[1:], len(day))
    warn_other_partitions(lake, domain, {ds_of_day(d) for d in days})
    step = max(1, len(days) // PROGRESS_STEPS)
    total_bytes = 0
    for n, (one_day, start, end) in enumerate(zip(days, starts, ends, strict=True), start=1):
        ds = ds_of_day(one_day)
        with lake.replace_partition(RAW, domain=domain, ds=ds) as staged:
            pq.write_table(rows.slice(start, end - start), staged / file_name)
            total_bytes += (staged / file_name).stat().st_size
        if n % step == 0 or n == len(days):
            log.info("raw %s: landed %d/%d days (%s), %d rows", domain, n, len(days), ds, end)
    summary = DomainSummary(
        domain=domain,
        days=len(days),
        first_ds=ds_of_day(days[0]) if len(days) else "",
        last_ds=ds_of_day(days[-1]) if len(days) else "",
        rows=rows.num_rows,
        users=count_distinct(rows["user_id"]),
        items=count_distinct(rows["item_id"]),
        bytes=total_bytes,
        files=len(days),
    )
    log_landed(summary, time.perf_counter() - clock)
    return summary


def log_landed(summary: DomainSummary, seconds: float) -> None:
    log.info(
        "raw %s: wrote %d rows (%d bytes, %d files) in %d day(s) %s .. %s, %.2f s",
        summary.domain,
        summary.rows,
        summary.bytes,
        summary.files,
        summary.days,
        summary.first_ds,
        summary.last_ds,
        seconds,
    )
