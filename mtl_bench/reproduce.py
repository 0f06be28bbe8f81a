"""Reproductions of published findings: ``python -m mtl_bench.reproduce NAME``.

The reproductions live in :mod:`mtl_bench.reproductions`, one module each; this module is the
command line entry and keeps the names older code imports from here. ``all`` runs every
reproduction, in the order of the page.

    python -m mtl_bench.reproduce gradnorm-toy
    python -m mtl_bench.reproduce multi-digits --seeds 5
    python -m mtl_bench.reproduce all --report-only      # rewrite the docs from stored runs
    python -m mtl_bench.reproduce NAME --help            # options and the list of reproductions
"""

from __future__ import annotations

import sys

from mtl_bench.reproductions import REPRODUCTIONS, main, run_reproduction
from mtl_bench.reproductions.common import (
    DOCS_FILE,
    LEVEL,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    RUNS_ROOT,
    Context,
    Finding,
    Reproduction,
    combine_verdicts,
    run_grid,
    stale_or_missing,
    verdict_all_seeds,
    verdict_gap,
    write_section,
)
from mtl_bench.reproductions.gradnorm_toy import TOY_STRATEGIES, GradNormToy
from mtl_bench.reproductions.multi_digits import MultiDigits

__all__ = [
    "DOCS_FILE", "LEVEL", "NOT_REPRODUCED", "PARTLY", "REPRODUCED", "REPRODUCTIONS", "RUNS_ROOT",
    "TOY_STRATEGIES", "Context", "Finding", "GradNormToy", "MultiDigits", "Reproduction",
    "combine_verdicts", "main", "run_grid", "run_reproduction", "stale_or_missing",
    "verdict_all_seeds", "verdict_gap", "write_section",
]

if __name__ == "__main__":
    sys.exit(main())
