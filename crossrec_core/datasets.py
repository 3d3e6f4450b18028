"""Offline datasets straight from files into :class:`~crossrec_core.data.FeatureSet`.

Both loaders return :class:`Splits`: ``valid`` (tune, early-stop) and ``test`` (report)
FeatureSets. Fit a model on ``splits.valid`` (its holdout is the validation split),
then ``model.set_histories(splits.test)`` and evaluate on ``splits.test``: the test
FeatureSet's training interactions are the validation ones plus what the validation
split held out of warm users (what is known at test time), so its exclusions are right.

- :func:`load_pairs`: the CDRIB amazon layout (e.g. ``../shared/data/amazon-cloth-sport``):
  folder ``<X>_<Y>`` holds domain X's interactions, ``train.txt``/``valid.txt``/``test.txt``
  of ``user<TAB>item`` ints; user ids below C (the common users) are one person in
  both folders, the others are per folder; item ids are per domain. Valid and test
  users of the target folder are cold-start (no target train rows).
- :func:`load_recbole`: MovieLens-1M in RecBole atomic files, two domains made of genre
  lists, implicit feedback (every rating is an interaction), a temporal warm split and
  a seeded cold-start user split.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import scipy.sparse as sp

from crossrec_core.contracts import HOLDOUT_SPLITS, Segment, warm_holdout_size
from crossrec_core.data import FeatureSet
from crossrec_core.errors import InputError, MissingDataError

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Validation and test views of one offline dataset (see the module docstring)."""

    valid: FeatureSet
    test: FeatureSet


def read_pairs(path: Path) -> pa.Table:
    """A headerless ``user<TAB>item`` file of a CDRIB pair: int64 columns ``user`` and
    ``item``; a missing file, or a line that is not two integers, is an error naming the file."""
    if not path.is_file():
        raise MissingDataError(f"{path} does not exist")
    names = ["user", "item"]
    try:
        return pv.read_csv(
            path,
            read_options=pv.ReadOptions(column_names=names),
            parse_options=pv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pv.ConvertOptions(column_types=dict.fromkeys(names, pa.int64())),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        raise InputError(f"{path}: not a file of user<TAB>item integer lines: {err}") from None


def read_atomic(path: Path, fields: list[str]) -> pa.Table:
    """The ``fields`` of a RecBole atomic file, every value a string."""
    if not path.is_file():
        raise MissingDataError(f"{path} does not exist")
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    names = [column.split(":", 1)[0] for column in header]
    missing = [f for f in fields if f not in names]
    if missing:
        raise InputError(f"{path}: missing field(s) {missing}; the header names {header}")
    try:
        return pv.read_csv(
            path,
            read_options=pv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), include_columns=fields),
        )
    except pa.ArrowInvalid as err:
        raise InputError(f"{path}: not a tab-separated RecBole atomic file: {err}") from err


def _encode(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, int64 key of every row): Arrow's dictionary encoding, then
    only the small dictionary is sorted (sorting a million Python strings takes seconds)."""
    encoded = (column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column).dictionary_encode()
    values = encoded.dictionary.to_numpy(zero_copy_only=False)
    order = np.argsort(values)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return values[order], rank[encoded.indices.to_numpy()]


def _interactions(n_users: int, n_items: int, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    """Binary CSR (implicit feedback: a repeated pair counts once)."""
    return _binary(sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items)))


def _latest_times(shape: tuple[int, int], users: np.ndarray, items: np.ndarray, times: np.ndarray) -> sp.csr_matrix:
    """CSR of the latest time of each (user, item) pair: the order in which histories
    keep a user's most recent items (FeatureSet.recency)."""
    order = np.lexsort((-times, items, users))
    users, items, times = users[order], items[order], times[order]
    first = np.ones(len(users), dtype=bool)
    first[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    return sp.csr_matrix((times[first].astype(np.float64), (users[first], items[first])), shape=shape)


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix = sp.csr_matrix(matrix)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


PairSplit = Literal["cdrib", "disjoint"]
PAIR_SPLITS: tuple[PairSplit, ...] = get_args(PairSplit)


def pair_folders(directory: Path, source: str, target: str) -> dict[str, Path]:
    """Domain -> the CDRIB folder holding its interactions (``<domain>_<other>``)."""
    return {source: directory / f"{source}_{target}", target: directory / f"{target}_{source}"}


def common_user_count(folders: Sequence[Path]) -> int:
    """C: ids below it are the same person in both domains. The CDRIB preparation
    numbers the common users first and draws every cold-start (valid/test) user from
    them, so C = 1 + the largest user id of any valid.txt or test.txt."""
    largest = -1
    for path in (folder / f"{split}.txt" for folder in folders for split in HOLDOUT_SPLITS):
        if path.is_file():
            users = read_pairs(path)["user"]
            largest = max(largest, pc.max(users).as_py() if len(users) else -1)
    if largest < 0:
        raise InputError(f"no valid/test rows under {[str(f) for f in folders]}: cannot tell the common users; pass common_users")
    return largest + 1


def pair_user_ids(ids: np.ndarray, domain: str, common_users: int) -> np.ndarray:
    """External user ids of a CDRIB folder's user numbers: a common user (id < C) keeps
    its number in both domains, any other user is the domain's own (``<domain>-<id>``)."""
    ids = np.asarray(ids, dtype=np.int64)
    text = ids.astype(str).astype(object)
    own = ids >= common_users
    text[own] = np.char.add(f"{domain}-", ids[own].astype(str)).astype(object)
    return text


def disjoint_validation(ids: np.ndarray) -> np.ndarray:
    """True for the user numbers that the ``disjoint`` split puts in validation: a
    fixed 64-bit mix (splitmix64's finaliser) of the id, even -> validation."""
    z = np.asarray(ids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(1)) == 0


def load_pairs(directory: str | Path, source: str, target: str, split: PairSplit = "cdrib", common_users: int | None = None) -> Splits:
    """The CDRIB pair ``<source>_<target>`` / ``<target>_<source>`` under ``directory``.

    Train = both folders' ``train.txt``; only user numbers below ``common_users`` (C,
    detected by :func:`common_user_count` unless given) are one person in both domains.
    The target folder's cold-start users are split two ways:

    - ``cdrib``: ``valid.txt`` validates, ``test.txt`` is reported, as the files give them
      (comparable with the papers; most test users are also validation users). A test
      user's validation items are ``known`` at test time: never ranked (unless the
      evaluator is asked for CDRIB's unmasked ranking).
    - ``disjoint``: every cold-start user (valid and test files) goes whole to validation
      or to test by a hash of the id (:func:`disjoint_validation`); no user is in both.

    Item keys are the files' item ids (contiguous per domain); user keys are the common
    users in id order, then each domain's own users (:func:`pair_user_ids`) in id order."""
    if split not in PAIR_SPLITS:
        raise InputError(f"split must be one of {PAIR_SPLITS}, got {split!r}")
    started = time.perf_counter()
    directory = Path(directory)
    folders = pair_folders(directory, source, target)
    tables = {
        (domain, name): read_pairs(folders[domain] / f"{name}.txt")
        for domain, names in ((source, ("train",)), (target, ("train", *HOLDOUT_SPLITS)))
        for name in names
    }
    for (domain, name), table in tables.items():
        for column in ("user", "item"):
            if len(table) and pc.min(table[column]).as_py() < 0:
                raise InputError(f"{folders[domain] / f'{name}.txt'}: negative {column} id {pc.min(table[column]).as_py()}")
    if common_users is None:
        common_users = common_user_count(list(folders.values()))
    numbers = {key: table["user"].to_numpy() for key, table in tables.items()}
    items = {key: table["item"].to_numpy() for key, table in tables.items()}
    # Keys: the common users in id order, then each domain's own users in id order.
    every = np.concatenate(list(numbers.values()))
    common = np.unique(every[every < common_users])
    own = {d: np.unique(np.concatenate([v[v >= common_users] for (dd, _), v in numbers.items() if dd == d])) for d in (source, target)}
    offsets = {source: common.size, target: common.size + own[source].size}
    user_ids = np.concatenate(
        [pair_user_ids(common, source, common_users)] + [pair_user_ids(own[d], d, common_users) for d in (source, target)]
    )
    n_items = {domain: int(max(v.max(initial=-1) for (d, _), v in items.items() if d == domain)) + 1 for domain in (source, target)}

    def matrix(domain: str, name: str, rows: np.ndarray | None = None) -> sp.csr_matrix:
        key = (domain, name)
        keep = slice(None) if rows is None else rows
        users = numbers[key][keep]
        keys = np.where(users < common_users, np.searchsorted(common, users), offsets[domain] + np.searchsorted(own[domain], users))
        return _interactions(len(user_ids), n_items[domain], keys, items[key][keep])

    train = {source: matrix(source, "train"), target: matrix(target, "train")}
    warm = np.diff(train[target].indptr) > 0
    for name in HOLDOUT_SPLITS:
        overlap = np.flatnonzero(warm & (np.diff(matrix(target, name).indptr) > 0))
        if overlap.size:
            raise InputError(
                f"{folders[target] / f'{name}.txt'}: {overlap.size} users have target training rows, but this split "
                f"must hold cold-start users only (e.g. user {user_ids[overlap[0]]})"
            )
    if split == "cdrib":
        valid_holdout, test_holdout = matrix(target, "valid"), matrix(target, "test")
        test_users = np.diff(test_holdout.indptr) > 0
        known = sp.diags(test_users.astype(np.float32)) @ valid_holdout  # test users' validation items
    else:
        halves = {
            part: {name: disjoint_validation(numbers[(target, name)]) == (part == "valid") for name in HOLDOUT_SPLITS}
            for part in ("valid", "test")
        }
        valid_holdout, test_holdout = (
            _binary(sum(matrix(target, name, halves[part][name]) for name in HOLDOUT_SPLITS)) for part in ("valid", "test")
        )
        known = None
    valid = FeatureSet(
        source=source,
        target=target,
        user_ids=user_ids,
        item_ids={d: np.arange(n).astype(str).astype(object) for d, n in n_items.items()},
        train=train,
        holdout={Segment.COLD_START: valid_holdout},
    )
    test = replace(valid, holdout={Segment.COLD_START: test_holdout}, known=known)
    overlapping = int(np.sum((np.diff(train[source].indptr) > 0) & warm))
    log.info(
        "loaded %s -> %s from %s (%s split, C=%d common users): %d users, %d active in both domains, %s train "
        "interactions, %d/%d valid/test cold-start users in %.1fs",
        source,
        target,
        directory,
        split,
        common_users,
        len(user_ids),
        overlapping,
        {d: m.nnz for d, m in train.items()},
        valid.holdout_users(Segment.COLD_START).size,
        test.holdout_users(Segment.COLD_START).size,
        time.perf_counter() - started,
    )
    return Splits(valid=valid, test=test)


def _genre_domains(items: pa.Table, source_genres: Sequence[str], target_genres: Sequence[str], path: Path) -> pa.Table:
    """(item_id, domain) for movies of exactly one genre list; movies of both or neither dropped."""
    genres = pc.split_pattern(pc.utf8_trim_whitespace(items["genre"].combine_chunks()), " ")
    flat = pa.table({"item_id": pc.list_parent_indices(genres), "genre": pc.list_flatten(genres)})
    in_source = pc.is_in(flat["genre"], pa.array(list(source_genres)))
    in_target = pc.is_in(flat["genre"], pa.array(list(target_genres)))
    movie = flat["item_id"].to_numpy()
    has_source = np.bincount(movie, weights=in_source.to_numpy(zero_copy_only=False), minlength=items.num_rows) > 0
    has_target = np.bincount(movie, weights=in_target.to_numpy(zero_copy_only=False), minlength=items.num_rows) > 0
    if not has_source.any() or not has_target.any():
        known = sorted(set(flat["genre"].to_pylist()))
        missing = "source" if not has_source.any() else "target"
        raise InputError(f"{path}: no movie carries a {missing} genre; genres in the file: {known}")
    keep = has_source ^ has_target
    domain = np.where(has_source, "source", "target")[keep]
    return pa.table({"item_id": items["item_id"].filter(pa.array(keep)), "domain": pa.array(domain)})


def load_recbole(
    directory: str | Path,
    source_genres: Sequence[str],
    target_genres: Sequence[str],
    source: str = "source",
    target: str = "target",
    warm_fraction: float = 0.2,
    cold_start_fraction: float = 0.1,
    min_target_interactions: int = 3,
    seed: int = 0,
    dataset: str = "ml-1m",
) -> Splits:
    """MovieLens in RecBole atomic files, split into two domains by genre.

    Domains: a movie with a genre of ``source_genres`` and none of ``target_genres`` is a
    source item, and vice versa; movies with both or neither are dropped. Every rating is
    an interaction. Splits:

    - cold-start: ``cold_start_fraction`` of the users active in both domains (seeded)
      lose their whole target history from training; half of them (by the same draw)
      are the validation split's COLD_START users, the other half the test split's.
    - warm: every other user with at least ``min_target_interactions`` target
      interactions holds out their latest :func:`~crossrec_core.contracts.warm_holdout_size`
      target interactions for test, and as many just before for validation
      (timestamp order, ties by item key). Source interactions all train (the source
      domain is not evaluated; later source ratings of a user are not cut).
    """
    if min_target_interactions < 3:
        raise InputError(
            f"min_target_interactions must be >= 3 (one train, one validation, one test interaction), got {min_target_interactions}"
        )
    started = time.perf_counter()
    directory = Path(directory)
    inter_path, item_path = directory / f"{dataset}.inter", directory / f"{dataset}.item"
    ratings = read_atomic(inter_path, ["user_id", "item_id", "timestamp"])
    try:
        ratings = ratings.set_column(2, "timestamp", pc.cast(ratings["timestamp"], pa.float64()))
    except pa.ArrowInvalid as err:
        raise InputError(f"{inter_path}: timestamp is not a number: {err}") from None
    items = read_atomic(item_path, ["item_id", "genre"])
    domains = _genre_domains(items, source_genres, target_genres, item_path)
    ratings = ratings.join(domains, "item_id", join_type="inner")  # ratings of dropped movies go
    user_ids, user = _encode(ratings["user_id"])
    is_target = pc.equal(ratings["domain"], "target").to_numpy(zero_copy_only=False)
    item_ids, item_keys = {}, np.empty(len(user), dtype=np.int64)
    for name, mask in ((source, ~is_target), (target, is_target)):
        item_ids[name], item_keys[mask] = _encode(ratings["item_id"].filter(pa.array(mask)))
    n_users, n_target = len(user_ids), len(item_ids[target])
    times = ratings["timestamp"].to_numpy()
    source_train = _interactions(n_users, len(item_ids[source]), user[~is_target], item_keys[~is_target])
    source_recency = _latest_times(source_train.shape, user[~is_target], item_keys[~is_target], times[~is_target])

    # Target interactions in (user, timestamp, item) order; position within the user's history.
    t_user, t_item, t_time = user[is_target], item_keys[is_target], times[is_target]
    order = np.lexsort((t_item, t_time, t_user))
    t_user, t_item, t_time = t_user[order], t_item[order], t_time[order]
    counts = np.bincount(t_user, minlength=n_users)
    position = np.arange(len(t_user)) - np.repeat(np.cumsum(counts) - counts, counts)

    rng = np.random.default_rng(seed)
    both = np.flatnonzero((counts > 0) & (np.diff(source_train.indptr) > 0))
    cold = rng.permutation(both)[: round(cold_start_fraction * both.size)]
    cold_split = np.zeros(n_users, dtype=np.int8)  # 0: not cold, 1: validation cold, 2: test cold
    cold_split[cold] = 1 + (np.arange(cold.size) % 2)
    held = np.where(counts >= min_target_interactions, warm_holdout_size(counts, warm_fraction), 0)
    from_end = counts[t_user] - position  # 1 for the latest interaction
    is_cold = cold_split[t_user] > 0
    warm_test = ~is_cold & (from_end <= held[t_user])
    warm_valid = ~is_cold & ~warm_test & (from_end <= 2 * held[t_user])
    base_train = ~is_cold & ~warm_test & ~warm_valid

    def target_matrix(mask: np.ndarray) -> sp.csr_matrix:
        return _interactions(n_users, n_target, t_user[mask], t_item[mask])

    def target_recency(mask: np.ndarray) -> sp.csr_matrix:
        return _latest_times((n_users, n_target), t_user[mask], t_item[mask], t_time[mask])

    valid = FeatureSet(
        source=source,
        target=target,
        user_ids=user_ids.astype(object),
        item_ids={name: ids.astype(object) for name, ids in item_ids.items()},
        train={source: source_train, target: target_matrix(base_train)},
        holdout={Segment.WARM: target_matrix(warm_valid), Segment.COLD_START: target_matrix(cold_split[t_user] == 1)},
        recency={source: source_recency, target: target_recency(base_train)},
    )
    test = replace(
        valid,
        train={source: source_train, target: target_matrix(base_train | warm_valid)},
        holdout={Segment.WARM: target_matrix(warm_test), Segment.COLD_START: target_matrix(cold_split[t_user] == 2)},
        recency={source: source_recency, target: target_recency(base_train | warm_valid)},
    )
    log.info(
        "loaded %s (%s -> %s) from %s: %d users, %d source items (%d ratings), %d target items (%d ratings), "
        "%d overlapping users, %d cold-start, %d warm held out, in %.1fs",
        dataset,
        source,
        target,
        directory,
        n_users,
        len(item_ids[source]),
        int((~is_target).sum()),
        n_target,
        int(is_target.sum()),
        both.size,
        cold.size,
        test.holdout_users(Segment.WARM).size,
        time.perf_counter() - started,
    )
    return Splits(valid=valid, test=test)
