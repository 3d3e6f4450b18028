"""The JVM class archive that makes every Spark driver's JVM start faster (AppCDS).

Each Spark stage of a night is a new spark-submit, and a fresh JVM spends seconds loading,
parsing and verifying Spark's classes before any data moves. Java's class data sharing
keeps them in a file that a JVM maps at start: ``-XX:ArchiveClassesAtExit`` writes the
classes a JVM loaded when it exits, ``-XX:SharedArchiveFile`` starts from them. The
archive comes from one representative run (a small generated night, cleaned in both
domains and featurized, in one spark-submit), is built once per install (`make
install` and the Airflow image run ``crossrec spark-archive``) and kept beside the jars it
holds, named after their pyspark version. A JVM that cannot use it (another Java build,
changed jars) says so in one warning line and starts without it; without the file, Spark
runs as before. Executors on a cluster start as they always did: the archive is the
driver's, on the machine that submits.

    spark-submit .../crossrec_core/class_archive.py LAKE   # the representative run
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

DS = "2026-03-10"
REPRESENTATIVE_USERS = 300  # a small night: the classes a night loads, not its data, matter


def archive_path() -> Path:
    """Where this install keeps the archive: beside the jars it holds, in the pyspark
    package (found, not imported: the DAG file asks for it)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise RuntimeError("pyspark is not installed")
    return Path(spec.origin).parent / f"crossrec-classes-{metadata.version('pyspark')}.jsa"


def java_options() -> str:
    """The JVM option that starts from the archive, or nothing when there is none."""
    path = archive_path()
    return f"-XX:SharedArchiveFile={path}" if path.is_file() else ""


def spark_submit() -> str:
    """pyspark's spark-submit: beside this interpreter (a virtualenv), else on PATH (a user install)."""
    found = shutil.which("spark-submit", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise RuntimeError("spark-submit not found beside this Python nor on PATH: is pyspark installed?")
    return found


def build() -> Path:
    """Run the representative night in a spark-submit whose JVM (with the nightly driver's
    collector) writes the archive when it exits; move it into place (atomically: a
    concurrent JVM maps the old file or the new). A failed run raises with the end of the
    run's output."""
    from crossrec_core.spark import GC_JAVA_OPTIONS

    path = archive_path()
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    options = f"{GC_JAVA_OPTIONS} -XX:ArchiveClassesAtExit={staged}"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crossrec-class-archive-") as lake:
        command = [
            spark_submit(),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            f"spark.driver.extraJavaOptions={options}",
            __file__,
            lake,
        ]
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONSAFEPATH": "1"}
        result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not staged.is_file():
        staged.unlink(missing_ok=True)
        raise RuntimeError(f"building the JVM class archive failed (exit {result.returncode}): {result.stderr[-2000:]}")
    os.replace(staged, path)
    log.info("JVM class archive %s: %.0f MB, built in %.0f s", path, path.stat().st_size / 2**20, time.perf_counter() - started)
    return path


def representative_night(lake: Path) -> None:
    """Clean both domains and featurize a small generated night in this process's session."""
    from crossrec_core.config import load_settings
    from crossrec_core.etl.clean import clean
    from crossrec_core.etl.featurize import featurize
    from crossrec_core.ingest.demo_data import generate_demo_data
    from crossrec_core.lake import Lake

    settings = load_settings(lake=lake)
    generate_demo_data(Lake(settings.lake), settings, users=REPRESENTATIVE_USERS, days=1, seed=7, end_date=DS)
    for domain in (settings.source, settings.target):
        clean(settings, DS, domain)
    featurize(settings, DS)


if __name__ == "__main__":
    representative_night(Path(sys.argv[1]))
