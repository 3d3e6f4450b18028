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


def run(argv: list[str] | None = None) -> None:
    """Entry point. Expected errors (the crossrec error family: bad config, bad input,
    missing data) and bad arguments print one line and exit 2, without a stack trace;
    any other error keeps its stack trace (exit 1). A command's own exit code (``recs``
    for an unknown user: 1; Ctrl-C: 130) is kept."""
    from crossrec_core.errors import EXPECTED_FAILURE_EXIT, CrossrecError

    def one_line(message: str) -> None:
        # escape: a message may hold brackets (a regex, a list) that rich would take for markup
        common.err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)

    try:
        exit_code = app(args=argv, prog_name="crossrec", standalone_mode=False)
    except CrossrecError as err:
        one_line(str(err))
        sys.exit(EXPECTED_FAILURE_EXIT)
    except typer.TyperException as err:  # click's errors: a bad argument or option exits 2
        context = getattr(err, "ctx", None)
        if err.format_message():  # empty when no arguments were given: the help is shown
            one_line(f"{err.format_message()} (see {context.command_path if context else 'crossrec'} --help)")
        sys.exit(err.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
