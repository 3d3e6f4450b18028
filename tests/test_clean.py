"""Stage 'clean' on a real local Spark: every bad row quarantined with its reason, file and row."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crossrec_core.config import load_settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, QUARANTINE, RAW
from crossrec_core.etl.clean import QuarantineThresholdError, clean
from crossrec_core.etl.raw_files import RawInputError
from crossrec_core.lake import Lake, MissingPartitionError
from crossrec_core.reports import read_run_reports

pytestmark = pytest.mark.spark

DS = "2026-03-10"
NOON = datetime(2026, 3, 10, 12, tzinfo=UTC)
EPOCH = int(NOON.timestamp())
REPO_ROOT = Path(__file__).resolve().parents[1]


def land(lake: Lake, name: str, content: str | bytes | pa.Table, domain: str = "books") -> Path:
    """Write one raw landing file; .gz names are gzip-compressed."""
    path = lake.partition_path(RAW, domain=domain, ds=DS) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
        return path
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def read(lake: Lake, table, domain: str = "books") -> list[dict]:
    return lake.read_parquet_partition(table, domain=domain, ds=DS).to_pylist()


CSV_ROWS = [
    "event_id,user_id,item_id,ts,event_type,value",
    f",u1,i1,{EPOCH},click,2",  # 1 good: weight = click 2.0 x 2
    f",u2,i2,{EPOCH * 1000},,",  # 2 good: epoch ms, default event type
    ", u3 ,i3,2026-03-10T13:00:00+01:00,view,",  # 3 good: trimmed id, ISO with zone
    "u4,i4",  # 4 wrong field count
    f", ,i5,{EPOCH},,",  # 5 blank user
    f",u6,,{EPOCH},,",  # 6 no item
    f",{'u' * 300},i7,{EPOCH},,",  # 7 id longer than max_id_length
    ",u8,i8,yesterday,,",  # 8 unparseable ts
    ",u9,i9,1990-01-01,,",  # 9 before earliest_valid_ts
    ",u10,i10,2026-03-15T00:00:00,,",  # 10 days after ds
    f",u11,i11,{EPOCH},teleport,",  # 11 unknown event type
    f",u12,i12,{EPOCH},view,0",  # 12 zero value
    f",u13,i13,{EPOCH},view,NaN",  # 13 NaN value
    f",u1,i1,{EPOCH},click,3",  # 14 duplicate key of row 1 (another value)
    f"e7,u7,i7,{EPOCH},view,1",  # 15 good, given event id
]
JSON_ROWS = [
    json.dumps({"user_id": "u\u0001x", "item_id": "i20", "ts": "2026-03-10"}),  # 1 control character
    json.dumps({"user_id": "u1", "item_id": "i1", "ts": EPOCH, "event_type": "click", "value": 2}),  # 2 dup of csv 1
    json.dumps({"event_id": "e7", "user_id": "u7", "item_id": "i7b", "ts": EPOCH}),  # 3 dup event id of csv 15
    "{not json",  # 4
]
PARQUET_ROWS = pa.table(
    {
        "user_id": pa.array([21, 22], pa.int64()),
        "item_id": ["i21", "i22"],
        "ts": pa.array([NOON, NOON], pa.timestamp("us", tz="UTC")),
        "value": [1.5, -1.0],  # row 2: negative
    }
)
EXPECTED_QUARANTINE = {
    "malformed_record": {("events.csv", 4), ("more.jsonl.gz", 1), ("more.jsonl.gz", 4)},
    "missing_user_id": {("events.csv", 5)},
    "missing_item_id": {("events.csv", 6)},
    "oversize_id": {("events.csv", 7)},
    "bad_timestamp": {("events.csv", 8), ("events.csv", 9)},
    "future_timestamp": {("events.csv", 10)},
    "unknown_event_type": {("events.csv", 11)},
    "non_positive_value": {("events.csv", 12), ("events.csv", 13), ("typed.parquet", 2)},
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, spark):
    """One partition with every kind of bad row, three formats, empty files, duplicates."""
    settings = load_settings(lake=tmp_path_factory.mktemp("clean") / "lake", quarantine_threshold=1.0, spark={"shuffle_partitions": 2})
    lake = Lake(settings.lake)
    land(lake, "events.csv", "\n".join(CSV_ROWS) + "\n")
    land(lake, "more.jsonl.gz", "\n".join(JSON_ROWS) + "\n")
    land(lake, "typed.parquet", PARQUET_ROWS)
    land(lake, "empty.csv", "")
    land(lake, "empty.jsonl", "")
    land(lake, "_SUCCESS", "")  # a marker, not data
    report = clean(settings, DS, "books")
    return settings, lake, report


@pytest.mark.parametrize("reason", sorted(EXPECTED_QUARANTINE))
def test_each_bad_row_is_quarantined_with_reason_file_and_row(mixed, reason):
    _, lake, _ = mixed
    rows = [r for r in read(lake, QUARANTINE) if r["reason"] == reason]
    assert {(Path(r["source_file"]).name, r["source_row"]) for r in rows} == EXPECTED_QUARANTINE[reason]
    assert all(Path(r["source_file"]).is_file() for r in rows)


def test_quarantine_keeps_raw_values_and_malformed_lines(mixed):
    _, lake, _ = mixed
    rows = {(Path(r["source_file"]).name, r["source_row"]): r for r in read(lake, QUARANTINE)}
    assert rows["more.jsonl.gz", 4]["raw_record"] == "{not json"
    assert rows["events.csv", 4]["raw_record"] == "u4,i4"
    assert rows["events.csv", 8]["ts"] == "yesterday"
    assert rows["events.csv", 5]["user_id"] == " "  # the raw value, untrimmed
    assert rows["typed.parquet", 2]["user_id"] == "22" and rows["typed.parquet", 2]["value"] == "-1.0"


def test_clean_rows_are_normalised_and_deduplicated(mixed):
    _, lake, _ = mixed
    rows = sorted(read(lake, CLEAN_INTERACTIONS), key=lambda r: r["user_id"])
    got = [(r["user_id"], r["item_id"], r["event_type"], r["weight"], r["ts"]) for r in rows]
    assert got == [
        ("21", "i21", "interaction", 1.5, NOON),
        ("u1", "i1", "click", 4.0, NOON),  # of three copies the smallest (ts, ids, type, weight)
        ("u2", "i2", "interaction", 1.0, NOON),  # epoch milliseconds
        ("u3", "i3", "view", 1.0, NOON),  # 13:00+01:00 is noon UTC
        ("u7", "i7", "view", 1.0, NOON),  # event id e7 twice: i7 < i7b
    ]
    event_ids = [r["event_id"] for r in rows]
    assert event_ids[4] == "e7"
    assert all(len(e) == 64 for e in event_ids[:4]) and len(set(event_ids)) == 5  # derived sha256


def test_every_row_is_counted_once(mixed):
    _, lake, report = mixed
    duplicates = report.metrics["duplicates_removed"]
    assert (report.rows_in, report.rows_out, report.rows_quarantined, duplicates) == (21, 5, 13, 3)
    assert report.rows_in == report.rows_out + report.rows_quarantined + duplicates
    assert report.metrics["reasons"] == {reason: len(rows) for reason, rows in EXPECTED_QUARANTINE.items()}
    recorded = read_run_reports(lake, DS).to_pylist()[-1]
    assert (recorded["stage"], recorded["domain"], recorded["rows_in"], recorded["rows_out"]) == ("clean", "books", 21, 5)
    assert json.loads(recorded["metrics"])["duplicates_removed"] == 3
    assert report.bytes_in > 0 and report.bytes_out > 0


def test_rerun_replaces_partitions_with_identical_rows(mixed):
    settings, lake, first = mixed
    before = {t.name: lake.read_parquet_partition(t, domain="books", ds=DS) for t in (CLEAN_INTERACTIONS, QUARANTINE)}
    again = clean(settings, DS, "books")
    assert (again.rows_in, again.rows_out, again.rows_quarantined) == (first.rows_in, first.rows_out, first.rows_quarantined)
    for table in (CLEAN_INTERACTIONS, QUARANTINE):
        after = lake.read_parquet_partition(table, domain="books", ds=DS)
        keys = [(name, "ascending") for name in ("event_id", "source_row", "source_file") if name in after.column_names]
        assert after.sort_by(keys).equals(before[table.name].sort_by(keys))


def test_rows_are_numbered_as_the_reader_yields_them(settings, lake, spark):
    """Rows are counted and numbered in a pass that reads no values; a JSON line holding an
    array yields one row per element there as well, so later rows keep their numbers."""
    ten = [{"user_id": f"u{i}", "item_id": f"i{i}", "ts": EPOCH} for i in range(10)]
    land(lake, "day.jsonl", f"{json.dumps(ten)}\n{json.dumps({'user_id': 'u10', 'item_id': '', 'ts': EPOCH})}\n")
    report = clean(settings, DS, "books")
    assert (report.rows_in, report.rows_out, report.rows_quarantined) == (11, 10, 1)
    assert [(r["reason"], r["source_row"]) for r in read(lake, QUARANTINE)] == [("missing_item_id", 11)]


def _known_duplicates_and_bad_rows(lake: Lake) -> None:
    """10 distinct good events, 4 extra copies of them (3 exact, 1 by event id) and a bad row."""
    rows = [f"e{i},u{i},i{i},{EPOCH}" for i in range(10)]
    copies = [rows[0], rows[0], rows[5], f"e7,u7,i99,{EPOCH}"]
    land(lake, "day.csv", "event_id,user_id,item_id,ts\n" + "\n".join(rows + copies) + "\n")
    land(lake, "late.csv", "event_id,user_id,item_id,ts\n,u2,i2,never\n")


def test_duplicates_are_counted_as_they_are_removed(settings, lake, spark):
    _known_duplicates_and_bad_rows(lake)
    report = clean(settings, DS, "books")
    assert (report.rows_in, report.rows_out, report.rows_quarantined, report.metrics["duplicates_removed"]) == (15, 10, 1, 4)


@pytest.mark.parametrize("table", [CLEAN_INTERACTIONS, QUARANTINE])
def test_a_row_lost_on_the_way_out_fails_the_count_check(settings, lake, spark, monkeypatch, table):
    """Each count is taken on its own, so a writer that loses a row (injected here) breaks
    rows_in = clean + quarantined + duplicates, and the stage fails naming the partition."""
    from pyspark.sql import functions as F

    from crossrec_core.etl import clean as clean_module
    from crossrec_core.etl.clean import RowCountMismatchError

    land(lake, "day.csv", f"user_id,item_id,ts\nu0,i0,{EPOCH}\n")
    clean(settings, DS, "books")
    previous = read(lake, CLEAN_INTERACTIONS)
    _known_duplicates_and_bad_rows(lake)
    write = clean_module.write_parquet

    def losing_one_row(frame, written_table, *args, **kwargs):
        if written_table is table:
            frame = frame.filter(~F.col("user_id").eqNullSafe(F.lit("u2")))  # one clean row or one quarantined row
        return write(frame, written_table, *args, **kwargs)

    monkeypatch.setattr(clean_module, "write_parquet", losing_one_row)
    with pytest.raises(RowCountMismatchError) as failure:
        clean(settings, DS, "books")
    assert str(failure.value) == (
        f"clean books ds={DS}: rows do not add up: raw/domain=books/ds={DS} holds 15 rows, but "
        f"clean {9 if table is CLEAN_INTERACTIONS else 10} + quarantined {1 if table is CLEAN_INTERACTIONS else 0} + duplicates 4 = 14 "
        "(1 row(s) unaccounted for); the previous clean partition is kept"
    )
    assert read(lake, CLEAN_INTERACTIONS) == previous  # the doubtful output did not replace it
    recorded = read_run_reports(lake, DS).to_pylist()[-1]
    assert recorded["status"] == "failed" and "rows do not add up" in json.loads(recorded["metrics"])["error"]


def test_too_many_bad_rows_fail_naming_file_and_reason(settings, lake, spark):
    land(lake, "good.csv", "user_id,item_id,ts\n" + "".join(f"u{i},i{i},{EPOCH}\n" for i in range(10)))
    land(lake, "bad.csv", f"user_id,item_id,ts\n,i1,{EPOCH}\n,i2,{EPOCH}\n,i3,{EPOCH}\nu9,i9,{EPOCH}\n")
    with pytest.raises(QuarantineThresholdError) as failure:
        clean(settings, DS, "books")
    message = str(failure.value)
    assert "bad.csv (3 bad rows)" in message and "missing_user_id=3" in message and "21.4%" in message
    assert "good.csv" not in message
    assert len(read(lake, QUARANTINE)) == 3  # written before failing: nothing lost
    assert read_run_reports(lake, DS).to_pylist()[-1]["status"] == "failed"


def test_missing_raw_partition_names_the_path(settings, lake):
    with pytest.raises(MissingPartitionError, match=r"raw/domain=books/ds=2026-03-10 does not exist"):
        clean(settings, DS, "books")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nots.csv", "user_id,item_id,time\nu1,i1,1\n", r"nots\.csv: missing required column\(s\) \['ts'\]"),
        ("broken.parquet", b"PAR1 not really", r"broken\.parquet: unreadable Parquet file"),
        ("broken.jsonl.gz", b"\x1f\x8b\x08\x00 truncated", r"broken\.jsonl\.gz: unreadable file"),
        ("notes.txt", "hello", r"notes\.txt: unsupported raw file type"),
    ],
)
def test_unreadable_file_fails_naming_it(settings, lake, spark, name, content, message):
    land(lake, "good.csv", f"user_id,item_id,ts\nu1,i1,{EPOCH}\n")
    path = lake.partition_path(RAW, domain="books", ds=DS) / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RawInputError, match=message):
        clean(settings, DS, "books")


def test_interrupted_write_keeps_previous_partition(settings, lake, spark, monkeypatch):
    land(lake, "day.csv", f"user_id,item_id,ts\nu1,i1,{EPOCH}\nu2,i2,{EPOCH}\n")
    clean(settings, DS, "books")
    land(lake, "late.csv", f"user_id,item_id,ts\nu3,i3,{EPOCH}\n")

    def killed(staged, live):  # Spark has written the staging dir; the swap never happens
        assert any(staged.glob("*.parquet"))
        raise KeyboardInterrupt("killed before the swap")

    monkeypatch.setattr("crossrec_core.lake._swap_into_place", killed)
    with pytest.raises(KeyboardInterrupt):
        clean(settings, DS, "books")
    assert sorted(r["user_id"] for r in read(lake, CLEAN_INTERACTIONS)) == ["u1", "u2"]
    assert not any((lake.root / "_staging").iterdir())
    monkeypatch.undo()
    assert clean(settings, DS, "books").rows_out == 3
    assert sorted(r["user_id"] for r in read(lake, CLEAN_INTERACTIONS)) == ["u1", "u2", "u3"]


def test_job_entrypoint_exits_2_naming_the_missing_partition(lake):
    """Airflow runs jobs/clean.py; a missing input is a clear one-line failure (exit 2, no
    retry), found before a JVM is started."""
    job = subprocess.run(
        [sys.executable, "jobs/clean.py", "--ds", DS, "--domain", "books", "--lake", str(lake.root)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert job.returncode == 2, job.stderr[-2000:]
    assert f"raw/domain=books/ds={DS} does not exist" in job.stderr
