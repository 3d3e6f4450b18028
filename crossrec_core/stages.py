"""The stages of the night, declared once: name, engine, queue, the run parameters each
takes, what it reads and writes (lake paths, contracts.py), and how the gate and the run
report treat it. Orchestration, the jobs, the CLI and the run report read these
declarations, never a stage's name. Imports nothing heavy: the DAG file reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from crossrec_core.errors import InputError


class Engine(StrEnum):
    SPARK = "spark"  # spark-submitted (the job builds its session from spark-submit's conf)
    PYTHON = "python"  # the worker's Python (torch, Delta); may use Spark itself (score's Spark backend)


class Queue(StrEnum):
    DEFAULT = "default"
    TORCH = "torch"  # settings.orchestration.torch_queue: a GPU worker when there is one


class RunParam(StrEnum):
    """Run parameters (DAG trigger params, CLI flags) a stage's job takes."""

    MODEL = "model"
    K = "k"
    RETRAIN = "retrain"


@dataclass(frozen=True)
class Stage:
    """One stage of the night, declared once: orchestration, jobs, the CLI and the run
    report read this, never a stage's name."""

    name: str
    function: str  # "module:function", imported when the stage runs (`crossrec recs` never loads Spark or torch)
    engine: Engine
    reads: tuple[str, ...]  # lake paths
    writes: tuple[str, ...]
    per_domain: bool = False  # runs once per domain (``--domain``)
    queue: Queue = Queue.DEFAULT
    params: frozenset[RunParam] = frozenset()
    spark_backend: bool = False  # may run Spark from Python: gets the master the Spark stages use
    held_back_by_gate: bool = False  # a gated night does not run it
    closes_the_run: bool = False  # summarises the others; runs after any failure


STAGE_LIST: tuple[Stage, ...] = (
    Stage(
        "clean",
        "crossrec_core.etl.clean:clean",
        Engine.SPARK,
        reads=("raw",),
        writes=("clean/interactions", "clean/quarantine"),
        per_domain=True,
    ),
    Stage("featurize", "crossrec_core.etl.featurize:featurize", Engine.SPARK, reads=("clean/interactions",), writes=("features",)),
    Stage(
        "train",
        "crossrec_core.training:train_stage",
        Engine.PYTHON,
        reads=("features", "serving/recommendations"),
        writes=("models",),
        queue=Queue.TORCH,
        params=frozenset({RunParam.MODEL, RunParam.K, RunParam.RETRAIN}),
    ),
    Stage("evaluate", "crossrec_core.gate:evaluate_stage", Engine.PYTHON, reads=("models", "serving/recommendations"), writes=("models",)),
    Stage(
        "score",
        "crossrec_core.scoring:score_stage",
        Engine.PYTHON,
        reads=("features", "models"),
        writes=("scores",),
        queue=Queue.TORCH,
        params=frozenset({RunParam.MODEL, RunParam.K}),
        spark_backend=True,
        held_back_by_gate=True,
    ),
    Stage(
        "publish",
        "crossrec_core.publish:publish_stage",
        Engine.PYTHON,
        reads=("scores",),
        writes=("serving/recommendations",),
        held_back_by_gate=True,
    ),
    Stage(
        "report",
        "crossrec_core.pipeline:report_stage",
        Engine.PYTHON,
        reads=("serving/run_reports",),
        writes=("serving/run_reports",),
        closes_the_run=True,
    ),
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in STAGE_LIST}
(RUN_REPORT_STAGE,) = (stage.name for stage in STAGE_LIST if stage.closes_the_run)


def declared(name: str) -> Stage:
    """The stage called ``name``; InputError naming the known ones otherwise."""
    try:
        return STAGES[name]
    except KeyError:
        raise InputError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None
