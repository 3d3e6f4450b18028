"""``crossrec run`` (stages of one date, in-process) and ``crossrec demo`` (the main job on embedded defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossrec_core.commands.common import ConfigOption, LakeOption, console, settings_from
from crossrec_core.stages import STAGES


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        ds: Annotated[str, typer.Option("--ds", help="run date YYYY-MM-DD")],
        stages: Annotated[str, typer.Option("--stages", help="comma-separated stages, in order")] = ",".join(STAGES),
        model: Annotated[str | None, typer.Option("--model", help="model name or 'auto' (overrides config)")] = None,
        k: Annotated[int | None, typer.Option("-k", min=1, help="recommendations per user (overrides config)")] = None,
        retrain: Annotated[bool, typer.Option("--retrain", help="train from scratch, no warm start")] = False,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Run stages for one date (the same functions Airflow runs)."""
        from crossrec_core.pipeline import run_stages

        overrides: dict = {}
        if model:
            overrides["model"] = {"name": model}
        if k is not None:
            overrides["score"] = {"k": k}
        if retrain:
            overrides.setdefault("model", {})["warm_start"] = False
        settings = settings_from(config, lake, **overrides)
        for report in run_stages(settings, ds, [s.strip() for s in stages.split(",") if s.strip()]):
            console.print(
                f"{report.stage:<10} {report.domain:<8} {report.status:<8} in={report.rows_in} "
                f"out={report.rows_out} quarantined={report.rows_quarantined}"
            )

    @app.command("spark-archive")
    def spark_archive() -> None:
        """Build this install's JVM class archive: every Spark driver's JVM then starts from
        Spark's classes already parsed and verified (`make install` runs it once)."""
        from crossrec_core.class_archive import build

        with console.status("building the JVM class archive (one small Spark night)"):
            path = build()
        console.print(f"JVM class archive: {path} ({path.stat().st_size / 2**20:.0f} MB)")

    @app.command("demo")
    def demo(
        days: Annotated[int, typer.Option("--days", min=1, help="days of sample data, one DAG run each")] = 3,
        users: Annotated[int, typer.Option("--users", min=20, help="sample users")] = 2000,
        seed: Annotated[int, typer.Option("--seed", help="sample data seed")] = 7,
        ui: Annotated[bool, typer.Option("--ui", help="start `airflow standalone` on 127.0.0.1:8080 instead")] = False,
        airflow_home: Annotated[Path, typer.Option("--airflow-home", help="local Airflow home (SQLite)")] = Path("airflow_home"),
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Sample data, the nightly DAG through real Airflow for each day, then recommendations."""
        from rich.table import Table as RichTable

        from crossrec_core import demo as demo_job
        from crossrec_core.commands.ingest import print_summary
        from crossrec_core.commands.serving import show_recommendations
        from crossrec_core.ingest.demo_data import generate_demo_data
        from crossrec_core.lake import Lake
        from crossrec_core.pipeline import summarise
        from crossrec_core.serving import user_recommendations

        settings = settings_from(config, lake)
        if ui:
            demo_job.start_ui(settings, airflow_home)
            return
        the_lake = Lake(settings.lake)
        nights = demo_job.demo_days(days)
        console.print(f"[bold]1/3[/] sample data: {users} users, {days} days ({nights[0]} .. {nights[-1]}) into {the_lake.root}")
        summary = generate_demo_data(the_lake, settings, users=users, days=days, seed=seed, end_date=nights[-1])
        print_summary("sample data", summary)
        console.print(f"[bold]2/3[/] the DAG crossrec_nightly through Airflow (AIRFLOW_HOME={airflow_home.resolve()})")
        demo_job.run_nights(settings, airflow_home, nights, progress=lambda line: console.print(f"    {line}", highlight=False))
        console.print(f"[bold]3/3[/] recommendations of {nights[-1]} (domain {settings.target})")
        examples = demo_job.example_users(the_lake, settings.target, nights[-1])
        for segment in ("warm", "cold_start"):
            if segment in examples:
                why = segment == "cold_start"
                console.print(f"a {segment} user: `crossrec recs {examples[segment]}{' --why' if why else ''}`")
                show_recommendations(user_recommendations(the_lake, examples[segment], settings.target, ds=nights[-1], k=10), why)
        report = RichTable(title=f"run report of {nights[-1]}")
        for column in ("stage", "domain", "status", "rows in", "rows out", "quarantined", "seconds", "fixed s", "data s"):
            report.add_column(column)
        for row in demo_job.report_rows(summarise(the_lake, nights[-1])):
            report.add_row(*row)
        console.print(report)
        console.print(f"More: `crossrec sql \"SELECT * FROM run_reports WHERE ds = '{nights[-1]}'\"`, `crossrec tables`, `make ui`.")
