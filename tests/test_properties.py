"""Property-based tests (hypothesis): the key index over random sequences of days, and the
clean stage's row-count identity over random mixes of good and bad rows. (The metrics'
properties are in tests/test_metrics.py.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossrec_core.contracts import ITEM_KEYS, RAW, USER_KEYS
from crossrec_core.etl.keys import append_keys

ids = st.text(alphabet="abcxyz019_-é", min_size=1, max_size=4)
days = st.lists(st.lists(ids, max_size=12), min_size=1, max_size=6)


def no_keys(table) -> pa.Table:
    """The key table before the first day (the stored partition column aside)."""
    empty = table.arrow_schema().empty_table()
    return empty.drop_columns([c for c in empty.column_names if c == "ds"])


@given(days)
def test_user_keys_are_stable_dense_and_append_only_over_any_sequence_of_days(sequence):
    keys = no_keys(USER_KEYS)
    assigned: dict[str, int] = {}
    for day in sequence:
        keys, appended = append_keys(USER_KEYS, keys, pa.table({"user_id": pa.array(day, pa.string())}))
        now = dict(zip(keys["user_id"].to_pylist(), keys["user_key"].to_pylist(), strict=True))
        assert all(now[i] == k for i, k in assigned.items())  # no known id changes key
        new = sorted(set(day) - set(assigned), key=lambda i: i.encode())
        assert appended[None] == len(new)
        assert [now[i] for i in new] == list(range(len(assigned), len(assigned) + len(new)))  # appended in id order
        assigned = now
    assert sorted(assigned.values()) == list(range(len(assigned)))  # dense: 0..n-1, no gaps or repeats


@given(
    st.lists(st.tuples(st.sampled_from(["books", "movies"]), ids), max_size=20),
    st.lists(st.tuples(st.sampled_from(["books", "movies"]), ids), max_size=20),
)
def test_item_keys_are_per_domain_and_stable_across_two_days(first, second):
    empty = no_keys(ITEM_KEYS)

    def day(rows):
        return pa.table({"domain": pa.array([d for d, _ in rows], pa.string()), "item_id": pa.array([i for _, i in rows], pa.string())})

    keys_one, _ = append_keys(ITEM_KEYS, empty, day(first))
    keys_two, _ = append_keys(ITEM_KEYS, keys_one, day(second))
    one = {(d, i): k for d, i, k in zip(*(keys_one[c].to_pylist() for c in ("domain", "item_id", "item_key")), strict=True)}
    two = {(d, i): k for d, i, k in zip(*(keys_two[c].to_pylist() for c in ("domain", "item_id", "item_key")), strict=True)}
    assert all(two[key] == value for key, value in one.items())
    for domain in ("books", "movies"):
        values = sorted(k for (d, _), k in two.items() if d == domain)
        assert values == list(range(len(values)))


GOOD = "u{n},i{n},{ts},view,1"
BAD = [
    "{n},,{ts},view,1",
    ",i{n},{ts},view,1",
    "u{n},i{n},yesterday,view,1",
    "u{n},i{n},{ts},teleport,1",
    "u{n},i{n},{ts},view,-1",
    "u{n},i{n}",
    "u{n},i{n},99999999999999,view,1",
]


@pytest.mark.spark
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.just(GOOD), st.sampled_from(BAD)), min_size=1, max_size=30), st.integers(0, 3))
def test_clean_counts_every_row_once(spark, tmp_path_factory, templates, duplicated):
    from crossrec_core.config import load_settings
    from crossrec_core.etl.clean import clean
    from crossrec_core.lake import Lake
    from crossrec_core.reports import read_run_reports

    ds = "2026-03-10"
    ts = int(datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp())
    lines = [t.format(n=n, ts=ts) for n, t in enumerate(templates)]
    lines += lines[:duplicated]  # exact duplicates
    root = tmp_path_factory.mktemp("identity") / "lake"
    config = load_settings(lake=root, quarantine_threshold=1.0, spark={"shuffle_partitions": 2})
    raw = Lake(root).partition_path(RAW, domain="books", ds=ds)
    raw.mkdir(parents=True)
    (raw / "events.csv").write_text("user_id,item_id,ts,event_type,value\n" + "\n".join(lines) + "\n")
    clean(config, ds, "books")
    row = read_run_reports(Lake(root), ds).to_pylist()[0]
    duplicates = json.loads(row["metrics"])["duplicates_removed"]
    assert row["rows_in"] == len(lines)
    assert row["rows_in"] == row["rows_out"] + row["rows_quarantined"] + duplicates
    good_rows = sum(t == GOOD for t in templates)
    assert row["rows_out"] == good_rows
