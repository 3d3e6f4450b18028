"""Serving: the served tables read back, restored, checked for freshness, vacuumed and
compacted (the publish stage that writes them is crossrec_core.publish).

* Readers go through a snapshot (a table version) with partition pruning
  (``Lake.delta_dataset``), never a directory listing and never the whole table.
* Every row's ``model_version`` is the model directory under the lake root; its card is
  :func:`crossrec_core.model_store.read_card`.

This module imports neither torch nor Spark at the top: ``crossrec recs`` stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from crossrec_core.contracts import ALERTS, RECOMMENDATIONS, RUN_REPORTS, SCORES, Segment, Table
from crossrec_core.errors import InputError
from crossrec_core.lake import Lake, LakeError, MissingPartitionError
from crossrec_core.model_store import MODEL_FILES, MODEL_NIGHTS, model_version

log = logging.getLogger(__name__)

DELTA_TABLES = (RECOMMENDATIONS, RUN_REPORTS, ALERTS)
# Tables written one small row at a time (a file per stage run or alert): `crossrec compact`
# merges their files. Recommendations are not: publish writes each partition whole.
COMPACTED_TABLES = (RUN_REPORTS, ALERTS)
SERVED_COLUMNS = ["rank", "item_id", "score", "model_version", "segment", "because"]


def restore_recommendations(lake: Lake, version: int) -> int:
    """Roll the WHOLE of ``serving/recommendations`` back to the content of ``version``:
    every ds and domain, so nights published after ``version`` are no longer served (one
    new commit; time travel keeps every version in between). Returns the new table version.
    To roll back one night only, see :func:`restore_night`."""
    table = lake.delta_table(RECOMMENDATIONS)
    if not 0 <= version < table.version():
        raise LakeError(f"{RECOMMENDATIONS.path}: version {version} is not an earlier version (latest is {table.version()})")
    table.restore(version)
    log.info("restored %s to the content of version %d as version %d", RECOMMENDATIONS.path, version, table.version())
    return table.version()


def restore_night(lake: Lake, ds: str, version: int) -> int:
    """Serve again, for night ``ds`` only, the rows that table ``version`` held for it (every
    domain of that ds); other nights stay as they are. One delta-rs commit replaces the ds
    partition. Returns the new table version."""
    latest = lake.delta_table(RECOMMENDATIONS).version()
    if not 0 <= version < latest:
        raise LakeError(f"{RECOMMENDATIONS.path}: version {version} is not an earlier version (latest is {latest})")
    earlier = snapshot(lake, RECOMMENDATIONS, version)
    if ds not in earlier.days():
        raise MissingPartitionError(
            f"{RECOMMENDATIONS.path} version {version} has no partition ds={ds}; days present: {', '.join(earlier.days()) or 'none'}"
        )
    try:
        rows = earlier.dataset.to_table(filter=pc.field("ds") == ds)
    except FileNotFoundError as err:
        raise LakeError(
            f"{RECOMMENDATIONS.path} version {version}: its files for ds={ds} were vacuumed ({err}); "
            "versions older than the vacuum's --keep-days can no longer be restored"
        ) from None
    new_version = lake.replace_delta_rows(RECOMMENDATIONS, rows, where={"ds": ds}, commit_info={"restored_ds": ds, "from_version": version})
    log.info("restored ds=%s of %s to its rows of version %d as version %d", ds, RECOMMENDATIONS.path, version, new_version)
    return new_version


# ---- freshness -------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedList:
    """The list served for one domain: its newest ds partition in the current snapshot."""

    domain: str
    ds: str | None  # None: nothing served for the domain
    rows: int = 0
    model_version: str | None = None
    published_at: datetime | None = None  # when its files were committed

    def age_hours(self, now: datetime) -> float | None:
        return None if self.published_at is None else (now - self.published_at).total_seconds() / 3600


def served_lists(lake: Lake, domains: Iterable[str]) -> list[ServedList]:
    """What is served for each of ``domains`` and for every other domain in the table,
    from the Delta log's file entries (row counts, commit times; no data read)."""
    if not lake.delta_exists(RECOMMENDATIONS):
        return [ServedList(domain, None) for domain in sorted(set(domains))]
    delta = lake.delta_table(RECOMMENDATIONS)
    files = pa.table(delta.get_add_actions(flatten=True)).to_pylist()
    newest: dict[str, str] = {}
    for f in files:
        domain, ds = f["partition.domain"], f["partition.ds"]
        newest[domain] = max(newest.get(domain, ds), ds)
    lists = []
    for domain in sorted(set(domains) | set(newest)):
        ds = newest.get(domain)
        if ds is None:
            lists.append(ServedList(domain, None))
            continue
        partition = [f for f in files if f["partition.domain"] == domain and f["partition.ds"] == ds]
        committed = datetime.fromtimestamp(max(f["modification_time"] for f in partition) / 1000, UTC)  # epoch ms
        served = latest_served(lake, domain) or {}
        lists.append(
            ServedList(
                domain=domain,
                ds=ds,
                rows=sum(f["num_records"] for f in partition),
                model_version=served.get("model_version"),
                published_at=committed,
            )
        )
    return lists


# ---- reading ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """One version of a Delta table: its number, its partitions and a pyarrow dataset."""

    table: Table
    version: int
    partitions: list[dict[str, str]]
    dataset: pads.Dataset

    def days(self, **fixed: str) -> list[str]:
        """The ``ds`` values present (matching ``fixed`` partition values), ascending."""
        return sorted({p["ds"] for p in self.partitions if all(p.get(k) == v for k, v in fixed.items())})


def snapshot(lake: Lake, table: Table, version: int | None = None) -> Snapshot:
    """A consistent snapshot: the version is pinned first, so a concurrent commit can't
    slip in between reading the partition list and the files."""
    delta = lake.delta_table(table, version)
    pinned = delta.version()
    return Snapshot(table, pinned, delta.partitions(), lake.delta_dataset(table, pinned))


def latest_served(lake: Lake, domain: str, before_ds: str | None = None) -> dict[str, str] | None:
    """``{"ds", "model_version"}`` of the newest recommendations partition of ``domain``
    (before ``before_ds`` when given), or None when nothing is served."""
    if not lake.delta_exists(RECOMMENDATIONS):
        return None
    current = snapshot(lake, RECOMMENDATIONS)
    days = [d for d in current.days(domain=domain) if before_ds is None or d < before_ds]
    if not days:
        return None
    rows = current.dataset.to_table(columns=["model_version"], filter=(pc.field("ds") == days[-1]) & (pc.field("domain") == domain)).slice(
        0, 1
    )
    return {"ds": days[-1], "model_version": rows["model_version"][0].as_py()} if rows.num_rows else None


@dataclass
class UserRecommendations:
    """One user's list in one partition of one table version (``rows`` sorted by rank).

    ``known`` is False when the user has no list there: ``rows`` then hold that
    partition's fallback (popularity) list, or nothing when it has none."""

    user_id: str
    domain: str
    ds: str
    table_version: int
    known: bool
    rows: pa.Table = field(repr=False)

    @property
    def segment(self) -> str:
        return self.rows["segment"][0].as_py() if self.known else Segment.FALLBACK.value

    @property
    def model_version(self) -> str | None:
        return self.rows["model_version"][0].as_py() if self.rows.num_rows else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "known": self.known,
            "domain": self.domain,
            "ds": self.ds,
            "table_version": self.table_version,
            "model_version": self.model_version,
            "segment": self.segment,
            "recommendations": self.rows.select(["rank", "item_id", "score", "because"]).to_pylist(),
        }


def _fallback_list(dataset: pads.Dataset, partition: pc.Expression, k: int | None) -> pa.Table:
    """The popularity list served to fallback users of one partition, for ids it doesn't know.

    Fallback users with some target history have it excluded from their list, so the
    full list is the one of a user who excluded nothing: the longest list, with the
    highest total score among the longest (popularity does not depend on the user)."""
    rows = dataset.to_table(columns=["user_id", *SERVED_COLUMNS], filter=partition & (pc.field("segment") == Segment.FALLBACK.value))
    if not rows.num_rows:
        return rows.select(SERVED_COLUMNS)
    lists = rows.group_by("user_id").aggregate([("rank", "count"), ("score", "sum")])
    best = lists.sort_by([("rank_count", "descending"), ("score_sum", "descending"), ("user_id", "ascending")])["user_id"][0]
    chosen = rows.filter(pc.equal(rows["user_id"], best)).sort_by("rank")
    return (chosen if k is None else chosen.slice(0, k)).select(SERVED_COLUMNS)


def user_recommendations(
    lake: Lake, user_id: str, domain: str, ds: str | None = None, version: int | None = None, k: int | None = None
) -> UserRecommendations:
    """The user's top-``k`` list (all ranks when None) in partition (ds, domain) of table
    ``version``; defaults: the latest version and its newest ds of ``domain``."""
    current = snapshot(lake, RECOMMENDATIONS, version)
    days = current.days(domain=domain)
    if ds is None:
        if not days:
            raise MissingPartitionError(f"{RECOMMENDATIONS.path} version {current.version} holds no recommendations for domain {domain!r}")
        ds = days[-1]
    elif ds not in days:
        raise MissingPartitionError(
            f"{RECOMMENDATIONS.path} version {current.version} has no partition ds={ds} domain={domain}; "
            f"days present: {', '.join(days) or 'none'}"
        )
    partition = (pc.field("ds") == ds) & (pc.field("domain") == domain)
    selected = partition & (pc.field("user_id") == user_id)
    if k is not None:
        selected = selected & (pc.field("rank") <= k)
    rows = current.dataset.to_table(columns=SERVED_COLUMNS, filter=selected).sort_by("rank")
    if rows.num_rows:
        return UserRecommendations(user_id, domain, ds, current.version, True, rows)
    return UserRecommendations(user_id, domain, ds, current.version, False, _fallback_list(current.dataset, partition, k))


# ---- history ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TableVersion:
    table: str
    version: int
    timestamp: datetime
    operation: str
    parameters: dict[str, Any]
    rows: int
    files: int


def table_versions(lake: Lake, table: Table, limit: int | None = None) -> list[TableVersion]:
    """The newest ``limit`` versions of a Delta table (newest first), with the rows and
    files of each version's snapshot, from the log's file statistics (no data read)."""
    latest = lake.delta_table(table)
    versions = []
    for commit in latest.history(limit):
        at_version = lake.delta_table(table, commit["version"])
        versions.append(
            TableVersion(
                table=table.path,
                version=commit["version"],
                timestamp=datetime.fromtimestamp(commit["timestamp"] / 1000, UTC),
                operation=commit.get("operation", ""),
                parameters=commit.get("operationParameters", {}),
                rows=at_version.count(),
                files=len(at_version.file_uris()),
            )
        )
    return versions


# ---- retention -------------------------------------------------------------------------
@dataclass
class VacuumResult:
    dry_run: bool
    removed_partitions: list[str] = field(default_factory=list)  # "<table path> ds=... [domain=...]"
    removed_files: list[str] = field(default_factory=list)  # files vacuumed from Delta tables
    delete_commits: dict[str, int] = field(default_factory=dict)  # table path -> new version


def _cutoff(days: Iterable[str], keep_days: int) -> str | None:
    """The oldest ds kept: ``keep_days`` before the newest ds (None: nothing present)."""
    days = sorted(days)
    return (date.fromisoformat(days[-1]) - timedelta(days=keep_days)).isoformat() if days else None


def _served_model_versions(lake: Lake, from_ds: str | None) -> set[str]:
    """Model versions that recommendations partitions from ``from_ds`` on link to (streamed)."""
    if from_ds is None:
        return set()
    versions: set[str] = set()
    batches = snapshot(lake, RECOMMENDATIONS).dataset.to_batches(columns=["model_version"], filter=pc.field("ds") >= from_ds)
    for batch in batches:
        versions.update(pc.unique(batch["model_version"]).to_pylist())
    return versions


def vacuum_lake(lake: Lake, keep_days: int, dry_run: bool = False) -> VacuumResult:
    """Drop every ds partition older than ``keep_days`` before the table's newest ds.

    Delta tables: one delta-rs delete commit per table, then a vacuum of files no longer
    referenced for longer than ``keep_days`` (time travel keeps working within the kept
    window). scores/ and models/ partitions older than the cutoff are removed, except
    the models the remaining recommendations link to (the served model is never lost)."""
    if keep_days < 0:
        raise InputError(f"keep_days must be >= 0, got {keep_days}")
    result = VacuumResult(dry_run=dry_run)
    kept_from: dict[str, str | None] = {}
    for table in DELTA_TABLES:
        if not lake.delta_exists(table):
            continue
        delta = lake.delta_table(table)
        present = sorted({p["ds"] for p in delta.partitions()})
        cutoff = kept_from[table.name] = _cutoff(present, keep_days)
        old = [d for d in present if cutoff and d < cutoff]
        result.removed_partitions += [f"{table.path} ds={d}" for d in old]
        if old and not dry_run:
            delta.delete(f"ds < '{cutoff}'")
            result.delete_commits[table.path] = delta.version()
        # full: also files no commit references (a publish that died between moving its
        # files in and committing them), once they are older than the kept window
        vacuumed = delta.vacuum(retention_hours=keep_days * 24, enforce_retention_duration=False, dry_run=dry_run, full=True)
        result.removed_files += [f"{table.path}/{f}" for f in vacuumed]

    served = _served_model_versions(lake, kept_from.get(RECOMMENDATIONS.name))
    for table in (SCORES, MODEL_FILES):
        partitions = lake.parquet_partitions(table)
        cutoff = _cutoff((p["ds"] for p in partitions), keep_days)
        if cutoff is None:
            continue  # nothing stored
        for partition in partitions:
            if partition["ds"] >= cutoff or (table is MODEL_FILES and model_version(**partition) in served):
                continue
            result.removed_partitions.append(f"{table.path} " + " ".join(f"{k}={v}" for k, v in partition.items()))
            if not dry_run:
                lake.delete_parquet_partition(table, **partition)
                _remove_empty_parents(lake.partition_path(table, **partition), lake.root / table.path)
    if not dry_run:  # a night none of whose models is left keeps nothing but its candidate pointer
        for night in lake.parquet_partitions(MODEL_NIGHTS):
            if not lake.parquet_partitions(MODEL_FILES, ds=night["ds"]):
                lake.delete_parquet_partition(MODEL_NIGHTS, **night)
    log.info(
        "vacuum (keep %d days%s): %d partitions, %d files removed",
        keep_days,
        ", dry run" if dry_run else "",
        len(result.removed_partitions),
        len(result.removed_files),
    )
    return result


@dataclass(frozen=True)
class Compacted:
    table: str
    files_removed: int
    files_added: int
    table_version: int


def compact_tables(lake: Lake) -> list[Compacted]:
    """Merge the small files of run_reports and alerts, per ds partition (delta-rs
    ``optimize.compact``: one commit per table, rows unchanged). The replaced files stay on
    disk for time travel until ``vacuum_lake`` removes them."""
    results = []
    for table in COMPACTED_TABLES:
        if not lake.delta_exists(table):
            continue
        delta = lake.delta_table(table)
        metrics = delta.optimize.compact()
        results.append(Compacted(table.path, metrics["numFilesRemoved"], metrics["numFilesAdded"], delta.version()))
        log.info("compacted %s: %d files into %d", table.path, metrics["numFilesRemoved"], metrics["numFilesAdded"])
    return results


def _remove_empty_parents(path: Path, stop: Path) -> None:
    for parent in path.parents:
        if parent == stop or stop not in parent.parents:
            return
        try:
            parent.rmdir()  # only when empty
        except OSError:
            return
