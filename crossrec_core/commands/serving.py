"""Query commands: ``recs``, ``sql``, ``tables``, ``status``, ``restore``, ``compact``, ``vacuum``
(the serving Delta tables)."""

from __future__ import annotations

import io
import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table as RichTable
from rich.text import Text

from crossrec_core.commands.common import ConfigOption, LakeOption, console, err_console, settings_from


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


def show_recommendations(result, why: bool = False) -> None:
    """Print a ``UserRecommendations`` list as a table (rank, item, score, segment; with
    ``why``, the source items behind each recommendation)."""
    if not result.rows.num_rows:
        return
    table = RichTable(
        title=Text(f"recommendations for {result.user_id!r}" if result.known else "fallback (popularity) list"),
        caption=Text(f"ds {result.ds} · domain {result.domain} · model {result.model_version} · table version {result.table_version}"),
    )
    columns = ("rank", "item", "score", "segment", "because you liked") if why else ("rank", "item", "score", "segment")
    for column in columns:
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for row in result.rows.to_pylist():
        cells = [str(row["rank"]), row["item_id"], f"{row['score']:.4f}", row["segment"]]
        table.add_row(*map(Text, cells + ([", ".join(row["because"] or []) or "-"] if why else [])))
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("recs")
    def recs(
        user_id: Annotated[str, typer.Argument(help="the user's external id")],
        domain: Annotated[str | None, typer.Option("--domain", help="domain served (default: the target domain)")] = None,
        ds: Annotated[str | None, typer.Option("--ds", help="run date YYYY-MM-DD (default: the newest in the table version)")] = None,
        version: Annotated[int | None, typer.Option("--version", min=0, help="Delta table version (time travel; default: latest)")] = None,
        k: Annotated[int, typer.Option("-k", min=1, help="how many recommendations")] = 10,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON (for machines)")] = False,
        why: Annotated[bool, typer.Option("--why", help="show the source items behind each recommendation (item-to-item models)")] = False,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """A user's recommendations (with --why, "because you liked" source items). Exit
        code 1 when the user has no list (unknown)."""
        from crossrec_core.dates import parse_ds
        from crossrec_core.lake import Lake
        from crossrec_core.serving import user_recommendations

        settings = settings_from(config, lake)
        result = user_recommendations(
            Lake(settings.lake),
            user_id,
            domain or settings.target,
            ds=parse_ds(ds, settings.ds_range) if ds else None,
            version=version,
            k=k,
        )
        if as_json:
            typer.echo(json.dumps(result.as_dict()))
        else:
            if not result.known:
                err_console.print(
                    f"user {user_id!r} has no recommendations in ds={result.ds} domain={result.domain} "
                    f"(table version {result.table_version}): unknown to that run. As a new user they fall in "
                    f"segment '{result.segment}' and get the popularity list"
                    + (":" if result.rows.num_rows else ", but that run served no fallback list."),
                    highlight=False,
                    markup=False,
                )
            show_recommendations(result, why)
        if not result.known:
            raise typer.Exit(1)

    @app.command("sql")
    def sql(
        query: Annotated[str, typer.Argument(help="one SELECT / WITH / DESCRIBE / SHOW / EXPLAIN statement")],
        output: Annotated[OutputFormat, typer.Option("--format", help="output format")] = OutputFormat.TABLE,
        timeout: Annotated[
            float | None, typer.Option("--timeout", help="stop the query after this many seconds (default: config query.timeout_seconds)")
        ] = None,
        memory_limit: Annotated[
            str | None, typer.Option("--memory-limit", help="DuckDB memory limit, e.g. 2GB (default: config query.memory_limit)")
        ] = None,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Read-only SQL (DuckDB) over the tables recommendations, run_reports and alerts (current snapshots).
        A query is stopped past the time or memory limit, and at once by Ctrl-C."""
        from crossrec_core.lake import Lake
        from crossrec_core.query import run_query

        limits = {"timeout_seconds": timeout, "memory_limit": memory_limit}
        settings = settings_from(config, lake, query={key: value for key, value in limits.items() if value is not None})
        try:
            result = run_query(Lake(settings.lake), query, settings.query)
        except KeyboardInterrupt:
            err_console.print("query stopped by Ctrl-C", highlight=False, markup=False)
            raise typer.Exit(130) from None
        if output is OutputFormat.JSON:
            typer.echo(json.dumps(result.to_pylist(), default=str))
        elif output is OutputFormat.CSV:
            import pyarrow.csv as pacsv

            buffer = io.BytesIO()
            pacsv.write_csv(result, buffer)
            typer.echo(buffer.getvalue().decode(), nl=False)
        else:
            table = RichTable(caption=f"{result.num_rows} rows")
            for name in result.column_names:
                table.add_column(name)
            for row in result.to_pylist():
                table.add_row(*(Text("" if value is None else str(value)) for value in row.values()))
            console.print(table)

    @app.command("tables")
    def tables(
        limit: Annotated[int, typer.Option("--limit", min=1, help="newest versions shown per table")] = 20,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Versions of each serving Delta table: commit time, operation, rows and files."""
        from crossrec_core.lake import Lake
        from crossrec_core.serving import DELTA_TABLES, table_versions

        the_lake = Lake(settings_from(config, lake).lake)
        for delta_table in DELTA_TABLES:
            if not the_lake.delta_exists(delta_table):
                console.print(f"{delta_table.path}: no table yet")
                continue
            table = RichTable(title=f"{delta_table.path} ({the_lake.table_root(delta_table)})")
            for column in ("version", "committed (UTC)", "operation", "predicate", "rows", "files"):
                table.add_column(column, justify="right" if column in ("version", "rows", "files") else "left")
            for entry in table_versions(the_lake, delta_table, limit):
                predicate = entry.parameters.get("predicate") or entry.parameters.get("mode") or ""
                table.add_row(
                    *map(
                        Text,
                        (
                            str(entry.version),
                            entry.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
                            entry.operation,
                            str(predicate),
                            str(entry.rows),
                            str(entry.files),
                        ),
                    )
                )
            console.print(table)

    @app.command("status")
    def status(
        domain: Annotated[
            list[str] | None,
            typer.Option("--domain", help="domain to check (repeatable; default: the target domain and every domain served)"),
        ] = None,
        max_age_hours: Annotated[
            float | None, typer.Option("--max-age-hours", min=0, help="stale past this age (default: orchestration.stale_after_hours)")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON (for machines)")] = False,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Age and row count of the recommendation list served per domain. Exit code 1 when a
        list is older than the threshold or a domain has none (for monitors)."""
        from datetime import UTC, datetime

        from crossrec_core.lake import Lake
        from crossrec_core.serving import served_lists

        settings = settings_from(config, lake)
        limit = settings.orchestration.stale_after_hours if max_age_hours is None else max_age_hours
        now = datetime.now(UTC)
        lists = served_lists(Lake(settings.lake), domain or [settings.target])
        if domain:
            lists = [served for served in lists if served.domain in domain]
        verdicts: list[dict[str, Any]] = []
        for served in lists:
            age = served.age_hours(now)
            verdicts.append(
                {
                    "domain": served.domain,
                    "ds": served.ds,
                    "rows": served.rows,
                    "model_version": served.model_version,
                    "published_at": served.published_at.isoformat() if served.published_at else None,
                    "age_hours": None if age is None else round(age, 2),
                    "state": "missing" if age is None else ("stale" if age > limit else "fresh"),
                }
            )
        if as_json:
            typer.echo(json.dumps({"max_age_hours": limit, "lists": verdicts}))
        else:
            table = RichTable(caption=Text(f"stale past {limit:g} hours"))
            for column in ("domain", "ds", "rows", "age (h)", "published (UTC)", "model", "state"):
                table.add_column(column, justify="right" if column in ("rows", "age (h)") else "left")
            for v in verdicts:
                table.add_row(
                    *map(
                        Text,
                        (
                            v["domain"],
                            v["ds"] or "-",
                            f"{v['rows']:,}",
                            "-" if v["age_hours"] is None else f"{v['age_hours']:.1f}",
                            v["published_at"][:19].replace("T", " ") if v["published_at"] else "-",
                            v["model_version"] or "-",
                            v["state"],
                        ),
                    )
                )
            console.print(table)
        if any(v["state"] != "fresh" for v in verdicts):
            raise typer.Exit(1)

    @app.command("restore")
    def restore(
        version: Annotated[int, typer.Option("--version", min=0, help="earlier table version to serve again (see `crossrec tables`)")],
        ds: Annotated[
            str | None, typer.Option("--ds", help="restore only this night (YYYY-MM-DD); without it EVERY ds is rolled back")
        ] = None,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Serve an earlier version of serving/recommendations again (one new Delta commit).
        With --ds only that night's partition (all its domains) gets that version's rows;
        without it the whole table is rolled back: every ds published after that version
        disappears from what is served (time travel still has it)."""
        from crossrec_core.dates import parse_ds
        from crossrec_core.lake import Lake
        from crossrec_core.serving import restore_night, restore_recommendations

        the_lake = Lake(settings_from(config, lake).lake)
        if ds is None:
            new_version = restore_recommendations(the_lake, version)
            console.print(f"recommendations now serve the content of version {version} (as version {new_version})", highlight=False)
        else:
            night = parse_ds(ds)
            new_version = restore_night(the_lake, night, version)
            console.print(
                f"recommendations of ds={night} now serve their rows of version {version} (as version {new_version}); other nights unchanged",
                highlight=False,
            )

    @app.command("compact")
    def compact(config: ConfigOption = None, lake: LakeOption = None) -> None:
        """Merge the small files of run_reports and alerts (one commit per table, rows
        unchanged); `crossrec vacuum` later deletes the replaced files."""
        from crossrec_core.lake import Lake
        from crossrec_core.serving import compact_tables

        for result in compact_tables(Lake(settings_from(config, lake).lake)):
            console.print(
                f"{result.table}: {result.files_removed} files merged into {result.files_added} (version {result.table_version})",
                highlight=False,
                markup=False,
            )

    @app.command("vacuum")
    def vacuum(
        keep_days: Annotated[int, typer.Option("--keep-days", min=0, help="keep ds partitions this many days before the newest")],
        dry_run: Annotated[bool, typer.Option("--dry-run", help="only print what would be removed")] = False,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Remove old ds partitions (Delta: one delete commit per table), vacuum unreferenced
        Delta files older than the kept window, and old scores/ and models/ partitions."""
        from crossrec_core.lake import Lake
        from crossrec_core.serving import vacuum_lake

        result = vacuum_lake(Lake(settings_from(config, lake).lake), keep_days, dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        for partition in result.removed_partitions:
            console.print(f"{verb} partition {partition}", highlight=False, markup=False, soft_wrap=True)
        for path in result.removed_files:
            console.print(f"{verb} file {path}", highlight=False, markup=False, soft_wrap=True)
        for table_path, table_version in result.delete_commits.items():
            console.print(f"{table_path}: delete committed as version {table_version}", highlight=False, markup=False, soft_wrap=True)
        console.print(
            f"{verb} {len(result.removed_partitions)} partitions and {len(result.removed_files)} files",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
