"""``mtl-bench report``: aggregated tables -> reports/report.md, report.html and figures.

Reads only the tables ``aggregate`` wrote. When the tables folder holds none, or when
``--runs-dir`` is given, it aggregates the run records first. The HTML file embeds every image
and opens without network access.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtl_bench.commands.aggregate import add_ci_arguments, aggregate_to
from mtl_bench.errors import OutputError

HELP = "write the Markdown/HTML report and PNG/SVG plots from the tables"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="reports",
                   help="report folder: report.md, report.html, figures/ (default: reports/)")
    p.add_argument("--tables", default=None,
                   help="aggregated tables to read (default: <out>/tables/)")
    p.add_argument("--runs-dir", default=None,
                   help="aggregate these run records first (default when no tables exist: "
                        "runs/)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME",
                   help="metric to plot for the tasks that have it (curves, Pareto); "
                        "repeatable; default: each task's first metric")
    p.add_argument("--pareto", action="append", default=[], metavar="TASK_A,TASK_B",
                   help="task pair whose trade-off is plotted (in every setting that has both); "
                        "repeatable; default: the first task against each of the next three")
    add_ci_arguments(p)
    p.add_argument("--open", action="store_true",
                   help="open report.html in a web browser (without one, print its path)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _tables_source(tables_dir: Path) -> str:
    """The runs folder the tables were aggregated from (``runs`` when unknown)."""
    import json

    try:
        return str(json.loads((tables_dir / "meta.json").read_text()).get("runs_dir") or "runs")
    except (OSError, ValueError):
        return "runs"


def _runs_newer_than(meta: Path) -> str | None:
    """The tables' runs folder when a record, tuning.json or speed.json in it changed after the
    tables were written (so ``report`` never shows stale tables after new runs)."""
    runs = Path(_tables_source(meta.parent))
    if not runs.is_dir():
        return None
    made = meta.stat().st_mtime
    paths = [*runs.glob("*/*.json"), runs / "tuning.json", runs / "speed.json"]
    try:
        newest = max((p.stat().st_mtime for p in paths if p.is_file()), default=0.0)
    except OSError:
        return None
    return str(runs) if newest > made else None


def run(args: argparse.Namespace) -> int:
    from mtl_bench.aggregate import META_FILE, Tables
    from mtl_bench.report import write_report

    out = Path(args.out)
    tables_dir = Path(args.tables) if args.tables else out / "tables"
    runs_dir = args.runs_dir
    if runs_dir is None and (tables_dir / META_FILE).is_file():
        newer = _runs_newer_than(tables_dir / META_FILE)
        if newer is not None:
            runs_dir = newer
            if not args.quiet:
                print(f"note: the run records in {newer} are newer than the tables in "
                      f"{tables_dir}; aggregating again", file=sys.stderr)
    asked = args.metrics is not None or args.setting is not None
    if runs_dir is not None or asked or not (tables_dir / META_FILE).is_file():
        tables = aggregate_to(runs_dir or _tables_source(tables_dir), tables_dir, args.ci,
                              args.level, args.alpha, args.quiet, args.metrics, args.setting)
    else:
        tables = Tables.read(tables_dir)
        made = tables.meta.get("ci", {})
        if (args.ci, args.level) != (made.get("method"), made.get("level")) and not args.quiet:
            print(f"note: the tables in {tables_dir} were made with --ci {made.get('method')} "
                  f"--level {made.get('level')}; pass --runs-dir to aggregate again with "
                  f"--ci {args.ci} --level {args.level}", file=sys.stderr)
    try:
        files = write_report(tables, out, args.metric, args.pareto)
    except OSError as exc:
        raise OutputError("the report", out, exc) from None
    if not args.quiet:
        print(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figure files in "
              f"{files.markdown.parent / 'figures'}/")
    if args.open:
        import webbrowser

        url = files.html.resolve().as_uri()
        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
        if not opened:  # the report is written: a missing browser is no failure
            print(f"no web browser to open; the report is {files.html.resolve()} ({url})")
    return 0
