"""``crossrec eval``: benchmark models on offline datasets (amazon pairs, RecBole MovieLens)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import typer

from crossrec_core.commands.common import ConfigOption, console, err_console, settings_from

ModelsOption = Annotated[
    str,
    typer.Option(
        "--models",
        help="comma-separated model names, e.g. popularity,item_knn_cross,ease_cross,target_only,joint_mf,emcdr,dann,mmd,hybrid; "
        "a variant overrides model settings: 'hybrid[alignment_weight=0;history_pooling=attention]'",
    ),
]
UnmaskedOption = Annotated[
    bool,
    typer.Option(
        "--unmasked", help="CDRIB's ranking: a test user's known validation items are ranked too (default: excluded, as serving does)"
    ),
]
SeedsOption = Annotated[int, typer.Option("--seeds", min=1, help="runs per model; seeds are the config's model.seed + 0, 1, ...")]
Choice = TypeVar("Choice", bound=str)

OutOption = Annotated[Path, typer.Option("--out", help="output directory: results.json, results.md, ndcg_at_10.png")]
ProtocolOption = Annotated[str, typer.Option("--protocol", help="comma-separated: full (all items ranked), sampled (N negatives)")]
EpochsOption = Annotated[int | None, typer.Option("--epochs", min=1, help="cap on training epochs (overrides config model.epochs)")]
NegativesOption = Annotated[int, typer.Option("--negatives", min=1, help="negatives per held-out item in the sampled protocol")]
KsOption = Annotated[str, typer.Option("--ks", help="comma-separated cut-offs K")]


def _split(text: str) -> list[str]:
    """Comma-separated parts; commas inside a variant's brackets do not split."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part.strip() for part in [*parts, current] if part.strip()]


def _command_line(ctx: typer.Context) -> str:
    """The invocation, rebuilt from the parsed parameters (for the results' provenance)."""
    parts = [ctx.command_path]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False:
            continue
        if param.param_type_name == "argument":
            parts.append(str(value))
        else:
            parts += [param.opts[0]] if value is True and getattr(param, "is_flag", False) else [param.opts[0], str(value)]
    return " ".join(parts)


def _choices(text: str, allowed: tuple[Choice, ...], option: str) -> list[Choice]:
    """The comma-separated values of ``option``, each one of ``allowed``."""
    given = _split(text)
    chosen = [choice for value in given for choice in allowed if choice == value]
    if not given or len(chosen) != len(given):
        raise typer.BadParameter(f"{option} takes {' and/or '.join(allowed)}, comma separated, got {text!r}")
    return chosen


def _run(
    ctx: typer.Context,
    splits,
    dataset: str,
    models: str,
    seeds: int,
    out: Path,
    protocol: str,
    epochs,
    negatives,
    ks,
    config,
    unmasked: bool = False,
) -> None:
    from crossrec_core.evaluation import PROTOCOLS
    from crossrec_core.experiments import run_experiment, write_results

    protocols = _choices(protocol, PROTOCOLS, "--protocol")
    if not _split(ks) or not all(k.isdigit() and int(k) > 0 for k in _split(ks)):
        raise typer.BadParameter(f"--ks takes positive whole numbers, comma separated, got {ks!r}")
    cutoffs = [int(k) for k in _split(ks)]
    model_settings = settings_from(config, None, **({"model": {"epochs": epochs}} if epochs else {})).model
    run = run_experiment(
        splits,
        _split(models),
        [model_settings.seed + i for i in range(seeds)],
        model_settings,
        protocols=protocols,
        ks=cutoffs,
        n_negatives=negatives,
        console=err_console,
        exclude_known=not unmasked,
    )
    meta = {
        "dataset": dataset,
        "command": _command_line(ctx),
        "ranking": "unmasked (CDRIB: known validation items ranked)" if unmasked else "known interactions excluded (as served)",
        "model_settings": model_settings.model_dump(mode="json"),
    }
    for path in write_results(run, out, meta):
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    eval_app = typer.Typer(
        help="Benchmark models on offline datasets: fit, evaluate (full and sampled ranking), write tables and a chart.",
        no_args_is_help=True,
    )
    app.add_typer(eval_app, name="eval")

    @eval_app.command("pairs")
    def pairs(
        ctx: typer.Context,
        directory: Annotated[Path, typer.Argument(help="folder holding <source>_<target>/ and <target>_<source>/ (CDRIB layout)")],
        source: Annotated[str, typer.Option("--source", help="source domain name, e.g. cloth")],
        target: Annotated[str, typer.Option("--target", help="target domain name, e.g. sport")],
        out: OutOption,
        models: ModelsOption = "popularity,item_knn_cross",
        seeds: SeedsOption = 3,
        protocol: ProtocolOption = "full,sampled",
        epochs: EpochsOption = None,
        negatives: NegativesOption = 999,
        ks: KsOption = "10,20,50",
        split: Annotated[
            str,
            typer.Option(
                "--split",
                help="comma-separated cold-start user splits: cdrib (the files' valid/test), disjoint (no user in both, by a hash of the id); each writes OUT/<split>/",
            ),
        ] = "cdrib,disjoint",
        common_users: Annotated[
            int | None,
            typer.Option(
                "--common-users", min=0, help="C: user ids below it are one person in both domains (default: detected from the files)"
            ),
        ] = None,
        unmasked: UnmaskedOption = False,
        config: ConfigOption = None,
    ) -> None:
        """A cross-domain pair with cold-start test users (e.g. amazon cloth/sport): each
        split's validation users tune and early-stop, its test users are reported."""
        from crossrec_core.datasets import PAIR_SPLITS, load_pairs

        for name in _choices(split, PAIR_SPLITS, "--split"):
            splits = load_pairs(directory, source, target, split=name, common_users=common_users)
            dataset = f"{directory} ({source} -> {target}, {name} split)"
            _run(ctx, splits, dataset, models, seeds, out / name, protocol, epochs, negatives, ks, config, unmasked)

    @eval_app.command("recbole")
    def recbole(
        ctx: typer.Context,
        directory: Annotated[Path, typer.Argument(help="folder holding <dataset>.inter and <dataset>.item (RecBole atomic files)")],
        source_genres: Annotated[
            str, typer.Option("--source-genres", help="comma-separated genres of the source domain, e.g. Comedy,Romance,Drama")
        ],
        target_genres: Annotated[
            str, typer.Option("--target-genres", help="comma-separated genres of the target domain, e.g. Sci-Fi,Action,Thriller")
        ],
        out: OutOption,
        models: ModelsOption = "popularity,item_knn_cross",
        seeds: SeedsOption = 3,
        protocol: ProtocolOption = "full",
        epochs: EpochsOption = None,
        negatives: NegativesOption = 999,
        ks: KsOption = "10,20,50",
        dataset: Annotated[str, typer.Option("--dataset", help="atomic file stem")] = "ml-1m",
        warm_fraction: Annotated[
            float,
            typer.Option(
                "--warm-fraction",
                min=0.01,
                max=0.49,
                help="latest share of a warm user's target interactions held out for test (the same share before it: validation)",
            ),
        ] = 0.2,
        cold_start_fraction: Annotated[
            float,
            typer.Option(
                "--cold-start-fraction",
                min=0.0,
                max=0.9,
                help="share of users in both domains whose target history is hidden (half validation, half test)",
            ),
        ] = 0.1,
        split_seed: Annotated[int, typer.Option("--split-seed", help="seed of the cold-start user draw")] = 0,
        config: ConfigOption = None,
    ) -> None:
        """MovieLens (RecBole files) split into two domains by genre: warm users with a
        temporal holdout and seeded cold-start users."""
        from crossrec_core.datasets import load_recbole

        splits = load_recbole(
            directory,
            _split(source_genres),
            _split(target_genres),
            warm_fraction=warm_fraction,
            cold_start_fraction=cold_start_fraction,
            seed=split_seed,
            dataset=dataset,
        )
        name = f"{directory / dataset} (source genres {source_genres} -> target genres {target_genres})"
        _run(ctx, splits, name, models, seeds, out, protocol, epochs, negatives, ks, config)
