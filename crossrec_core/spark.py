"""The one way crossrec gets a SparkSession: local by default, spark-submit's when submitted."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from crossrec_core.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Locally the driver runs the tasks too. The throughput collector suits these batch jobs:
# G1's concurrent threads and write barriers took about a fifth of the CPU of clean and
# featurize on 2 cores. Set here for in-process sessions, and by the DAG for spark-submit.
DRIVER_JAVA_OPTIONS = "-XX:+UseParallelGC"


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    """A session configured from ``settings.spark``.

    Under spark-submit (SparkSubmitOperator) the master comes from the submit command
    and is kept; run in-process (CLI, tests) it comes from ``spark.master``.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers (mapInArrow, UDFs) default to `python3` on PATH, which lacks this
    # environment's packages (torch, crossrec_core): run them with this interpreter.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if not SparkConf().contains("spark.master"):
        builder = (
            builder.master(settings.spark.master)
            .config("spark.driver.memory", settings.spark.driver_memory)
            .config("spark.driver.extraJavaOptions", DRIVER_JAVA_OPTIONS)
        )
    conf = {
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # no _SUCCESS markers in partitions; the atomic swap is the commit
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.sql.sources.partitionOverwriteMode": "static",
        **settings.spark.conf,
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
