"""``crossrec run``: run stages of the nightly pipeline for a date, in-process."""

from __future__ import annotations

from typing import Annotated

import typer

from crossrec_core.commands.common import ConfigOption, LakeOption, console, settings_from


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        ds: Annotated[str, typer.Option("--ds", help="run date YYYY-MM-DD")],
        stages: Annotated[str, typer.Option("--stages", help="comma-separated stages, in order")] = "clean,featurize,train,evaluate,score,publish,report",
        model: Annotated[str | None, typer.Option("--model", help="model name or 'auto' (overrides config)")] = None,
        k: Annotated[int | None, typer.Option("-k", help="recommendations per user (overrides config)")] = None,
        retrain: Annotated[bool, typer.Option("--retrain", help="train from scratch, no warm start")] = False,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Run stages for one date (the same functions Airflow runs)."""
        from crossrec_core.pipeline import run_stages

        overrides: dict = {}
        if model:
            overrides["model"] = {"name": model}
        if k:
            overrides["score"] = {"k": k}
        if retrain:
            overrides.setdefault("model", {})["warm_start"] = False
        settings = settings_from(config, lake, **overrides)
        for report in run_stages(settings, ds, [s.strip() for s in stages.split(",") if s.strip()]):
            console.print(
                f"{report.stage:<10} {report.domain:<8} {report.status:<8} in={report.rows_in} "
                f"out={report.rows_out} quarantined={report.rows_quarantined}"
            )
