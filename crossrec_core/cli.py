"""The ``crossrec`` command line. Each area registers its commands from crossrec_core.commands."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from crossrec_core.commands import common, evaluation, ingest, pipeline, serving

app = typer.Typer(
    name="crossrec",
    help="Cross-domain recommendation: import logs, run the nightly stages, evaluate models, query recommendations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    common.setup_logging(verbose)


for area in (ingest, pipeline, evaluation, serving):
    area.register(app)


def run() -> None:
    """Entry point: expected errors (bad config, bad input, missing data) print one clear
    line and exit 2 instead of a stack trace."""
    from crossrec_core.config import ConfigError
    from crossrec_core.contracts import ContractError
    from crossrec_core.lake import LakeError

    try:
        app(standalone_mode=False)
    except (ConfigError, ContractError, LakeError, ValueError, FileNotFoundError) as err:
        # escape: a message may hold brackets (a regex, a list) that rich would take for markup
        common.err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, markup=True)
        sys.exit(2)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(130)
