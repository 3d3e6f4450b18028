"""The publish stage: a night's scores become the served recommendations.

``publish_stage`` commits the Parquet files of ``scores/ds=DS/domain=TARGET`` into the
Delta table ``serving/recommendations`` with ONE delta-rs commit that replaces the
(ds, domain) partition, so a reader sees yesterday's snapshot or tonight's, never a mix;
re-publishing a date gives identical rows and one new table version. When the gate held
the night back, nothing is committed and the last good recommendations stay served.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from crossrec_core.config import Settings
from crossrec_core.contracts import RECOMMENDATIONS, SCORES
from crossrec_core.gate import held_back
from crossrec_core.lake import Lake, LakeError
from crossrec_core.model_store import candidate_version
from crossrec_core.reports import StageReport, stage_run
from crossrec_core.serving import latest_served

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    table_version: int
    rows: int
    bytes: int
    files: int


def scores_files(lake: Lake, ds: str, domain: str) -> list[Path]:
    """The Parquet files of ``scores/ds=DS/domain=D`` (hidden and ``_`` files are not data)."""
    directory = lake.require_partition(SCORES, ds=ds, domain=domain)
    files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise LakeError(f"scores partition {directory} holds no Parquet files: re-run the score stage for ds={ds}")
    return files


def _scored_by(lake: Lake, ds: str, domain: str) -> set[str]:
    """The model versions in ``scores/ds=DS/domain=D`` (one column, dictionary-encoded: cheap)."""
    directory = lake.require_partition(SCORES, ds=ds, domain=domain)
    column = pads.dataset(directory, format="parquet").to_table(columns=["model_version"])["model_version"]
    return set(pc.unique(column).to_pylist())


def publish_scores(lake: Lake, ds: str, domain: str, metrics: dict[str, Any] | None = None) -> Published:
    """Commit the scores of (ds, domain) as the recommendations partition (one commit).

    ``commit_delta_partition`` moves the files it commits, so copies go in (staged under
    ``<lake>/_staging``): the scores stay, and a re-run of publish finds them again."""
    files = scores_files(lake, ds, domain)
    with lake.staging_area(f"publish__{ds}__{domain}") as staging:
        # fresh modification times: a full vacuum must not take them for old orphans before the commit
        copies = [Path(shutil.copy(f, staging / f.name)) for f in files]
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in copies)
        size = sum(f.stat().st_size for f in copies)
        version = lake.commit_delta_partition(RECOMMENDATIONS, copies, metrics=metrics, ds=ds, domain=domain)
    return Published(table_version=version, rows=rows, bytes=size, files=len(files))


def publish_stage(settings: Settings, ds: str) -> StageReport:
    """Serve tonight's scores of the target domain, unless the gate kept the previous model."""
    lake = Lake(settings.lake)
    domain = settings.target
    with stage_run(lake, "publish", ds) as report:
        if held_back(lake, ds, report):
            report.metrics["still_served"] = latest_served(lake, domain)
            return report
        version = candidate_version(lake, ds)
        scored_by = _scored_by(lake, ds, domain)
        if scored_by - {version}:
            raise LakeError(
                f"scores of ds={ds} domain={domain} come from {sorted(scored_by)}, but the gated model of ds={ds} "
                f"is {version}: re-run the score stage for ds={ds}"
            )
        published = publish_scores(lake, ds, domain, metrics={"ds": ds, "model_version": version})
        report.rows_in = report.rows_out = published.rows
        report.bytes_in = report.bytes_out = published.bytes
        report.metrics.update({"table_version": published.table_version, "files": published.files, "domain": domain})
        log.info(
            "published %d rows (%d files, %d bytes) of ds=%s domain=%s as %s version %d",
            published.rows,
            published.files,
            published.bytes,
            ds,
            domain,
            RECOMMENDATIONS.path,
            published.table_version,
        )
    return report
