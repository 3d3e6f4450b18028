"""Importers and sample data: `crossrec import pairs|recbole|events` and `crossrec demo-data`."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from crossrec_core.cli import app
from crossrec_core.config import load_settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, HOLDOUT, RAW, QuarantineReason
from crossrec_core.errors import InputError, MissingDataError
from crossrec_core.etl.raw_files import RawInputError
from crossrec_core.ingest.demo_data import generate_demo_data
from crossrec_core.ingest.events import import_events
from crossrec_core.ingest.pairs import import_pairs
from crossrec_core.ingest.recbole import import_recbole
from crossrec_core.lake import Lake
from crossrec_core.reports import read_run_reports

REPO_ROOT = Path(__file__).resolve().parents[1]
DS = "2026-11-20"


def raw_rows(lake: Lake, domain: str) -> pa.Table:
    """Every landed Parquet row of a domain, with its ds partition."""
    root = lake.partition_path(RAW, domain=domain, ds=DS).parent
    return pads.dataset(root, format="parquet", partitioning="hive").to_table()


def file_digests(lake: Lake) -> dict[str, str]:
    root = lake.table_root(RAW)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- pairs (CDRIB layout) -------------------------------------------------------------


@pytest.mark.shared_data
def test_pairs_import_matches_readme_and_keeps_cold_start_users_out_of_raw(shared_data, lake):
    directory = shared_data / "amazon-cloth-sport"
    summary = import_pairs(lake, directory, "cloth", "sport", days=14, end_date=DS, seed=0)

    cloth, sport = summary.domain("cloth"), summary.domain("sport")
    assert (cloth.rows, cloth.users, cloth.items) == (187_880, 40_839, 17_943)
    assert (sport.rows, sport.users, sport.items) == (163_291, 26_346, 12_655)
    assert summary.details["common users (C: ids below it are one person in both domains)"] == 9_828
    assert summary.details["users in both domains (train)"] == 7_856  # ids from C upwards are two people
    assert summary.details["cloth test rows (holdout)"] == 3_085
    assert summary.details["cloth test users (holdout)"] == 907
    assert summary.details["cloth test users with cloth train rows"] == 0
    assert summary.details["cloth test users with sport train rows"] == 907

    landed = raw_rows(lake, "cloth")
    assert landed.num_rows == 187_880
    days = sorted(set(landed["ds"].to_pylist()))
    assert len(days) == 14 and days[0] == "2026-11-07" and days[-1] == DS
    # every synthetic ts lies inside the day of its partition
    ts_day = pc.cast(pc.cast(landed["ts"], pa.int64()), pa.timestamp("s", tz="UTC")).cast(pa.date32()).cast(pa.string())
    assert pc.all(pc.equal(ts_day, landed["ds"])).as_py()

    test_users = lake.read_parquet_partition(HOLDOUT, domain="sport", split="test")["user_id"]
    assert len(test_users) == 3_546
    assert not pc.any(pc.is_in(raw_rows(lake, "sport")["user_id"], value_set=test_users)).as_py()

    before = file_digests(lake)
    import_pairs(lake, directory, "cloth", "sport", days=14, end_date=DS, seed=0)
    assert file_digests(lake) == before  # same seed: the same days replaced, nothing added


def test_pairs_import_names_a_missing_domain_folder(tmp_path, lake):
    (tmp_path / "cloth_sport").mkdir()
    (tmp_path / "cloth_sport" / "train.txt").write_text("1\t2\n")
    with pytest.raises(MissingDataError, match=r"sport_cloth does not exist.*\['cloth_sport'\]"):
        import_pairs(lake, tmp_path, "cloth", "sport", end_date=DS)


# ---- recbole (MovieLens-1M by genre) ---------------------------------------------------


@pytest.mark.shared_data
def test_recbole_import_matches_readme_and_lands_by_real_utc_day(shared_data, lake):
    summary = import_recbole(lake, shared_data / "movielens-1m", ["Comedy", "Romance", "Drama"], ["Sci-Fi", "Action", "Thriller"])
    comedy, scifi = summary.domain("comedy"), summary.domain("scifi")
    assert (comedy.rows, comedy.items) == (502_772, 2_192)
    assert (scifi.rows, scifi.items) == (246_692, 636)
    assert summary.details["users rating in both domains"] == 5_916
    assert summary.details["users in the dataset"] == 6_040
    assert (comedy.first_ds, scifi.last_ds) == ("2000-04-25", "2003-02-28")

    landed = raw_rows(lake, "scifi")
    assert landed.num_rows == 246_692
    assert set(landed["event_type"].to_pylist()) == {"rating"}
    assert set(landed["value"].to_pylist()) == {"1", "2", "3", "4", "5"}
    ts_day = pc.cast(pc.cast(landed["ts"], pa.int64()), pa.timestamp("s", tz="UTC")).cast(pa.date32()).cast(pa.string())
    assert pc.all(pc.equal(ts_day, landed["ds"])).as_py()


def test_recbole_import_rejects_unknown_genres_and_bad_timestamps(tmp_path, lake):
    (tmp_path / "toy.item").write_text("item_id:token\tgenre:token\nA\tComedy\nB\tSci-Fi Action\nC\tComedy Sci-Fi\n")
    (tmp_path / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\tA\t4\t978300760\nu1\tB\t5\tyesterday\n"
    )
    with pytest.raises(InputError, match=r"genre\(s\) \['SciFi'\].*'Sci-Fi'"):
        import_recbole(lake, tmp_path, ["Comedy"], ["SciFi"])
    with pytest.raises(InputError, match=r"toy\.inter: line 3: timestamp 'yesterday'"):
        import_recbole(lake, tmp_path, ["Comedy"], ["Sci-Fi"])
    assert not lake.table_root(RAW).exists()


# ---- events (files as delivered) -------------------------------------------------------


@pytest.fixture
def delivered(tmp_path) -> dict[str, Path]:
    """One event file of each format, and one lacking the ts column."""
    folder = tmp_path / "delivery"
    folder.mkdir()
    files = {
        "csv": folder / "clicks.csv",
        "jsonl": folder / "views.jsonl.gz",
        "parquet": folder / "orders.parquet",
        "no_ts": folder / "broken.csv",
    }
    files["csv"].write_text("user_id,item_id,ts,event_type\nu1,i1,1795132806,click\nu2,i2,1795132807,view\n")
    files["jsonl"].write_bytes(gzip.compress(b'{"user_id": "u3", "item_id": "i3", "ts": "2026-11-20T10:00:00Z"}\n{oops\n'))
    pq.write_table(pa.table({"user_id": ["u4"], "item_id": ["i4"], "ts": [1795132808000], "value": [2.0]}), files["parquet"])
    files["no_ts"].write_text("user_id,item_id,time\nu5,i5,1795132809\n")
    return files


def landed_files(lake: Lake, domain: str = "books") -> dict[str, bytes]:
    partition = lake.partition_path(RAW, domain=domain, ds=DS)
    return {p.name: p.read_bytes() for p in sorted(partition.iterdir())} if partition.exists() else {}


def test_events_land_every_format_as_delivered_and_are_reported(settings, lake, delivered):
    paths = [delivered["csv"], delivered["jsonl"], delivered["parquet"]]
    summary = import_events(lake, paths, "books", DS, settings.ds_range)

    assert landed_files(lake) == {p.name: p.read_bytes() for p in paths}
    assert summary.domain("books").rows == 2 + 2 + 1  # CSV rows, JSON lines (one malformed: clean's job), Parquet rows
    report = read_run_reports(lake, DS).to_pylist()
    assert [(r["stage"], r["domain"], r["status"], r["rows_in"]) for r in report] == [("import", "books", "success", 5)]


def test_events_with_a_file_missing_ts_land_nothing_and_name_the_file(settings, lake, delivered):
    import_events(lake, [delivered["csv"]], "books", DS, settings.ds_range)
    before = landed_files(lake)

    with pytest.raises(RawInputError, match=r"broken\.csv: missing required column\(s\) \['ts'\]"):
        import_events(lake, [delivered["jsonl"], delivered["no_ts"]], "books", DS, settings.ds_range)

    assert landed_files(lake) == before  # all or nothing: the partition is as it was
    assert read_run_reports(lake, DS).to_pylist()[0]["status"] == "failed"


def test_events_reject_corrupt_files_and_hidden_names(settings, lake, tmp_path):
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"user_id": "u", "item_id": "i", "ts": 1}\n' * 1000)[:-40])
    hidden = tmp_path / "_events.csv"
    hidden.write_text("user_id,item_id,ts\nu,i,1\n")
    with pytest.raises(RawInputError) as failure:
        import_events(lake, [truncated, hidden], "books", DS, settings.ds_range)
    assert "cut.jsonl.gz: unreadable file" in str(failure.value)
    assert "_events.csv: a file name starting with" in str(failure.value)
    assert landed_files(lake) == {}


def test_events_accept_parquet_of_pandas_types_and_refuse_a_type_clean_cannot_read(settings, lake, tmp_path):
    """Nanosecond and zoned timestamps (pandas' own), list ids (a row-level problem, for
    clean to quarantine) land; a contract column Spark cannot read refuses the file,
    naming it and the column."""
    import pandas as pd

    readable = tmp_path / "pandas.parquet"
    ts = pd.to_datetime(["2026-11-20 10:00:00.000000001"]).tz_localize("Europe/Paris")
    pd.DataFrame({"user_id": [["u1", "u2"]], "item_id": ["i1"], "ts": ts, "created": ts.tz_localize(None)}).to_parquet(readable)
    assert import_events(lake, [readable], "books", DS, settings.ds_range).domain("books").rows == 1
    half = tmp_path / "half.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["i1"], "ts": [1795132808], "value": pa.array([1.5], pa.float16())}), half)
    with pytest.raises(RawInputError, match=r"half\.parquet: column 'value' has type halffloat, which the clean stage cannot read"):
        import_events(lake, [half], "books", DS, settings.ds_range)
    assert list(landed_files(lake)) == ["pandas.parquet"]


def test_events_reimport_replaces_the_partition(settings, lake, delivered):
    import_events(lake, [delivered["csv"], delivered["jsonl"]], "books", DS, settings.ds_range)
    import_events(lake, [delivered["parquet"]], "books", DS, settings.ds_range)
    assert list(landed_files(lake)) == ["orders.parquet"]


def test_cli_reports_a_bad_event_file_and_exits_2(tmp_path, delivered):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSREC_")} | {"COLUMNS": "400"}  # no wrapping
    result = subprocess.run(
        [
            str(REPO_ROOT / ".venv" / "bin" / "crossrec"),
            "import",
            "events",
            str(delivered["no_ts"]),
            "--domain",
            "books",
            "--ds",
            DS,
            "--lake",
            str(tmp_path / "lake"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert "broken.csv: missing required column(s) ['ts']" in result.stderr
    assert not (tmp_path / "lake" / "raw" / "domain=books").exists()


# ---- demo-data -----------------------------------------------------------------------


def test_demo_data_is_deterministic_and_reruns_replace(tmp_path, settings):
    def generate(lake: Lake, seed: int = 3) -> dict[str, str]:
        generate_demo_data(lake, settings, users=200, days=2, seed=seed, end_date=DS)
        return file_digests(lake)

    first = generate(Lake(tmp_path / "a"))
    assert generate(Lake(tmp_path / "a")) == first  # rerun into the same lake: replaced, not added
    assert generate(Lake(tmp_path / "b")) == first
    assert generate(Lake(tmp_path / "c"), seed=4) != first
    names = {Path(k).name for k in first}
    assert names == {"events.csv", "events.jsonl.gz", "events.parquet"}
    assert len(first) == 2 * 2 * 2  # domains x days x files


def test_demo_data_cli_prints_a_summary(tmp_path):
    result = CliRunner().invoke(app, ["demo-data", "--lake", str(tmp_path / "lake"), "--users", "100", "--days", "1", "--end-date", DS])
    assert result.exit_code == 0, result.output
    assert "movies" in result.output and "books" in result.output
    assert (tmp_path / "lake" / "raw" / "domain=books" / f"ds={DS}" / "events.jsonl.gz").is_file()


def _recall_at_10(scores: np.ndarray, truth: np.ndarray) -> float:
    top = np.argsort(-scores, axis=1)[:, :10]
    hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
    return float((hits / np.minimum(truth.sum(axis=1), 10)).mean())


@pytest.mark.spark
@pytest.mark.slow
def test_demo_data_through_clean_has_asked_bad_share_partial_overlap_and_real_signal(spark, tmp_path):
    from crossrec_core.etl.clean import clean

    settings = load_settings(lake=tmp_path / "lake", spark={"shuffle_partitions": 2})
    lake = Lake(settings.lake)
    generate_demo_data(lake, settings, users=1000, days=1, seed=11, bad_fraction=0.04, end_date=DS, events_per_day=10_000)

    interactions = {}
    for domain in settings.domains.all:
        report = clean(settings, DS, domain)
        assert report.rows_quarantined / report.rows_in == pytest.approx(0.04, abs=0.002)
        assert set(report.metrics["reasons"]) == {r.value for r in QuarantineReason}
        interactions[domain] = lake.read_parquet_partition(CLEAN_INTERACTIONS, domain=domain, ds=DS)

    source, target = (interactions[d] for d in settings.domains.all)
    users = pc.unique(pa.chunked_array(source["user_id"].chunks + target["user_id"].chunks))
    in_source = pc.is_in(users, value_set=source["user_id"]).to_numpy(zero_copy_only=False)
    in_target = pc.is_in(users, value_set=target["user_id"]).to_numpy(zero_copy_only=False)
    assert (in_source & ~in_target).sum() > 20 and (in_target & ~in_source).sum() > 20
    assert (in_source & in_target).mean() > 0.5

    def matrix(table: pa.Table) -> sp.csr_matrix:
        rows = pc.index_in(table["user_id"], value_set=users).to_numpy()
        items, cols = np.unique(table["item_id"].to_numpy(zero_copy_only=False), return_inverse=True)
        return (sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), len(items))) > 0).astype(np.float64)

    # Item co-occurrence learnt from half of the overlapping users ranks the other half's
    # target items from their OWN source history far better than target popularity does,
    # and than the same scoring fed another user's source history.
    S, T = matrix(source), matrix(target)
    both = np.flatnonzero(in_source & in_target)
    fit, test = both[::2], both[1::2]
    truth = T[test].toarray() > 0
    popularity = np.asarray(T[fit].sum(axis=0)).ravel()
    co_occurrence = (S[fit].T @ T[fit]).toarray() / np.sqrt(np.maximum(popularity, 1))
    own = _recall_at_10(S[test] @ co_occurrence, truth)
    shuffled = _recall_at_10(S[test][np.random.default_rng(0).permutation(len(test))] @ co_occurrence, truth)
    by_popularity = _recall_at_10(np.tile(popularity, (len(test), 1)), truth)
    assert own > 1.25 * by_popularity and own > 1.5 * shuffled, (own, by_popularity, shuffled)
