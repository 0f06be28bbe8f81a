"""``mtl-bench check``: compare a set of runs with a committed baseline.

Test-set quality is compared by default. A row (task pair, strategy, metric) is marked ``+``
(worse) only when its change exceeds the factor AND is significant across seeds; ``-`` better,
``~`` beyond the factor but not significant, ``x`` not comparable (config, record schema or
strategy code differs), ``!`` newly failing, ``*`` newly fixed. ``--speed`` adds speed rows
from the speed stage (``mtl-bench speed``): the runs folder's speed.json against the speed
entries saved in the baseline; the step-time ratio to fixed weights is worse only beyond the
factor with disjoint 95% intervals. Exit 0 when nothing is worse, 1 when a row is ``+`` or
``!`` (or, with ``--fail-on-x``, too many rows are ``x``), 2 on bad input or when nothing could
be compared. The table goes to stdout, the verdict to stderr.
"""

from __future__ import annotations

import argparse
import sys

from mtl_bench.errors import UserError

HELP = "compare runs with a committed baseline; exit 1 on a regression"


def _fraction(text: str) -> float:
    from mtl_bench.check import parse_factor

    value = parse_factor(text)
    if value > 1:
        raise UserError(f"--fail-on-x expects a fraction of rows from 0 to 1 (or 0%..100%); "
                        f"got '{text}'")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", default="default", metavar="NAME",
                   help="baseline name (default: default; the quick profile's is 'quick'; "
                        "`mtl-bench baseline list` shows them)")
    p.add_argument("--runs-dir", default="runs", help="the new runs (default: runs/)")
    p.add_argument("--baselines-dir", default=None, metavar="DIR",
                   help="look for the baseline in DIR only (default: the first of "
                        "./results/baselines, the mtl-bench source tree's results/baselines "
                        "and the copies installed with mtl-bench that holds it)")
    p.add_argument("--factor", default=None,
                   help="relative change a row may show before it can be marked: 0.1 or 10%% "
                        "(default: the baseline's check.toml, else 10%%)")
    p.add_argument("--factor-for", action="append", default=[], metavar="PATTERN=FACTOR",
                   help="factor for rows whose metric, task.metric or pair/strategy/task.metric "
                        "matches a shell pattern, e.g. 'ece=0.5' or 'speed*=1'; repeatable, "
                        "the last match wins")
    p.add_argument("--factors", default=None, metavar="FILE",
                   help="TOML file with factor, alpha and a [factors] table (default: "
                        "check.toml next to the baseline, when present)")
    p.add_argument("--alpha", default=None, help="significance level (default 0.05)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--speed", action="store_true",
                      help="also compare speed: the runs folder's speed.json (`mtl-bench speed`) "
                           "against the baseline's speed entries")
    # deprecated aliases, kept for scripts: quality only is the default now
    what.add_argument("--only-quality", action="store_true", help=argparse.SUPPRESS)
    what.add_argument("--only-speed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only-changed", action="store_true", help="show marked rows only")
    p.add_argument("--fail-on-x", type=_fraction, nargs="?", const=0.0, default=None,
                   metavar="FRACTION",
                   help="exit 1 when more than this fraction of rows is not comparable "
                        "(no value: any row)")
    p.add_argument("--ignore-code-hash", action="store_true",
                   help="compare runs whose strategy code changed instead of marking them x")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md",
                   help="table format on stdout (default md)")


def _speed_entries(doc: dict, args: argparse.Namespace) -> tuple[list, list]:
    from mtl_bench.speed import read_speed, speed_path

    fresh = read_speed(args.runs_dir)
    if not doc.get("speed"):
        raise UserError(f"--speed: baseline '{args.baseline}' holds no speed measurements (its "
                        "runs folder had no speed.json, or it predates the speed stage); run "
                        "`mtl-bench speed --runs-dir DIR` on the runs folder DIR the baseline is "
                        f"made from, then `mtl-bench baseline save {args.baseline} --runs-dir DIR "
                        "--force`")
    if not fresh or not fresh["entries"]:
        raise UserError(f"--speed: no speed measurements in '{args.runs_dir}' (no "
                        f"{speed_path(args.runs_dir)}); run `mtl-bench speed --runs-dir "
                        f"{args.runs_dir}` first")
    return doc["speed"], fresh["entries"]


def run(args: argparse.Namespace) -> int:
    from mtl_bench import baselines, check

    root = baselines.find_baseline(args.baseline, args.baselines_dir)
    doc = baselines.load_baseline(root, args.baseline)
    quality, speed = not args.only_speed, args.speed or args.only_speed
    base_speed, new_speed = _speed_entries(doc, args) if speed else ([], [])
    new_runs, corrupt = baselines.load_new_runs(args.runs_dir) if quality else ([], [])

    factors = check.Factors()
    alpha = check.DEFAULT_ALPHA
    factors_file = args.factors
    if factors_file is None:
        folder = baselines.baseline_path(root, args.baseline).parent
        default_file = folder / check.FACTORS_FILE
        factors_file = default_file if default_file.is_file() else None
    if factors_file is not None:
        cfg = check.load_factors_file(factors_file)
        factors.default = cfg.get("factor", factors.default)
        factors.patterns = list(cfg["patterns"])
        alpha = cfg.get("alpha", alpha)
    if args.factor is not None:
        factors.default = check.parse_factor(args.factor)
    for spec in args.factor_for:
        factors.add(spec)
    if args.alpha is not None:
        alpha = check.check_alpha(args.alpha)

    options = check.Options(factors=factors, alpha=alpha, quality=quality, speed=speed,
                            ignore_code_hash=args.ignore_code_hash)
    redo = (f"run the profile the baseline was made from (baseline note: "
            f"{doc.get('note') or 'none'}), or if the change is intended regenerate the baseline "
            f"(`mtl-bench baseline save {args.baseline} --runs-dir DIR --force`)")
    rows = []
    if quality:
        rows = check.compare(doc["runs"], new_runs, options)
        if not any(r.kind == check.STATUS and r.n for r in rows):
            raise UserError(f"no run in '{args.runs_dir}' matches baseline '{args.baseline}' by "
                            f"(task pair, settings, strategy, seed); {redo}")
    if speed:
        rows += check.compare_speed(base_speed, new_speed, options)
    why = check.nothing_compared(rows)
    if why is not None:
        raise UserError(f"nothing compared between '{args.runs_dir}' and baseline "
                        f"'{args.baseline}': {why}; {redo}")
    result = check.verdict(rows, args.fail_on_x)
    shown = [r for r in rows if r.mark] if args.only_changed else rows

    err = sys.stderr
    if args.only_quality or args.only_speed:
        flag = "--only-quality" if args.only_quality else "--only-speed"
        print(f"note: {flag} is deprecated: quality is compared by default, --speed adds speed",
              file=err)
    what = f"{len(new_runs)} runs" if quality else ""
    if speed:
        what += f"{' and ' if what else ''}{len(new_speed)} speed entries"
    print(f"baseline '{args.baseline}' ({doc['n_runs']} runs, created {doc.get('created')}) "
          f"vs {what} in '{args.runs_dir}'; factor {factors.default:.0%}"
          + (f" with {len(factors.patterns)} override(s)" if factors.patterns else "")
          + f", alpha {alpha:g}", file=err)
    for path, reason in corrupt:
        print(f"note: skipped corrupt record {path}: {reason}", file=err)
    for line in check.code_notes(doc["runs"], new_runs):
        print(line, file=err)
    extra = {"baseline": args.baseline, "runs_dir": str(args.runs_dir),
             "exit_code": result.exit_code, "summary": result.lines}
    print(check.format_rows(shown, args.format, extra))
    for line in result.lines:
        print(line, file=err)
    return result.exit_code
