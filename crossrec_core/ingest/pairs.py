"""``crossrec import pairs``: a CDRIB-style cross-domain pair replayed as daily raw logs.

Layout (e.g. ../shared/data/amazon-cloth-sport)::

    DIR/<source>_<target>/train.txt valid.txt test.txt   interactions of the source domain
    DIR/<target>_<source>/train.txt valid.txt test.txt   interactions of the target domain

Every line is ``user_id<TAB>item_id``. Only user ids below C, the common users, are the
same person in both folders; ids from C upwards are numbered per folder, so they land
as ``<domain>-<id>`` (crossrec_core.datasets.pair_user_ids; C detected from the files by
``common_user_count`` unless given). Item ids are local to their domain. A folder's
valid.txt and test.txt hold COLD-START users of its domain (no train rows there,
history in the other domain).

* train.txt of each domain lands in raw/ as event_type ``interaction``, event id
  ``<folder>/train.txt:<line>``.
* The dataset has NO timestamps: the importer invents them. Each interaction gets a
  uniformly random day of the ``days`` days ending at ``end_date`` and a uniformly random
  second of that day, drawn from a generator seeded by (seed, domain role), so an import
  is repeatable. The order of a user's interactions in these SYNTHETIC times means nothing.
* valid.txt and test.txt never enter raw/ (the pipeline would train on them): they are
  kept as the dataset's evaluation set in the ``holdout`` table, by (domain, split).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossrec_core.contracts import HOLDOUT, HOLDOUT_SPLITS
from crossrec_core.datasets import common_user_count, pair_user_ids, read_pairs
from crossrec_core.dates import parse_ds
from crossrec_core.errors import InputError, MissingDataError
from crossrec_core.ingest.landing import (
    SECONDS_PER_DAY,
    ImportSummary,
    check_domain_name,
    count_distinct,
    day_of_ds,
    land_daily,
    line_ids,
    yesterday_utc,
)
from crossrec_core.lake import Lake

log = logging.getLogger(__name__)

TRAIN_FILE = "train.txt"
EVENT_TYPE = "interaction"


def _pair_rows(path: Path, domain: str, common_users: int) -> pa.Table:
    """A pair file's rows with external user ids (:func:`pair_user_ids`) and item ids, as text."""
    pairs = read_pairs(path)
    users = pair_user_ids(pairs["user"].to_numpy(), domain, common_users)
    return pa.table({"user_id": pa.array(users, pa.string()), "item_id": pc.cast(pairs["item"], pa.string())})


def _domain_folder(directory: Path, domain: str, other: str) -> Path:
    folder = directory / f"{domain}_{other}"
    if not folder.is_dir():
        present = sorted(p.parent.name for p in directory.glob(f"*/{TRAIN_FILE}")) if directory.is_dir() else []
        raise MissingDataError(
            f"{folder} does not exist: the folder <domain>_<other domain> holds a domain's interactions "
            f"(folders with a {TRAIN_FILE} in {directory}: {present or 'none'})"
        )
    return folder


def synthetic_times(rows: int, first_day: int, days: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(day number, epoch second) per row: a random day of the window, a random second of it."""
    day = first_day + rng.integers(0, days, size=rows)
    return day, day * SECONDS_PER_DAY + rng.integers(0, SECONDS_PER_DAY, size=rows)


def import_pairs(
    lake: Lake,
    directory: Path,
    source: str,
    target: str,
    days: int = 14,
    end_date: str | None = None,
    seed: int = 0,
    common_users: int | None = None,
) -> ImportSummary:
    """Land both domains' train.txt in raw/ over ``days`` days ending at ``end_date``
    (default: yesterday, UTC), with synthetic timestamps, and their valid/test files in
    the holdout table; user ids follow :func:`~crossrec_core.datasets.pair_user_ids`."""
    clock = time.perf_counter()
    check_domain_name(source, "source")
    check_domain_name(target, "target")
    if source == target:
        raise InputError(f"source and target must differ, both are {source!r}")
    if days < 1:
        raise InputError(f"days must be at least 1, got {days}")
    end_date = parse_ds(end_date or yesterday_utc())
    first_day = day_of_ds(end_date) - days + 1
    folders = {source: _domain_folder(directory, source, target), target: _domain_folder(directory, target, source)}
    if common_users is None:
        common_users = common_user_count(list(folders.values()))
    train = {domain: _pair_rows(folder / TRAIN_FILE, domain, common_users) for domain, folder in folders.items()}
    train_users = {domain: pc.unique(table["user_id"]) for domain, table in train.items()}

    summary = ImportSummary(domains=[])
    for role, (domain, table) in enumerate(train.items()):
        day, ts = synthetic_times(table.num_rows, first_day, days, np.random.default_rng([seed, role]))
        raw = pa.table(
            {
                "user_id": table["user_id"],
                "item_id": table["item_id"],
                "ts": pa.array(ts).cast(pa.string()),
                "event_id": line_ids(f"{folders[domain].name}/{TRAIN_FILE}", table.num_rows),
                "event_type": pa.repeat(EVENT_TYPE, table.num_rows),
                "value": pa.nulls(table.num_rows, pa.string()),
            }
        )
        summary.domains.append(land_daily(lake, domain, raw, day, file_name="train.parquet"))
    summary.details["common users (C: ids below it are one person in both domains)"] = common_users
    summary.details["users in both domains (train)"] = int(pc.sum(pc.is_in(train_users[source], value_set=train_users[target])).as_py())

    for domain, folder in folders.items():
        other = target if domain == source else source
        for split in HOLDOUT_SPLITS:
            held = _pair_rows(folder / f"{split}.txt", domain, common_users)
            lake.write_parquet_partition(HOLDOUT, held, domain=domain, split=split)
            users = pc.unique(held["user_id"])
            known_here = int(pc.sum(pc.is_in(users, value_set=train_users[domain])).as_py() or 0)
            known_other = int(pc.sum(pc.is_in(users, value_set=train_users[other])).as_py() or 0)
            summary.details[f"{domain} {split} rows (holdout)"] = held.num_rows
            summary.details[f"{domain} {split} users (holdout)"] = count_distinct(held["user_id"])
            summary.details[f"{domain} {split} users with {domain} train rows"] = known_here
            summary.details[f"{domain} {split} users with {other} train rows"] = known_other
            if known_here:
                log.warning("%s/%s.txt: %d users also have %s train rows: they are not cold-start", folder, split, known_here, domain)
    summary.details["timestamps"] = f"synthetic (seed {seed}), {days} days ending {end_date}"
    summary.seconds = time.perf_counter() - clock
    return summary
