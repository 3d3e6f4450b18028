"""``crossrec import events``: land delivered event files "as delivered" in one raw partition.

Every file is checked before anything lands; one bad file fails the whole call and the
partition keeps what it had (all or nothing). A file passes when

* its type is one the clean stage reads (``.parquet``, ``.csv``, ``.jsonl``/``.json``,
  text types optionally ``.gz``) and its name is plain (Spark skips ``_x`` and ``.x``);
* it is readable end to end (a truncated ``.gz`` or a corrupt Parquet page fails);
* it has the required columns ``user_id``, ``item_id``, ``ts``: the CSV header, the
  Parquet schema, or, for JSON Lines, the keys of the first parseable objects among its
  first :data:`JSON_SAMPLE_LINES` lines;
* a Parquet file's contract columns are of types the clean stage reads
  (:func:`~crossrec_core.etl.raw_files.raw_parquet_types`).

Row-level problems (a blank id, a bad timestamp, a malformed line, bytes that are not
UTF-8, a list where an id belongs) are not import errors: the clean stage quarantines
those rows with a reason. The files land under their own
names and replace the partition's previous files, so re-importing a day never duplicates.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import zlib
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from crossrec_core.config import DsRange
from crossrec_core.contracts import RAW, RAW_REQUIRED_COLUMNS
from crossrec_core.dates import parse_ds
from crossrec_core.etl.raw_files import COMPRESSIBLE, FORMATS, RawInputError, _check_columns, _csv_header, raw_parquet_types
from crossrec_core.ingest.landing import DomainSummary, ImportSummary, check_domain_name
from crossrec_core.lake import Lake
from crossrec_core.reports import stage_run

log = logging.getLogger(__name__)

JSON_SAMPLE_LINES = 1000
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class EventFile:
    path: Path
    format: str  # parquet, csv or json
    records: int  # data rows (Parquet) or lines (CSV without its header, JSON Lines)
    bytes: int


def file_format(path: Path) -> str:
    name = path.name.lower()
    compressed = name.endswith(".gz")
    fmt = FORMATS.get(Path(name.removesuffix(".gz")).suffix)
    if fmt is None or (compressed and fmt not in COMPRESSIBLE):
        raise RawInputError(f"{path}: unsupported file type; expected .parquet, .csv, .jsonl or .json (CSV and JSON Lines may be .gz)")
    return fmt


def _open_text(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _count_lines(path: Path) -> int:
    """Lines in a (possibly gzipped) text file, reading it to the end: a truncated or
    corrupt .gz fails here rather than in the nightly clean stage."""
    lines, last = 0, b"\n"
    try:
        with _open_text(path) as handle:
            while chunk := handle.read(READ_CHUNK):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, EOFError, zlib.error) as err:
        raise RawInputError(f"{path}: unreadable file: {err}") from err
    return lines + (last != b"\n")


def _json_keys(path: Path) -> list[str] | None:
    """Keys of the parseable objects among the first lines; None when the file is empty."""
    keys: dict[str, None] = {}
    seen_any = False
    try:
        with _open_text(path) as handle:
            for line in islice(handle, JSON_SAMPLE_LINES):
                if not line.strip():
                    continue
                seen_any = True
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a malformed line is the clean stage's to quarantine
                if isinstance(record, dict):
                    keys.update(dict.fromkeys(record))
    except (OSError, EOFError, zlib.error) as err:
        raise RawInputError(f"{path}: unreadable file: {err}") from err
    if seen_any and not keys:
        raise RawInputError(f"{path}: no JSON object in the first {JSON_SAMPLE_LINES} lines; expected JSON Lines")
    return list(keys) if seen_any else None


def _check_parquet(path: Path) -> int:
    raw_parquet_types(path)
    try:
        parquet = pq.ParquetFile(path)
        for _ in parquet.iter_batches(columns=list(RAW_REQUIRED_COLUMNS)):
            pass  # decode every page now, not in the nightly run
    except (pa.ArrowException, OSError) as err:
        raise RawInputError(f"{path}: unreadable Parquet file: {err}") from err
    return parquet.metadata.num_rows


def check_event_file(path: Path) -> EventFile:
    """Check one delivered file; RawInputError names the file and what is wrong."""
    if not path.is_file():
        raise RawInputError(f"{path}: no such file")
    if path.name.startswith((".", "_")):
        raise RawInputError(f"{path}: a file name starting with '.' or '_' would be skipped by the clean stage; rename it")
    fmt = file_format(path)
    if fmt == "parquet":
        records = _check_parquet(path)
    else:
        columns = _csv_header(path) if fmt == "csv" else _json_keys(path)
        if columns is None:
            log.warning("%s: empty file, 0 rows", path)
        else:
            _check_columns(path, columns)
        records = max(_count_lines(path) - (fmt == "csv"), 0)
    return EventFile(path, fmt, records, path.stat().st_size)


def check_event_files(paths: list[Path]) -> list[EventFile]:
    """Check every file and report every problem at once."""
    if not paths:
        raise RawInputError("no event files given")
    problems, checked = [], []
    for path in paths:
        try:
            checked.append(check_event_file(path))
        except RawInputError as err:
            problems.append(str(err))
    names = [p.name for p in paths]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"file name(s) {repeated} given more than once; files land under their own names")
    if problems:
        raise RawInputError(f"{len(problems)} problem(s), nothing landed:\n  " + "\n  ".join(problems))
    return checked


def import_events(lake: Lake, paths: list[Path], domain: str, ds: str, ds_range: DsRange) -> ImportSummary:
    """Check ``paths`` and land them as the partition raw/domain=D/ds=DS (replacing it);
    ``ds`` must lie in ``ds_range`` (the config's)."""
    check_domain_name(domain)
    ds = parse_ds(ds, ds_range)
    with stage_run(lake, "import", ds, domain=domain) as report:
        files = check_event_files(paths)
        report.rows_in = sum(f.records for f in files)
        report.bytes_in = sum(f.bytes for f in files)
        with lake.replace_partition(RAW, domain=domain, ds=ds) as staged:
            for f in files:
                shutil.copyfile(f.path, staged / f.path.name)
        report.rows_out, report.bytes_out = report.rows_in, report.bytes_in
        report.metrics["files"] = {f.path.name: {"format": f.format, "records": f.records, "bytes": f.bytes} for f in files}
        summary = DomainSummary(
            domain=domain,
            days=1,
            first_ds=ds,
            last_ds=ds,
            rows=report.rows_in,
            users=None,
            items=None,
            bytes=report.bytes_in,
            files=len(files),
        )
    return ImportSummary(
        domains=[summary],
        details={"rows": "records as delivered (lines or Parquet rows); the clean stage parses them"},
        seconds=report.metrics["seconds"],
    )
