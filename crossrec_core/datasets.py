"""Offline datasets straight from files into :class:`~crossrec_core.data.FeatureSet`.

Both loaders return :class:`Splits`: ``valid`` (tune, early-stop) and ``test`` (report)
FeatureSets. Fit a model on ``splits.valid`` (its holdout is the validation split),
then ``model.set_histories(splits.test)`` and evaluate on ``splits.test``: the test
FeatureSet's training interactions are the validation ones plus what the validation
split held out of warm users (what is known at test time), so its exclusions are right.

- :func:`load_pairs`: the CDRIB amazon layout (``/work/shared/data/amazon-cloth-sport``):
  folder ``<X>_<Y>`` holds domain X's interactions, ``train.txt``/``valid.txt``/``test.txt``
  of ``user<TAB>item`` ints, user ids shared across folders, item ids per domain.
  Valid and test users of the target folder are cold-start (no target train rows).
- :func:`load_recbole`: MovieLens-1M in RecBole atomic files, two domains made of genre
  lists, implicit feedback (every rating is an interaction), a temporal warm split and
  a seeded cold-start user split.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import scipy.sparse as sp

from crossrec_core.contracts import Segment
from crossrec_core.data import FeatureSet
from crossrec_core.errors import InputError, MissingDataError

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Validation and test views of one offline dataset (see the module docstring)."""

    valid: FeatureSet
    test: FeatureSet


def _read_tsv(path: Path, column_types: dict[str, pa.DataType], header: bool) -> pa.Table:
    """A tab-separated file, typed; a missing file or a bad row names the file (and row)."""
    if not path.is_file():
        raise MissingDataError(f"{path} does not exist")
    read_options = pv.ReadOptions(column_names=None if header else list(column_types))
    parse_options = pv.ParseOptions(delimiter="\t", quote_char=False)
    convert_options = pv.ConvertOptions(column_types=column_types, include_columns=list(column_types))
    try:
        return pv.read_csv(path, read_options=read_options, parse_options=parse_options, convert_options=convert_options)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        raise InputError(f"{path}: {err}") from None


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
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def load_pairs(directory: str | Path, source: str, target: str) -> Splits:
    """The CDRIB pair ``<source>_<target>`` / ``<target>_<source>`` under ``directory``.

    Train = both folders' ``train.txt``; the valid/test FeatureSets hold the target
    folder's ``valid.txt``/``test.txt`` as their COLD_START holdout. Item keys are the
    files' item ids (contiguous per domain), user keys index the sorted user ids."""
    started = time.perf_counter()
    directory = Path(directory)
    folders = {source: directory / f"{source}_{target}", target: directory / f"{target}_{source}"}
    columns = {"user": pa.int64(), "item": pa.int64()}
    tables = {
        (domain, split): _read_tsv(folders[domain] / f"{split}.txt", columns, header=False)
        for domain, splits in ((source, ("train",)), (target, ("train", "valid", "test")))
        for split in splits
    }
    users = {key: table["user"].to_numpy() for key, table in tables.items()}
    items = {key: table["item"].to_numpy() for key, table in tables.items()}
    for (domain, split), values in items.items():
        if values.size and values.min() < 0:
            raise InputError(f"{folders[domain] / f'{split}.txt'}: negative item id {values.min()}")
    user_ids = np.unique(np.concatenate(list(users.values())))
    n_items = {domain: int(max(v.max(initial=-1) for (d, _), v in items.items() if d == domain)) + 1 for domain in (source, target)}

    def matrix(domain: str, split: str) -> sp.csr_matrix:
        key = (domain, split)
        return _interactions(len(user_ids), n_items[domain], np.searchsorted(user_ids, users[key]), items[key])

    train = {source: matrix(source, "train"), target: matrix(target, "train")}
    warm = np.diff(train[target].indptr) > 0
    splits = {}
    for split in ("valid", "test"):
        holdout = matrix(target, split)
        overlap = np.flatnonzero(warm & (np.diff(holdout.indptr) > 0))
        if overlap.size:
            raise InputError(
                f"{folders[target] / f'{split}.txt'}: {overlap.size} users have target training rows, but this split "
                f"must hold cold-start users only (e.g. user {user_ids[overlap[0]]})"
            )
        splits[split] = FeatureSet(
            source=source,
            target=target,
            user_ids=user_ids.astype(str).astype(object),
            item_ids={d: np.arange(n).astype(str).astype(object) for d, n in n_items.items()},
            train=train,
            holdout={Segment.COLD_START: holdout},
        )
    log.info(
        "loaded %s -> %s from %s: %d users, %s train interactions, %d/%d valid/test cold-start users in %.1fs",
        source, target, directory, len(user_ids), {d: m.nnz for d, m in train.items()},
        splits["valid"].holdout_users(Segment.COLD_START).size, splits["test"].holdout_users(Segment.COLD_START).size,
        time.perf_counter() - started,
    )
    return Splits(valid=splits["valid"], test=splits["test"])


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
      interactions holds out their latest ``round(warm_fraction * n)`` (at least one)
      target interactions for test, and the ones just before for validation
      (timestamp order, ties by item key). Source interactions all train (the source
      domain is not evaluated; later source ratings of a user are not cut).
    """
    if min_target_interactions < 3:
        raise InputError(f"min_target_interactions must be >= 3 (one train, one validation, one test interaction), got {min_target_interactions}")
    started = time.perf_counter()
    directory = Path(directory)
    inter_path, item_path = directory / f"{dataset}.inter", directory / f"{dataset}.item"
    ratings = _read_tsv(
        inter_path, {"user_id:token": pa.string(), "item_id:token": pa.string(), "timestamp:float": pa.float64()}, header=True
    ).rename_columns(["user_id", "item_id", "timestamp"])
    items = _read_tsv(item_path, {"item_id:token": pa.string(), "genre:token": pa.string()}, header=True).rename_columns(
        ["item_id", "genre"]
    )
    domains = _genre_domains(items, source_genres, target_genres, item_path)
    ratings = ratings.join(domains, "item_id", join_type="inner")  # ratings of dropped movies go
    user_ids, user = _encode(ratings["user_id"])
    is_target = pc.equal(ratings["domain"], "target").to_numpy(zero_copy_only=False)
    item_ids, item_keys = {}, np.empty(len(user), dtype=np.int64)
    for name, mask in ((source, ~is_target), (target, is_target)):
        item_ids[name], item_keys[mask] = _encode(ratings["item_id"].filter(pa.array(mask)))
    n_users, n_target = len(user_ids), len(item_ids[target])
    source_train = _interactions(n_users, len(item_ids[source]), user[~is_target], item_keys[~is_target])

    # Target interactions in (user, timestamp, item) order; position within the user's history.
    t_user, t_item, t_time = user[is_target], item_keys[is_target], ratings["timestamp"].to_numpy()[is_target]
    order = np.lexsort((t_item, t_time, t_user))
    t_user, t_item = t_user[order], t_item[order]
    counts = np.bincount(t_user, minlength=n_users)
    position = np.arange(len(t_user)) - np.repeat(np.cumsum(counts) - counts, counts)

    rng = np.random.default_rng(seed)
    both = np.flatnonzero((counts > 0) & (np.diff(source_train.indptr) > 0))
    cold = rng.permutation(both)[: int(round(cold_start_fraction * both.size))]
    cold_split = np.zeros(n_users, dtype=np.int8)  # 0: not cold, 1: validation cold, 2: test cold
    cold_split[cold] = 1 + (np.arange(cold.size) % 2)
    held = np.where(counts >= min_target_interactions, np.maximum(1, np.round(warm_fraction * counts)).astype(np.int64), 0)
    from_end = (counts[t_user] - position)  # 1 for the latest interaction
    is_cold = cold_split[t_user] > 0
    warm_test = ~is_cold & (from_end <= held[t_user])
    warm_valid = ~is_cold & ~warm_test & (from_end <= 2 * held[t_user])
    base_train = ~is_cold & ~warm_test & ~warm_valid

    def target_matrix(mask: np.ndarray) -> sp.csr_matrix:
        return _interactions(n_users, n_target, t_user[mask], t_item[mask])

    common = {
        "source": source,
        "target": target,
        "user_ids": user_ids.astype(object),
        "item_ids": {name: ids.astype(object) for name, ids in item_ids.items()},
    }
    valid = FeatureSet(
        **common,
        train={source: source_train, target: target_matrix(base_train)},
        holdout={Segment.WARM: target_matrix(warm_valid), Segment.COLD_START: target_matrix(cold_split[t_user] == 1)},
    )
    test = FeatureSet(
        **common,
        train={source: source_train, target: target_matrix(base_train | warm_valid)},
        holdout={Segment.WARM: target_matrix(warm_test), Segment.COLD_START: target_matrix(cold_split[t_user] == 2)},
    )
    log.info(
        "loaded %s (%s -> %s) from %s: %d users, %d source items (%d ratings), %d target items (%d ratings), "
        "%d overlapping users, %d cold-start, %d warm held out, in %.1fs",
        dataset, source, target, directory, n_users, len(item_ids[source]), int((~is_target).sum()), n_target,
        int(is_target.sum()), both.size, cold.size, test.holdout_users(Segment.WARM).size, time.perf_counter() - started,
    )
    return Splits(valid=valid, test=test)
