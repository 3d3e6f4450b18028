"""CDRIB pair files: only user ids below C (the common users) are one person in both domains."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from crossrec_core.contracts import Segment
from crossrec_core.datasets import common_user_count, disjoint_validation, load_pairs, pair_user_ids
from crossrec_core.errors import InputError

# Folder a_b holds domain a, b_a domain b. Common users are 0..3 (C = 4): user 1 is a
# cold-start user of a (valid/test of a_b), users 2 and 3 of b. Ids 4 and 5 exist in
# BOTH train files but are different people (each folder numbers its own users from C).
FILES = {
    ("a_b", "train.txt"): [(0, 0), (0, 1), (2, 1), (3, 2), (4, 0), (4, 1), (5, 2)],
    ("a_b", "valid.txt"): [(1, 0)],
    ("a_b", "test.txt"): [(1, 1)],
    ("b_a", "train.txt"): [(0, 0), (1, 1), (4, 2), (4, 0), (5, 1), (6, 2)],
    ("b_a", "valid.txt"): [(2, 0), (3, 1)],
    ("b_a", "test.txt"): [(3, 2), (2, 2)],
}


def write_layout(directory, files=FILES) -> None:
    for (folder, name), rows in files.items():
        (directory / folder).mkdir(parents=True, exist_ok=True)
        (directory / folder / name).write_text("".join(f"{u}\t{i}\n" for u, i in rows))


def test_common_users_detected_and_other_ids_kept_apart(tmp_path):
    write_layout(tmp_path)
    assert common_user_count([tmp_path / "a_b", tmp_path / "b_a"]) == 4
    assert pair_user_ids(np.array([3, 4, 5]), "a", 4).tolist() == ["3", "a-4", "a-5"]
    splits = load_pairs(tmp_path, "a", "b")
    features = splits.valid
    # a-4, a-5 and b-4, b-5, b-6 are five people, not two glued pairs.
    assert sorted(features.user_ids) == sorted(["0", "1", "2", "3", "a-4", "a-5", "b-4", "b-5", "b-6"])
    both = np.intersect1d(features.users_with_history("a"), features.users_with_history("b"))
    assert features.user_ids[both].tolist() == ["0"]
    # So only user 0 links the domains: a's item 0 and 1 co-occur with b's item 0 alone.
    from crossrec_core.config import load_settings
    from crossrec_core.models.item_knn import ItemKnnCross

    model = ItemKnnCross(features, load_settings().model)
    model.fit_fixed(features)
    weights = model.item_vectors("b").to_dense()[:, :2]  # [target items, source items 0..1]
    assert (weights[1:] == 0).all() and (weights[0] > 0).all()


def test_common_users_can_be_overridden(tmp_path):
    write_layout(tmp_path)
    splits = load_pairs(tmp_path, "a", "b", common_users=7)  # every id one person (the old reading)
    assert sorted(splits.valid.user_ids) == [str(u) for u in range(7)]


def test_cdrib_split_as_given_with_known_validation_items(tmp_path):
    write_layout(tmp_path)
    splits = load_pairs(tmp_path, "a", "b", split="cdrib")
    ids = splits.test.user_ids
    key = {u: k for k, u in enumerate(ids)}
    valid, test = splits.valid.holdout[Segment.COLD_START], splits.test.holdout[Segment.COLD_START]
    assert ids[splits.valid.holdout_users(Segment.COLD_START)].tolist() == ["2", "3"]
    assert ids[splits.test.holdout_users(Segment.COLD_START)].tolist() == ["2", "3"]
    assert valid[key["2"]].indices.tolist() == [0] and test[key["2"]].indices.tolist() == [2]
    # At test time a user's validation items are known: never ranked (as served) ...
    known = splits.test.known
    assert known[key["2"]].indices.tolist() == [0] and known[key["3"]].indices.tolist() == [1]
    assert splits.test.excluded("b", np.array([key["3"]])).indices.tolist() == [1]
    # ... unless CDRIB's unmasked ranking is asked for; and they are not history.
    assert splits.test.excluded("b", np.array([key["3"]]), known=False).nnz == 0
    assert splits.test.train["b"][key["3"]].nnz == 0


def test_disjoint_split_puts_each_cold_start_user_on_one_side(tmp_path):
    files = dict(FILES)
    cold = list(range(8, 40))  # more common cold-start users, so that both sides are populated
    files[("a_b", "train.txt")] = FILES[("a_b", "train.txt")] + [(u, u % 3) for u in cold]
    files[("b_a", "valid.txt")] = [(u, u % 3) for u in cold]
    files[("b_a", "test.txt")] = [(u, (u + 1) % 3) for u in cold]
    write_layout(tmp_path, files)
    splits = load_pairs(tmp_path, "a", "b", split="disjoint")
    valid_users = set(splits.valid.user_ids[splits.valid.holdout_users(Segment.COLD_START)])
    test_users = set(splits.test.user_ids[splits.test.holdout_users(Segment.COLD_START)])
    assert valid_users and test_users and not valid_users & test_users
    assert valid_users | test_users == {str(u) for u in cold}
    expected_valid = {str(u) for u, v in zip(cold, disjoint_validation(np.array(cold)), strict=True) if v}
    assert valid_users == expected_valid
    # A user's items from both files go with the user; nothing is known beyond history.
    key = {u: k for k, u in enumerate(splits.test.user_ids)}
    some = sorted(test_users)[0]
    assert splits.test.holdout[Segment.COLD_START][key[some]].nnz == len({int(some) % 3, (int(some) + 1) % 3})
    assert splits.test.known is None
    assert (
        load_pairs(tmp_path, "a", "b", split="disjoint").test.holdout[Segment.COLD_START].nnz == splits.test.holdout[Segment.COLD_START].nnz
    )


def test_load_pairs_rejects_an_unknown_split(tmp_path):
    write_layout(tmp_path)
    with pytest.raises(InputError, match="split must be one of"):
        load_pairs(tmp_path, "a", "b", split="random")


def test_import_pairs_lands_domain_own_ids_and_reports_true_overlap(tmp_path):
    from typer.testing import CliRunner

    from crossrec_core.cli import app

    write_layout(tmp_path / "data")
    lake = tmp_path / "lake"
    result = CliRunner().invoke(
        app,
        [
            "import",
            "pairs",
            str(tmp_path / "data"),
            "--source",
            "a",
            "--target",
            "b",
            "--lake",
            str(lake),
            "--days",
            "2",
            "--end-date",
            "2026-11-20",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "users in both domains (train)" in result.output
    landed = {domain: set(pq.read_table(lake / "raw" / f"domain={domain}").column("user_id").to_pylist()) for domain in ("a", "b")}
    assert landed["a"] == {"0", "2", "3", "a-4", "a-5"}
    assert landed["b"] == {"0", "1", "b-4", "b-5", "b-6"}
    assert landed["a"] & landed["b"] == {"0"}
    holdout = set(pq.read_table(lake / "holdout" / "domain=b").column("user_id").to_pylist())
    assert holdout == {"2", "3"}
