"""Stable integer keys: known ids keep their keys, new ids are appended.

Yesterday's embeddings warm-start today's model only if a user or item keeps its row
from night to night. The keys of a features partition are therefore those of the most
recent EARLIER partition (never the partition being rewritten, so a rerun of a date
assigns the same keys), plus one new key per id not seen before: continuing after the
largest key, in id order (UTF-8 byte order), so the assignment is deterministic. User
keys are one index across domains; item keys one index per domain.

The assignment runs on the driver with Arrow, like Spark ML's StringIndexer collects its
labels: the distinct ids are far fewer than the interactions, and a global order over
them in Spark would pull every id into one partition anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossrec_core.contracts import ITEM_KEYS, USER_KEYS, Table
from crossrec_core.lake import Lake


@dataclass(frozen=True)
class KeySpec:
    id_column: str
    key_column: str
    group: str | None  # keys are unique within a group (items: per domain)


KEY_SPECS = {
    USER_KEYS.name: KeySpec("user_id", "user_key", None),
    ITEM_KEYS.name: KeySpec("item_id", "item_key", "domain"),
}


def previous_keys_ds(lake: Lake, ds: str) -> str | None:
    """The latest features partition strictly before ``ds``, if any."""
    earlier = [p["ds"] for p in lake.parquet_partitions(USER_KEYS) if p["ds"] < ds]
    return max(earlier, default=None)


def _in_group(table: pa.Table, spec: KeySpec, value: str | None) -> pa.Table:
    return table if spec.group is None else table.filter(pc.equal(table[spec.group], value))


def append_keys(table: Table, previous: pa.Table, current: pa.Table) -> tuple[pa.Table, dict[str | None, int]]:
    """``previous`` keys plus a new key for every id of ``current`` without one.

    ``current`` holds the ids seen now (and the group column for items). Returns the
    keys, validated against ``table``, and the number of new keys per group (None for
    users).
    """
    spec = KEY_SPECS[table.name]
    groups = [None] if spec.group is None else sorted(pc.unique(current[spec.group]).to_pylist())
    parts, appended = [table.validate(previous)], {}
    for value in groups:  # one pass per domain, not per id
        known = _in_group(previous, spec, value)
        ids = pc.unique(_in_group(current, spec, value)[spec.id_column].combine_chunks())
        new_ids = ids.filter(pc.invert(pc.is_in(ids, value_set=known[spec.id_column].combine_chunks())))
        new_ids = new_ids.take(pc.array_sort_indices(new_ids))
        first = pc.max(known[spec.key_column]).as_py() + 1 if known.num_rows else 0
        columns = {spec.id_column: new_ids, spec.key_column: pa.array(np.arange(first, first + len(new_ids), dtype=np.int64))}
        if spec.group is not None:
            columns[spec.group] = pa.repeat(pa.scalar(value, pa.string()), len(new_ids))
        parts.append(table.validate(pa.table(columns)))
        appended[value] = len(new_ids)
    return pa.concat_tables(parts), appended


def stable_keys(lake: Lake, table: Table, previous_ds: str | None, current: pa.Table) -> tuple[pa.Table, dict[str | None, int]]:
    """The keys of features partition ``previous_ds`` (none if None) extended by ``current``."""
    previous = lake.read_parquet_partition(table, ds=previous_ds) if previous_ds else table.arrow_schema().empty_table()
    return append_keys(table, previous, current)
