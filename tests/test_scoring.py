"""The scorer: exact top-K (seen items excluded, ties to the lower key), segments, the
score stage, and the Spark scale-out path giving the same rows as the local one."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch
from conftest import fake_model_version, write_gate

from crossrec_core import ranking, scoring
from crossrec_core.config import load_settings
from crossrec_core.contracts import SCORES, Segment, StageStatus
from crossrec_core.data import FeatureSet
from crossrec_core.metrics import PAD
from crossrec_core.model_store import candidate_version, save_model
from crossrec_core.models.base import Recommender, build_model, dot_scores
from crossrec_core.models.fixed import FixedVectors
from crossrec_core.reports import read_run_reports

DS = "2026-01-05"


def random_features(n_users: int, n_items: int, seed: int) -> FeatureSet:
    """Random target history; a few users have seen all but two items."""
    rng = np.random.default_rng(seed)
    seen = rng.random((n_users, n_items)) < 0.3
    seen[:3] = True
    seen[:3, :2] = False  # users 0..2: two unseen items only
    return FeatureSet(
        source="src",
        target="tgt",
        user_ids=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        item_ids={"src": np.array(["s0"], dtype=object), "tgt": np.array([f"t{i}" for i in range(n_items)], dtype=object)},
        train={"src": sp.csr_matrix((n_users, 1), dtype=np.float32), "tgt": sp.csr_matrix(seen.astype(np.float32))},
    )


def brute_force(scores: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort every user's unseen items by (score descending, key ascending), one by one."""
    items = np.full((len(scores), k), PAD)
    values = np.full((len(scores), k), -np.inf, dtype=np.float32)
    for user, row in enumerate(scores):
        ranked = sorted((i for i in range(len(row)) if not seen[user, i]), key=lambda i: (-row[i], i))[:k]
        items[user, : len(ranked)] = ranked
        values[user, : len(ranked)] = row[ranked]
    return items, values


@pytest.mark.parametrize("block_size", [1, 7, 1000])
def test_top_k_equals_brute_force_with_seen_items_excluded_and_ties_to_the_lower_key(block_size):
    features = random_features(n_users=40, n_items=23, seed=block_size)
    rng = np.random.default_rng(1)
    # Entries in {-1, 0, 1} and d=3: exact float products and many equal scores.
    users = torch.tensor(rng.integers(-1, 2, (40, 3)), dtype=torch.float32)
    items = torch.tensor(rng.integers(-1, 2, (23, 3)), dtype=torch.float32)
    model = FixedVectors(features, load_settings().model, users, items)
    user_keys = rng.permutation(40)[:31]

    got_items, got_scores = ranking.top_k_for_users(model, features, "tgt", user_keys, k=6, block_size=block_size)

    seen = features.train["tgt"].toarray() > 0
    want_items, want_scores = brute_force((users @ items.T).numpy()[user_keys], seen[user_keys], k=6)
    assert got_items.dtype == np.int64 and got_scores.dtype == np.float32
    np.testing.assert_array_equal(got_items, want_items)
    np.testing.assert_array_equal(got_scores, want_scores)
    few = np.isin(user_keys, [0, 1, 2])
    assert few.any() and (got_items[few, 2:] == PAD).all()  # two unseen items: two slots filled


def test_top_k_of_a_sparse_model_equals_brute_force(tiny_features):
    model = build_model("item_knn_cross", tiny_features, load_settings().model)
    model.fit_fixed(tiny_features)
    keys = np.arange(tiny_features.n_users)
    with torch.no_grad():
        full = dot_scores(model.user_vectors("tgt", torch.as_tensor(keys)), model.item_vectors("tgt")).numpy()

    got_items, got_scores = ranking.top_k_for_users(model, tiny_features, "tgt", keys, k=8, block_size=32)

    want_items, want_scores = brute_force(full, tiny_features.train["tgt"].toarray() > 0, k=8)
    np.testing.assert_array_equal(got_items, want_items)
    np.testing.assert_array_equal(got_scores, want_scores)


def test_nan_scores_fail_naming_the_users():
    features = random_features(n_users=5, n_items=4, seed=0)
    users = torch.ones(5, 2)
    users[3] = torch.nan
    model = FixedVectors(features, load_settings().model, users, torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"NaN scores.*user keys \[3\]"):
        ranking.top_k_for_users(model, features, "tgt", np.arange(5), k=2, block_size=2)


def with_ghost_users(features: FeatureSet, n_ghosts: int) -> FeatureSet:
    """The features plus users known only from the key index (no history anywhere)."""

    def grow(matrix):
        return sp.vstack([matrix, sp.csr_matrix((n_ghosts, matrix.shape[1]), dtype=matrix.dtype)], format="csr")

    return FeatureSet(
        source=features.source,
        target=features.target,
        user_ids=np.concatenate([features.user_ids, np.array([f"ghost{i}" for i in range(n_ghosts)], dtype=object)]),
        item_ids=features.item_ids,
        train={d: grow(m) for d, m in features.train.items()},
        holdout={s: grow(m) for s, m in features.holdout.items()},
        ds=features.ds,
        window=features.window,
    )


def score_settings(lake_root, **score):
    return load_settings(
        lake=lake_root,
        domains={"source": "src", "target": "tgt"},
        model={"dim": 4, "device": "cpu"},
        score={"k": 5, "block_size": 16, **score},
        spark={"shuffle_partitions": 2, "master": "local[2]"},
    )


def integer_model(name: str, features: FeatureSet, settings, seed: int = 0) -> Recommender:
    """A registered model with small integer weights: exact scores in any summation order."""
    model = build_model(name, features, settings.model)
    generator = torch.Generator().manual_seed(seed)
    model.load_state_dict(
        {key: torch.randint(-2, 3, value.shape, generator=generator).float() for key, value in model.state_dict().items()}
    )
    return model.eval()


def test_every_user_of_the_key_index_gets_a_list_of_their_segment(lake_root, lake, tiny_features):
    features = with_ghost_users(tiny_features, 3)
    settings = score_settings(lake_root)
    model = integer_model("target_only", features, settings)

    result = scoring.score_to_partition(lake, DS, features, model, fake_model_version(DS), settings)

    rows = lake.read_parquet_partition(SCORES, ds=DS, domain="tgt")
    assert result.rows == rows.num_rows and result.users == features.n_users
    assert result.segments == {"warm": 110, "cold_start": 10, "fallback": 3}
    assert set(rows["user_id"].to_pylist()) == set(features.user_ids)
    assert rows["user_id"].to_pylist() == sorted(rows["user_id"].to_pylist())  # clustered for lookups
    assert set(rows["model_version"].to_pylist()) == {fake_model_version(DS)}
    segment_by_user = dict(zip(rows["user_id"].to_pylist(), rows["segment"].to_pylist(), strict=False))
    expected = features.segment_of(np.arange(features.n_users))
    assert [segment_by_user[u] for u in features.user_ids] == expected.tolist()
    assert segment_by_user["u3"] == "cold_start" and segment_by_user["u15"] == "warm" and segment_by_user["ghost0"] == "fallback"

    # Model users: the model's exact top-K, never an item of their target history.
    items, scores = ranking.top_k_for_users(model, features, "tgt", np.array([15]), k=5, block_size=4)
    u15 = rows.filter(pc.equal(rows["user_id"], "u15"))
    assert u15["rank"].to_pylist() == [1, 2, 3, 4, 5]
    assert u15["item_id"].to_pylist() == features.item_ids["tgt"][items[0]].tolist()
    assert u15["score"].to_pylist() == scores[0].tolist()
    assert not set(u15["item_id"].to_pylist()) & set(features.item_ids["tgt"][features.train["tgt"][15].indices])

    # Fallback users: the target popularity list (sum of training weights, lower key first).
    popularity = np.asarray(features.train["tgt"].sum(axis=0)).ravel()
    order = sorted(range(len(popularity)), key=lambda i: (-popularity[i], i))[:5]
    ghost = rows.filter(pc.equal(rows["user_id"], "ghost1"))
    assert ghost["item_id"].to_pylist() == features.item_ids["tgt"][order].tolist()
    np.testing.assert_allclose(ghost["score"].to_numpy(), np.log1p(popularity[order]), rtol=1e-6)


def test_min_history_moves_thin_users_to_fallback_without_their_seen_items(lake_root, lake, tiny_features):
    settings = score_settings(lake_root, min_history=4, k=30)
    model = integer_model("target_only", tiny_features, settings)
    scoring.score_to_partition(lake, DS, tiny_features, model, fake_model_version(DS), settings)
    rows = lake.read_parquet_partition(SCORES, ds=DS, domain="tgt")
    # u15 (target-only user) has 3 target training items: below 4, no source history
    assert tiny_features.train["tgt"][15].nnz == 3 and tiny_features.train["src"][15].nnz == 0
    u15 = rows.filter(pc.equal(rows["user_id"], "u15"))
    assert set(u15["segment"].to_pylist()) == {"fallback"}
    # 30 target items, 3 seen: a user with fewer than k unseen items gets fewer rows
    assert u15.num_rows == 27 and u15["rank"].to_pylist() == list(range(1, 28))
    assert not set(u15["item_id"].to_pylist()) & set(tiny_features.item_ids["tgt"][tiny_features.train["tgt"][15].indices])


def prepare_night(lake, settings, features, ds: str = DS, seed: int = 0) -> None:
    """What the earlier stages leave for `score`: features, a saved model, a gate decision."""
    from test_training import write_features  # the one FeatureSet -> features/ partition writer

    write_features(lake, features, ds)
    save_model(lake, ds, integer_model("target_only", features, settings, seed), {"metrics": {}})
    write_gate(lake, ds, publish=True)


def test_score_stage_writes_the_partition_and_a_rerun_replaces_it(lake_root, lake, tiny_features):
    settings = score_settings(lake_root)
    prepare_night(lake, settings, tiny_features)

    first = scoring.score_stage(settings, DS)
    rows = lake.read_parquet_partition(SCORES, ds=DS, domain="tgt")
    second = scoring.score_stage(settings, DS)

    assert first.status == StageStatus.SUCCESS and first.rows_in == tiny_features.n_users
    assert first.rows_out == rows.num_rows == tiny_features.n_users * 5 and first.bytes_out > 0 and first.bytes_in > 0
    assert first.metrics["segments"] == {"warm": 110, "cold_start": 10} and first.metrics["users_per_second"] > 0
    assert lake.read_parquet_partition(SCORES, ds=DS, domain="tgt").equals(rows)  # identical, not appended
    assert second.rows_out == first.rows_out
    assert len(list(lake.partition_path(SCORES, ds=DS, domain="tgt").glob("*.parquet"))) == 1
    reports = read_run_reports(lake, DS).to_pylist()
    assert [(r["stage"], r["status"], r["rows_out"]) for r in reports] == [("score", "success", rows.num_rows)]


def test_a_rejected_model_is_not_scored(lake_root, lake, tiny_features):
    settings = score_settings(lake_root)
    prepare_night(lake, settings, tiny_features)
    write_gate(lake, DS, publish=False, reason="ndcg@10 dropped 12%")

    report = scoring.score_stage(settings, DS)

    assert report.status == StageStatus.GATED and report.metrics["reason"] == "ndcg@10 dropped 12%"
    assert not lake.partition_path(SCORES, ds=DS, domain="tgt").exists()


def test_score_stage_without_a_gate_decision_names_the_missing_file(lake_root, lake, tiny_features):
    from crossrec_core.lake import MissingPartitionError

    settings = score_settings(lake_root)
    prepare_night(lake, settings, tiny_features)
    (lake.root / candidate_version(lake, DS) / "gate.json").unlink()
    with pytest.raises(MissingPartitionError, match=r"models/ds=2026-01-05/model=[0-9a-f]{12}/gate.json.*evaluate"):
        scoring.score_stage(settings, DS)


def test_spark_backend_gives_the_rows_of_the_local_backend(spark, lake_root, lake, tiny_features):
    features = with_ghost_users(tiny_features, 2)
    local = score_settings(lake_root, block_size=16)
    distributed = score_settings(lake_root, block_size=16, backend="spark")
    model = integer_model("target_only", features, local)

    scoring.score_to_partition(lake, "2026-01-05", features, model, fake_model_version(DS), local)
    result = scoring.score_to_partition(lake, "2026-01-06", features, model, fake_model_version(DS), distributed)

    order = [("user_id", "ascending"), ("rank", "ascending")]
    want = lake.read_parquet_partition(SCORES, ds="2026-01-05", domain="tgt").sort_by(order)
    got = lake.read_parquet_partition(SCORES, ds="2026-01-06", domain="tgt").sort_by(order)
    assert result.backend == "spark" and result.files >= 2  # partitioned: one file per task
    assert got.num_rows == want.num_rows == features.n_users * 5
    assert got.equals(want)
    assert set(pc.unique(got["segment"]).to_pylist()) == {"warm", "cold_start", "fallback"}
    for path in lake.partition_path(SCORES, ds="2026-01-06", domain="tgt").glob("*.parquet"):
        assert pq.read_schema(path).remove_metadata() == SCORES.arrow_schema()  # what publish's commit requires


def test_spark_backend_tasks_hold_at_most_a_few_blocks_of_users(spark, lake_root, lake, tiny_features):
    """One task per core would hand each task a core's share of all users (an executor
    ran out of heap at 1,000,000 users); a task holds PARTITION_BLOCKS blocks at most."""
    settings = score_settings(lake_root, block_size=1, backend="spark")
    model = integer_model("target_only", tiny_features, settings)
    result = scoring.score_to_partition(lake, "2026-01-07", tiny_features, model, fake_model_version(DS), settings)
    assert result.users > 2 * scoring.PARTITION_BLOCKS  # more than one core's share would allow
    assert result.files == math.ceil(result.users / scoring.PARTITION_BLOCKS)
    assert lake.read_parquet_partition(SCORES, ds="2026-01-07", domain="tgt").num_rows == result.users * 5


def test_item_to_item_models_serve_because_items_readable_by_every_reader(lake_root, lake, tiny_features):
    """Every served row of an item-to-item model names up to 3 of the user's source items
    with a positive weight towards the item, strongest first; a two-tower model's rows
    carry an empty list. The Delta table stays readable by pyarrow, polars and DuckDB."""
    import json

    import duckdb
    import polars as pl
    from typer.testing import CliRunner

    from crossrec_core.cli import app
    from crossrec_core.contracts import RECOMMENDATIONS
    from crossrec_core.publish import publish_scores
    from crossrec_core.serving import snapshot

    settings = score_settings(lake_root)
    model = build_model("item_knn_cross", tiny_features, settings.model)
    model.fit_fixed(tiny_features)
    scoring.score_to_partition(lake, DS, tiny_features, model, fake_model_version(DS), settings)
    rows = lake.read_parquet_partition(SCORES, ds=DS, domain="tgt").to_pylist()
    weights = model.item_vectors("tgt").to_dense()  # [target items, source items + fallback]
    key = {u: k for k, u in enumerate(tiny_features.user_ids)}
    source_key = {i: k for k, i in enumerate(tiny_features.item_ids["src"])}
    target_key = {i: k for k, i in enumerate(tiny_features.item_ids["tgt"])}
    explained = 0
    for row in rows:
        history = set(tiny_features.train["src"][key[row["user_id"]]].indices.tolist())
        because = [source_key[i] for i in row["because"]]
        assert len(because) <= 3 and set(because) <= history
        contribution = weights[target_key[row["item_id"]]]
        assert all(contribution[i] > 0 for i in because)
        assert [float(contribution[i]) for i in because] == sorted((float(contribution[i]) for i in because), reverse=True)
        best = sorted((float(contribution[i]) for i in history if contribution[i] > 0), reverse=True)[:3]
        assert [float(contribution[i]) for i in because] == best  # the strongest ones
        explained += bool(because)
    assert explained > len(rows) / 2

    publish_scores(lake, DS, "tgt")
    table = snapshot(lake, RECOMMENDATIONS).dataset.to_table()
    assert table.num_rows == len(rows) and table.schema.field("because").type.value_type == "string"
    assert pl.read_delta(str(lake.root / RECOMMENDATIONS.path)).height == len(rows)
    connection = duckdb.connect()
    connection.register("recommendations", table)  # the Arrow snapshot: no delta extension offline
    assert connection.sql("SELECT count(*) FROM recommendations WHERE len(because) > 0").fetchone()[0] == explained

    cold_user = tiny_features.user_ids[tiny_features.holdout_users(Segment.COLD_START)[0]]
    result = CliRunner().invoke(app, ["recs", cold_user, "--lake", str(lake_root), "--why", "--domain", "tgt"])
    assert result.exit_code == 0, result.output
    assert "because you liked" in result.output
    served = json.loads(CliRunner().invoke(app, ["recs", cold_user, "--lake", str(lake_root), "--json", "--domain", "tgt"]).output)
    assert all("because" in r for r in served["recommendations"]) and any(r["because"] for r in served["recommendations"])

    two_tower = integer_model("target_only", tiny_features, settings)
    scoring.score_to_partition(lake, "2026-01-06", tiny_features, two_tower, fake_model_version(DS), settings)
    assert all(r["because"] == [] for r in lake.read_parquet_partition(SCORES, ds="2026-01-06", domain="tgt").to_pylist())
