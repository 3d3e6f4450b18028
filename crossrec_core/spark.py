"""The one way crossrec gets a SparkSession: local by default, spark-submit's when submitted."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from crossrec_core import class_archive
from crossrec_core.config import Settings, SparkSettings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Locally the driver runs the tasks too. The throughput collector suits these batch jobs:
# G1's concurrent threads and write barriers took about a fifth of the CPU of clean and
# featurize on 2 cores.
GC_JAVA_OPTIONS = "-XX:+UseParallelGC"


def driver_java_options() -> str:
    """The driver JVM's options, for in-process sessions and the DAG's spark-submits: the
    collector, and the install's class archive when it is built (crossrec_core.class_archive)."""
    return " ".join(option for option in (GC_JAVA_OPTIONS, class_archive.java_options()) if option)


# shuffle_partitions: auto. A few tasks per core keep every core busy when tasks differ in
# size (Spark's tuning guide says 2-3); local[2] gets 4.
SHUFFLE_PARTITIONS_PER_CORE = 2
# A local master runs the executor inside the driver: nothing outside this host connects.
LOOPBACK = "127.0.0.1"


def driver_address_conf(spark: SparkSettings, master: str) -> dict[str, str]:
    """``spark.driver.host`` / ``spark.driver.bindAddress`` from settings; a local master
    listens on the loopback, any other master keeps Spark's default (the host's address)
    unless the settings name one (containers, NAT)."""
    host = spark.driver_host or (LOOPBACK if master.startswith("local") else None)
    conf = {"spark.driver.host": host} if host else {}
    if spark.bind_address:
        conf["spark.driver.bindAddress"] = spark.bind_address
    return conf


def shuffle_partitions(spark: SparkSettings, default_parallelism: int) -> int:
    if spark.shuffle_partitions == "auto":
        return SHUFFLE_PARTITIONS_PER_CORE * default_parallelism
    return spark.shuffle_partitions


def submitted_master() -> str | None:
    """The master spark-submit was given, when this process is a Python application it
    started (its JVM is already up: Python attaches through PYSPARK_GATEWAY_PORT); None
    in-process. Before the attachment a SparkConf is empty, so it must come first."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return None
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return SparkConf().get("spark.master", None)


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    """A session configured from ``settings.spark``.

    Under spark-submit (SparkSubmitOperator) the master comes from the submit command
    and is kept; run in-process (CLI, tests, the score task) it comes from ``spark.master``.
    ``shuffle_partitions: auto`` follows the session's default parallelism when it starts:
    on a standalone cluster the cores of the executors registered by then (set
    ``spark.cores.max`` with ``spark.scheduler.minRegisteredResourcesRatio``, or
    ``spark.default.parallelism``, in ``spark.conf`` to size it before executors arrive).
    """
    # Python workers (mapInArrow, UDFs) default to `python3` on PATH, which lacks this
    # environment's packages (torch, crossrec_core): run them with this interpreter.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    master = submitted_master()
    if master is None:
        master = settings.spark.master
        builder = (
            builder.master(master)
            .config("spark.driver.memory", settings.spark.driver_memory)
            .config("spark.driver.extraJavaOptions", driver_java_options())
        )
    conf = {
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # no _SUCCESS markers in partitions; the atomic swap is the commit
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.sql.sources.partitionOverwriteMode": "static",
        **driver_address_conf(settings.spark, master),
        **settings.spark.conf,
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    partitions = shuffle_partitions(settings.spark, session.sparkContext.defaultParallelism)
    session.conf.set("spark.sql.shuffle.partitions", str(partitions))
    log.info("Spark session %s on %s: %d shuffle partitions", app_name, session.sparkContext.master, partitions)
    return session
