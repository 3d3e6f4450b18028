"""Lake I/O: partition paths, atomic Parquet partitions, Delta commits, snapshot reads.

Rules kept here so that no stage has to remember them (DESIGN.md, STACK.md):

* A partition is replaced atomically: it is written aside under ``<lake>/_staging`` and
  swapped into place with one ``renameat2(RENAME_EXCHANGE)`` (Linux), so a crash at any
  instant leaves the previous partition or the new one, never a mix. Writers of one
  partition take turns (``staging_area``), and each removes what a killed one left aside.
* Delta tables get Parquet files (written by Spark, torch or pyarrow) moved under the
  table with plain names, then ONE delta-rs commit that replaces the partition.
* Delta reads go through the snapshot's file list with an explicit filesystem; the
  default-filesystem ``to_pyarrow_table()``/``to_pyarrow_dataset()`` abort the
  interpreter at exit (delta-rs #2184) and directory listings see removed files.
* Every path is resolved and checked to stay under the lake root.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from crossrec_core.contracts import Table, TableFormat
from crossrec_core.errors import CrossrecError, InputError, MissingDataError

log = logging.getLogger(__name__)
T = TypeVar("T")


COMMIT_ATTEMPTS = 20


def retry_commit(commit: Callable[[], T]) -> T:
    """Run ``commit`` (a Delta write) again while a concurrent commit wins the race.
    delta-rs rebases a commit (up to CommitProperties.max_commit_retries) only when nothing
    it read changed; crossrec's writes replace a partition or a row (overwrite with a
    predicate), so a neighbour's commit to the same table (the other domain's publish or
    clean report, a second alert) makes delta-rs give up with CommitFailedError ("a
    concurrent transaction deleted data this operation read"). Repeating the write reads
    the new snapshot and then succeeds."""
    from deltalake.exceptions import CommitFailedError

    for attempt in range(COMMIT_ATTEMPTS - 1):
        try:
            return commit()
        except CommitFailedError:
            time.sleep(0.05 * (attempt + 1))
    return commit()


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Create or replace ``path`` through ``write(staged sibling)`` and a rename: readers
    see the old file or the new one, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(staged)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)  # only left when the write failed


STAGING_DIR = "_staging"
LOCKS_DIR = "_locks"
_STAGED_SUFFIX = re.compile(r"__[0-9a-f]{32}")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class LakeError(CrossrecError):
    """A lake operation failed; the message names the path."""


class MissingPartitionError(LakeError, MissingDataError):
    """A required input partition does not exist; the message names the expected path."""


class UnsafePathError(LakeError, InputError):
    """A path would leave the lake root."""


@dataclass(frozen=True)
class WriteResult:
    path: Path
    rows: int
    bytes: int
    files: int


def _exchange(staged: Path, live: Path) -> None:
    """Atomically swap two existing directories (Linux renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    rc = renameat2(_AT_FDCWD, os.fsencode(staged), _AT_FDCWD, os.fsencode(live), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(live))


def _swap_into_place(staged: Path, live: Path) -> None:
    live.parent.mkdir(parents=True, exist_ok=True)
    if not live.exists():
        os.rename(staged, live)  # atomic; fails if someone created `live` meanwhile
        return
    try:
        _exchange(staged, live)
    except OSError as err:
        if err.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
        # No renameat2 (not Linux, or a filesystem without it): two renames. A crash
        # between them leaves the previous partition under `<live>.previous`, which
        # `_recover` puts back on the next access.
        backup = live.with_name(live.name + ".previous")
        shutil.rmtree(backup, ignore_errors=True)
        os.rename(live, backup)
        os.rename(staged, live)
        shutil.rmtree(backup, ignore_errors=True)
        return
    shutil.rmtree(staged)  # after the exchange `staged` holds the old partition


def _recover(live: Path) -> None:
    backup = live.with_name(live.name + ".previous")
    if backup.exists() and not live.exists():
        os.rename(backup, live)


def dir_size(path: Path) -> tuple[int, int]:
    """(bytes, files) of the data files under ``path``, ignoring hidden/_ files."""
    total = files = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.name.startswith((".", "_")):
            total += p.stat().st_size
            files += 1
    return total, files


def _file_stats(path: Path) -> dict[str, Any]:
    """Delta AddAction stats from the Parquet footer (row count, min/max, nulls).

    Built here because delta-rs computes statistics only for data it writes itself: the
    scorer's Parquet files are committed as they were written (``create_write_transaction``
    takes ready AddActions), so that a large partition is never read back to be rewritten."""
    meta = pq.ParquetFile(path).metadata
    stats: dict[str, Any] = {"numRecords": meta.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    for ci in range(meta.num_columns):
        name = meta.schema.column(ci).path
        if "." in name:  # a nested column's leaf (because.list.element): Delta keeps no stats for lists
            continue
        nulls, lows, highs = 0, [], []
        for rg in range(meta.num_row_groups):
            s = meta.row_group(rg).column(ci).statistics
            if s is None:
                break
            nulls += s.null_count or 0
            if s.has_min_max and isinstance(s.min, (int, float, str)):
                lows.append(s.min)
                highs.append(s.max)
        else:
            stats["nullCount"][name] = nulls
            if lows and len(lows) == meta.num_row_groups:
                stats["minValues"][name] = min(lows)
                stats["maxValues"][name] = max(highs)
    return stats


def _sql_literal(value: str | int) -> str:
    """A Delta predicate literal: integers as they are, strings quoted with quotes doubled."""
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


class Lake:
    """One lake root (``CROSSREC_LAKE``) and every read and write under it."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r})"

    # ---- paths -------------------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise UnsafePathError(f"{path} resolves to {resolved}, outside the lake root {self.root}")
        return resolved

    def table_root(self, table: Table) -> Path:
        return self._inside(self.root / table.path)

    def partition_path(self, table: Table, **values: str) -> Path:
        """``<root>/<table>/<k>=<v>/...[/<subdir>]`` with every partition column given."""
        if sorted(values) != sorted(table.partition_names):
            raise ValueError(f"{table.name} is partitioned by {table.partition_names}, got {sorted(values)}")
        path = self.root / table.path
        for name in table.partition_names:
            value = str(values[name])
            if not value or "/" in value or value in (".", "..") or "\x00" in value:
                raise UnsafePathError(f"{table.name}: partition value {name}={value!r} is not a safe path segment")
            path = path / f"{name}={value}"
        if table.subdir:
            path = path / table.subdir
        return self._inside(path)

    def require_partition(self, table: Table, **values: str) -> Path:
        path = self.partition_path(table, **values)
        _recover(path)
        if not path.is_dir():
            raise MissingPartitionError(f"{table.name}: required input partition {path} does not exist")
        return path

    # ---- atomic Parquet partitions ------------------------------------------------
    @contextmanager
    def replace_partition(self, table: Table, **values: str) -> Iterator[Path]:
        """Yield an empty staging directory; on success swap it in as the partition.

        For a table with a ``subdir`` the swapped unit is the whole partition directory
        (e.g. ``features/ds=D``), so sibling sub-tables are replaced together; write each
        sub-table to ``staging / table.subdir``. On an exception the staging directory is
        removed and the live partition is untouched.
        """
        live = self.partition_path(table, **values)
        if table.subdir:
            live = live.parent
        with self.staging_area(live.relative_to(self.root).as_posix().replace("/", "__")) as staged:
            _recover(live)
            yield staged
            _swap_into_place(staged, live)

    @contextmanager
    def staging_area(self, name: str) -> Iterator[Path]:
        """A fresh directory under ``<lake>/_staging`` for the work named ``name`` (one
        partition's replacement, one publish), removed afterwards.

        Work of one name takes turns: an exclusive ``flock`` on ``<lake>/_locks/NAME.lock``,
        which the kernel releases when its holder dies, kill -9 included. So whatever a
        dead holder left aside is an orphan, and the next holder removes it first:
        half-written copies do not pile up under ``_staging``."""
        staging_root, locks = self.root / STAGING_DIR, self.root / LOCKS_DIR
        staging_root.mkdir(parents=True, exist_ok=True)
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("waiting for another writer of %s (lock %s)", name, lock.name)
                fcntl.flock(lock, fcntl.LOCK_EX)
            for orphan in staging_root.iterdir():
                if orphan.name.startswith(name) and _STAGED_SUFFIX.fullmatch(orphan.name[len(name) :]):
                    log.warning("removing %s: left aside by a writer that died", orphan)
                    shutil.rmtree(orphan, ignore_errors=True)
            staged = staging_root / f"{name}__{uuid.uuid4().hex}"
            staged.mkdir()
            try:
                yield staged
            finally:
                shutil.rmtree(staged, ignore_errors=True)

    def write_parquet_partition(self, table: Table, data: pa.Table, **values: str) -> WriteResult:
        """Validate ``data`` against the contract and atomically replace one partition."""
        if table.format is not TableFormat.PARQUET:
            raise ValueError(f"{table.name} is a {table.format} table")
        data = table.validate(data)
        with self.replace_partition(table, **values) as staged:
            target = staged / table.subdir if table.subdir else staged
            target.mkdir(parents=True, exist_ok=True)
            pq.write_table(data, target / "part-00000.parquet")
        live = self.partition_path(table, **values)
        size, files = dir_size(live)
        return WriteResult(live, data.num_rows, size, files)

    def read_parquet_partition(self, table: Table, columns: list[str] | None = None, **values: str) -> pa.Table:
        path = self.require_partition(table, **values)
        return pads.dataset(path, format="parquet", schema=table.arrow_schema(), exclude_invalid_files=False).to_table(columns=columns)

    def parquet_partitions(self, table: Table, **fixed: str) -> list[dict[str, str]]:
        """The partitions present, as dicts of partition values, sorted."""
        base = self.root / table.path
        found: list[dict[str, str]] = []
        names = table.partition_names

        def walk(path: Path, depth: int, acc: dict[str, str]) -> None:
            if depth == len(names):
                found.append(dict(acc))
                return
            prefix = f"{names[depth]}="
            if not path.is_dir():
                return
            for child in sorted(path.iterdir()):
                if child.is_dir() and child.name.startswith(prefix) and not child.name.endswith(".previous"):
                    value = child.name[len(prefix) :]
                    if fixed.get(names[depth], value) == value:
                        walk(child, depth + 1, {**acc, names[depth]: value})

        walk(base, 0, {})
        return found

    def delete_parquet_partition(self, table: Table, **values: str) -> None:
        live = self.partition_path(table, **values)
        if table.subdir:
            live = live.parent
        trash = self.root / STAGING_DIR / f"deleted__{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        if live.exists():
            os.rename(live, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # ---- Delta ---------------------------------------------------------------------
    def delta_table(self, table: Table, version: int | None = None):
        from deltalake import DeltaTable

        root = self.table_root(table)
        if not DeltaTable.is_deltatable(str(root)):
            raise MissingPartitionError(f"{table.name}: no Delta table at {root}")
        if version is not None:
            latest = DeltaTable(str(root)).version()
            if not 0 <= version <= latest:
                raise MissingPartitionError(f"{table.name}: no version {version} at {root} (versions 0 to {latest})")
        return DeltaTable(str(root), version=version)

    def delta_exists(self, table: Table) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(str(self.table_root(table)))

    def _ensure_delta(self, table: Table):
        from deltalake import DeltaTable, Schema

        root = self.table_root(table)
        if not DeltaTable.is_deltatable(str(root)):
            root.mkdir(parents=True, exist_ok=True)
            try:
                DeltaTable.create(
                    str(root),
                    schema=Schema.from_arrow(table.arrow_schema(with_partitions=True)),
                    partition_by=table.partition_names,
                    name=table.name,
                )
            except Exception as err:  # a concurrent writer created it first
                if not DeltaTable.is_deltatable(str(root)):
                    raise LakeError(f"cannot create Delta table {root}: {err}") from err
        return DeltaTable(str(root))

    def commit_delta_partition(self, table: Table, files: list[Path], metrics: dict[str, Any] | None = None, **values: str) -> int:
        """Move Parquet ``files`` into the table and commit them in ONE transaction that
        replaces the partition ``values``. Returns the new table version.

        The files must hold the table's data columns (no partition columns). Retries
        when a concurrent commit (another domain's task) wins the race.
        """
        from deltalake import CommitProperties
        from deltalake.transaction import AddAction

        if table.format is not TableFormat.DELTA:
            raise ValueError(f"{table.name} is a {table.format} table")
        expected = table.arrow_schema()
        for f in files:
            got = pq.read_schema(f)
            if got.remove_metadata() != expected:
                raise LakeError(f"{f}: schema {got} does not match {table.name} contract {expected}")
        dt = self._ensure_delta(table)
        part_dir = self.partition_path(table, **values)
        part_dir.mkdir(parents=True, exist_ok=True)
        now_ms = int(time.time() * 1000)
        actions = []
        for f in files:
            name = f"part-{uuid.uuid4().hex}.parquet"
            final = part_dir / name
            shutil.move(str(f), final)
            actions.append(
                AddAction(
                    path=final.relative_to(self.table_root(table)).as_posix(),
                    size=final.stat().st_size,
                    partition_values={k: str(values[k]) for k in table.partition_names},
                    modification_time=now_ms,
                    data_change=True,
                    stats=json.dumps(_file_stats(final)),
                )
            )
        predicate = [(k, "=", str(values[k])) for k in table.partition_names]
        schema = dt.schema()

        def commit() -> int:
            current = self.delta_table(table)
            current.create_write_transaction(
                actions,
                mode="overwrite",
                schema=schema,
                partition_by=table.partition_names,
                partition_filters=predicate,
                commit_properties=CommitProperties(custom_metadata={"crossrec": json.dumps(metrics or {})}),
            )
            current.update_incremental()
            return current.version()

        return retry_commit(commit)

    def replace_delta_rows(
        self, table: Table, rows: pa.Table, where: Mapping[str, str | int], commit_info: dict[str, Any] | None = None
    ) -> int:
        """Commit ``rows`` (partition columns included) in place of the rows matching
        ``where`` (column = value for each item), in one delta-rs write that computes the
        file statistics itself; delta-rs refuses rows outside ``where``. Retried when a
        concurrent commit wins the race. Returns the new table version."""
        from deltalake import CommitProperties, write_deltalake

        rows = table.validate(rows, with_partitions=True)
        self._ensure_delta(table)
        predicate = " AND ".join(f"{column} = {_sql_literal(value)}" for column, value in where.items())

        def commit() -> int:
            write_deltalake(
                str(self.table_root(table)),
                rows,
                mode="overwrite",
                predicate=predicate,
                partition_by=table.partition_names,
                commit_properties=CommitProperties(custom_metadata={"crossrec": json.dumps(commit_info or {})}),
            )
            return self.delta_table(table).version()

        return retry_commit(commit)

    def delta_dataset(self, table: Table, version: int | None = None) -> pads.Dataset:
        """The snapshot as a pyarrow dataset (partition columns included), crash-free."""
        dt = self.delta_table(table, version)
        filesystem = pafs.SubTreeFileSystem(str(self.table_root(table)), pafs.LocalFileSystem())
        return dt.to_pyarrow_dataset(filesystem=filesystem)
