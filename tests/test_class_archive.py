"""The JVM class archive: Spark tasks' JVMs start from the classes `make install` archived."""

from __future__ import annotations

import os
import subprocess
import sys

from crossrec_core import class_archive
from crossrec_core.spark import GC_JAVA_OPTIONS, driver_java_options

SPARK_CLASS = "org.apache.spark.sql.SparkSession "


def test_spark_submitted_jobs_load_spark_from_the_install_class_archive(tmp_path):
    """What every Spark task of a night gets: the driver options of the DAG's spark-submit
    (and of in-process sessions) map the archive, and Spark's classes come from it, not
    from the jars."""
    archive = class_archive.archive_path()
    assert archive.is_file(), f"no class archive at {archive}: `make install` builds it (crossrec spark-archive)"
    assert f"-XX:SharedArchiveFile={archive}" in driver_java_options()
    script = tmp_path / "job.py"
    script.write_text("from pyspark.sql import SparkSession\nassert SparkSession.builder.getOrCreate().range(5).count() == 5\n")
    loaded = tmp_path / "classes.log"
    options = f"{driver_java_options()} -Xlog:class+load=info:file={loaded}"
    subprocess.run(
        [
            class_archive.spark_submit(),
            "--master",
            "local[1]",
            "--conf",
            f"spark.driver.extraJavaOptions={options}",
            str(script),
        ],
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
        check=True,
        capture_output=True,
    )
    lines = [line for line in loaded.read_text().splitlines() if SPARK_CLASS in line]
    assert lines and all("source: shared objects file" in line for line in lines), lines


def test_without_an_archive_the_driver_gets_the_collector_alone(monkeypatch, tmp_path):
    """A fresh environment (no archive yet) or one that lost it runs Spark as before; the
    archive is taken as soon as it is there."""
    path = tmp_path / "spark.jsa"
    monkeypatch.setattr(class_archive, "archive_path", lambda: path)
    assert driver_java_options() == GC_JAVA_OPTIONS
    path.write_bytes(b"")
    assert driver_java_options() == f"{GC_JAVA_OPTIONS} -XX:SharedArchiveFile={path}"
