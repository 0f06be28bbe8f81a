"""``mtl-bench aggregate``: run records -> tidy tables (CSV, Markdown, meta.json).

Reads only the run records under ``--runs-dir`` and writes, per task-pair setting, strategies x
test metrics (mean and confidence interval over seeds, n per cell), Delta_m% against single-task
runs of the same seed, ranks, paired tests against fixed equal weights, throughput, and the
cross-pair Friedman/Nemenyi summary, plus the curve tables the report plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtl_bench.errors import OutputError

#: stats.CI_METHODS, spelled out because importing mtl_bench.stats imports scipy (slow for
#: --help); a test checks that the two agree.
CI_METHODS = ("t", "bootstrap")
HELP = "turn run records into tables (mean, CI, Delta_m, ranks, tests)"
DEFAULT_TABLES = Path("reports") / "tables"


def add_ci_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ci", choices=CI_METHODS, default="t",
                   help="confidence interval over seeds: t (Student) or bootstrap (percentile, "
                        "fixed resampling seed); default t")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level for paired tests and the critical difference "
                        "(default 0.05)")
    p.add_argument("--metrics", type=_names, default=None, metavar="NAME[,NAME...]",
                   help="metrics that drive Delta_m%%, ranks and 'best' for the tasks that "
                        "report them (default: each task's primary metric)")
    p.add_argument("--setting", default=None, metavar="LABEL",
                   help="only this setting: its label as the tables print it, or a task pair "
                        "name when that pair has one setting")


def _names(text: str) -> list[str]:
    from mtl_bench.errors import UserError
    from mtl_bench.metrics import get_metric

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--metrics expects metric names such as macro_f1,rmse")
    for n in names:
        get_metric(n)  # unknown -> one line listing the metrics
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default="runs", help="run records to read (default: runs/)")
    p.add_argument("--out", default=str(DEFAULT_TABLES),
                   help="folder for the tables (default: reports/tables/)")
    add_ci_arguments(p)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def aggregate_to(runs_dir: str | Path, out: str | Path, ci: str, level: float, alpha: float,
                 quiet: bool = False, metrics: list[str] | None = None,
                 setting: str | None = None):
    """Aggregate ``runs_dir`` into ``out`` and say what was written; returns the tables."""
    from mtl_bench.aggregate import aggregate_dir
    from mtl_bench.display import write_tables

    tables = aggregate_dir(runs_dir, ci=ci, level=level, alpha=alpha, metrics=metrics or (),
                           setting=setting)
    try:
        write_tables(tables, out)
    except OSError as exc:
        raise OutputError("tables", out, exc) from None
    if not quiet:
        m = tables.meta
        print(f"aggregated {m['n_records']} run records ({m['n_ok']} ok, {m['n_failed']} failed)"
              f" in {len(m['settings'])} setting(s) -> {Path(out)}/ (tables.md, *.csv)")
        for path, why in m["corrupt"]:
            print(f"note: skipped corrupt record {path}: {why}", file=sys.stderr)
        for s in m["settings"]:
            for note in s["notes"]:
                print(f"note: {s['label']}: {note}", file=sys.stderr)
    return tables


def run(args: argparse.Namespace) -> int:
    aggregate_to(args.runs_dir, args.out, args.ci, args.level, args.alpha, args.quiet,
                 args.metrics, args.setting)
    return 0
