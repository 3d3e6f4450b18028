"""Every stage as a job: ``python -m crossrec_core.jobs STAGE --ds DATE [...]``.

Airflow runs the torch and Delta stages that way and spark-submits this file for the
Spark ones (``PYTHONSAFEPATH=1 spark-submit .../crossrec_core/jobs.py clean --ds DATE
--domain D``): it works wherever the package is installed, with no checkout. Both run
with Python's safe path (``-P``, ``PYTHONSAFEPATH=1``): neither the working directory
nor this file's folder goes first on ``sys.path``, so a source tree there or the
package's own module names (config, data, ...) shadow nothing. ``jobs/<stage>.py`` in the
repository are the same entry point, one file per stage.
Expected failures (:class:`~crossrec_core.errors.CrossrecError`: bad config, bad input,
missing data, a contract violation) exit 2 with one clear line on stderr, and Airflow does
not retry them; anything else keeps its stack trace and exit code 1, and is retried.
"""

from __future__ import annotations

import argparse
import logging
import sys

from crossrec_core.config import Settings, load_settings
from crossrec_core.dates import parse_ds
from crossrec_core.errors import EXPECTED_FAILURE_EXIT, CrossrecError
from crossrec_core.pipeline import stage_function
from crossrec_core.stages import STAGES, RunParam, Stage


def argument_parser(stage: Stage) -> argparse.ArgumentParser:
    """The stage's options: the common ones, ``--domain`` for a per-domain stage, and the
    run parameters it declares."""
    parser = argparse.ArgumentParser(prog=f"crossrec_core.jobs {stage.name}", description=f"crossrec stage '{stage.name}' for one date")
    parser.add_argument("--ds", required=True, help="run date YYYY-MM-DD")
    if stage.per_domain:
        parser.add_argument("--domain", required=True)
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--lake", help="lake root")
    parser.add_argument("--source", help="source domain name (overrides domains.source)")
    parser.add_argument("--target", help="target domain name (overrides domains.target)")
    if RunParam.MODEL in stage.params:
        parser.add_argument("--model", help="model name or 'auto'")
    if RunParam.K in stage.params:
        parser.add_argument("-k", type=int, help="recommendations per user")
    if RunParam.RETRAIN in stage.params:
        parser.add_argument("--retrain", action="store_true", help="train from scratch (no warm start)")
    return parser


def job_settings(args: argparse.Namespace) -> Settings:
    """The settings of one job: its arguments (the DAG's trigger params) win over the
    CROSSREC_* environment, the YAML file and the defaults."""
    overrides: dict = {}
    if args.lake:
        overrides["lake"] = args.lake
    domains = {role: name for role, name in (("source", args.source), ("target", args.target)) if name}
    if domains:
        overrides["domains"] = domains
    if getattr(args, "model", None):
        overrides.setdefault("model", {})["name"] = args.model
    if getattr(args, "retrain", False):
        overrides.setdefault("model", {})["warm_start"] = False
    if getattr(args, "k", None) is not None:
        overrides["score"] = {"k": args.k}
    return load_settings(args.config, **overrides)


def main(argv: list[str] | None = None) -> int:
    """``argv``: the stage's name, then its arguments (default: the command line)."""
    name, *arguments = (sys.argv[1:] if argv is None else argv) or [""]
    if name not in STAGES:
        print(
            f"crossrec_core.jobs: unknown stage {name!r}; usage: python -m crossrec_core.jobs {{{','.join(STAGES)}}} ...", file=sys.stderr
        )
        return EXPECTED_FAILURE_EXIT
    stage = STAGES[name]
    args = argument_parser(stage).parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        settings = job_settings(args)
        kwargs = {"domain": args.domain} if stage.per_domain else {}
        report = stage_function(name)(settings, parse_ds(args.ds, settings.ds_range), **kwargs)
    except CrossrecError as err:
        print(f"crossrec {name} failed: {err}", file=sys.stderr)
        return EXPECTED_FAILURE_EXIT
    print(f"crossrec {name} {report.status}: rows_in={report.rows_in} rows_out={report.rows_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
