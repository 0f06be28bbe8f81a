"""What the reproductions share: the base class, verdict rules, the docs page and the CLI.

A reproduction (one module of this package) declares a grid of run configs, trains it through the
sweep with :func:`run_grid` (stored runs are reused; a run whose stored code hashes differ from
the current code is trained again) and turns the records into its section of
``docs/reproductions.md``, written by :func:`write_section` between
``<!-- reproduction: NAME -->`` markers. Verdicts are computed from the records by the rules
here or by rules the reproduction states next to its findings.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from mtl_bench import plots, registry, stats
from mtl_bench.display import Display, fmt_ci
from mtl_bench.errors import UserError
from mtl_bench.store import RunStore, atomic_write_text
from mtl_bench.sweep import execute, parse_seeds, validate_all
from mtl_bench.train import RunConfig, current_code

DOCS_FILE = Path("docs") / "reproductions.md"
FIGURES_DIR = "figures"
RUNS_ROOT = Path("runs") / "reproductions"
TIMING_FILE = "reproduce.json"
LEVEL = 0.95
PLOT_POINTS = 300  # per-step curves are drawn at no more than this many steps
REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly reproduced", "not reproduced"


# -- verdicts ----------------------------------------------------------------------------------
def verdict_all_seeds(k: int, n: int) -> str:
    """A per-seed claim: reproduced when it holds in every seed, partly in some, not in none."""
    if n > 0 and k == n:
        return REPRODUCED
    return PARTLY if k > 0 else NOT_REPRODUCED


#: A published gap (percentage points) at least this large counts as a claimed difference.
CLAIMED_GAP = 0.5


def verdict_gap(paper: float, low: float, high: float, claimed: float = CLAIMED_GAP) -> str:
    """Our paired difference (CI ``low``..``high``) against a published difference ``paper``.

    A claimed difference (|paper| >= ``claimed``): reproduced when our CI lies entirely on the
    paper's side of zero, partly when our mean is on that side but the CI includes zero, not
    reproduced when our mean is on the other side. A published near-tie (|paper| < ``claimed``):
    reproduced when our CI includes the paper's value or zero (we find no clear difference
    either), not reproduced when it excludes both (we find a clear difference the paper did
    not report).
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return NOT_REPRODUCED
    mean = (low + high) / 2
    if abs(paper) >= claimed:
        side = math.copysign(1.0, paper)
        if side * low > 0 and side * high > 0:
            return REPRODUCED
        return PARTLY if side * mean > 0 else NOT_REPRODUCED
    if low <= paper <= high or low <= 0 <= high:
        return REPRODUCED
    return NOT_REPRODUCED


def combine_verdicts(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if verdicts and all(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return PARTLY


@dataclass
class Finding:
    """One published claim, what our runs show, and the verdict computed from them."""

    title: str
    claim: str
    evidence: str
    verdict: str | None  # None: no published claim to test (context only)
    reason: str = ""

    def markdown(self, number: int) -> str:
        head = f"**{number}. {self.title}**"
        head += f" — *{self.verdict}*." if self.verdict else " — *no published claim*."
        parts = [head, f"Paper: {self.claim}" if self.claim else "", f"Ours: {self.evidence}",
                 self.reason]
        return " ".join(p for p in parts if p)


def count(flags: Sequence[bool]) -> tuple[int, int]:
    return int(sum(bool(f) for f in flags)), len(flags)


def ci_text(values: Sequence[float]) -> str:
    iv = stats.mean_ci(np.asarray(values, dtype=float), LEVEL)
    return fmt_ci(iv.mean, iv.low, iv.high)


def text_display(title: str, rows: list[dict[str, str]], note: str) -> Display:
    text = pd.DataFrame(rows)
    return Display(title, text, pd.DataFrame(False, index=text.index, columns=text.columns), note)


def seeds_text(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    return str(len(seeds)) if seeds == list(range(len(seeds))) else ",".join(map(str, seeds))


# -- one reproduction --------------------------------------------------------------------------
@dataclass
class Context:
    """What one invocation asked for, and where it writes."""

    seeds: list[int]
    epochs: int
    jobs: int
    runs_dir: Path  # this reproduction's store
    docs: Path
    timing: dict[str, Any]

    @property
    def fig_dir(self) -> Path:
        return self.docs.parent / FIGURES_DIR

    def figure(self, fig: Figure, name: str, caption: str) -> str:
        """Save ``fig`` as PNG + SVG next to the docs and return its Markdown."""
        plots.save(fig, self.fig_dir / name)
        return f"![{caption}]({FIGURES_DIR}/{name}.png)\n\n*{caption}*"


class Reproduction:
    """A grid of runs plus the analysis that turns their records into a docs section."""

    name = ""
    title = ""
    default_seeds = 3
    default_epochs = 10
    #: Runs that differ only in seed are trained as one batch of up to this many
    #: (``--seed-batch``; strategies that cannot be batched run one by one).
    seed_batch = 1

    def configs(self, seeds: Sequence[int], epochs: int) -> list[RunConfig]:
        raise NotImplementedError

    def command(self, seeds: Sequence[int], epochs: int, runs_dir: Path, jobs: int) -> str:
        """The ``mtl-bench run`` command that trains the same runs (same run ids)."""
        raise NotImplementedError

    def head(self, records: list[dict[str, Any]], ctx: Context, setup: str,
             others: str = "the second trains the same runs, with the same run ids, through "
                           "the generic command") -> list[str]:
        """The lines every section opens with: title, ``setup``, the commands that reproduce
        it (``others`` says what the commands after the first do) and the timing line."""
        return [f"## {self.title}", "", setup, "",
                f"Commands (the first runs the grid if needed and writes this section; {others}):",
                "", "```bash", f"python -m mtl_bench.reproduce {self.name} --seeds "
                f"{seeds_text(ctx.seeds)} --epochs {ctx.epochs} --jobs {ctx.jobs}",
                self.command(ctx.seeds, ctx.epochs, ctx.runs_dir, ctx.jobs), "```", "",
                timing_text(records, ctx.timing) + " " + failed_text(records), ""]

    def section(self, records: list[dict[str, Any]], ctx: Context) -> str:
        raise NotImplementedError


def _slow_first(config: RunConfig) -> tuple[int, int]:
    # longest runs first, so that two workers finish together: gradient-level strategies cost
    # one backward per task, and more tasks cost more
    family = getattr(registry.strategies.get(config.strategy), "family", "loss weighting")
    n_tasks = int(config.task_options.get("n_tasks", 2))
    return (-(family != "loss weighting"), -n_tasks)


#: Sweeps one invocation may run when the code changes while it trains (then the records
#: trained before the change are stale and are trained again).
MAX_SWEEPS = 3


def stale_or_missing(configs: Sequence[RunConfig], store: RunStore,
                     allow_stale: bool = False) -> list[RunConfig]:
    """Configs without a readable record, or (unless ``allow_stale``) whose record carries
    other code hashes than the current code."""
    todo = []
    for c in configs:
        path = store.path_for(c.task, c.run_id)
        try:
            rec = store.read(path) if path.exists() else None
        except ValueError:
            rec = None
        if rec is None or (not allow_stale and rec.get("code") != current_code(c)):
            todo.append(c)
    return todo


def run_grid(configs: Sequence[RunConfig], store: RunStore, jobs: int, quiet: bool,
             report_only: bool, seed_batch: int = 1
             ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the configs that have no record (or a record from other code); return every
    record, in config order, and the timing of the sweeps that trained them."""
    validate_all(configs)
    timing_path = store.root / TIMING_FILE
    try:
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    except ValueError:
        timing = {}
    sweeps = timing.get("sweeps", []) if isinstance(timing, dict) else []
    todo = stale_or_missing(configs, store, allow_stale=report_only)
    if todo and report_only:
        raise UserError(f"--report-only: {len(todo)} of {len(configs)} runs are missing in "
                        f"'{store.root}'; run without --report-only")
    for _ in range(MAX_SWEEPS):
        if not todo:
            break
        if not quiet:
            print(f"{len(todo)} run(s) to train, {len(configs) - len(todo)} stored; "
                  f"{jobs} process(es)", file=sys.stderr)
        start = time.perf_counter()
        progress = execute(sorted(todo, key=_slow_first), store, jobs=jobs, quiet=quiet,
                           seed_batch=seed_batch)
        sweeps.append({"elapsed_s": round(time.perf_counter() - start, 1),
                       "runs_trained": len(todo), "runs_failed": progress.failed,
                       "runs_total": len(configs), "jobs": jobs,
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                      | ({"seed_batch": seed_batch} if seed_batch > 1 else {}))
        atomic_write_text(timing_path, json.dumps({"sweeps": sweeps}, indent=1))
        todo = stale_or_missing(configs, store)
    if todo:
        raise UserError(f"{len(todo)} run(s) in '{store.root}' are still missing or stale after "
                        f"{MAX_SWEEPS} sweeps (is the code being edited meanwhile?); rerun the "
                        "command")
    records = [store.read(store.path_for(c.task, c.run_id)) for c in configs]
    stale = sum(r.get("code") != current_code(c) for r, c in zip(records, configs))
    if stale and not quiet:
        print(f"note: {stale} of {len(records)} records were trained with code that has changed "
              "since; the section says so (run without --report-only to retrain them)",
              file=sys.stderr)
    ours = {store.path_for(c.task, c.run_id) for c in configs}
    others = [p for p in store.paths() if p not in ours]
    if others and not quiet:
        print(f"note: {len(others)} record(s) in '{store.root}' are not part of this grid (older "
              "settings); they are left alone, but `mtl-bench aggregate` on that folder would "
              "include them", file=sys.stderr)
    return records, {"sweeps": sweeps, "stale": stale}


# -- the docs file -----------------------------------------------------------------------------
HEADER = """# Reproductions of published findings

This page is generated by `python -m mtl_bench.reproduce all`; each section is rewritten by
`python -m mtl_bench.reproduce NAME` from the run records under `runs/reproductions/NAME/`.
Nothing here is typed by hand: numbers, tables, figures and the verdicts are computed from the
records. A verdict is *reproduced*, *partly reproduced* or *not reproduced* by the rule stated
with each finding. Intervals are {level:.0%} confidence intervals over seeds (Student t).
"""

_SECTION = re.compile(r"<!-- reproduction: (?P<name>[\w-]+) -->\n(?P<body>.*?)"
                      r"<!-- end of reproduction: (?P=name) -->\n", re.S)


def write_section(docs: Path, name: str, body: str, order: Sequence[str]) -> None:
    """Replace (or add) the section ``name`` of ``docs``, keeping the other sections."""
    sections = {m["name"]: m["body"] for m in _SECTION.finditer(
        docs.read_text() if docs.is_file() else "")}
    sections[name] = body.rstrip() + "\n"
    names = [n for n in order if n in sections] + sorted(set(sections) - set(order))
    text = HEADER.format(level=LEVEL) + "".join(
        f"\n<!-- reproduction: {n} -->\n{sections[n]}<!-- end of reproduction: {n} -->\n"
        for n in names)
    atomic_write_text(docs, text)


def timing_text(records: list[dict[str, Any]], timing: dict[str, Any]) -> str:
    total = sum(float(r.get("wall_s") or 0) for r in records)
    prov = next((r.get("provenance") or {} for r in records), {})
    text = (f"{len(records)} runs; the sum of their training times is {total:.0f} s on "
            f"{prov.get('device', '?')} ({prov.get('threads', '?')} torch thread(s) per run, "
            f"torch {prov.get('torch', '?')}).")
    if timing.get("stale"):
        text += (f" {timing['stale']} of these records were trained with an earlier version of "
                 "the code (their harness, strategy or task code hash differs from the code "
                 "that wrote this page).")
    sweeps = timing.get("sweeps", [])
    full = [sw for sw in sweeps if sw["runs_trained"] == sw["runs_total"]]
    for sw, what in ((full[-1] if full else None, "The last sweep that trained every run"),
                     (sweeps[-1] if sweeps else None, "The last sweep")):
        if sw is None or (what == "The last sweep" and full and sw is full[-1]):
            continue
        failed = sw.get("runs_failed", 0)
        text += (f" {what} took {sw['elapsed_s']:.0f} s of wall time for "
                 f"{sw['runs_trained']} of {sw['runs_total']} runs"
                 + (f" ({failed} of them failed)" if failed else "")
                 + f" with {sw['jobs']} parallel process(es)"
                 + (f", up to {sw['seed_batch']} seeds trained as one batch"
                    if sw.get("seed_batch", 1) > 1 else "")
                 + f" ({sw['finished']}).")
    return text


def failed_text(records: list[dict[str, Any]]) -> str:
    failed = [r for r in records if r.get("status") != "ok"]
    if not failed:
        return "Every run finished (status ok)."
    items = "; ".join(f"{r['strategy']} seed {r['seed']}: {r.get('reason', '')}"[:200]
                      for r in failed)
    return (f"{len(failed)} of {len(records)} runs failed and are left out of every number "
            f"below: {items}.")



def task_colours(n: int) -> list[str]:
    """Tasks ordered by index (= by sigma here) along cividis, a colour-blind-safe ramp."""
    cmap = colormaps["cividis"]
    return [to_hex(cmap(x)) for x in np.linspace(0.0, 0.85, n)]


def band(ax, x: np.ndarray, values: np.ndarray, colour: str, name: str,
          linestyle: str) -> None:
    """Mean line and t-interval band over the first axis of ``values`` (seeds)."""
    mean = values.mean(axis=0)
    ax.plot(x, mean, color=colour, linestyle=linestyle, label=name, linewidth=1.4)
    if len(values) > 1:
        half = stats.t_half_width(values.std(axis=0, ddof=1), np.full(len(x), len(values)),
                                  LEVEL)
        ax.fill_between(x, mean - half, mean + half, color=colour, alpha=0.15, linewidth=0)



# -- command line ------------------------------------------------------------------------------
def run_reproduction(reproductions: Mapping[str, Reproduction], name: str,
                     seeds: Sequence[int] | None = None, epochs: int | None = None,
                     jobs: int = 2, runs_root: str | Path = RUNS_ROOT,
                     docs: str | Path = DOCS_FILE, report_only: bool = False,
                     quiet: bool = False) -> Path:
    """Train (as needed) and write one reproduction's section; returns the docs path.

    ``reproductions`` is the registry (name -> reproduction, in page order)."""
    if name not in reproductions:
        raise UserError(f"unknown reproduction '{name}'; choose from: "
                        + ", ".join([*reproductions, "all"]))
    if jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {jobs}")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be a positive integer, got {epochs}")
    rep = reproductions[name]
    seeds = list(seeds) if seeds is not None else list(range(rep.default_seeds))
    epochs = epochs or rep.default_epochs
    store = RunStore(Path(runs_root) / name)
    records, timing = run_grid(rep.configs(seeds, epochs), store, jobs, quiet, report_only,
                               rep.seed_batch)
    ctx = Context(seeds, epochs, jobs, store.root, Path(docs), timing)
    body = rep.section(records, ctx)
    write_section(ctx.docs, name, body, list(reproductions))
    return ctx.docs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def main(reproductions: Mapping[str, Reproduction], argv: Sequence[str] | None = None) -> int:
    """``python -m mtl_bench.reproduce NAME|all [options]``; user errors: one line, exit 2."""
    listing = "\n".join(f"  {name:<14} {rep.title} (default: {rep.default_seeds} seeds, "
                        f"{rep.default_epochs} epochs)" for name, rep in reproductions.items())
    p = _Parser(prog="python -m mtl_bench.reproduce",
                description="Reproduce published findings and write docs/reproductions.md.",
                epilog="reproductions:\n" + listing,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"{', '.join(reproductions)} or all")
    p.add_argument("--seeds", default=None,
                   help="number of seeds (3) or a list (0,5,7); default: the reproduction's")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per run; default: the reproduction's")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    p.add_argument("--runs-dir", default=str(RUNS_ROOT),
                   help=f"root of the reproductions' run records (default {RUNS_ROOT})")
    p.add_argument("--docs", default=str(DOCS_FILE), help=f"page to write (default {DOCS_FILE})")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the section from the stored records (records from "
                        "older code are used and counted); fail if a run is missing")
    p.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    try:
        args = p.parse_args(argv)
        names = list(reproductions) if args.name == "all" else [args.name]
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        for name in names:
            start = time.perf_counter()
            path = run_reproduction(reproductions, name, seeds, args.epochs, args.jobs,
                                    args.runs_dir, args.docs, args.report_only, args.quiet)
            print(f"{name}: section written to {path} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0
