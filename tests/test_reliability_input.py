"""Bad input beyond tests/test_clean.py's corpus, through the real Spark clean stage: each
case ends in clean/ or in quarantine/ with its reason, and the counts add up."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crossrec_core.config import load_settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, QUARANTINE, RAW
from crossrec_core.etl.clean import clean
from crossrec_core.lake import Lake
from crossrec_core.reports import read_run_reports

pytestmark = pytest.mark.spark

DS = "2026-03-10"
EPOCH = int(datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp())


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory, spark):
    settings = load_settings(lake=tmp_path_factory.mktemp("input") / "lake", quarantine_threshold=1.0, spark={"shuffle_partitions": 2})
    lake = Lake(settings.lake)
    raw = lake.partition_path(RAW, domain="books", ds=DS)
    raw.mkdir(parents=True)
    (raw / "a.csv").write_text("\n".join([
        "user_id,item_id,ts,event_type,value,campaign",  # an extra column: ignored, the row is kept
        f"{'x' * 10_240},i1,{EPOCH},view,1,c1",  # 10 KB id
        f"ユーザー,本-1,{EPOCH},view,1,c1",  # unicode ids are ids
        f"\tu3 ,i3,{EPOCH},view,1,c1",  # surrounding whitespace trimmed
        "u4,i4,0,view,1,c1",  # 1970
        f"u5,i5,{EPOCH},view,-3,c1",  # negative value
        f"u6,i6,{EPOCH},view,abc,c1",  # a value of the wrong type
        f"u7,i7,{EPOCH},view,1",  # a line with too few fields
    ]) + "\n")
    (raw / "b.jsonl").write_text("\n".join([
        json.dumps({"user_id": "u3", "item_id": "i3", "ts": EPOCH, "event_type": "view", "value": 1}),  # duplicate across files
        json.dumps({"user_id": ["u8"], "item_id": "i8", "ts": EPOCH}),  # wrong type: a list id
        json.dumps({"user_id": "u9", "item_id": "i9", "ts": float("nan")}),  # NaN timestamp
    ]) + "\n")
    pq.write_table(pa.table({"user_id": ["u10"], "item_id": ["i10"], "ts": [EPOCH]}), raw / "c.parquet")
    report = clean(settings, DS, "books")
    quarantine = {(r["source_file"], r["source_row"]): r["reason"] for r in lake.read_parquet_partition(QUARANTINE, domain="books", ds=DS).to_pylist()}
    kept = {r["user_id"] for r in lake.read_parquet_partition(CLEAN_INTERACTIONS, domain="books", ds=DS).to_pylist()}
    return lake, report, quarantine, kept


def test_each_case_has_its_documented_outcome(cleaned):
    _, _, quarantine, kept = cleaned
    assert kept == {"ユーザー", "u3", "u7", "u10"}  # u7's line lacks only a column beyond the contract
    reasons = {(name.rsplit("/", 1)[-1], row): reason for (name, row), reason in quarantine.items()}
    assert reasons == {
        ("a.csv", 1): "oversize_id",
        ("a.csv", 4): "bad_timestamp",
        ("a.csv", 5): "non_positive_value",
        ("a.csv", 6): "non_positive_value",
        ("b.jsonl", 2): "malformed_record",
        ("b.jsonl", 3): "bad_timestamp",
    }


def test_rows_in_equals_clean_plus_quarantined_plus_duplicates(cleaned):
    lake, report, quarantine, _ = cleaned
    row = next(r for r in read_run_reports(lake, DS).to_pylist() if r["stage"] == "clean")
    duplicates = json.loads(row["metrics"])["duplicates_removed"]
    assert row["rows_in"] == 11
    assert duplicates == 1 and row["rows_quarantined"] == len(quarantine) == 6
    assert row["rows_in"] == row["rows_out"] + row["rows_quarantined"] + duplicates


def test_a_partition_of_empty_files_is_an_empty_night_not_a_crash(tmp_path, spark):
    settings = load_settings(lake=tmp_path / "lake", spark={"shuffle_partitions": 2})
    lake = Lake(settings.lake)
    raw = lake.partition_path(RAW, domain="books", ds=DS)
    raw.mkdir(parents=True)
    (raw / "empty.csv").write_text("")
    (raw / "empty.jsonl").write_text("")
    report = clean(settings, DS, "books")
    assert (report.rows_in, report.rows_out, report.rows_quarantined) == (0, 0, 0)
    assert lake.read_parquet_partition(CLEAN_INTERACTIONS, domain="books", ds=DS).num_rows == 0
