"""Nightly scoring: a top-K list of target items for every user of the run.

The users of the run are every user of the night's key index (features/ds=DS/user_keys):

* ``warm`` (at least ``score.min_history`` target training interactions) and
  ``cold_start`` (too little target history, enough source history) are scored by the
  model;
* ``fallback`` (too little history in both domains, including ids known only from the
  key index, whose interactions left the window) get the target popularity list
  (the ``popularity`` model fitted on the night's features).

Ids outside the key index have no rows; ``crossrec recs`` serves them the partition's
fallback list (crossrec_core.serving).

Scoring is exact and memory-bounded: users go in blocks of ``block_size`` through the
one top-K (:func:`crossrec_core.ranking.block_top_k`, also behind the offline metrics):
the model's score hook fills one reused score block with the item vectors computed once
per run, the items a user interacted with in the target domain's training data are set
to -inf, the top K are taken, ties to the lower item key. A user with fewer than K
unseen items gets fewer rows; an item scored -inf is never recommended; a NaN score is
an error naming the users. Models with an item-to-item path (``model.explain``) give
every row the ids of up to ``EXPLANATION_ITEMS`` source items behind it (``because``;
empty for other models).

Two backends run the SAME block function (:meth:`RunScorer.score`, one Arrow batch of
users in, one Arrow batch of rows out): ``local`` (one process; CUDA when present) and
``spark`` (the scorer, item matrices included, broadcast; user batches partitioned;
``mapInArrow``). Both write ``scores/ds=DS/domain=TARGET`` atomically, rows in
user_id order (so that a lookup of one user reads one row group); ``publish`` commits
it into the serving table.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from crossrec_core.config import ScoreSettings, Settings
from crossrec_core.contracts import SCORES, USER_KEYS, ColumnType, ContractError, Segment
from crossrec_core.data import FeatureSet
from crossrec_core.gate import held_back
from crossrec_core.lake import Lake, dir_size
from crossrec_core.metrics import PAD
from crossrec_core.models.base import Recommender, build_model
from crossrec_core.ranking import ScoreBlock, block_top_k
from crossrec_core.reports import StageReport, stage_run

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 10.0  # a long run logs its progress this often
ROW_GROUP_ROWS = 128 * 1024  # Parquet row group size of the scores (rows)
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
LOCAL_RELATION_CONF = "spark.sql.execution.arrow.localRelationThreshold"
PARTITION_BLOCKS = 8  # score blocks per Spark task at most
EXPLANATION_ITEMS = 3  # source items named per recommendation (``because``)


# ---- the users of the run, as Arrow batches -----------------------------------------------
USER_BATCH_SCHEMA = pa.schema(
    [
        pa.field("user_key", pa.int64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("segment", pa.string(), nullable=False),
        pa.field("seen", pa.list_(pa.int64()), nullable=False),  # target training item keys
    ]
)


def run_users(features: FeatureSet, min_history: int) -> pa.Table:
    """Every user of the key index with their segment and target training items, in
    user_id order: the scores come out clustered by user_id, so that a lookup of one
    user skips the other Parquet row groups by their min/max statistics."""
    keys = np.argsort(features.user_ids.astype(str), kind="stable").astype(np.int64)
    train = features.train[features.target].tocsr()[keys]
    if train.nnz >= 2**31:
        raise ValueError(f"target training matrix has {train.nnz} interactions; list offsets are 32-bit")
    seen = pa.ListArray.from_arrays(pa.array(train.indptr, pa.int32()), pa.array(train.indices, pa.int64()))
    return pa.Table.from_arrays(
        [pa.array(keys), pa.array(features.user_ids[keys], pa.string()), pa.array(features.segment_of(keys, min_history)), seen],
        schema=USER_BATCH_SCHEMA,
    )


def _seen_matrix(seen: pa.Array, n_rows: int, n_items: int) -> sp.csr_matrix:
    """The CSR of a (possibly sliced) list<int64> column: offsets are the row pointers."""
    offsets = seen.offsets.to_numpy()
    return sp.csr_matrix(
        (np.ones(offsets[-1] - offsets[0], np.float32), seen.flatten().to_numpy(), offsets - offsets[0]), shape=(n_rows, n_items)
    )


@dataclass
class RunScorer:
    """Everything that scores any batch of the run's users; pickled to Spark executors.

    Item matrices are computed once, here (``model.item_vectors``)."""

    domain: str
    model: Recommender
    item_vectors: torch.Tensor
    fallback: Recommender
    fallback_vectors: torch.Tensor
    item_ids: pa.Array  # external ids of the domain's items, by key
    source_item_ids: pa.Array  # external ids of the source domain's items (``because``)
    model_version: str
    k: int
    device: torch.device
    block: ScoreBlock = field(default_factory=ScoreBlock, repr=False, compare=False)

    @classmethod
    def build(cls, model: Recommender, features: FeatureSet, model_version: str, settings: Settings, device: torch.device) -> RunScorer:
        domain = features.target
        fallback = build_model("popularity", features, settings.model)
        fallback.fit_fixed(features)
        model, fallback = model.to(device).eval(), fallback.to(device).eval()
        with torch.no_grad():
            item_vectors, fallback_vectors = model.item_vectors(domain), fallback.item_vectors(domain)
        if item_vectors.shape[0] != features.n_items(domain):
            raise ContractError(
                f"model {model_version} ({model.name}) scores {item_vectors.shape[0]} {domain} items, "
                f"the features of ds={features.ds} have {features.n_items(domain)}"
            )
        return cls(
            domain,
            model,
            item_vectors,
            fallback,
            fallback_vectors,
            pa.array(features.item_ids[domain], pa.string()),
            pa.array(features.item_ids[features.source], pa.string()),
            model_version,
            settings.score.k,
            device,
        )

    def to(self, device: torch.device) -> RunScorer:
        return replace(
            self,
            model=self.model.to(device),
            item_vectors=self.item_vectors.to(device),
            fallback=self.fallback.to(device),
            fallback_vectors=self.fallback_vectors.to(device),
            device=device,
        )

    def score(self, users: pa.RecordBatch) -> pa.RecordBatch:
        """Rows (SCORES columns) for one batch of users (USER_BATCH_SCHEMA), in batch order."""
        n = users.num_rows
        keys = users.column("user_key").to_numpy()
        segments = users.column("segment")
        seen = _seen_matrix(users.column("seen"), n, len(self.item_ids))
        width = min(self.k, len(self.item_ids))
        items = np.full((n, width), PAD, dtype=np.int64)
        scores = np.full((n, width), -np.inf, dtype=np.float32)
        because = np.full((n, width, EXPLANATION_ITEMS), -1, dtype=np.int64)
        is_fallback = segments.to_numpy(zero_copy_only=False) == Segment.FALLBACK.value
        with torch.no_grad():
            for model, vectors, chosen in (
                (self.model, self.item_vectors, ~is_fallback),
                (self.fallback, self.fallback_vectors, is_fallback),
            ):
                rows = np.flatnonzero(chosen)
                if rows.size:
                    items[rows], scores[rows] = block_top_k(
                        model, vectors, self.domain, keys[rows], seen[rows], self.k, self.device, self.block
                    )
                    reasons = model.explain(
                        self.domain,
                        torch.as_tensor(keys[rows], device=self.device),
                        torch.as_tensor(items[rows], device=self.device),
                        EXPLANATION_ITEMS,
                    )
                    if reasons is not None:
                        because[rows] = reasons.cpu().numpy()
        valid = items != PAD  # a prefix of each row: -inf sorts last
        row, slot = np.nonzero(valid)
        return pa.RecordBatch.from_arrays(
            [
                users.column("user_id").take(row),
                pa.array(slot + 1, pa.int32()),
                self.item_ids.take(items[valid]),
                pa.array(scores[valid], pa.float32()),
                pa.repeat(self.model_version, len(row)),
                segments.take(row),
                _id_lists(because[valid], self.source_item_ids),
            ],
            schema=SCORES.arrow_schema(),
        )


def _id_lists(keys: np.ndarray, ids: pa.Array) -> pa.ListArray:
    """list<string> per row of [rows, n] item keys, -1 slots left out."""
    present = keys >= 0
    offsets = np.concatenate([[0], np.cumsum(present.sum(1))]).astype(np.int32)
    values = ids.take(pa.array(keys[present], pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, type=ColumnType.STRING_LIST.arrow())


# ---- running it --------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreResult:
    users: int
    rows: int
    bytes: int
    files: int
    seconds: float
    segments: dict[str, int]
    backend: str

    @property
    def users_per_second(self) -> float:
        return self.users / self.seconds if self.seconds > 0 else float("nan")


def _score_locally(scorer: RunScorer, users: pa.Table, block_size: int, out_dir: Path) -> None:
    started = last_report = time.perf_counter()
    done = buffered_rows = 0
    buffered: list[pa.RecordBatch] = []
    with pq.ParquetWriter(out_dir / "part-00000.parquet", SCORES.arrow_schema()) as writer:
        for batch in users.to_batches(max_chunksize=block_size):
            rows = scorer.score(batch)
            buffered.append(rows)
            buffered_rows += rows.num_rows
            if buffered_rows >= ROW_GROUP_ROWS:  # blocks are small; row groups should not be
                writer.write_table(pa.Table.from_batches(buffered))
                buffered, buffered_rows = [], 0
            done += batch.num_rows
            now = time.perf_counter()
            if now - last_report >= PROGRESS_SECONDS:
                last_report = now
                log.info(
                    "scored %d/%d users (%.0f%%), %.0f users/s", done, users.num_rows, 100 * done / users.num_rows, done / (now - started)
                )
        if buffered:
            writer.write_table(pa.Table.from_batches(buffered))


@contextmanager
def _spark_conf(spark, key: str, value: str) -> Iterator[None]:
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def _score_with_spark(settings: Settings, scorer: RunScorer, users: pa.Table, out_dir: Path) -> None:
    """The same :meth:`RunScorer.score` per Arrow batch inside Spark (``mapInArrow``)."""
    from crossrec_core.spark import spark_session

    spark = spark_session(settings, "crossrec-score")
    shared = spark.sparkContext.broadcast(scorer.to(torch.device("cpu")))
    device_setting = settings.model.device

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        from crossrec_core.trainer import resolve_device

        task = TaskContext.get()
        assert task is not None  # this runs inside a Spark task
        torch.set_num_threads(max(1, task.cpus()))  # one task per core: don't oversubscribe
        partition_scorer = shared.value.to(resolve_device(device_setting))
        for batch in batches:
            yield partition_scorer.score(batch)

    # createDataFrame(arrow) makes one partition per Arrow batch of maxRecordsPerBatch rows
    # (below localRelationThreshold bytes it would make one local relation split by cores
    # instead: turned off, so the same rule holds at every size), and each task carries its
    # partition's users: one partition per core, but at most PARTITION_BLOCKS blocks, so that
    # a task stays small on an executor's heap however many users there are. mapInArrow then
    # hands each task its users in batches of block_size (read when the write plans the job).
    block_size = settings.score.block_size
    per_core = math.ceil(users.num_rows / spark.sparkContext.defaultParallelism)
    per_partition = min(max(block_size, per_core), PARTITION_BLOCKS * block_size)
    try:
        with _spark_conf(spark, ARROW_BATCH_CONF, str(per_partition)), _spark_conf(spark, LOCAL_RELATION_CONF, "0"):
            frame = spark.createDataFrame(users)
        with _spark_conf(spark, ARROW_BATCH_CONF, str(block_size)):
            frame.mapInArrow(score_partition, SCORES.spark_schema()).write.mode("overwrite").parquet(str(out_dir))
    finally:
        shared.destroy()


def score_to_partition(
    lake: Lake, ds: str, features: FeatureSet, model: Recommender, model_version: str, settings: Settings
) -> ScoreResult:
    """Score every user of the run and atomically replace ``scores/ds=DS/domain=TARGET``."""
    from crossrec_core.trainer import resolve_device

    score: ScoreSettings = settings.score
    started = time.perf_counter()
    device = resolve_device(settings.model.device)
    scorer = RunScorer.build(model, features, model_version, settings, device)
    users = run_users(features, score.min_history)
    segments = dict(zip(*np.unique(users.column("segment").to_numpy(zero_copy_only=False), return_counts=True), strict=True))
    log.info(
        "scoring %d %s users (%s) against %d items with %s on %s, backend %s, k=%d, blocks of %d",
        users.num_rows,
        features.target,
        ", ".join(f"{s}: {n}" for s, n in sorted(segments.items())),
        features.n_items(features.target),
        model_version,
        device,
        score.backend,
        score.k,
        score.block_size,
    )
    with lake.replace_partition(SCORES, ds=ds, domain=features.target) as staged:
        if score.backend == "spark":
            _score_with_spark(settings, scorer, users, staged)
        else:
            _score_locally(scorer, users, score.block_size, staged)
    live = lake.partition_path(SCORES, ds=ds, domain=features.target)
    size, files = dir_size(live)
    rows = pads.dataset(live, format="parquet").count_rows()
    result = ScoreResult(
        users=users.num_rows,
        rows=rows,
        bytes=size,
        files=files,
        seconds=time.perf_counter() - started,
        segments={str(s): int(n) for s, n in segments.items()},
        backend=score.backend,
    )
    log.info(
        "scored %d users in %.2f s (%.0f users/s): %d rows, %d bytes in %d files at %s",
        result.users,
        result.seconds,
        result.users_per_second,
        rows,
        size,
        files,
        live,
    )
    return result


def score_stage(settings: Settings, ds: str) -> StageReport:
    """Score tonight's target users with tonight's model, unless the gate rejected it."""
    from crossrec_core.features import load_features
    from crossrec_core.model_store import candidate_version, load_model, model_dir

    lake = Lake(settings.lake)
    with stage_run(lake, "score", ds) as report:
        if held_back(lake, ds, report):
            return report
        version = candidate_version(lake, ds)
        features = load_features(lake, ds, settings.source, settings.target)
        model, card = load_model(lake, version, features)
        features_bytes, _ = dir_size(lake.partition_path(USER_KEYS, ds=ds).parent)
        model_bytes, _ = dir_size(model_dir(lake, version))
        log.info(
            "read features ds=%s (%d users, %d bytes) and model %s (%s, %d bytes)",
            ds,
            features.n_users,
            features_bytes,
            version,
            card.get("name"),
            model_bytes,
        )
        result = score_to_partition(lake, ds, features, model, version, settings)
        report.rows_in = result.users
        report.bytes_in = features_bytes + model_bytes
        report.rows_out = result.rows
        report.bytes_out = result.bytes
        report.metrics.update(
            {
                "model_version": version,
                "model": card.get("name"),
                "domain": settings.target,
                "k": settings.score.k,
                "backend": result.backend,
                "segments": result.segments,
                "users_per_second": round(result.users_per_second, 1),
                "score_seconds": round(result.seconds, 3),
            }
        )
    return report
