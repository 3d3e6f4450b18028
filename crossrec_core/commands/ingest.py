"""``crossrec import pairs|recbole|events`` and ``crossrec demo-data``: fill the lake's raw zone.

Every command lands whole days atomically (re-running replaces, never duplicates) and
prints what it landed per domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from crossrec_core.commands.common import ConfigOption, LakeOption, console, settings_from
from crossrec_core.ingest.landing import ImportSummary


def print_summary(title: str, summary: ImportSummary) -> None:
    table = Table(title=f"{title} ({summary.seconds:.1f} s)", title_justify="left")
    for name in ("domain", "days", "first ds", "last ds", "rows", "users", "items", "bytes"):
        table.add_column(name, justify="left" if name in ("domain", "first ds", "last ds") else "right")
    for d in summary.domains:
        counts = [d.rows, d.users, d.items, d.bytes]
        table.add_row(d.domain, str(d.days), d.first_ds, d.last_ds, *("-" if n is None else f"{n:,}" for n in counts))
    console.print(table)
    for label, value in summary.details.items():
        console.print(f"  {label}: {value:,}" if isinstance(value, int) else f"  {label}: {value}", highlight=False, markup=False)


def _pipeline_hint(source: str, target: str) -> None:
    console.print(
        f"The nightly pipeline reads the domains named in the config: set domains.source={source} and "
        f"domains.target={target} (or CROSSREC_DOMAINS__SOURCE={source} CROSSREC_DOMAINS__TARGET={target}).",
        highlight=False,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    imports = typer.Typer(
        name="import",
        help="Land a dataset or delivered event files in the raw zone (raw/domain=D/ds=DAY).",
        no_args_is_help=True,
    )
    app.add_typer(imports, name="import")

    @imports.command("pairs")
    def pairs(
        directory: Annotated[Path, typer.Argument(help="folder with <source>_<target>/ and <target>_<source>/ (CDRIB layout)")],
        source: Annotated[str, typer.Option("--source", help="source domain; DIR/<source>_<target> holds its interactions")],
        target: Annotated[str, typer.Option("--target", help="target domain; DIR/<target>_<source> holds its interactions")],
        days: Annotated[int, typer.Option("--days", help="spread the interactions over this many days")] = 14,
        end_date: Annotated[str | None, typer.Option("--end-date", help="last day YYYY-MM-DD (default: yesterday, UTC)")] = None,
        seed: Annotated[int, typer.Option("--seed", help="seed of the synthetic timestamps")] = 0,
        common_users: Annotated[
            int | None,
            typer.Option(
                "--common-users",
                min=0,
                help="C: user ids below it are one person in both domains (default: 1 + the largest id of any valid/test file)",
            ),
        ] = None,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Import a user_id<TAB>item_id cross-domain pair (e.g. Amazon cloth/sport of CDRIB).

        Only user ids below C (the common users) are the same person in both domains;
        every other id is the domain's own and lands as ``<domain>-<id>``.

        The dataset has no timestamps, so the ones landed are SYNTHETIC: every train
        interaction gets a random second of a random one of the DAYS days ending at
        END_DATE (repeatable for a SEED). valid.txt/test.txt (cold-start users) are not
        landed in raw/; they go to the holdout table as the dataset's evaluation set.
        """
        from crossrec_core.dates import parse_ds
        from crossrec_core.ingest.pairs import import_pairs
        from crossrec_core.lake import Lake

        settings = settings_from(config, lake)
        if end_date is not None:
            parse_ds(end_date, settings.ds_range)
        summary = import_pairs(Lake(settings.lake), directory, source, target, days, end_date, seed, common_users)
        print_summary(f"import pairs {directory} -> {settings.lake} (synthetic timestamps)", summary)
        _pipeline_hint(source, target)

    @imports.command("recbole")
    def recbole(
        directory: Annotated[Path, typer.Argument(help="folder with one RecBole <name>.inter and <name>.item")],
        source_genres: Annotated[str, typer.Option("--source-genres", help="comma-separated genres of the source domain")],
        target_genres: Annotated[str, typer.Option("--target-genres", help="comma-separated genres of the target domain")],
        source_name: Annotated[str | None, typer.Option("--source-name", help="source domain name (default: from its first genre)")] = None,
        target_name: Annotated[str | None, typer.Option("--target-name", help="target domain name (default: from its first genre)")] = None,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Import RecBole atomic files (e.g. MovieLens-1M) as two domains split by genre.

        Movies carrying genres of both lists, or of neither, are left out. Ratings land
        in the raw partition of their real UTC date (event_type rating, value = rating).
        """
        from crossrec_core.ingest.recbole import import_recbole, parse_genres
        from crossrec_core.lake import Lake

        settings = settings_from(config, lake)
        summary = import_recbole(
            Lake(settings.lake),
            directory,
            parse_genres(source_genres, "--source-genres"),
            parse_genres(target_genres, "--target-genres"),
            source_name,
            target_name,
        )
        print_summary(f"import recbole {directory} -> {settings.lake}", summary)
        _pipeline_hint(*(d.domain for d in summary.domains))

    @imports.command("events")
    def events(
        files: Annotated[list[Path], typer.Argument(help="CSV (header), JSON Lines or Parquet files; .csv.gz/.jsonl.gz allowed")],
        domain: Annotated[str, typer.Option("--domain", help="domain the events belong to")],
        ds: Annotated[str, typer.Option("--ds", help="day YYYY-MM-DD of the raw partition")],
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Land delivered event files as raw/domain=DOMAIN/ds=DS, replacing that partition.

        Each file must be readable and have columns user_id, item_id, ts (optional:
        event_id, event_type, value). One bad file fails the call and nothing lands.
        """
        from crossrec_core.ingest.events import import_events
        from crossrec_core.lake import Lake

        settings = settings_from(config, lake)
        summary = import_events(Lake(settings.lake), files, domain, ds, settings.ds_range)
        print_summary(f"import events -> {settings.lake}", summary)
        if domain not in settings.domains.all:
            console.print(
                f"note: {domain!r} is not a configured domain ({', '.join(settings.domains.all)}); the nightly run will not read it",
                markup=False,
            )

    @app.command("demo-data")
    def demo_data(
        users: Annotated[int, typer.Option("--users", help="users in all (some only in one domain)")] = 2000,
        days: Annotated[int, typer.Option("--days", help="days of events")] = 3,
        seed: Annotated[int, typer.Option("--seed", help="same seed and end date: same bytes")] = 7,
        bad_fraction: Annotated[float, typer.Option("--bad-fraction", help="share of malformed rows in every file")] = 0.02,
        end_date: Annotated[str | None, typer.Option("--end-date", help="last day YYYY-MM-DD (default: yesterday, UTC)")] = None,
        events_per_day: Annotated[
            int | None,
            typer.Option("--events-per-day", help="source-domain events per day (default: proportional to --users); the target gets fewer"),
        ] = None,
        config: ConfigOption = None,
        lake: LakeOption = None,
    ) -> None:
        """Write synthetic logs of the configured source and target domains into raw/.

        Users share one taste across both domains (the signal cross-domain models learn);
        some users are active in one domain only; a share of rows is malformed in ways the
        clean stage must quarantine.
        """
        from crossrec_core.ingest.demo_data import generate_demo_data
        from crossrec_core.lake import Lake

        settings = settings_from(config, lake)
        summary = generate_demo_data(Lake(settings.lake), settings, users, days, seed, bad_fraction, end_date, events_per_day)
        print_summary(f"demo-data -> {settings.lake}", summary)
