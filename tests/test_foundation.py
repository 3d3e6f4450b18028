"""Config, contracts and lake I/O: the ground every stage stands on."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake.exceptions import DeltaError

from crossrec_core.config import ConfigError, load_settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, RECOMMENDATIONS, USER_KEYS, ContractError
from crossrec_core.lake import Lake, MissingPartitionError, UnsafePathError
from crossrec_core.reports import read_run_reports, stage_run


def test_config_names_key_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_settings(model={"name": "best"})
    assert "model.name" in str(err.value) and "'dann'" in str(err.value) and "'best'" in str(err.value)


def test_config_env_override_and_unknown_key(monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSREC_SPARK__MASTER", "local[1]")
    monkeypatch.setenv("CROSSREC_LAKE", str(tmp_path))
    settings = load_settings()
    assert settings.spark.master == "local[1]" and settings.lake == tmp_path
    config = tmp_path / "c.yaml"
    config.write_text("score:\n  kay: 3\n")
    with pytest.raises(ConfigError, match=r"score\.kay.*unknown key"):
        load_settings(config)


@pytest.mark.parametrize("name", ["../etc", "/abs", "Books", "a b", ""])
def test_domain_names_cannot_escape_lake(name):
    with pytest.raises(ConfigError, match=r"domains\.target"):
        load_settings(domains={"source": "movies", "target": name})


def test_arrow_and_spark_schemas_derive_from_one_definition():
    arrow = CLEAN_INTERACTIONS.arrow_schema()
    spark = CLEAN_INTERACTIONS.spark_schema()
    assert arrow.names == [f.name for f in spark.fields]
    assert [f.nullable for f in arrow] == [f.nullable for f in spark.fields]


def test_validate_rejects_missing_column_and_nulls():
    with pytest.raises(ContractError, match="missing columns"):
        USER_KEYS.validate(pa.table({"user_id": ["a"]}))
    with pytest.raises(ContractError, match="user_key: 1 null"):
        USER_KEYS.validate(pa.table({"user_id": ["a", "b"], "user_key": [1, None]}))


def test_partition_values_cannot_escape(lake):
    with pytest.raises(UnsafePathError):
        lake.partition_path(USER_KEYS, ds="../../etc")


def test_symlink_out_of_lake_is_refused(lake, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    lake.root.mkdir(parents=True)
    (lake.root / "features").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside the lake root"):
        lake.partition_path(USER_KEYS, ds="2026-01-01")


def _keys(n: int) -> pa.Table:
    return pa.table({"user_id": [f"u{i}" for i in range(n)], "user_key": list(range(n))})


def test_parquet_partition_replace_is_idempotent(lake):
    lake.write_parquet_partition(USER_KEYS, _keys(3), ds="2026-01-01")
    lake.write_parquet_partition(USER_KEYS, _keys(3), ds="2026-01-01")
    assert lake.read_parquet_partition(USER_KEYS, ds="2026-01-01").num_rows == 3
    with pytest.raises(MissingPartitionError, match="ds=2026-01-02"):
        lake.read_parquet_partition(USER_KEYS, ds="2026-01-02")


def test_failed_write_leaves_previous_partition(lake):
    lake.write_parquet_partition(USER_KEYS, _keys(3), ds="2026-01-01")
    with pytest.raises(RuntimeError), lake.replace_partition(USER_KEYS, ds="2026-01-01") as staged:
        (staged / "user_keys").mkdir()
        (staged / "user_keys" / "half.parquet").write_bytes(b"PAR1 partial")
        raise RuntimeError("killed mid-write")
    assert lake.read_parquet_partition(USER_KEYS, ds="2026-01-01").num_rows == 3
    assert not any((lake.root / "_staging").iterdir())


def _write_forever(root: str) -> None:
    lake = Lake(root)
    n = 1
    while True:
        lake.write_parquet_partition(USER_KEYS, _keys(1000 + n % 2), ds="2026-01-01")
        n += 1


def test_kill_during_swap_loop_never_leaves_a_mix(lake):
    """A writer SIGKILLed at random instants: the partition is always one whole version."""
    lake.write_parquet_partition(USER_KEYS, _keys(1000), ds="2026-01-01")
    ctx = multiprocessing.get_context("spawn")
    for delay in (0.3, 0.55, 0.8):
        proc = ctx.Process(target=_write_forever, args=(str(lake.root),))
        proc.start()
        proc.join(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        rows = lake.read_parquet_partition(USER_KEYS, ds="2026-01-01").num_rows
        assert rows in (1000, 1001)


def _write_aside_and_wait(root: str, written) -> None:
    lake = Lake(root)
    with lake.replace_partition(USER_KEYS, ds="2026-01-01") as staged:
        (staged / "half.parquet").write_bytes(b"PAR1 partial")
        written.set()
        time.sleep(600)  # killed here


def test_a_killed_writers_leftovers_are_removed_by_the_next_writer_who_waited_its_turn(lake):
    """A writer killed -9 mid-write leaves its copy under _staging (nothing runs after
    SIGKILL). The next writer of the same partition waits while the first one lives, then
    removes that orphan before writing: a rerun leaves nothing aside."""
    lake.write_parquet_partition(USER_KEYS, _keys(3), ds="2026-01-01")
    ctx = multiprocessing.get_context("spawn")
    written = ctx.Event()
    proc = ctx.Process(target=_write_aside_and_wait, args=(str(lake.root), written))
    proc.start()
    try:
        assert written.wait(60)
        rerun = threading.Thread(target=lake.write_parquet_partition, args=(USER_KEYS, _keys(5)), kwargs={"ds": "2026-01-01"})
        rerun.start()
        rerun.join(1.0)
        assert rerun.is_alive()  # waits for its turn while the first writer lives
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    rerun.join(60)
    assert not rerun.is_alive()
    assert lake.read_parquet_partition(USER_KEYS, ds="2026-01-01").num_rows == 5
    assert not any((lake.root / "_staging").iterdir())


def _recs(n: int, tag: str, ds: str = "2026-01-01", domain: str = "books") -> pa.Table:
    return pa.table(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "rank": [1] * n,
            "item_id": [f"i{tag}"] * n,
            "score": [0.5] * n,
            "model_version": ["m"] * n,
            "segment": ["warm"] * n,
            "because": [[]] * n,
            "ds": [ds] * n,
            "domain": [domain] * n,
        }
    )


def _replace_partition(lake: Lake, rows: pa.Table) -> int:
    ds, domain = rows.column("ds")[0].as_py(), rows.column("domain")[0].as_py()
    return lake.replace_delta_rows(RECOMMENDATIONS, rows, where={"ds": ds, "domain": domain})


def _publish(lake: Lake, rows: pa.Table) -> int:
    """What the publish stage does: commit a scored Parquet file as one partition."""
    lake.root.mkdir(parents=True, exist_ok=True)
    staged = lake.root / f"{uuid.uuid4().hex}.parquet"
    pq.write_table(RECOMMENDATIONS.validate(rows.drop_columns(["ds", "domain"])), staged)
    ds, domain = rows.column("ds")[0].as_py(), rows.column("domain")[0].as_py()
    return lake.commit_delta_partition(RECOMMENDATIONS, [staged], ds=ds, domain=domain)


@pytest.mark.parametrize("write", [_replace_partition, _publish], ids=["replace_delta_rows", "commit_delta_partition"])
def test_delta_commit_replaces_one_partition_and_keeps_history(lake, write):
    v1 = write(lake, _recs(4, "a"))
    write(lake, _recs(2, "b", ds="2026-01-02"))
    v3 = write(lake, _recs(3, "c"))
    assert v3 == v1 + 2
    now = lake.delta_dataset(RECOMMENDATIONS).to_table()
    assert sorted(now.column("item_id").to_pylist()) == ["ib"] * 2 + ["ic"] * 3
    then = lake.delta_dataset(RECOMMENDATIONS, version=v1).to_table()
    assert then.column("item_id").to_pylist() == ["ia"] * 4
    with pytest.raises(DeltaError, match="rows failed validation check"):  # rows outside `where`
        lake.replace_delta_rows(RECOMMENDATIONS, _recs(1, "d", ds="2026-01-03"), where={"ds": "2026-01-01"})
    assert lake.delta_dataset(RECOMMENDATIONS).count_rows() == 5


def test_two_domains_publishing_at_once_both_land(lake, monkeypatch):
    """delta-rs refuses a partition overwrite whose snapshot a neighbour's commit changed
    (CommitFailedError, its own retries do not rebase it); the lake commits it again."""
    _publish(lake, _recs(1, "old", domain="books"))
    _publish(lake, _recs(1, "old", domain="movies"))
    read_snapshot = Lake.delta_table
    raced = []

    def snapshot_then_neighbour_commits(self, table, version=None):
        snapshot = read_snapshot(self, table, version)
        if not raced:
            raced.append(True)
            _publish(lake, _recs(2, "movies", domain="movies"))
        return snapshot

    monkeypatch.setattr(Lake, "delta_table", snapshot_then_neighbour_commits)
    _publish(lake, _recs(3, "books", domain="books"))
    served = lake.delta_dataset(RECOMMENDATIONS).to_table()
    assert (
        raced
        and sorted(zip(served.column("domain").to_pylist(), served.column("item_id").to_pylist(), strict=True))
        == [("books", "ibooks")] * 3 + [("movies", "imovies")] * 2
    )


def test_stage_run_records_success_and_failure_once_per_rerun(lake):
    for rows in (5, 6):
        with stage_run(lake, "clean", "2026-01-01", "books") as report:
            report.rows_in = rows
    with pytest.raises(ValueError), stage_run(lake, "featurize", "2026-01-01"):
        raise ValueError("no clean partition")
    reports = read_run_reports(lake, "2026-01-01").to_pylist()
    assert [(r["stage"], r["status"], r["rows_in"]) for r in reports] == [("clean", "success", 6), ("featurize", "failed", 0)]
    assert "no clean partition" in json.loads(reports[1]["metrics"])["error"]
