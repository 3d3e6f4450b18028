"""Stage 'featurize' on a real local Spark, and load_features: decay, stable keys, splits."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from crossrec_core.config import load_settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, FEATURE_INTERACTIONS, ITEM_KEYS, USER_KEYS, Segment
from crossrec_core.etl.featurize import featurize
from crossrec_core.features import load_features
from crossrec_core.lake import Lake, MissingPartitionError

pytestmark = pytest.mark.spark

D0, D1, D2 = "2026-03-09", "2026-03-10", "2026-03-11"
SOURCE, TARGET = "movies", "books"


def at(ds: str, hour: int) -> datetime:
    return datetime.fromisoformat(ds).replace(tzinfo=UTC) + timedelta(hours=hour)


def land_clean(lake: Lake, domain: str, ds: str, events: list[tuple[str, str, int, float]]) -> None:
    """Clean interactions (user, item, hour of ds, weight) for one (domain, ds)."""
    rows = [
        {"event_id": f"{u}-{i}-{h}", "user_id": u, "item_id": i, "event_type": "view", "weight": w, "ts": at(ds, h)}
        for u, i, h, w in events
    ]
    lake.write_parquet_partition(CLEAN_INTERACTIONS, pa.Table.from_pylist(rows), domain=domain, ds=ds)


BOOKS_D1 = [
    ("a", "b1", 10, 1.0),
    ("a", "b2", 11, 1.0),
    ("b", "b1", 9, 1.0),
    ("b", "b3", 12, 1.0),
    ("c", "b2", 9, 1.0),
    ("d", "b3", 9, 1.0),
    ("e", "b1", 8, 1.0),
    ("e", "b2", 9, 1.0),
    ("e", "b3", 10, 1.0),
    ("e", "b4", 11, 1.0),
    ("f", "b1", 9, 1.0),
]
MOVIES_D1 = [("a", "m1", 9, 1.0), ("b", "m1", 9, 1.0), ("c", "m1", 9, 1.0), ("d", "m1", 9, 1.0), ("g", "m2", 9, 1.0), ("g", "m3", 9, 1.0)]
BOOKS_D0 = [("a", "b1", 0, 2.0)]
BOOKS_D2 = [("h", "b5", 9, 1.0), ("h", "b1", 10, 1.0), ("a", "b1", 9, 1.0)]
MOVIES_D2 = [("i", "m4", 9, 1.0), ("a", "m1", 9, 1.0)]


def make_settings(lake_root, **overrides):
    values = {
        "lake": lake_root,
        "window_days": 3,
        "decay_half_life_days": 7.0,
        "validation": {"warm_fraction": 0.5, "cold_start_fraction": 0.25, "min_target_interactions": 2},
        "spark": {"shuffle_partitions": 2},
        **overrides,
    }
    return load_settings(domains={"source": SOURCE, "target": TARGET}, **values)


def table(lake: Lake, spec, ds: str) -> list[dict]:
    return lake.read_parquet_partition(spec, ds=ds).to_pylist()


def keys_of(lake: Lake, ds: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    users = {r["user_id"]: r["user_key"] for r in table(lake, USER_KEYS, ds)}
    items = {(r["domain"], r["item_id"]): r["item_key"] for r in table(lake, ITEM_KEYS, ds)}
    return users, items


def named_rows(lake: Lake, ds: str) -> dict[tuple[str, str, str], dict]:
    """Feature rows by (domain, user_id, item_id)."""
    users, items = keys_of(lake, ds)
    user_of = {k: u for u, k in users.items()}
    item_of = {(d, k): i for (d, i), k in items.items()}
    return {(r["domain"], user_of[r["user_key"]], item_of[r["domain"], r["item_key"]]): r for r in table(lake, FEATURE_INTERACTIONS, ds)}


@pytest.fixture(scope="module")
def history(tmp_path_factory, spark):
    """Two nights: D1 (window D-1..D1, D-1 missing) then D2 read alone (window_days=1)."""
    settings = make_settings(tmp_path_factory.mktemp("featurize") / "lake")
    lake = Lake(settings.lake)
    land_clean(lake, TARGET, D0, BOOKS_D0)
    land_clean(lake, TARGET, D1, BOOKS_D1)
    land_clean(lake, SOURCE, D1, MOVIES_D1)
    first = featurize(settings, D1)
    d1_keys = keys_of(lake, D1)
    land_clean(lake, TARGET, D2, BOOKS_D2)
    land_clean(lake, SOURCE, D2, MOVIES_D2)
    second = featurize(make_settings(settings.lake, window_days=1), D2)
    return settings, lake, first, second, d1_keys


def test_weights_decay_from_end_of_ds_and_last_ts_is_latest(history):
    _, lake, first, _, _ = history
    rows = named_rows(lake, D1)
    a_b1 = rows[TARGET, "a", "b1"]
    expected = 2.0 * 2 ** (-2 / 7) + 1.0 * 2 ** (-(14 / 24) / 7)  # D0 00:00 and D1 10:00, seen from D2 00:00
    assert a_b1["weight"] == pytest.approx(expected)
    assert a_b1["last_ts"] == at(D1, 10)
    assert len(rows) == len(BOOKS_D1) + len(MOVIES_D1) == first.rows_out
    assert first.rows_in == len(BOOKS_D0) + len(BOOKS_D1) + len(MOVIES_D1)
    assert first.metrics["days_missing"] == {SOURCE: ["2026-03-08", D0], TARGET: ["2026-03-08"]}


def test_cold_start_users_hide_all_target_rows_and_warm_holdout_is_latest(history):
    _, lake, first, _, _ = history
    rows = named_rows(lake, D1)
    cold = {u for (d, u, _), r in rows.items() if r["split"] == "valid_cold"}
    assert len(cold) == math.ceil(0.25 * 4) and cold <= {"a", "b", "c", "d"}  # users in both domains
    for (domain, user, _), row in rows.items():
        if user in cold:
            assert row["split"] == ("valid_cold" if domain == TARGET else "train")
        if domain == SOURCE:
            assert row["split"] == "train"
    warm = {(u, i) for (d, u, i), r in rows.items() if r["split"] == "valid_warm"}
    latest_of = {"a": ("a", "b2"), "b": ("b", "b3")}  # two items each: one held out, the latest
    assert warm == {("e", "b3"), ("e", "b4")} | {latest_of[u] for u in {"a", "b"} - cold}
    assert first.metrics["overlap_users"] == 4
    assert first.metrics["splits"][f"{TARGET}/valid_cold"] == sum(1 for (d, u, _) in rows if d == TARGET and u in cold)


def test_keys_are_stable_and_new_ids_appended_in_id_order(history):
    _, lake, _, second, (d1_users, d1_items) = history
    users, items = keys_of(lake, D2)
    assert sorted(d1_users.values()) == list(range(7))  # a..g, one index across domains
    assert {u: users[u] for u in d1_users} == d1_users  # c..g are not in D2's window: kept anyway
    assert (users["h"], users["i"]) == (7, 8)
    assert {k: items[k] for k in d1_items} == d1_items
    assert items[TARGET, "b5"] == max(k for (d, _), k in d1_items.items() if d == TARGET) + 1
    assert items[SOURCE, "m4"] == max(k for (d, _), k in d1_items.items() if d == SOURCE) + 1
    assert second.metrics["new_user_keys"] == 2 and second.metrics["new_item_keys"] == {TARGET: 1, SOURCE: 1}
    assert second.metrics["previous_keys_ds"] == D1


def test_load_features_builds_matrices_indexed_by_keys(history):
    _, lake, _, _, _ = history
    features = load_features(lake, D1, SOURCE, TARGET)
    rows = named_rows(lake, D1)
    assert features.train[TARGET].shape == (7, 4) and features.train[SOURCE].shape == (7, 3)
    assert features.window == (D0, D1) and features.ds == D1
    users, items = keys_of(lake, D1)
    assert all(features.user_ids[k] == u for u, k in users.items())
    for (domain, user, item), row in rows.items():
        matrix = (
            features.train[domain]
            if row["split"] == "train"
            else features.holdout[Segment.WARM if row["split"] == "valid_warm" else Segment.COLD_START]
        )
        assert matrix[users[user], items[domain, item]] == pytest.approx(row["weight"])
    total = sum(m.nnz for m in features.train.values()) + sum(m.nnz for m in features.holdout.values())
    assert total == len(rows)
    cold_users = features.holdout_users(Segment.COLD_START)
    assert len(cold_users) == 1 and np.diff(features.train[TARGET].indptr)[cold_users].sum() == 0
    assert set(features.segment_of(cold_users)) == {"cold_start"}


def test_interrupted_rewrite_keeps_previous_partition_and_rerun_is_identical(history, monkeypatch):
    settings, lake, _, second, _ = history
    before = {spec.name: lake.read_parquet_partition(spec, ds=D2) for spec in (USER_KEYS, ITEM_KEYS, FEATURE_INTERACTIONS)}

    def killed(staged, live):
        assert (staged / "interactions").is_dir()  # Spark wrote everything aside
        raise KeyboardInterrupt("killed before the swap")

    monkeypatch.setattr("crossrec_core.lake._swap_into_place", killed)
    with pytest.raises(KeyboardInterrupt):
        featurize(make_settings(settings.lake, window_days=1), D2)
    monkeypatch.undo()
    assert lake.read_parquet_partition(FEATURE_INTERACTIONS, ds=D2).num_rows == second.rows_out
    again = featurize(make_settings(settings.lake, window_days=1), D2)
    assert (again.rows_in, again.rows_out) == (second.rows_in, second.rows_out)
    for spec in (USER_KEYS, ITEM_KEYS, FEATURE_INTERACTIONS):
        after = lake.read_parquet_partition(spec, ds=D2)
        order = [(name, "ascending") for name in after.column_names]
        assert after.sort_by(order).equals(before[spec.name].sort_by(order))


def test_kcore_filters_target_users_and_items_until_stable(settings, lake, spark):
    settings = make_settings(settings.lake, kcore=2)
    land_clean(lake, TARGET, D1, BOOKS_D1)
    land_clean(lake, SOURCE, D1, MOVIES_D1)
    featurize(settings, D1)
    rows = named_rows(lake, D1)
    # b4 has one user; then e still has three items; c, d, f have one item each
    assert {(u, i) for d, u, i in rows if d == TARGET} == {
        ("a", "b1"),
        ("a", "b2"),
        ("b", "b1"),
        ("b", "b3"),
        ("e", "b1"),
        ("e", "b2"),
        ("e", "b3"),
    }
    assert {(u, i) for d, u, i in rows if d == SOURCE} == {(u, i) for u, i, _, _ in MOVIES_D1}
    _, items = keys_of(lake, D1)
    assert (TARGET, "b4") not in items


def test_missing_ds_partition_fails_naming_it(settings, lake):
    land_clean(lake, TARGET, D1, BOOKS_D1)
    with pytest.raises(MissingPartitionError, match=rf"clean/interactions/domain={SOURCE}/ds={D1} does not exist"):
        featurize(make_settings(settings.lake), D1)


def test_rerun_takes_keys_from_the_earlier_partition_not_its_own(history):
    """Runs last: rewrites D1 of the shared history."""
    settings, lake, _, _, (d1_users, _) = history
    land_clean(lake, TARGET, D1, [*BOOKS_D1, ("0new", "b1", 9, 1.0)])
    featurize(settings, D1)
    users, _ = keys_of(lake, D1)
    # no partition before D1: keys are assigned afresh in id order, "0new" first (its own
    # earlier output would have appended it after g)
    assert users == {u: k for k, u in enumerate(["0new", *sorted(d1_users)])}
    manifest = json.loads((lake.root / "features" / f"ds={D1}" / "_manifest.json").read_text())
    assert manifest["window"] == [D0, D1] and manifest["days_read"][SOURCE] == [D1]


@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.5, 0.7])
def test_the_nightly_and_offline_warm_splits_hold_out_the_same_counts(spark, fraction):
    """One warm-split rule: featurize's Spark expression equals contracts.warm_holdout_size
    (what the offline loaders use), halves rounded up, at least one."""
    import numpy as np
    from pyspark.sql import functions as F

    from crossrec_core.contracts import warm_holdout_size
    from crossrec_core.etl.featurize import warm_holdout_column

    counts = np.arange(1, 81)
    rows = spark.range(1, 81).select("id", warm_holdout_column(F.col("id"), fraction).alias("held")).orderBy("id").collect()
    assert [row.held for row in rows] == warm_holdout_size(counts, fraction).tolist()
    assert warm_holdout_size(np.array([1, 3, 5]), 0.5).tolist() == [1, 2, 3]  # halves round up
