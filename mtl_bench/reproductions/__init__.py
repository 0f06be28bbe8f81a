"""Reproductions of published findings, one module each; ``python -m mtl_bench.reproduce NAME``.

Each reproduction trains a fixed grid of runs through the sweep (stored runs are reused; a run
whose stored code hashes differ from the current code is trained again), then writes its section
of ``docs/reproductions.md`` and its figures under ``docs/figures/``. Every number, table and
verdict in a section is computed from the run records. :data:`REPRODUCTIONS` lists them in the
order of the page; ``all`` runs every one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mtl_bench.reproductions import common
from mtl_bench.reproductions.common import DOCS_FILE, RUNS_ROOT, Reproduction
from mtl_bench.reproductions.gradnorm_toy import GradNormToy
from mtl_bench.reproductions.multi_digits import MultiDigits
from mtl_bench.reproductions.quadratic import QuadraticRepro
from mtl_bench.reproductions.toy_2d import Toy2D

#: Every reproduction by name, in the order of the page.
REPRODUCTIONS: dict[str, Reproduction] = {
    r.name: r for r in (GradNormToy(), MultiDigits(), Toy2D(), QuadraticRepro())}


def run_reproduction(name: str, seeds: Sequence[int] | None = None, epochs: int | None = None,
                     jobs: int = 2, runs_root: str | Path = RUNS_ROOT,
                     docs: str | Path = DOCS_FILE, report_only: bool = False,
                     quiet: bool = False) -> Path:
    """Train (as needed) and write the section of the reproduction ``name``."""
    return common.run_reproduction(REPRODUCTIONS, name, seeds, epochs, jobs, runs_root, docs,
                                   report_only, quiet)


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(REPRODUCTIONS, argv)


__all__ = ["REPRODUCTIONS", "Reproduction", "main", "run_reproduction"]
