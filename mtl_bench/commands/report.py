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
from mtl_bench.errors import OutputError, UserError

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
    add_ci_arguments(p)
    p.add_argument("--open", action="store_true", help="open report.html in a web browser")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args: argparse.Namespace) -> int:
    from mtl_bench.aggregate import META_FILE, Tables
    from mtl_bench.report import write_report

    out = Path(args.out)
    tables_dir = Path(args.tables) if args.tables else out / "tables"
    if args.runs_dir is not None or not (tables_dir / META_FILE).is_file():
        tables = aggregate_to(args.runs_dir or "runs", tables_dir, args.ci, args.level,
                              args.alpha, args.quiet)
    else:
        tables = Tables.read(tables_dir)
        made = tables.meta.get("ci", {})
        if (args.ci, args.level) != (made.get("method"), made.get("level")) and not args.quiet:
            print(f"note: the tables in {tables_dir} were made with --ci {made.get('method')} "
                  f"--level {made.get('level')}; pass --runs-dir to aggregate again with "
                  f"--ci {args.ci} --level {args.level}", file=sys.stderr)
    try:
        files = write_report(tables, out, args.metric)
    except OSError as exc:
        raise OutputError("the report", out, exc) from None
    if not args.quiet:
        print(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figure files in "
              f"{files.markdown.parent / 'figures'}/")
    if args.open:
        import webbrowser

        if not webbrowser.open(files.html.resolve().as_uri()):
            raise UserError(f"could not open a web browser; open {files.html} by hand")
    return 0
