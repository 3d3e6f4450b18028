"""What every benchmark shares: where the page is, how a section is replaced, the machine."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
# CROSSREC_BENCH_DOCS lets the smoke test write somewhere else than the real page
DOCS = Path(os.environ.get("CROSSREC_BENCH_DOCS", REPO / "docs" / "BENCHMARKS.md"))


def machine() -> str:
    """One line naming the machine and the date, for every table."""
    cpu = (
        next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()}; measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


@dataclass(frozen=True)
class Goal:
    """One goal of docs/BENCHMARKS.md and the figure measured for it."""

    what: str
    measured: float
    target: float
    at_most: bool = False  # the goal is measured <= target (a time), else >= (a rate)

    @property
    def met(self) -> bool:
        return self.measured <= self.target if self.at_most else self.measured >= self.target

    @property
    def verdict(self) -> str:
        return "met" if self.met else "NOT met"


def write_summary(path: Path, benchmark: str, command: str, goals: list[Goal], results: Any) -> None:
    """``--json PATH``: the run's figures, each goal with its measured figure and verdict."""
    summary = {
        "benchmark": benchmark,
        "command": command,
        "machine": machine(),
        "goals": [{**asdict(goal), "met": goal.met} for goal in goals],
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")


def figure(width: float = 7.0, height: float = 4.0):
    """A new matplotlib figure and axes, drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


# Figures drawn by a benchmark wait here until its section is written (--write-docs): a run
# without it leaves docs/ untouched.
_UNWRITTEN: dict[str, Any] = {}


def link_figure(fig, name: str) -> str:
    """The Markdown that shows ``fig`` as ``bench/<name>.png`` beside the page; the file
    itself is written with the section (:func:`write_section`)."""
    _UNWRITTEN[name] = fig
    return f"![{name}](bench/{name}.png)"


def write_section(section: str, text: str, page: Path = DOCS) -> None:
    """Replace (or append) the ``section`` heading's part of ``page``, leaving the others
    alone, and write the figures the section links to beside it."""
    import matplotlib.pyplot as plt

    for name, fig in _UNWRITTEN.items():
        path = page.parent / "bench" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    _UNWRITTEN.clear()
    current = page.read_text() if page.exists() else "# Benchmarks\n"
    start = current.find(section + "\n")
    if start < 0:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        end = current.find("\n## ", start + len(section))
        updated = current[:start] + text + (current[end:] if end >= 0 else "")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(updated)


def two_tower(features, user_vectors, item_vectors):
    """crossrec's evaluator and scorer over vectors made elsewhere (random ones, Spark ALS factors)."""
    from crossrec_core.config import load_settings
    from crossrec_core.models.fixed import FixedVectors

    return FixedVectors(features, load_settings().model, user_vectors, item_vectors)
