"""Bad input beyond tests/test_clean.py's corpus, through the real Spark clean stage: each
case ends in clean/ or in quarantine/ with its reason, and the counts add up."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crossrec_core.config import ConfigError, load_settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, QUARANTINE, RAW
from crossrec_core.dates import parse_ds
from crossrec_core.errors import InputError
from crossrec_core.etl.clean import EmptyDeliveryError, clean
from crossrec_core.ingest.events import import_events
from crossrec_core.jobs import main as job_main
from crossrec_core.lake import Lake
from crossrec_core.reports import read_run_reports

pytestmark = pytest.mark.spark

DS = "2026-03-10"
NOON = datetime(2026, 3, 10, 12, tzinfo=UTC)
EPOCH = int(NOON.timestamp())


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory, spark):
    settings = load_settings(lake=tmp_path_factory.mktemp("input") / "lake", quarantine_threshold=1.0, spark={"shuffle_partitions": 2})
    lake = Lake(settings.lake)
    raw = lake.partition_path(RAW, domain="books", ds=DS)
    raw.mkdir(parents=True)
    (raw / "a.csv").write_text(
        "\n".join(
            [
                "user_id,item_id,ts,event_type,value,campaign",  # an extra column: ignored, the row is kept
                f"{'x' * 10_240},i1,{EPOCH},view,1,c1",  # 10 KB id
                f"ユーザー,本-1,{EPOCH},view,1,c1",  # unicode ids are ids
                f"\tu3 ,i3,{EPOCH},view,1,c1",  # surrounding whitespace trimmed
                "u4,i4,0,view,1,c1",  # 1970
                f"u5,i5,{EPOCH},view,-3,c1",  # negative value
                f"u6,i6,{EPOCH},view,abc,c1",  # a value of the wrong type
                f"u7,i7,{EPOCH},view,1",  # a record with fewer fields than the header: malformed, whichever field is missing
                "T05:00:00,i8,T05:00:00,view,1,c1",  # a time without a date (Spark alone reads it as today)
                "2026-03,i9,2026-03,view,1,c1",  # a month without a day (Spark alone reads it as March 1st)
                f'u11,i11,{EPOCH},view,1,"two\nlines"',  # a quoted newline in an ignored column: one row, kept
                f'"u12\nx",i12,{EPOCH},view,1,c1',  # a quoted newline in an id: one row, a control character
                f"u13,i13,{EPOCH},view,1,c1,surplus",  # more fields than the header
            ]
        )
        + "\n"
    )
    (raw / "b.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"user_id": "u3", "item_id": "i3", "ts": EPOCH, "event_type": "view", "value": 1}),  # duplicate across files
                json.dumps({"user_id": ["u8"], "item_id": "i8", "ts": EPOCH}),  # wrong type: a list id
                json.dumps({"user_id": "u9", "item_id": "i9", "ts": float("nan")}),  # NaN timestamp
            ]
        )
        + "\n"
    )
    pq.write_table(pa.table({"user_id": ["u10"], "item_id": ["i10"], "ts": [EPOCH]}), raw / "c.parquet")
    # pandas' own timestamps are nanoseconds, naive or zoned; an ignored column may be one too
    pd.DataFrame(
        {
            "user_id": ["n1", "n2"],
            "item_id": ["i1", "i2"],
            "ts": pd.to_datetime(["2026-03-10 12:00:00.123456789", "2026-03-10 13:00:00.000000000"]),
        }
    ).to_parquet(raw / "nanos.parquet")
    zoned = pd.to_datetime(["2026-03-10 13:00", "2026-03-10 14:00"]).tz_localize("Europe/Paris")
    pd.DataFrame({"user_id": ["z1", "z2"], "item_id": ["i1", "i2"], "ts": zoned, "created": zoned.tz_localize(None)}).to_parquet(
        raw / "zoned.parquet"
    )
    pq.write_table(
        pa.table({"user_id": pa.array([["l1", "l2"], ["l3"]]), "item_id": ["i1", "i2"], "ts": [EPOCH, EPOCH]}), raw / "list_ids.parquet"
    )
    pq.write_table(pa.table({"user_id": ["s1"], "item_id": pa.array([{"id": "i1"}]), "ts": [EPOCH]}), raw / "struct_ids.parquet")
    pq.write_table(
        pa.table({"user_id": [1.0, 2.5, float("nan"), 2.0**60], "item_id": ["f1", "f2", "f3", "f4"], "ts": [EPOCH] * 4}),
        raw / "float_ids.parquet",
    )
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()), "item_id": ["f5"], "ts": [EPOCH]}), raw / "int_ids.parquet")
    pq.write_table(
        pa.table({"user_id": pa.array([b"Jos\xe9", b"b2"], pa.binary()), "item_id": ["i1", "i2"], "ts": [EPOCH, EPOCH]}),
        raw / "bytes_ids.parquet",
    )
    pq.write_table(
        pa.table({"user_id": ["w1"], "item_id": ["i1"], "ts": pa.array([NOON], pa.timestamp("us", tz="UTC"))}),
        raw / "int96.parquet",
        use_deprecated_int96_timestamps=True,
    )
    (raw / "d.jsonl").write_bytes(
        b'{"user_id": "Jos\xe9", "item_id": "i1", "ts": %d}\n{"user_id": "j2", "item_id": "i2", "ts": %d}\n' % (EPOCH, EPOCH)
    )
    report = clean(settings, DS, "books")
    quarantine = {
        (r["source_file"], r["source_row"]): r["reason"] for r in lake.read_parquet_partition(QUARANTINE, domain="books", ds=DS).to_pylist()
    }
    kept: dict[str, set[str]] = {}
    for r in lake.read_parquet_partition(CLEAN_INTERACTIONS, domain="books", ds=DS).to_pylist():
        kept.setdefault(r["user_id"], set()).add(r["item_id"])
    return lake, report, quarantine, kept


def test_each_case_has_its_documented_outcome(cleaned):
    _, _, quarantine, kept = cleaned
    assert set(kept) == {"ユーザー", "u3", "u10", "u11", "n1", "n2", "z1", "z2", "w1", "1", "b2", "j2"}
    assert kept["1"] == {"f1", "f5"}  # float 1.0 and int 1 are one user, written "1"
    reasons = {(name.rsplit("/", 1)[-1], row): reason for (name, row), reason in quarantine.items()}
    assert reasons == {
        ("a.csv", 1): "oversize_id",
        ("a.csv", 4): "bad_timestamp",
        ("a.csv", 5): "non_positive_value",
        ("a.csv", 6): "non_positive_value",
        ("a.csv", 7): "malformed_record",
        ("a.csv", 8): "bad_timestamp",
        ("a.csv", 9): "bad_timestamp",
        ("a.csv", 11): "malformed_record",  # records, not lines, are numbered: row 10 spans two lines
        ("a.csv", 12): "malformed_record",
        ("b.jsonl", 2): "malformed_record",
        ("b.jsonl", 3): "bad_timestamp",
        ("list_ids.parquet", 1): "malformed_record",
        ("list_ids.parquet", 2): "malformed_record",
        ("struct_ids.parquet", 1): "malformed_record",
        ("float_ids.parquet", 2): "malformed_record",  # 2.5 is no id
        ("float_ids.parquet", 3): "malformed_record",  # NaN
        ("float_ids.parquet", 4): "malformed_record",  # 2**60: float64 no longer tells neighbouring ids apart
        ("bytes_ids.parquet", 1): "malformed_record",  # not UTF-8
        ("d.jsonl", 1): "malformed_record",  # not UTF-8
    }


def test_quarantine_keeps_the_raw_text_of_wrong_ids(cleaned):
    lake = cleaned[0]
    rows = {
        (r["source_file"].rsplit("/", 1)[-1], r["source_row"]): r
        for r in lake.read_parquet_partition(QUARANTINE, domain="books", ds=DS).to_pylist()
    }
    assert rows["list_ids.parquet", 1]["user_id"] == "[l1, l2]"
    assert rows["float_ids.parquet", 2]["user_id"] == "2.5"
    assert rows["a.csv", 7]["raw_record"] == f"u7,i7,{EPOCH},view,1"


def test_nanosecond_zoned_and_int96_parquet_timestamps_are_read_as_utc(cleaned):
    lake = cleaned[0]
    ts = {r["user_id"]: r["ts"] for r in lake.read_parquet_partition(CLEAN_INTERACTIONS, domain="books", ds=DS).to_pylist()}
    assert ts["n1"] == NOON.replace(microsecond=123456)  # below a microsecond is cut
    assert ts["n2"] == NOON.replace(hour=13)
    assert (ts["z1"], ts["z2"]) == (NOON, NOON.replace(hour=13))  # 13:00 in Paris is noon UTC
    assert ts["w1"] == NOON  # legacy INT96 (Hive, Impala, old Spark)


def test_rows_in_equals_clean_plus_quarantined_plus_duplicates(cleaned):
    lake, _report, quarantine, _ = cleaned
    row = next(r for r in read_run_reports(lake, DS).to_pylist() if r["stage"] == "clean")
    duplicates = json.loads(row["metrics"])["duplicates_removed"]
    assert row["rows_in"] == 33
    assert duplicates == 1 and row["rows_quarantined"] == len(quarantine) == 19
    assert row["rows_in"] == row["rows_out"] + row["rows_quarantined"] + duplicates


def _empty_delivery(lake: Lake) -> None:
    raw = lake.partition_path(RAW, domain="books", ds=DS)
    raw.mkdir(parents=True)
    (raw / "empty.csv").write_text("")
    (raw / "header_only.csv").write_text("user_id,item_id,ts\n")
    (raw / "empty.jsonl").write_text("")
    pq.write_table(
        pa.table({"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string()), "ts": pa.array([], pa.int64())}),
        raw / "no_rows.parquet",
    )


def test_an_empty_delivery_is_an_empty_night_with_a_warning_in_the_run_report(tmp_path, spark):
    settings = load_settings(lake=tmp_path / "lake", spark={"shuffle_partitions": 2})
    lake = Lake(settings.lake)
    _empty_delivery(lake)
    report = clean(settings, DS, "books")
    assert (report.rows_in, report.rows_out, report.rows_quarantined) == (0, 0, 0)
    assert lake.read_parquet_partition(CLEAN_INTERACTIONS, domain="books", ds=DS).num_rows == 0
    recorded = read_run_reports(lake, DS).to_pylist()[-1]
    assert (recorded["stage"], recorded["status"]) == ("clean", "success")
    assert json.loads(recorded["metrics"])["warnings"] == [f"empty delivery: raw/domain=books/ds={DS} holds 4 file(s) and no rows"]


def test_an_empty_delivery_fails_the_night_when_configured(tmp_path, spark):
    settings = load_settings(lake=tmp_path / "lake", spark={"shuffle_partitions": 2}, fail_on_empty_delivery=True)
    lake = Lake(settings.lake)
    _empty_delivery(lake)
    with pytest.raises(EmptyDeliveryError, match=rf"empty delivery: raw/domain=books/ds={DS} holds 4 file\(s\) and no rows"):
        clean(settings, DS, "books")
    assert read_run_reports(lake, DS).to_pylist()[-1]["status"] == "failed"
    assert not lake.partition_path(CLEAN_INTERACTIONS, domain="books", ds=DS).exists()


def test_bytes_that_are_not_utf8_late_in_a_csv_are_quarantined_never_merged(tmp_path, spark):
    """The issue's reproduction: 400 good rows, then two users whose names differ only in
    a byte that is not UTF-8 (Latin-1 e-acute and e-grave)."""
    delivery = tmp_path / "p.csv"
    good = "".join(f"u{i},books-1,{EPOCH - 400 + i},view\n" for i in range(400))
    delivery.write_bytes(
        b"user_id,item_id,ts,event_type\n" + good.encode() + b"Jos\xe9,books-1,%d,purchase\nJos\xe8,books-1,%d,purchase\n" % (EPOCH, EPOCH)
    )
    settings = load_settings(lake=tmp_path / "lake", spark={"shuffle_partitions": 2})
    lake = Lake(settings.lake)
    import_events(lake, [delivery], "books", DS, settings.ds_range)  # row-level: accepted, the clean stage decides
    report = clean(settings, DS, "books")
    assert (report.rows_in, report.rows_out, report.rows_quarantined, report.metrics["duplicates_removed"]) == (402, 400, 2, 0)
    quarantined = lake.read_parquet_partition(QUARANTINE, domain="books", ds=DS).to_pylist()
    assert [(r["source_row"], r["reason"], r["user_id"]) for r in quarantined] == [
        (401, "malformed_record", "Jos\ufffd"),
        (402, "malformed_record", "Jos\ufffd"),
    ]
    users = lake.read_parquet_partition(CLEAN_INTERACTIONS, domain="books", ds=DS).column("user_id").to_pylist()
    assert not any("\ufffd" in u for u in users)


@pytest.mark.parametrize("ds", ["2026-W45-1", "20261105", "0001-01-01", "9999-12-31", "2026-02-30", "2026-11-5", " 2026-11-05"])
def test_a_run_date_is_exactly_yyyy_mm_dd_within_the_configured_range(ds, tmp_path, capsys):
    settings = load_settings(lake=tmp_path / "lake")
    with pytest.raises(InputError, match="ds"):
        parse_ds(ds, settings.ds_range)
    # the stage jobs refuse it before any work: exit 2 (no retry), one line naming the value
    assert job_main(["clean", "--ds", ds, "--domain", "books", "--lake", str(tmp_path / "lake")]) == 2
    assert ds.strip() in capsys.readouterr().err


def test_the_run_date_range_is_configured(tmp_path):
    assert parse_ds("2026-11-05", load_settings().ds_range) == "2026-11-05"
    narrow = load_settings(ds_range={"earliest": "2026-01-01", "latest": "2026-06-30"}).ds_range
    with pytest.raises(InputError, match=r"ds 2026-11-05 is outside ds_range 2026-01-01 \.\. 2026-06-30"):
        parse_ds("2026-11-05", narrow)
    with pytest.raises(ConfigError, match="ds_range"):
        load_settings(ds_range={"earliest": "2026-06-30", "latest": "2026-01-01"})
    with pytest.raises(InputError, match="outside ds_range"):
        import_events(Lake(tmp_path / "lake"), [tmp_path / "unused.csv"], "books", "2026-11-05", narrow)
