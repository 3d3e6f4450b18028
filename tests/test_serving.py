"""Publishing scores into the serving Delta table, reading it back (recs, time travel,
unknown users, snapshot isolation), its history, and retention (vacuum)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import fake_model_version, write_gate
from typer.testing import CliRunner

from crossrec_core.cli import app
from crossrec_core.config import load_settings
from crossrec_core.contracts import RECOMMENDATIONS, RUN_REPORTS, SCORES, StageStatus
from crossrec_core.publish import publish_stage
from crossrec_core.reports import read_run_reports
from crossrec_core.serving import (
    compact_tables,
    latest_served,
    snapshot,
    table_versions,
    user_recommendations,
    vacuum_lake,
)


def serving_settings(lake_root):
    return load_settings(lake=lake_root, domains={"source": "src", "target": "tgt"})


def scores_table(users: list[str], k: int, ds: str, segment: str = "warm", seed: int = 0, version: str | None = None) -> pa.Table:
    """k rows per user, ranked, naming the model of ``ds`` (by default the fake one)."""
    rng = np.random.default_rng(seed)
    n = len(users) * k
    return SCORES.validate(
        pa.table(
            {
                "user_id": np.repeat(users, k),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users)),
                "item_id": [f"t{i}" for i in rng.integers(0, 1000, n)],
                "score": np.sort(rng.random(n).astype(np.float32))[::-1],
                "model_version": [version or fake_model_version(ds)] * n,
                "segment": [segment] * n,
                "because": [[]] * n,
            }
        )
    )


def stage_scores(lake, ds: str, table: pa.Table) -> None:
    lake.write_parquet_partition(SCORES, table, ds=ds, domain="tgt")


def served_rows(lake, ds: str, version: int | None = None) -> pa.Table:
    dataset = snapshot(lake, RECOMMENDATIONS, version).dataset
    rows = dataset.to_table(filter=(pc.field("ds") == ds) & (pc.field("domain") == "tgt"), columns=SCORES.column_names)
    return rows.sort_by([("user_id", "ascending"), ("rank", "ascending")])


def publish_night(lake_root, lake, ds: str, table: pa.Table, publish: bool = True):
    stage_scores(lake, ds, table)
    write_gate(lake, ds, publish=publish, reason="ok" if publish else "ndcg@10 fell 9% below the published model")
    return publish_stage(serving_settings(lake_root), ds)


USERS = [f"u{i}" for i in range(20)]


def test_publish_commits_the_scores_once_and_a_republish_is_identical(lake_root, lake):
    scores = scores_table(USERS, 5, "2026-01-05")
    report = publish_night(lake_root, lake, "2026-01-05", scores)
    version = lake.delta_table(RECOMMENDATIONS).version()

    assert report.status == StageStatus.SUCCESS and report.rows_out == 100 and report.metrics["table_version"] == version
    assert served_rows(lake, "2026-01-05").equals(scores.sort_by([("user_id", "ascending"), ("rank", "ascending")]))
    assert lake.partition_path(SCORES, ds="2026-01-05", domain="tgt").is_dir()  # copied, not moved

    again = publish_stage(serving_settings(lake_root), "2026-01-05")

    assert lake.delta_table(RECOMMENDATIONS).version() == version + 1 == again.metrics["table_version"]
    assert served_rows(lake, "2026-01-05").equals(served_rows(lake, "2026-01-05", version))
    assert len(lake.delta_table(RECOMMENDATIONS).file_uris()) == 1  # the first commit's file was replaced
    reports = read_run_reports(lake, "2026-01-05").to_pylist()
    assert [(r["stage"], r["status"], r["rows_out"]) for r in reports] == [("publish", "success", 100)]


def test_publish_without_scores_names_the_missing_partition(lake_root, lake):
    from crossrec_core.lake import MissingPartitionError

    write_gate(lake, "2026-01-05", publish=True)
    with pytest.raises(MissingPartitionError, match="scores/ds=2026-01-05/domain=tgt"):
        publish_stage(serving_settings(lake_root), "2026-01-05")
    assert not lake.delta_exists(RECOMMENDATIONS)


def test_a_gated_night_commits_nothing_and_the_last_good_list_stays_served(lake_root, lake):
    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 5, "2026-01-05", seed=1))
    version = lake.delta_table(RECOMMENDATIONS).version()

    report = publish_night(lake_root, lake, "2026-01-06", scores_table(USERS, 5, "2026-01-06", seed=2), publish=False)

    assert report.status == StageStatus.GATED and "ndcg@10 fell" in report.metrics["reason"]
    served_model = fake_model_version("2026-01-05")
    assert report.metrics["still_served"] == {"ds": "2026-01-05", "model_version": served_model}
    assert lake.delta_table(RECOMMENDATIONS).version() == version
    assert latest_served(lake, "tgt") == {"ds": "2026-01-05", "model_version": served_model}
    served = user_recommendations(lake, "u3", "tgt")
    assert served.ds == "2026-01-05" and served.model_version == served_model and served.rows.num_rows == 5
    statuses = {(r["ds"], r["stage"]): r["status"] for r in read_run_reports(lake).to_pylist()}
    assert statuses[("2026-01-06", "publish")] == "gated"


def test_readers_see_the_old_or_the_new_snapshot_never_a_mix(lake_root, lake):
    ds = "2026-01-05"
    nights = {  # two versions of one partition that differ in users and in rows per user
        "a": scores_table(USERS[:12], 5, ds, seed=3),
        "b": scores_table(USERS[5:], 3, ds, seed=4),
    }
    expected = {(t.num_rows, tuple(sorted(set(t["user_id"].to_pylist())))) for t in nights.values()}
    publish_night(lake_root, lake, ds, nights["a"])
    publishing = threading.Event()
    publishing.set()
    seen: list[tuple[int, tuple[str, ...]]] = []
    errors: list[BaseException] = []

    def reader():
        try:
            while publishing.is_set():
                rows = snapshot(lake, RECOMMENDATIONS).dataset.to_table(
                    columns=["user_id"], filter=(pc.field("ds") == ds) & (pc.field("domain") == "tgt")
                )
                user_ids = tuple(sorted(set(rows["user_id"].to_pylist())))
                seen.append((rows.num_rows, user_ids))
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for night in ["b", "a", "b", "a", "b"]:
            publish_night(lake_root, lake, ds, nights[night])
    finally:
        publishing.clear()
        thread.join()
    assert not errors
    assert set(seen) == expected  # both snapshots were read, nothing in between
    assert lake.delta_table(RECOMMENDATIONS).version() == 6  # create + 6 publishes, one commit each


def test_recs_time_travel_returns_the_earlier_list(lake_root, lake):
    first = scores_table(USERS, 5, "2026-01-05", seed=5)
    publish_night(lake_root, lake, "2026-01-05", first)
    earlier = lake.delta_table(RECOMMENDATIONS).version()
    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 5, "2026-01-05", seed=6))
    runner = CliRunner()

    old = runner.invoke(app, ["recs", "u7", "--version", str(earlier), "--json", "--lake", str(lake_root), "--domain", "tgt", "-k", "3"])
    new = runner.invoke(app, ["recs", "u7", "--json", "--lake", str(lake_root), "--domain", "tgt", "-k", "3"])

    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    old_list, new_list = json.loads(old.stdout), json.loads(new.stdout)
    u7 = first.filter(pc.equal(first["user_id"], "u7")).slice(0, 3)
    assert [r["item_id"] for r in old_list["recommendations"]] == u7["item_id"].to_pylist()
    assert [r["rank"] for r in old_list["recommendations"]] == [1, 2, 3]
    assert old_list["table_version"] == earlier and new_list["table_version"] == earlier + 1
    assert old_list["recommendations"] != new_list["recommendations"]
    assert new_list["known"] and new_list["segment"] == "warm" and new_list["ds"] == "2026-01-05"

    shown = runner.invoke(app, ["recs", "u7", "--lake", str(lake_root), "--domain", "tgt", "--ds", "2026-01-05"])
    assert shown.exit_code == 0
    caption = "".join(shown.stdout.split())  # rich wraps the caption to the table's width, even inside words
    assert f"ds2026-01-05·domaintgt·model{fake_model_version('2026-01-05')}·tableversion{earlier + 1}" in caption


def test_restore_serves_an_earlier_version_again_and_refuses_a_later_one(lake_root, lake):
    first = scores_table(USERS, 5, "2026-01-05", seed=5)
    publish_night(lake_root, lake, "2026-01-05", first)
    good = lake.delta_table(RECOMMENDATIONS).version()
    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 5, "2026-01-05", seed=6))
    runner = CliRunner()

    restored = runner.invoke(app, ["restore", "--version", str(good), "--lake", str(lake_root)])

    assert restored.exit_code == 0, restored.output
    assert lake.delta_table(RECOMMENDATIONS).version() == good + 2  # a new commit; history is kept
    assert served_rows(lake, "2026-01-05").equals(first.sort_by([("user_id", "ascending"), ("rank", "ascending")]))
    refused = runner.invoke(app, ["restore", "--version", str(good + 2), "--lake", str(lake_root)])
    assert "version 3 is not an earlier version (latest is 3)" in str(refused.exception)  # `crossrec` exits 2 with it


def test_an_unknown_user_is_told_so_and_shown_the_fallback_list(lake_root, lake):
    popular = ["t9", "t4", "t1"]
    rows = pa.concat_tables(
        [
            scores_table(USERS, 3, "2026-01-05"),
            SCORES.validate(
                pa.table(
                    {  # fb0 saw t4: its popularity list skips it; fb1's list is the full one
                        "user_id": ["fb0"] * 3 + ["fb1"] * 3,
                        "rank": pa.array([1, 2, 3] * 2, pa.int32()),
                        "item_id": ["t9", "t1", "t7", *popular],
                        "score": pa.array([3.0, 1.0, 0.5, 3.0, 2.0, 1.0], pa.float32()),
                        "model_version": [fake_model_version("2026-01-05")] * 6,
                        "segment": ["fallback"] * 6,
                        "because": [[]] * 6,
                    }
                )
            ),
        ]
    )
    publish_night(lake_root, lake, "2026-01-05", rows)
    runner = CliRunner()

    as_json = runner.invoke(app, ["recs", "stranger", "--json", "--lake", str(lake_root), "--domain", "tgt"])
    as_text = runner.invoke(app, ["recs", "stranger", "--lake", str(lake_root), "--domain", "tgt"])

    assert as_json.exit_code == 1 and as_text.exit_code == 1
    answer = json.loads(as_json.stdout)
    assert answer["known"] is False and answer["segment"] == "fallback"
    assert [r["item_id"] for r in answer["recommendations"]] == popular
    assert "'stranger' has no recommendations" in as_text.stderr and "popularity list" in as_text.stderr
    assert "fallback (popularity) list" in as_text.stdout and "t9" in as_text.stdout

    with pytest.raises(Exception, match="no partition ds=2026-02-01"):
        user_recommendations(lake, "u1", "tgt", ds="2026-02-01")


def test_each_row_links_to_its_model_card(lake_root, lake, tiny_features):
    from crossrec_core.model_store import read_card, save_model
    from crossrec_core.models.base import build_model

    model = build_model("popularity", tiny_features, load_settings().model)
    model.fit_fixed(tiny_features)
    version = save_model(lake, "2026-01-05", model, {"metrics": {"all": {"ndcg@10": 0.25}}})
    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 2, "2026-01-05", version=version))

    card = read_card(lake, user_recommendations(lake, "u1", "tgt").model_version)

    assert card["name"] == "popularity" and card["metrics"]["all"]["ndcg@10"] == 0.25 and card["ds"] == "2026-01-05"


def test_table_history_lists_versions_with_rows(lake_root, lake):
    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 5, "2026-01-05"))
    publish_night(lake_root, lake, "2026-01-06", scores_table(USERS[:4], 5, "2026-01-06"))

    versions = table_versions(lake, RECOMMENDATIONS)

    assert [(v.version, v.rows, v.files) for v in versions] == [(2, 120, 2), (1, 100, 1), (0, 0, 0)]
    assert versions[-1].operation == "CREATE TABLE" and versions[0].timestamp >= versions[1].timestamp
    shown = CliRunner().invoke(app, ["tables", "--lake", str(lake_root)])
    assert shown.exit_code == 0
    assert "serving/recommendations" in shown.stdout and "serving/run_reports" in shown.stdout and "120" in shown.stdout


def test_vacuum_drops_old_partitions_keeps_the_served_model_and_time_travel(lake_root, lake):
    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    for i, ds in enumerate(days):
        publish_night(lake_root, lake, ds, scores_table(USERS, 2, ds, seed=i))
    for ds in ["2026-01-04", "2026-01-05"]:  # newer models the gate rejected
        publish_night(lake_root, lake, ds, scores_table(USERS, 2, ds), publish=False)
    before = lake.delta_table(RECOMMENDATIONS).version()

    dry = vacuum_lake(lake, keep_days=1, dry_run=True)
    assert lake.delta_table(RECOMMENDATIONS).version() == before and (lake.root / fake_model_version("2026-01-01")).is_dir()

    result = vacuum_lake(lake, keep_days=1)

    assert (
        sorted(result.removed_partitions)
        == sorted(dry.removed_partitions)
        == sorted(
            [
                "serving/recommendations ds=2026-01-01",
                "serving/run_reports ds=2026-01-01",
                "serving/run_reports ds=2026-01-02",
                "serving/run_reports ds=2026-01-03",
                "scores ds=2026-01-01 domain=tgt",
                "scores ds=2026-01-02 domain=tgt",
                "scores ds=2026-01-03 domain=tgt",
                "models ds=2026-01-01 model=202601010000",  # 01-02 and 01-03 are older than the models' cutoff but still served
            ]
        )
    )
    current = snapshot(lake, RECOMMENDATIONS)
    assert current.version == before + 1 and current.days() == ["2026-01-02", "2026-01-03"]
    assert served_rows(lake, "2026-01-01", before).num_rows == 40  # time travel within the kept window
    assert [p["ds"] for p in lake.parquet_partitions(SCORES)] == ["2026-01-04", "2026-01-05"]
    models = sorted(p.name for p in (lake.root / "models").iterdir())
    assert models == ["ds=2026-01-02", "ds=2026-01-03", "ds=2026-01-04", "ds=2026-01-05"]
    assert snapshot(lake, RUN_REPORTS).days() == ["2026-01-04", "2026-01-05"]

    shown = CliRunner().invoke(app, ["vacuum", "--keep-days", "0", "--lake", str(lake_root)])

    assert shown.exit_code == 0 and "removed partition serving/recommendations ds=2026-01-02" in shown.stdout
    assert snapshot(lake, RECOMMENDATIONS).days() == ["2026-01-03"]
    gone = [line.split("removed file ", 1)[1] for line in shown.stdout.splitlines() if line.startswith("removed file ")]
    first_night = [p for p in gone if p.startswith("serving/recommendations/ds=2026-01-01/domain=tgt/part-")]
    assert len(first_night) == 1 and not (lake.root / first_night[0]).exists()  # zero retention: deleted for good
    assert not any((lake.root / path).exists() for path in gone)


def test_restore_of_one_night_leaves_the_other_nights_served(lake_root, lake):
    first_5, first_6 = scores_table(USERS, 5, "2026-01-05", seed=1), scores_table(USERS, 5, "2026-01-06", seed=2)
    publish_night(lake_root, lake, "2026-01-05", first_5)
    publish_night(lake_root, lake, "2026-01-06", first_6)
    good = lake.delta_table(RECOMMENDATIONS).version()
    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS[:3], 5, "2026-01-05", seed=3))  # bad reruns of both nights
    second_6 = scores_table(USERS, 5, "2026-01-06", seed=4)
    publish_night(lake_root, lake, "2026-01-06", second_6)
    before = lake.delta_table(RECOMMENDATIONS).version()
    runner = CliRunner()

    restored = runner.invoke(app, ["restore", "--ds", "2026-01-05", "--version", str(good), "--lake", str(lake_root)])

    assert restored.exit_code == 0, restored.output
    assert "ds=2026-01-05" in restored.stdout and "other nights unchanged" in restored.stdout
    assert lake.delta_table(RECOMMENDATIONS).version() == before + 1  # one commit
    by_user = [("user_id", "ascending"), ("rank", "ascending")]
    assert served_rows(lake, "2026-01-05").equals(first_5.sort_by(by_user))
    assert served_rows(lake, "2026-01-06").equals(second_6.sort_by(by_user))  # the other night keeps its newest rows

    whole = runner.invoke(app, ["restore", "--version", str(good), "--lake", str(lake_root)])  # the whole table: every ds

    assert whole.exit_code == 0, whole.output
    assert served_rows(lake, "2026-01-06").equals(first_6.sort_by(by_user))


def test_restore_of_a_night_the_version_does_not_hold_is_refused(lake_root, lake):
    from crossrec_core.lake import LakeError, MissingPartitionError
    from crossrec_core.serving import restore_night

    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 2, "2026-01-05"))
    publish_night(lake_root, lake, "2026-01-06", scores_table(USERS, 2, "2026-01-06"))
    latest = lake.delta_table(RECOMMENDATIONS).version()

    with pytest.raises(MissingPartitionError, match="version 1 has no partition ds=2026-01-06; days present: 2026-01-05"):
        restore_night(lake, "2026-01-06", 1)
    with pytest.raises(LakeError, match=f"version {latest} is not an earlier version"):
        restore_night(lake, "2026-01-05", latest)
    assert lake.delta_table(RECOMMENDATIONS).version() == latest
    help_text = CliRunner().invoke(app, ["restore", "--help"]).stdout
    assert "EVERY ds" in help_text and "whole table" in " ".join(help_text.split())


def test_status_prints_age_and_rows_per_domain_and_fails_when_stale(lake_root, lake):
    runner = CliRunner()
    nothing = runner.invoke(app, ["status", "--json", "--lake", str(lake_root), "--domain", "tgt"])
    assert nothing.exit_code == 1 and json.loads(nothing.stdout)["lists"][0]["state"] == "missing"

    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 5, "2026-01-05"))
    publish_night(lake_root, lake, "2026-01-06", scores_table(USERS[:4], 5, "2026-01-06"))
    publish_night(lake_root, lake, "2026-01-07", scores_table(USERS, 5, "2026-01-07"), publish=False)  # gated

    fresh = runner.invoke(app, ["status", "--json", "--lake", str(lake_root), "--domain", "tgt"])
    assert fresh.exit_code == 0, fresh.output
    [served] = json.loads(fresh.stdout)["lists"]
    assert served["ds"] == "2026-01-06" and served["rows"] == 20 and served["state"] == "fresh"
    assert served["model_version"] == fake_model_version("2026-01-06") and 0 <= served["age_hours"] < 1

    stale = runner.invoke(app, ["status", "--max-age-hours", "0", "--lake", str(lake_root), "--domain", "tgt"])
    assert stale.exit_code == 1 and "stale" in stale.stdout and "2026-01-06" in stale.stdout

    other_target = runner.invoke(app, ["status", "--json", "--lake", str(lake_root)])  # configured target 'books': none
    states = {row["domain"]: row["state"] for row in json.loads(other_target.stdout)["lists"]}
    assert other_target.exit_code == 1 and states == {"books": "missing", "tgt": "fresh"}


def test_compact_merges_run_report_files_and_keeps_every_row(lake_root, lake):
    from crossrec_core.reports import stage_run

    for ds in ["2026-01-05", "2026-01-06"]:
        for stage in ["featurize", "train", "evaluate"]:  # a file of one row each
            with stage_run(lake, stage, ds) as report:
                report.rows_in = len(stage)
    before = snapshot(lake, RUN_REPORTS).dataset.to_table().sort_by([("ds", "ascending"), ("stage", "ascending")])
    files_before = len(lake.delta_table(RUN_REPORTS).file_uris())

    shown = CliRunner().invoke(app, ["compact", "--lake", str(lake_root)])

    assert shown.exit_code == 0, shown.output
    [result] = compact_tables(lake) or [None]  # compacting again finds nothing left to merge
    assert result.files_removed == 0
    assert files_before == 6 and len(lake.delta_table(RUN_REPORTS).file_uris()) == 2  # one file per ds partition
    after = snapshot(lake, RUN_REPORTS).dataset.to_table().sort_by([("ds", "ascending"), ("stage", "ascending")])
    assert after.equals(before.select(after.column_names))
    assert "serving/run_reports: 6 files merged into 2" in shown.stdout


def test_vacuum_removes_files_a_failed_commit_left_behind(lake_root, lake):
    import os
    import shutil
    import time

    publish_night(lake_root, lake, "2026-01-05", scores_table(USERS, 2, "2026-01-05"))
    served_before = served_rows(lake, "2026-01-05")
    partition = lake.table_root(RECOMMENDATIONS) / "ds=2026-01-05" / "domain=tgt"
    orphan = partition / "part-orphan-of-a-crashed-publish.parquet"  # moved in, never committed
    shutil.copy(next(partition.glob("part-*.parquet")), orphan)
    two_days_ago = time.time() - 2 * 86400
    os.utime(orphan, (two_days_ago, two_days_ago))

    result = vacuum_lake(lake, keep_days=1)

    assert f"serving/recommendations/ds=2026-01-05/domain=tgt/{orphan.name}" in result.removed_files
    assert not orphan.exists()
    assert served_rows(lake, "2026-01-05").equals(served_before)
