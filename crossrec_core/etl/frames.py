"""Spark DataFrame helpers shared by the ETL stages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from crossrec_core.contracts import Table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def conform(frame: DataFrame, table: Table) -> DataFrame:
    """Exactly ``table``'s data columns, in order, cast to the contract's types."""
    from pyspark.sql import functions as F

    return frame.select(*[F.col(field.name).cast(field.dataType) for field in table.spark_schema().fields])


def write_parquet(frame: DataFrame, table: Table, directory: Path, *sort_by: str, files: int | None = None) -> None:
    """Write ``frame`` conformed to ``table`` into ``directory`` (a staging dir), each file
    sorted by ``sort_by`` so that a rerun writes the same rows in the same order.

    ``files`` fixes the number of files by a shuffle (``repartition``, not ``coalesce``) so
    that the work before it keeps running in parallel."""
    frame = conform(frame, table)
    if files is not None:
        frame = frame.repartition(files)
    frame.sortWithinPartitions(*sort_by).write.mode("overwrite").parquet(str(directory))
