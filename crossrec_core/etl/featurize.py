"""Stage ``featurize`` for one ds: clean interactions of both domains -> features/ds=DS.

* Window: the ``window_days`` daily partitions ending at ds, of both domains. The ds
  partition of each domain is required; an older missing day is logged and skipped.
* One row per (domain, user, item): ``weight`` = sum over events of
  ``weight * 2 ** (-age_days / decay_half_life_days)``, age measured from the end of ds
  (events up to ``future_tolerance_hours`` after it count as age 0); ``last_ts`` = latest.
* Optional k-core (``kcore`` > 0) on the target domain: users and items with fewer than
  k target interactions are removed until none is left.
* Keys: :mod:`crossrec_core.etl.keys` (users one index across domains, items per domain).
* Split (contracts.Split): ceil(``cold_start_fraction`` x users active in both domains),
  the ones with the smallest xxhash64(user_id, model.seed), are cold-start validation
  users: all their target rows are ``valid_cold``, their source rows train. A remaining
  target user with at least ``min_target_interactions`` target items gives the latest
  ``contracts.warm_holdout_size(n, warm_fraction)`` of them by last_ts (ties: larger item
  id first) to ``valid_warm``. Everything else is ``train``.
* Output: ``user_keys``, ``item_keys``, ``interactions`` and ``_manifest.json`` (window
  and days read) under features/ds=DS, swapped into place together.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from crossrec_core.config import Settings
from crossrec_core.contracts import CLEAN_INTERACTIONS, FEATURE_INTERACTIONS, ITEM_KEYS, USER_KEYS, Split
from crossrec_core.etl.frames import write_parquet
from crossrec_core.etl.keys import previous_keys_ds, stable_keys
from crossrec_core.features import MANIFEST
from crossrec_core.lake import Lake, dir_size
from crossrec_core.reports import StageReport, stage_run
from crossrec_core.spark import spark_session

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

log = logging.getLogger(__name__)

MICROS_PER_DAY = 86_400 * 10**6


def window_days(ds: str, days: int) -> list[str]:
    """The ``days`` dates ending at ``ds``, oldest first."""
    last = date.fromisoformat(ds)
    return [(last - timedelta(days=back)).isoformat() for back in range(days - 1, -1, -1)]


def clean_partitions(lake: Lake, settings: Settings, ds: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Days present and missing per domain in the window; the ds partitions must exist."""
    present: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    for domain in settings.domains.all:
        lake.require_partition(CLEAN_INTERACTIONS, domain=domain, ds=ds)
        days = window_days(ds, settings.window_days)
        present[domain] = [d for d in days if lake.partition_path(CLEAN_INTERACTIONS, domain=domain, ds=d).is_dir()]
        missing[domain] = sorted(set(days) - set(present[domain]))
        if missing[domain]:
            log.warning("featurize ds=%s: %s has no clean partition for %s; skipped", ds, domain, ", ".join(missing[domain]))
    return present, missing


def decayed_pairs(clean: DataFrame, ds: str, half_life_days: float) -> DataFrame:
    """One row per (domain, user_id, item_id) with the decayed weight sum and last_ts."""
    from pyspark.sql import functions as F

    end_of_ds = datetime.fromisoformat(ds).replace(tzinfo=UTC) + timedelta(days=1)
    age_days = F.greatest((F.unix_micros(F.lit(end_of_ds)) - F.unix_micros("ts")) / MICROS_PER_DAY, F.lit(0.0))
    return clean.groupBy("domain", "user_id", "item_id").agg(
        F.sum(F.col("weight") * F.pow(F.lit(2.0), -age_days / half_life_days)).alias("weight"),
        F.max("ts").alias("last_ts"),
    )


def kcore(pairs: DataFrame, k: int) -> DataFrame:
    """Drop users and items with fewer than ``k`` rows, repeatedly, until none is left."""
    rows = pairs.localCheckpoint()
    count = rows.count()
    while True:
        users = rows.groupBy("user_id").count().filter(f"count >= {k}").select("user_id")
        items = rows.groupBy("item_id").count().filter(f"count >= {k}").select("item_id")
        kept = rows.join(users, "user_id", "left_semi").join(items, "item_id", "left_semi").localCheckpoint()
        kept_count = kept.count()
        log.info("k-core %d: %d -> %d rows", k, count, kept_count)
        if kept_count == count:
            return kept
        rows, count = kept, kept_count


def active_users(pairs: DataFrame, target: str, seed: int) -> pa.Table:
    """Every user of ``pairs`` with whether they are active in both domains (``both``) and
    the seeded hash that draws the cold-start users (``draw``): one aggregate, collected,
    serves the keys and the draw. (Boolean aggregates, unlike a min or max of the domain
    name, run in a hash aggregate, without sorting the pairs by user.)"""
    from pyspark.sql import functions as F

    is_target = F.col("domain") == target
    return (
        pairs.groupBy("user_id")
        .agg((F.bool_or(is_target) & F.bool_or(~is_target)).alias("both"))
        .withColumn("draw", F.xxhash64("user_id", F.lit(seed)))
        .toArrow()
    )


def cold_start_users(users: pa.Table, fraction: float) -> pa.ChunkedArray:
    """ceil(``fraction`` x the users active in both domains): those with the smallest draw
    (then user_id)."""
    overlap = users.filter(users["both"])
    drawn = math.ceil(overlap.num_rows * fraction)
    return overlap.sort_by([("draw", "ascending"), ("user_id", "ascending")])["user_id"][:drawn]


def warm_holdout_column(n: Column, fraction: float) -> Column:
    """:func:`crossrec_core.contracts.warm_holdout_size` as a Spark expression."""
    from pyspark.sql import functions as F

    return F.greatest(F.lit(1), F.floor(n * fraction + F.lit(0.5))).cast("long")


def assign_splits(pairs: DataFrame, cold_users: pa.ChunkedArray, settings: Settings) -> DataFrame:
    """``pairs`` with a ``split`` column (contracts.Split)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    target = settings.domains.target
    cold = pairs.sparkSession.createDataFrame(pa.table({"user_id": cold_users})).withColumn("cold", F.lit(True))
    # one ordering for both window functions, so that Spark sorts the target rows once
    latest_first = Window.partitionBy("user_id").orderBy(F.desc("last_ts"), F.desc("item_id"))
    rows = F.count(F.lit(1)).over(latest_first.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing))
    recency = F.row_number().over(latest_first)
    held_out = warm_holdout_column(rows, settings.validation.warm_fraction)
    target_split = (
        F.when(F.col("cold").isNotNull(), F.lit(Split.VALID_COLD.value))
        .when((rows >= settings.validation.min_target_interactions) & (recency <= held_out), F.lit(Split.VALID_WARM.value))
        .otherwise(F.lit(Split.TRAIN.value))
    )
    is_target = F.col("domain") == target
    source_rows = pairs.filter(~is_target).withColumn("split", F.lit(Split.TRAIN.value))
    target_rows = pairs.filter(is_target).join(cold, "user_id", "left").withColumn("split", target_split).drop("cold")
    return source_rows.unionByName(target_rows)


def _count_by(table: pa.Table, column: str) -> dict[str, int]:
    counts = table.group_by([column]).aggregate([([], "count_all")])
    return dict(zip(counts[column].to_pylist(), counts["count_all"].to_pylist(), strict=True))


def _interaction_metrics(interactions: pa.Table) -> dict:
    """Counts read back from the written interactions (Arrow, no extra Spark pass)."""
    domains_per_user = interactions.group_by(["user_key"]).aggregate([("domain", "count_distinct")])
    active = interactions.group_by(["domain"]).aggregate([("user_key", "count_distinct")])
    split_of = pc.binary_join_element_wise(interactions["domain"], interactions["split"], "/")
    return {
        "overlap_users": pc.sum(pc.equal(domains_per_user["domain_count_distinct"], 2)).as_py() or 0,
        "active_users": dict(zip(active["domain"].to_pylist(), active["user_key_count_distinct"].to_pylist(), strict=True)),
        "splits": _count_by(pa.table({"split": split_of}), "split"),
    }


def featurize(settings: Settings, ds: str) -> StageReport:
    """Build features/ds=DS from the clean interactions of both domains."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    lake = Lake(settings.lake)
    with stage_run(lake, "featurize", ds) as report:
        present, missing = clean_partitions(lake, settings, ds)
        paths = [str(lake.partition_path(CLEAN_INTERACTIONS, domain=d, ds=day)) for d, days in present.items() for day in days]
        report.rows_in = sum(pads.dataset(p, format="parquet").count_rows() for p in paths)  # footers only
        report.bytes_in = sum(dir_size(Path(p))[0] for p in paths)
        log.info("featurize ds=%s: reading %d clean partitions, %d rows, %d bytes", ds, len(paths), report.rows_in, report.bytes_in)

        with report.setup("spark_session"):
            spark = spark_session(settings, "crossrec-featurize")
        clean = (
            spark.read.option("basePath", str(lake.table_root(CLEAN_INTERACTIONS)))
            .schema(CLEAN_INTERACTIONS.spark_schema(with_partitions=True))
            .parquet(*paths)
        )
        pairs = decayed_pairs(clean, ds, settings.decay_half_life_days)
        if settings.kcore:
            target = F.col("domain") == settings.domains.target
            pairs = pairs.filter(~target).unionByName(kcore(pairs.filter(target), settings.kcore))
        pairs = pairs.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            previous_ds = previous_keys_ds(lake, ds)
            log.info("featurize ds=%s: keys continue from features ds=%s", ds, previous_ds)
            users = active_users(pairs, settings.domains.target, settings.model.seed)
            user_keys, new_users = stable_keys(lake, USER_KEYS, previous_ds, users.select(["user_id"]))
            item_keys, new_items = stable_keys(lake, ITEM_KEYS, previous_ds, pairs.select("domain", "item_id").distinct().toArrow())
            cold_users = cold_start_users(users, settings.validation.cold_start_fraction)
            interactions = (
                assign_splits(pairs, cold_users, settings)
                .join(spark.createDataFrame(user_keys), "user_id")
                .join(spark.createDataFrame(item_keys), ["domain", "item_id"])
            )
            with lake.replace_partition(USER_KEYS, ds=ds) as staged:
                for keys, table in ((user_keys, USER_KEYS), (item_keys, ITEM_KEYS)):
                    (staged / table.subdir).mkdir()
                    pq.write_table(keys, staged / table.subdir / "part-00000.parquet")
                interactions_dir = staged / FEATURE_INTERACTIONS.subdir
                write_parquet(interactions, FEATURE_INTERACTIONS, interactions_dir, "domain", "user_key", "item_key")
                first_day = min(day for days in present.values() for day in days)
                (staged / MANIFEST).write_text(
                    json.dumps({"ds": ds, "window": [first_day, ds], "days_read": present, "days_missing": missing}, indent=1)
                )
                written = pads.dataset(interactions_dir, format="parquet").to_table(columns=["domain", "user_key", "split"])
        finally:
            pairs.unpersist()
        report.rows_out = written.num_rows
        report.bytes_out = dir_size(lake.partition_path(USER_KEYS, ds=ds).parent)[0]
        report.metrics.update(
            _interaction_metrics(written),
            users=user_keys.num_rows,
            items=_count_by(item_keys, "domain"),
            new_user_keys=new_users[None],
            new_item_keys=new_items,
            previous_keys_ds=previous_ds,
            days_missing=missing,
        )
        return report
