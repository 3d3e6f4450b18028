"""Options and error handling shared by every command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from crossrec_core.config import Settings, load_settings

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (default: CROSSREC_CONFIG, else embedded defaults)")
]
LakeOption = Annotated[Path | None, typer.Option("--lake", help="lake root (default: CROSSREC_LAKE, else config 'lake')")]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("py4j", "urllib3", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def settings_from(config: Path | None, lake: Path | None, **overrides: Any) -> Settings:
    """Settings from --config, with --lake and command-specific overrides on top."""
    if lake is not None:
        overrides["lake"] = lake
    return load_settings(config, **overrides)
