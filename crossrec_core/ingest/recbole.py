"""``crossrec import recbole``: a RecBole atomic-file dataset split into two domains by genre.

RecBole atomic files are tab separated with a ``name:type`` header; ``<name>.inter`` holds
``user_id item_id rating timestamp`` and ``<name>.item`` holds ``item_id ... genre`` with
the genres separated by spaces (a genre such as ``Sci-Fi`` or ``Children's`` is one token).

A movie carrying a genre of the source list and none of the target list belongs to the
source domain, and the other way round; a movie carrying genres of both lists, or of
neither, is left out (the summary counts those movies and their ratings). Ratings keep
their REAL timestamps: each lands in the raw partition of its UTC date, as event_type
``rating`` with ``value`` = the rating and event id ``<name>.inter:<line>``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossrec_core.datasets import read_atomic
from crossrec_core.errors import InputError, MissingDataError
from crossrec_core.ingest.landing import (
    SECONDS_PER_DAY,
    ImportSummary,
    check_domain_name,
    count_distinct,
    land_daily,
    line_ids,
)
from crossrec_core.lake import Lake

EVENT_TYPE = "rating"
INTER_FIELDS = ["user_id", "item_id", "rating", "timestamp"]
ITEM_FIELDS = ["item_id", "genre"]
NUMBER = r"^\s*-?\d+(\.\d+)?\s*$"


def default_domain_name(genres: list[str]) -> str:
    """A safe domain name from the first genre: ``Sci-Fi`` -> ``scifi``."""
    return re.sub(r"[^a-z0-9_]", "", genres[0].lower())


def parse_genres(text: str, option: str) -> list[str]:
    genres = [g.strip() for g in text.split(",") if g.strip()]
    if not genres:
        raise InputError(f"{option}: give at least one genre, comma separated (e.g. 'Comedy,Romance')")
    return genres


def _carrying(lists: pa.ListArray, genres: list[str]) -> np.ndarray:
    """Per item: does it carry any of ``genres``?"""
    match = pc.is_in(pc.list_flatten(lists), value_set=pa.array(genres)).to_numpy(zero_copy_only=False)
    mask = np.zeros(len(lists), dtype=bool)
    mask[pc.list_parent_indices(lists).to_numpy()[match]] = True
    return mask


def _epoch_seconds(path: Path, timestamps: pa.ChunkedArray) -> np.ndarray:
    bad = pc.invert(pc.match_substring_regex(timestamps, NUMBER)).to_numpy(zero_copy_only=False)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: line {row + 2}: timestamp {timestamps[row].as_py()!r} is not a number of seconds ({int(bad.sum())} such lines)"
        )
    return np.floor(pc.cast(pc.utf8_trim_whitespace(timestamps), pa.float64()).to_numpy()).astype(np.int64)


def import_recbole(
    lake: Lake,
    directory: Path,
    source_genres: list[str],
    target_genres: list[str],
    source_name: str | None = None,
    target_name: str | None = None,
) -> ImportSummary:
    """Land the ratings of source-genre and target-genre movies in raw/, by UTC day."""
    clock = time.perf_counter()
    source = check_domain_name(source_name or default_domain_name(source_genres), "source name")
    target = check_domain_name(target_name or default_domain_name(target_genres), "target name")
    if source == target:
        raise InputError(f"source and target names must differ, both are {source!r}")
    shared = sorted(set(source_genres) & set(target_genres))
    if shared:
        raise InputError(f"genre(s) {shared} are in both the source and the target list")
    inter_files = sorted(directory.glob("*.inter")) if directory.is_dir() else []
    if len(inter_files) != 1:
        raise MissingDataError(f"{directory}: expected exactly one RecBole <name>.inter file, found {[p.name for p in inter_files]}")
    inter_path = inter_files[0]
    item_path = inter_path.with_suffix(".item")

    items = read_atomic(item_path, ITEM_FIELDS)
    if count_distinct(items["item_id"]) != items.num_rows:
        raise InputError(f"{item_path}: item_id is not unique ({items.num_rows - count_distinct(items['item_id'])} repeats)")
    lists = pc.split_pattern(pc.utf8_trim_whitespace(items["genre"].combine_chunks()), " ")
    known = set(pc.unique(pc.list_flatten(lists)).to_pylist())
    unknown = [g for g in source_genres + target_genres if g not in known]
    if unknown:
        raise InputError(f"{item_path}: no movie carries genre(s) {unknown}; genres present: {sorted(known - {''})}")
    in_source, in_target = _carrying(lists, source_genres), _carrying(lists, target_genres)
    movies = {
        source: items["item_id"].filter(pa.array(in_source & ~in_target)),
        target: items["item_id"].filter(pa.array(in_target & ~in_source)),
    }

    ratings = read_atomic(inter_path, INTER_FIELDS)
    seconds = _epoch_seconds(inter_path, ratings["timestamp"])
    raw = pa.table(
        {
            "user_id": ratings["user_id"],
            "item_id": ratings["item_id"],
            "ts": pc.utf8_trim_whitespace(ratings["timestamp"]),
            "event_id": line_ids(inter_path.name, ratings.num_rows),
            "event_type": pa.repeat(EVENT_TYPE, ratings.num_rows),
            "value": ratings["rating"],
        }
    )
    summary = ImportSummary(domains=[])
    users = {}
    for domain, domain_movies in movies.items():
        rows = pc.is_in(raw["item_id"], value_set=domain_movies).to_numpy(zero_copy_only=False)
        landed = land_daily(lake, domain, raw.filter(pa.array(rows)), seconds[rows] // SECONDS_PER_DAY, f"{inter_path.stem}.parquet")
        summary.domains.append(landed)
        users[domain] = pc.unique(ratings["user_id"].filter(pa.array(rows)))
        summary.details[f"{domain} movies (genres {', '.join(source_genres if domain == source else target_genres)})"] = len(domain_movies)
    outside = ratings.num_rows - sum(d.rows for d in summary.domains)
    summary.details["movies left out: genres of both lists"] = int((in_source & in_target).sum())
    summary.details["movies left out: none of the genres"] = int((~in_source & ~in_target).sum())
    summary.details["ratings left out (movies of neither domain)"] = outside
    summary.details["users rating in both domains"] = int(pc.sum(pc.is_in(users[source], value_set=users[target])).as_py())
    summary.details["users in the dataset"] = count_distinct(ratings["user_id"])
    summary.seconds = time.perf_counter() - clock
    return summary
