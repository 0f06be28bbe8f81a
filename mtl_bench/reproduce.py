"""Reproductions of published findings: ``python -m mtl_bench.reproduce NAME``.

Each reproduction trains a fixed grid of runs through the sweep (stored runs are reused; a run
whose stored code hashes differ from the current code is trained again), then writes its section
of ``docs/reproductions.md`` and its figures under ``docs/figures/``. Every number, table and
verdict in a section is computed here from the run records: tables use the aggregate stage's
statistics and formatting, figures the report's colour mapping. ``all`` runs every reproduction.

    python -m mtl_bench.reproduce gradnorm-toy
    python -m mtl_bench.reproduce multi-digits --seeds 5
    python -m mtl_bench.reproduce all --report-only      # rewrite the docs from stored runs
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from mtl_bench import plot_training, plots, registry, stats
from mtl_bench.aggregate import (
    METHOD,
    REFERENCE,
    SETTING,
    SINGLE_TASK,
    Tables,
    aggregate_records,
)
from mtl_bench.display import (
    Display,
    comparison_display,
    fmt_ci,
    fmt_number,
    fmt_p,
    markdown_table,
    significance_display,
)
from mtl_bench.errors import UserError
from mtl_bench.store import (
    EPOCH,
    METRIC,
    SEED,
    SPLIT,
    STRATEGY,
    TASK,
    VALUE,
    RunStore,
    atomic_write_text,
    curves_frame,
)
from mtl_bench.strategy import label
from mtl_bench.sweep import SweepSpec, execute, expand, parse_seeds, validate_all
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


def _count(flags: Sequence[bool]) -> tuple[int, int]:
    return int(sum(bool(f) for f in flags)), len(flags)


def _ci_text(values: Sequence[float]) -> str:
    iv = stats.mean_ci(np.asarray(values, dtype=float), LEVEL)
    return fmt_ci(iv.mean, iv.low, iv.high)


def _display(title: str, rows: list[dict[str, str]], note: str) -> Display:
    text = pd.DataFrame(rows)
    return Display(title, text, pd.DataFrame(False, index=text.index, columns=text.columns), note)


def _seeds_text(seeds: Sequence[int]) -> str:
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

    def configs(self, seeds: Sequence[int], epochs: int) -> list[RunConfig]:
        raise NotImplementedError

    def command(self, seeds: Sequence[int], epochs: int, runs_dir: Path, jobs: int) -> str:
        """The ``mtl-bench run`` command that trains the same runs (same run ids)."""
        raise NotImplementedError

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
             report_only: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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
        progress = execute(sorted(todo, key=_slow_first), store, jobs=jobs, quiet=quiet)
        sweeps.append({"elapsed_s": round(time.perf_counter() - start, 1),
                       "runs_trained": len(todo), "runs_failed": progress.failed,
                       "runs_total": len(configs), "jobs": jobs,
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
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


def _timing_text(records: list[dict[str, Any]], timing: dict[str, Any]) -> str:
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
                 + f" with {sw['jobs']} parallel process(es) ({sw['finished']}).")
    return text


def _failed_text(records: list[dict[str, Any]]) -> str:
    failed = [r for r in records if r.get("status") != "ok"]
    if not failed:
        return "Every run finished (status ok)."
    items = "; ".join(f"{r['strategy']} seed {r['seed']}: {r.get('reason', '')}"[:200]
                      for r in failed)
    return (f"{len(failed)} of {len(records)} runs failed and are left out of every number "
            f"below: {items}.")


# -- GradNorm's toy ----------------------------------------------------------------------------
GRADNORM_ALPHA = 0.12
TOY_STRATEGIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fixed", {}), ("gradnorm", {"alpha": GRADNORM_ALPHA}), ("uncertainty", {}), ("dwa", {}))
TOY_N_TASKS = (2, 10)
FIXED = label("fixed", {})
GRADNORM = label("gradnorm", {"alpha": GRADNORM_ALPHA})
UNCERTAINTY = label("uncertainty", {})
DWA = label("dwa", {})
TOY_LABELS = tuple(label(n, p) for n, p in TOY_STRATEGIES)


@dataclass
class ToyRun:
    """What the toy analysis needs from one record."""

    strategy: str
    seed: int
    tasks: list[str]
    sigmas: list[float]
    ratios: pd.DataFrame  # epoch x task: test loss / test loss before training
    weights: np.ndarray  # step x task
    steps_per_epoch: int

    @property
    def final_weights(self) -> np.ndarray:
        """Mean weight over the steps of the last epoch (single steps are noisy)."""
        return self.weights[-self.steps_per_epoch:].mean(axis=0)

    @property
    def final_ratios(self) -> np.ndarray:
        return self.ratios.iloc[-1].to_numpy(dtype=float)

    @property
    def spread(self) -> float:
        """r_max / r_min at the end: 1 when every task is equally far from its start."""
        r = self.final_ratios
        return float(r.max() / r.min())

    @property
    def total(self) -> float:
        """The paper's task-normalised test loss, sum_i L_i(t) / L_i(0), at the end."""
        return float(self.final_ratios.sum())


def toy_run(record: dict[str, Any]) -> ToyRun:
    tasks = [t["name"] for t in record["tasks"]]
    curves = curves_frame([record])
    loss = curves[(curves[SPLIT] == "test") & (curves[METRIC] == "loss")]
    table = loss.pivot_table(index=EPOCH, columns=TASK, values=VALUE)[tasks].sort_index()
    w = record["weights"]
    return ToyRun(record["strategy"], int(record["seed"]), tasks,
                  [float(s) for s in record["data"]["sigmas"]], table / table.iloc[0],
                  np.asarray(w["values"], dtype=float), max(int(w["steps_per_epoch"]), 1))


def _paired(runs: list[ToyRun], a: str, b: str) -> list[tuple[ToyRun, ToyRun]]:
    """Runs of strategies ``a`` and ``b`` with the same seed (same split and initialisation)."""
    left = {r.seed: r for r in runs if r.strategy == a}
    right = {r.seed: r for r in runs if r.strategy == b}
    return [(left[s], right[s]) for s in sorted(set(left) & set(right))]


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Rank correlation; NaN when either side is constant (equal weights have no order)."""
    if np.ptp(np.asarray(x, dtype=float)) == 0 or np.ptp(np.asarray(y, dtype=float)) == 0:
        return math.nan
    return float(scipy_stats.spearmanr(x, y).statistic)


class GradNormToy(Reproduction):
    name = "gradnorm-toy"
    title = "GradNorm's toy regression tasks (Chen et al., ICML 2018, section 5.1)"
    default_seeds = 3
    default_epochs = 20

    def configs(self, seeds: Sequence[int], epochs: int) -> list[RunConfig]:
        spec = SweepSpec(["gradnorm-toy"], [n for n, _ in TOY_STRATEGIES], list(seeds),
                         {"gradnorm-toy": {"n_tasks": list(TOY_N_TASKS)},
                          "gradnorm": {"alpha": [GRADNORM_ALPHA]}}, RunConfig(epochs=epochs))
        return expand(spec)

    def command(self, seeds: Sequence[int], epochs: int, runs_dir: Path, jobs: int) -> str:
        return (f"python -m mtl_bench run --task gradnorm-toy "
                f"--set gradnorm-toy.n_tasks={','.join(map(str, TOY_N_TASKS))} "
                f"--strategy {','.join(n for n, _ in TOY_STRATEGIES)} "
                f"--set gradnorm.alpha={GRADNORM_ALPHA:g} --seeds {_seeds_text(seeds)} "
                f"--epochs {epochs} --jobs {jobs} --runs-dir {runs_dir}")

    def section(self, records: list[dict[str, Any]], ctx: Context) -> str:
        ok = [r for r in records if r.get("status") == "ok"]
        by_t: dict[int, list[ToyRun]] = {}
        for r in ok:
            by_t.setdefault(len(r["tasks"]), []).append(toy_run(r))
        styles = plots.style_map(TOY_LABELS, [FIXED])
        first = ok[0] if ok else (records[0] if records else {})
        cfg = first.get("config", {})
        data = first.get("data", {})
        out = [f"## {self.title}", "", self._setup(cfg, data, ctx), "",
               "Commands (the first runs the grid if needed and writes this section; the second "
               "trains the same runs, with the same run ids, through the generic command):", "",
               "```bash", f"python -m mtl_bench.reproduce {self.name} --seeds "
               f"{_seeds_text(ctx.seeds)} --epochs {ctx.epochs} --jobs {ctx.jobs}",
               self.command(ctx.seeds, ctx.epochs, ctx.runs_dir, ctx.jobs), "```", "",
               _timing_text(records, ctx.timing) + " " + _failed_text(records), ""]
        findings: list[Finding] = []
        for t in TOY_N_TASKS:
            runs = by_t.get(t, [])
            out += [f"### {t} tasks", ""]
            if not runs:
                out += ["No finished runs.", ""]
                continue
            sigmas = runs[0].sigmas
            out += [f"Scales sigma_i: {', '.join(f'{s:.3g}' for s in sigmas)}.", ""]
            table = self._table(runs, t)
            out += [markdown_table(table), "", table.note, ""]
            out += [ctx.figure(self._figure(runs, t, styles),
                               f"{self.name}_T{t}",
                               self._caption(t)), ""]
            if t == 2:
                tables = aggregate_records([r for r in ok if len(r["tasks"]) == 2])
                wt = tables["weights"]
                if not wt.empty:
                    s = tables.meta["settings"][0]
                    ranked = [lb for lb in TOY_LABELS if lb in s["strategies"]]
                    fig = plot_training.weight_trajectories(wt, s["label"], runs[0].tasks,
                                                            styles, ranked, LEVEL)
                    out += [ctx.figure(fig, f"{self.name}_T2_weights_all",
                                       "Two tasks: the weight every strategy gave each task, "
                                       "per epoch (mean of the epoch's steps; mean and CI over "
                                       "seeds)."), ""]
                findings += self._findings_two(runs)
            else:
                findings += self._findings_ten(runs)
        out += ["### Findings", ""]
        out += [f.markdown(i) + "\n" for i, f in enumerate(findings, 1)]
        return "\n".join(out)

    # -- text --------------------------------------------------------------------------------
    @staticmethod
    def _setup(cfg: dict[str, Any], data: dict[str, Any], ctx: Context) -> str:
        n_train, n_val, n_test = (data.get(k, "?") for k in ("n_train", "n_val", "n_test"))
        return (
            "Setup. T regression tasks f_i(x) = sigma_i tanh((B + eps_i) x) with 250 inputs and "
            "100 outputs (task pair `gradnorm-toy`; its docstring has the details). The "
            "paper's N(0, 10) and N(0, 3.5) are read as variances of the entries of B and eps_i; "
            "x ~ N(0, I/250) (inputs normalised to E||x||^2 = 1; the paper does not say). Two "
            f"tasks: sigma = (1, 100); ten tasks: 1 to 100 in equal ratios (the paper draws "
            "them from an unspecified wide normal). Data: "
            f"{n_train} / {n_val} / {n_test} train / val / test rows from one fixed data seed; "
            "targets are not standardised. Network: the paper's trunk of 4 fully connected ReLU "
            "layers of 100 units and one affine head per task; squared loss; Adam "
            f"(lr {cfg.get('lr', '?')}), batch {cfg.get('batch_size', '?')}, "
            f"{cfg.get('epochs', '?')} epochs, {len(ctx.seeds)} seeds (the seed changes the "
            f"split, the initialisation and the batch order). Strategies: equal weights "
            f"(`{FIXED}`), `{GRADNORM}` (the paper's alpha for this experiment; weights learnt "
            f"at the model's learning rate), `{UNCERTAINTY}` (Kendall et al.) and `{DWA}` (not "
            "in the paper, for context). As in the paper, test-time performance is the "
            "task-normalised test loss: each task's test loss divided by its value before "
            "training, r_i = L_i(t) / L_i(0), summed over tasks. 'Final' means after the last "
            "epoch; a final weight is the mean over the last epoch's steps.")

    @staticmethod
    def _caption(t: int) -> str:
        middle = ("test loss of each task relative to its value before training "
                  "(task1 solid, task2 dashed)" if t == 2 else
                  "spread of the normalised test losses, r_max / r_min (1: all tasks equally "
                  "far from their start)")
        return (f"{t} tasks, after the paper's Figure 2: left, GradNorm's task weights per "
                f"training step; middle, {middle}; right, task-normalised test loss sum_i "
                "r_i per epoch (lower is better). Mean and 95% CI over seeds.")

    def _table(self, runs: list[ToyRun], t: int) -> Display:
        rows = []
        tasks = runs[0].tasks
        sig = np.asarray(runs[0].sigmas)
        lo, hi = int(np.argmin(sig)), int(np.argmax(sig))
        for lb in TOY_LABELS:
            rs = [r for r in runs if r.strategy == lb]
            if not rs:
                continue
            w = np.array([r.final_weights for r in rs])
            ratios = np.array([r.final_ratios for r in rs])
            row = {"strategy": lb, "runs": str(len(rs))}
            if t == 2:
                for j, name in enumerate(tasks):
                    row[f"final weight {name}"] = _ci_text(w[:, j])
                for j, name in enumerate(tasks):
                    row[f"r {name} ↓"] = _ci_text(ratios[:, j])
            else:
                row[f"final weight, sigma={sig[lo]:g}"] = _ci_text(w[:, lo])
                row[f"final weight, sigma={sig[hi]:g}"] = _ci_text(w[:, hi])
                row["Spearman(weight, sigma)"] = _ci_text([_spearman(x, sig) for x in w])
                row[f"r, sigma={sig[lo]:g} ↓"] = _ci_text(ratios[:, lo])
                row[f"r, sigma={sig[hi]:g} ↓"] = _ci_text(ratios[:, hi])
            row["r_max / r_min ↓"] = _ci_text([r.spread for r in rs])
            row["sum_i r_i ↓"] = _ci_text([r.total for r in rs])
            rows.append(row)
        note = ("After the last epoch, test split; r = test loss / test loss before training; "
                f"mean ± {LEVEL:.0%} CI over seeds (t-interval). Spearman: rank correlation of "
                "a run's final weights with the tasks' sigma (negative: smaller-scale tasks "
                "get larger weights).")
        return _display(f"{t} tasks: final weights and normalised test losses", rows, note)

    def _figure(self, runs: list[ToyRun], t: int, styles: dict[str, plots.Style]) -> Figure:
        fig = Figure(figsize=(15, 4.3), layout="constrained")
        ax_w, ax_r, ax_s = fig.subplots(1, 3)
        gn = [r for r in runs if r.strategy == GRADNORM]
        if gn:
            steps = min(len(r.weights) for r in gn)
            # every k-th step keeps the figure files small and looks the same at this size
            at = np.arange(0, steps, max(1, math.ceil(steps / PLOT_POINTS)))
            w = np.stack([r.weights[at] for r in gn])  # seed x step x task
            colours = _task_colours(len(gn[0].tasks))
            for j, name in enumerate(gn[0].tasks):
                _band(ax_w, at, w[:, :, j], colours[j],
                      f"{name} (sigma={gn[0].sigmas[j]:.3g})", "-")
            ax_w.set_xlabel("training step")
            ax_w.set_ylabel("task weight w_i (sum = T)")
            ax_w.set_title(f"{GRADNORM}: task weights")
            ax_w.legend(fontsize="x-small", ncol=2 if t > 2 else 1, frameon=False)
        for lb in TOY_LABELS:
            rs = [r for r in runs if r.strategy == lb]
            if not rs:
                continue
            st = styles[lb]
            epochs = rs[0].ratios.index.to_numpy()
            ratios = np.stack([r.ratios.to_numpy(dtype=float) for r in rs])  # seed x ep x task
            if t == 2:
                for j, ls in enumerate(("-", "--")):
                    _band(ax_r, epochs, ratios[:, :, j], st.color,
                          lb if j == 0 else "_" + lb, ls)
            else:
                _band(ax_r, epochs, ratios.max(axis=2) / ratios.min(axis=2), st.color, lb,
                      st.linestyle)
            _band(ax_s, epochs, ratios.sum(axis=2), st.color, lb, st.linestyle)
        ax_r.set_xlabel("epoch (0 = before training)")
        ax_r.set_ylabel("L_i(t) / L_i(0)" if t == 2 else "r_max / r_min")
        ax_r.set_title("normalised test loss per task" if t == 2 else
                       "spread of normalised test losses")
        ax_s.set_xlabel("epoch (0 = before training)")
        ax_s.set_ylabel("sum_i L_i(t) / L_i(0)  (lower is better)")
        ax_s.set_title("task-normalised test loss")
        for ax in (ax_w, ax_r, ax_s):
            ax.grid(alpha=0.3)
        handles, labels = ax_s.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", title="strategy",
                   fontsize="small", frameon=False)
        fig.suptitle(f"gradnorm-toy, {t} tasks (mean and {LEVEL:.0%} CI over seeds)")
        return fig

    # -- findings ----------------------------------------------------------------------------
    def _findings_two(self, runs: list[ToyRun]) -> list[Finding]:
        out = []
        gn = [r for r in runs if r.strategy == GRADNORM]
        t1, t2 = runs[0].tasks
        k, n = _count([r.final_weights[1] < r.final_weights[0] for r in gn])
        w = np.array([r.final_weights for r in gn]) if gn else np.zeros((0, 2))
        out.append(Finding(
            "Two tasks: GradNorm gives the large-scale task the smaller weight",
            "with sigma = (1, 100), GradNorm raises the weight of the sigma = 1 task and lowers "
            "that of the sigma = 100 task to counter its larger gradients (Figure 2, top).",
            f"the final weight of {t2} (sigma=100) is below that of {t1} in {k} of {n} seeds "
            f"(final weights {t1} {_ci_text(w[:, 0]) if n else '-'}, {t2} "
            f"{_ci_text(w[:, 1]) if n else '-'}). Rule: reproduced if it holds in "
            "every seed, partly if in some.", verdict_all_seeds(k, n)))

        pairs = _paired(runs, GRADNORM, FIXED)
        k, n = _count([g.spread < f.spread for g, f in pairs])
        fixed_r = np.array([f.final_ratios for _, f in pairs]) if pairs else np.zeros((0, 2))
        reason = ""
        if n:
            if (fixed_r[:, 0] > fixed_r[:, 1]).all():
                reason = (f"Under equal weights {t1}'s test loss ends at "
                          f"{_ci_text(fixed_r[:, 0])} times its initial value against "
                          f"{_ci_text(fixed_r[:, 1])} for {t2}: the large-scale task "
                          "dominates the shared trunk, the imbalance the paper describes.")
            gn_r = np.array([g.final_ratios for g, _ in pairs])
            if (gn_r[:, 0] >= 1).any():
                reason += (f" Under GradNorm {t1}'s test loss still ends at or above its "
                           f"initial value in {int((gn_r[:, 0] >= 1).sum())} of {n} seeds.")
        out.append(Finding(
            "Two tasks: GradNorm brings the normalised test losses closer together",
            "with equal weights the sigma = 100 task suppresses the sigma = 1 task; GradNorm's "
            "better balance makes the tasks train at similar rates (Figure 2, top right).",
            f"r_max / r_min after training is smaller under {GRADNORM} than under equal weights "
            f"in {k} of {n} seeds (paired by seed: {_ci_text([g.spread for g, _ in pairs])} vs "
            f"{_ci_text([f.spread for _, f in pairs])}). Rule: reproduced if in every seed.",
            verdict_all_seeds(k, n), reason.strip()))

        out.append(self._total_finding(
            runs, FIXED, "Two tasks: GradNorm improves the task-normalised test loss over "
            "equal weights", "the improved balance gives better test-time performance, "
            "measured as sum_i L_i(t) / L_i(0) (Figure 2, top right)."))
        out.append(self._total_finding(
            runs, UNCERTAINTY, "Two tasks: GradNorm beats uncertainty weighting",
            "GradNorm is more stable and outperforms uncertainty weighting, whose weights "
            "grow too large too quickly (section 5.1).", with_weights=True))
        out.append(self._context_finding(runs, DWA))
        return out

    def _findings_ten(self, runs: list[ToyRun]) -> list[Finding]:
        gn = [r for r in runs if r.strategy == GRADNORM]
        sig = np.asarray(runs[0].sigmas)
        rho = [_spearman(r.final_weights, sig) for r in gn]
        k, n = _count([x < 0 for x in rho])
        order = ""
        if gn:
            mean_w = np.mean([r.final_weights for r in gn], axis=0)
            order = " Mean final weights by increasing sigma: " + ", ".join(
                f"{w:.3g}" for w in mean_w[np.argsort(sig)]) + "."
        out = [Finding(
            "Ten tasks: GradNorm's weights grow for the smaller-scale tasks",
            "for T = 10 the w_i(t) grow larger for smaller sigma_i tasks (Figure 2, bottom).",
            f"the Spearman correlation between a run's final GradNorm weights and sigma is "
            f"negative in {k} of {n} seeds (mean {_ci_text(rho) if rho else '-'})." + order
            + " Rule: reproduced if negative in every seed.", verdict_all_seeds(k, n))]
        out.append(self._total_finding(
            runs, FIXED, "Ten tasks: GradNorm improves the task-normalised test loss over "
            "equal weights", "GradNorm significantly improves test-time performance over "
            "naively weighting each task the same (Figure 2, bottom right)."))
        out.append(self._total_finding(
            runs, UNCERTAINTY, "Ten tasks: GradNorm beats uncertainty weighting",
            "GradNorm is more stable and outperforms uncertainty weighting for T = 10 as well.",
            with_weights=True))
        return out

    @staticmethod
    def _total_finding(runs: list[ToyRun], other: str, title: str, claim: str,
                       with_weights: bool = False) -> Finding:
        pairs = _paired(runs, GRADNORM, other)
        k, n = _count([g.total < o.total for g, o in pairs])
        diff = [g.total - o.total for g, o in pairs]
        test = stats.paired_test([g.total for g, _ in pairs], [o.total for _, o in pairs])
        t = len(runs[0].tasks)
        evidence = (f"sum_i r_i after training is lower under {GRADNORM} than under {other} in "
                    f"{k} of {n} seeds ({_ci_text([g.total for g, _ in pairs]) if n else '-'} "
                    f"vs {_ci_text([o.total for _, o in pairs]) if n else '-'}; paired "
                    f"difference {_ci_text(diff) if n else '-'}, {test.test or 'no'} test "
                    f"p = {fmt_p(test.p)}; with {n} pairs no p below "
                    f"{stats.min_attainable_p(n):.3g} is possible). Rule: reproduced if lower in "
                    "every seed.")
        reason = ""
        if with_weights and n:
            sums = np.array([float(o.final_weights.sum()) for _, o in pairs])
            reason = (f"{other}'s final weights sum to {_ci_text(sums)} (GradNorm keeps the "
                      f"sum at T = {t})")
            if (sums < t).all():
                reason += (": here they shrank rather than grew, so the paper's explanation "
                           "(weights growing too large) does not apply to this run")
            reason += "."
        return Finding(title, claim, evidence, verdict_all_seeds(k, n), reason)

    @staticmethod
    def _context_finding(runs: list[ToyRun], other: str) -> Finding:
        pairs = _paired(runs, GRADNORM, other)
        k, n = _count([g.total < o.total for g, o in pairs])
        ks, _ = _count([g.spread < o.spread for g, o in pairs])
        return Finding(
            f"Two tasks: {other} for context", "",
            f"{other} (not in the paper) ends with sum_i r_i "
            f"{_ci_text([o.total for _, o in pairs]) if n else '-'} and r_max / r_min "
            f"{_ci_text([o.spread for _, o in pairs]) if n else '-'}; GradNorm is lower on the "
            f"first in {k} of {n} seeds and on the second in {ks} of {n}.", None)


def _task_colours(n: int) -> list[str]:
    """Tasks ordered by index (= by sigma here) along cividis, a colour-blind-safe ramp."""
    cmap = colormaps["cividis"]
    return [to_hex(cmap(x)) for x in np.linspace(0.0, 0.85, n)]


def _band(ax, x: np.ndarray, values: np.ndarray, colour: str, name: str,
          linestyle: str) -> None:
    """Mean line and t-interval band over the first axis of ``values`` (seeds)."""
    mean = values.mean(axis=0)
    ax.plot(x, mean, color=colour, linestyle=linestyle, label=name, linewidth=1.4)
    if len(values) > 1:
        half = stats.t_half_width(values.std(axis=0, ddof=1), np.full(len(x), len(values)),
                                  LEVEL)
        ax.fill_between(x, mean - half, mean + half, color=colour, alpha=0.15, linewidth=0)


# -- MultiMNIST on sklearn digits --------------------------------------------------------------
#: Sener & Koltun, NeurIPS 2018, MultiMNIST: test accuracy (%) of the left / right digit.
PAPER_MULTIMNIST: dict[str, tuple[float, float]] = {
    "single-task": (97.23, 95.90),
    "uniform scaling": (96.46, 94.99),
    "Kendall et al.": (96.47, 95.29),
    "GradNorm": (96.27, 94.84),
    "MGDA-UB": (97.26, 95.90),
}
#: The paper's rows and the strategy labels that run them here.
PAPER_LABELS = {"single-task": SINGLE_TASK, "uniform scaling": FIXED,
                "Kendall et al.": UNCERTAINTY, "GradNorm": "gradnorm", "MGDA-UB": "mgda"}
#: (row A, row B): the differences A - B the paper's table shows.
PAPER_GAPS = (("MGDA-UB", "uniform scaling"), ("single-task", "uniform scaling"),
              ("MGDA-UB", "single-task"), ("Kendall et al.", "uniform scaling"),
              ("GradNorm", "uniform scaling"))
TOP_GROUP, BOTTOM_GROUP = ("single-task", "MGDA-UB"), ("uniform scaling", "Kendall et al.",
                                                       "GradNorm")
DIGIT_TASKS = ("left", "right")


class MultiDigits(Reproduction):
    name = "multi-digits"
    title = ("MultiMNIST on scikit-learn digits (Sener & Koltun, NeurIPS 2018, "
             "\"Multi-Task Learning as Multi-Objective Optimization\")")
    default_seeds = 5
    default_epochs = 15

    @staticmethod
    def strategies() -> list[str]:
        return registry.strategies.names()

    def configs(self, seeds: Sequence[int], epochs: int) -> list[RunConfig]:
        spec = SweepSpec(["multi-digits"], self.strategies(), list(seeds), {},
                         RunConfig(epochs=epochs), single_task=True)
        return expand(spec)

    def command(self, seeds: Sequence[int], epochs: int, runs_dir: Path, jobs: int) -> str:
        return (f"python -m mtl_bench run --task multi-digits "
                f"--strategy {','.join(self.strategies())} --single-task "
                f"--seeds {_seeds_text(seeds)} --epochs {epochs} --jobs {jobs} "
                f"--runs-dir {runs_dir}")

    def section(self, records: list[dict[str, Any]], ctx: Context) -> str:
        out = [f"## {self.title}", ""]
        ok = [r for r in records if r.get("status") == "ok"]
        first = ok[0] if ok else (records[0] if records else {})
        out += [self._setup(first.get("config", {}), first.get("data", {}), ctx), "",
                "Commands (the first runs the grid if needed and writes this section; the "
                "second trains the same runs through the generic command):", "", "```bash",
                f"python -m mtl_bench.reproduce {self.name} --seeds {_seeds_text(ctx.seeds)} "
                f"--epochs {ctx.epochs} --jobs {ctx.jobs}",
                self.command(ctx.seeds, ctx.epochs, ctx.runs_dir, ctx.jobs), "```", "",
                _timing_text(records, ctx.timing) + " " + _failed_text(records), ""]
        if not ok:
            return "\n".join(out + ["No finished runs."])
        tables = aggregate_records(records)
        setting = tables.meta["settings"][0]
        lab = setting["label"]
        acc = self._accuracy(tables, lab)  # label -> seed x task (percent)
        styles = plots.style_map([lb for lb in setting["strategies"]
                                  if setting["roles"][lb] in (REFERENCE, METHOD)],
                                 [setting["reference"]] if setting["reference"] else [])

        paper_table = self._paper_table(acc)
        out += ["### The paper's table next to ours", "", markdown_table(paper_table), "",
                paper_table.note, ""]
        gaps, gap_rows = self._gaps(acc)
        out += ["### Differences the paper reports", "", markdown_table(gaps), "", gaps.note, ""]
        out += [ctx.figure(self._gap_figure(gap_rows, styles), f"{self.name}_gaps",
                           "Accuracy difference to uniform scaling (equal weights), in "
                           "percentage points, per task: ours (mean and 95% CI of the "
                           "difference paired by seed) and the paper's (black cross)."), ""]
        out += ["### Findings", ""]
        findings = [self._order_finding(acc)] + [self._gap_finding(a, b, gap_rows)
                                                 for a, b in PAPER_GAPS]
        out += [f.markdown(i) + "\n" for i, f in enumerate(findings, 1)]

        comp = comparison_display(tables, lab)
        out += ["### Every registered strategy", "",
                "The aggregate stage's table for this setting (`mtl-bench aggregate` on the "
                "same runs gives the same numbers).", "", markdown_table(comp), "", comp.note, ""]
        sig = significance_display(tables, lab)
        if sig is not None:
            out += [markdown_table(sig), "", sig.note, ""]
        ours = [PAPER_LABELS[p] for p in PAPER_MULTIMNIST if PAPER_LABELS[p] in acc]
        ranked = [lb for lb in ours if lb != SINGLE_TASK]
        curves = tables["curves"][tables["curves"][SETTING] == lab]
        single = SINGLE_TASK if SINGLE_TASK in ours else None
        for task in DIGIT_TASKS:
            fig = plot_training.learning_curves(curves, lab, task, "accuracy", True, styles,
                                                ranked, single, LEVEL)
            out += [ctx.figure(fig, f"{self.name}_curves_{task}",
                               f"{task} digit: training loss and validation accuracy per epoch "
                               "for the paper's methods."), ""]
        weights = tables["weights"][tables["weights"][SETTING] == lab]
        if not weights.empty:
            fig = plot_training.weight_trajectories(weights, lab, list(DIGIT_TASKS), styles,
                                                    ranked, LEVEL)
            out += [ctx.figure(fig, f"{self.name}_weights",
                               "Task weights per epoch for the paper's methods (MGDA-UB's are "
                               "the min-norm coefficients)."), ""]
        return "\n".join(out)

    @staticmethod
    def _setup(cfg: dict[str, Any], data: dict[str, Any], ctx: Context) -> str:
        canvas = data.get("canvas", ["?", "?"])
        pools = data.get("pool_sizes", ["?"] * 3)
        return (
            "Setup. Task pair `multi-digits`: two of scikit-learn's 8 x 8 digits side by side "
            f"on an {canvas[0]} x {canvas[1]} canvas, overlapping by {data.get('overlap', '?')} "
            "columns (overlapping pixels take the maximum); one 10-way head classifies the left "
            "digit, one the right. The 1797 digit images are split once (construction seed "
            f"{data.get('construction_seed', '?')}, independent of the run seed) into disjoint "
            f"pools of {pools[0]} / {pools[1]} / {pools[2]} images, and each image starts "
            f"{data.get('pairs_per_image', '?')} composite(s) of its own pool: "
            f"{data.get('n_train', '?')} / {data.get('n_val', '?')} / {data.get('n_test', '?')} "
            "train / val / test composites, no test digit seen in training. Network: a "
            "LeNet-like trunk (two 3x3 conv + max-pool stages, 10 and 20 channels, a fully "
            "connected layer of 50) and per task a fully connected layer of 50 and the output. "
            f"Adam (lr {cfg.get('lr', '?')}), batch {cfg.get('batch_size', '?')}, "
            f"{cfg.get('epochs', '?')} epochs, {len(ctx.seeds)} seeds; the run seed changes "
            "the initialisation and the batch order only, so runs of one seed start from the "
            "same weights and are compared paired by seed. The epoch is selected on validation "
            "(sum of task losses relative to epoch 0); accuracies are on the test composites. "
            "Single-task baselines train each digit's head on the same trunk alone. "
            "Differences from the paper: 8 x 8 digits (1797 images, a few hundred test "
            "composites) instead of 28 x 28 MNIST (60,000 images); a smaller network; Adam "
            "with the suite's defaults for every strategy; default hyper-parameters for "
            "GradNorm (alpha = 1.5) and the rest; `mgda` is MGDA-UB (gradients at the shared "
            "representation).")

    @staticmethod
    def _accuracy(tables: Tables, lab: str) -> dict[str, pd.DataFrame]:
        long = tables["long"]
        test = long[(long[SETTING] == lab) & (long[SPLIT] == "test")
                    & (long[METRIC] == "accuracy")]
        out = {}
        for lb, df in test.groupby(STRATEGY):
            out[str(lb)] = df.pivot_table(index=SEED, columns=TASK, values=VALUE,
                                          aggfunc="mean") * 100.0
        return out

    def _paper_table(self, acc: dict[str, pd.DataFrame]) -> Display:
        rows = []
        for row, (pl, pr) in PAPER_MULTIMNIST.items():
            lb = PAPER_LABELS[row]
            a = acc.get(lb)
            rows.append({"paper's row": row, "strategy here": lb,
                         "paper left %": f"{pl:.2f}", "paper right %": f"{pr:.2f}",
                         "ours left % ↑": _ci_text(a["left"].dropna()) if a is not None else "-",
                         "ours right % ↑": (_ci_text(a["right"].dropna()) if a is not None
                                            else "-"),
                         "seeds": str(len(a)) if a is not None else "0"})
        note = (f"Test accuracy in %; ours: mean ± {LEVEL:.0%} CI over seeds (t-interval) at the "
                "epoch selected on validation. Absolute values are not comparable (other "
                "images, network and data size); the differences below are what is tested.")
        return _display("Sener & Koltun's MultiMNIST table and this reproduction", rows, note)

    def _gaps(self, acc: dict[str, pd.DataFrame]
              ) -> tuple[Display, dict[tuple[str, str, str], dict[str, Any]]]:
        rows, data = [], {}
        for a, b in PAPER_GAPS:
            la, lb = PAPER_LABELS[a], PAPER_LABELS[b]
            for j, task in enumerate(DIGIT_TASKS):
                paper = PAPER_MULTIMNIST[a][j] - PAPER_MULTIMNIST[b][j]
                d = pd.Series(dtype=float)
                if la in acc and lb in acc:
                    d = (acc[la][task] - acc[lb][task]).dropna()
                iv = stats.mean_ci(d.to_numpy(dtype=float), LEVEL)
                test = stats.paired_test(acc[la][task].reindex(d.index).to_numpy(),
                                         acc[lb][task].reindex(d.index).to_numpy()) \
                    if len(d) else None
                verdict = verdict_gap(paper, iv.low, iv.high)
                data[(a, b, task)] = {"paper": paper, "interval": iv, "verdict": verdict,
                                      "p": test.p if test else math.nan, "label": la}
                inside = (iv.low <= paper <= iv.high) if np.isfinite(iv.low) else None
                rows.append({"difference": f"{a} − {b}", "task": task,
                             "paper (pp)": f"{paper:+.2f}",
                             "ours (pp)": fmt_ci(iv.mean, iv.low, iv.high),
                             "seeds": str(iv.n), "paired p": fmt_p(test.p) if test else "-",
                             "paper's value in our CI": ("-" if inside is None else
                                                         "yes" if inside else "no"),
                             "verdict": verdict})
        note = (f"Percentage points of test accuracy, A − B paired by seed; ours: mean ± "
                f"{LEVEL:.0%} CI (t-interval) of the per-seed differences; p from the suite's "
                f"paired test ({stats.SIGN_FLIP} below {stats.WILCOXON_MIN_N} seeds). Verdict "
                f"rule: a published gap of at least {CLAIMED_GAP:g} pp is reproduced when our "
                "CI excludes zero on the paper's side, partly when only our mean is on that "
                "side, not when it is on the other side; a smaller published gap (a near-tie) "
                "is reproduced when our CI includes it or zero.")
        return _display("Published differences against ours", rows, note), data

    @staticmethod
    def _order_finding(acc: dict[str, pd.DataFrame]) -> Finding:
        verdicts, bits = [], []
        for j, task in enumerate(DIGIT_TASKS):
            have = [p for p in PAPER_MULTIMNIST if PAPER_LABELS[p] in acc]
            ours = {p: float(acc[PAPER_LABELS[p]][task].mean()) for p in have}
            paper = [PAPER_MULTIMNIST[p][j] for p in have]
            tau = float(scipy_stats.kendalltau(paper, [ours[p] for p in have]).statistic) \
                if len(have) > 1 else math.nan
            top = [ours[p] for p in TOP_GROUP if p in ours]
            bottom = [ours[p] for p in BOTTOM_GROUP if p in ours]
            holds = bool(top and bottom and min(top) > max(bottom))
            verdicts.append(REPRODUCED if holds else NOT_REPRODUCED)
            order = " > ".join(f"{p} {ours[p]:.2f}" for p in sorted(ours, key=lambda q: -ours[q]))
            bits.append(f"{task}: {order} (Kendall tau with the paper's order "
                        f"{fmt_number(tau)}; single-task and MGDA-UB both above the other three: "
                        f"{'yes' if holds else 'no'})")
        return Finding(
            "Ordering: MGDA-UB and single-task above uniform scaling, Kendall et al. and "
            "GradNorm",
            "MGDA-UB (97.26 / 95.90) matches single-task (97.23 / 95.90) and beats uniform "
            "scaling (96.46 / 94.99), Kendall et al. (96.47 / 95.29) and GradNorm "
            "(96.27 / 94.84) on both digits.",
            "mean test accuracy (%) by method: " + "; ".join(bits) + ". Rule: reproduced if "
            "both top methods beat all three others on both digits (means only), partly if on "
            "one digit.", combine_verdicts(verdicts))

    @staticmethod
    def _gap_finding(a: str, b: str, rows: dict[tuple[str, str, str], dict[str, Any]]
                     ) -> Finding:
        cells = [rows[(a, b, task)] for task in DIGIT_TASKS]
        verdicts = [c["verdict"] for c in cells]
        paper = [c["paper"] for c in cells]
        ours = "; ".join(
            f"{task} {fmt_ci(c['interval'].mean, c['interval'].low, c['interval'].high)} pp "
            f"(n = {c['interval'].n}, p = {fmt_p(c['p'])}, {c['verdict']})"
            for task, c in zip(DIGIT_TASKS, cells))
        claimed = max(abs(p) for p in paper) >= CLAIMED_GAP
        unresolved, contrary = [], []
        for task, c in zip(DIGIT_TASKS, cells):
            iv = c["interval"]
            if c["verdict"] == REPRODUCED or not np.isfinite(iv.low):
                continue
            if iv.low <= 0 <= iv.high:
                unresolved.append(f"{task} ±{(iv.high - iv.low) / 2:.2f}")
            else:
                contrary.append(task)
        reasons = []
        if unresolved:
            reasons.append(f"Our CI half-widths ({', '.join(unresolved)} pp) include zero: with "
                           f"{cells[0]['interval'].n} seeds and this test set a difference "
                           f"of the published size ({', '.join(f'{p:+.2f}' for p in paper)}) "
                           "cannot be resolved.")
        if contrary:
            reasons.append(f"On the {' and '.join(contrary)} "
                           f"digit{'s' if len(contrary) > 1 else ''} our CI excludes zero "
                           + ("on the other side of the paper's gap" if claimed else
                              "where the paper reports a near-tie")
                           + ": a clear difference the paper does not show.")
        halves = [(c["interval"].high - c["interval"].low) / 2 for c in cells]
        if not claimed and all(v == REPRODUCED for v in verdicts) and all(
                np.isfinite(h) and h > abs(p) for h, p in zip(halves, paper)):
            reasons.append(f"Our CIs (±{halves[0]:.2f}, ±{halves[1]:.2f} pp) are wider than the "
                           "published gaps: consistent with the near-tie, not a confirmation "
                           "of it.")
        reason = " ".join(reasons)
        return Finding(
            f"{a} − {b}",
            f"{a} − {b} = {paper[0]:+.2f} (left) and {paper[1]:+.2f} (right) points"
            + ("." if claimed else ", a near-tie."),
            ours + ".", combine_verdicts(verdicts), reason)

    @staticmethod
    def _gap_figure(rows: dict[tuple[str, str, str], dict[str, Any]],
                    styles: dict[str, plots.Style]) -> Figure:
        fig = Figure(figsize=(11, 3.8), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        names = [a for a, b in PAPER_GAPS if b == "uniform scaling"]
        for ax, task in zip(axes, DIGIT_TASKS):
            for i, name in enumerate(names):
                c = rows[(name, "uniform scaling", task)]
                iv = c["interval"]
                st = styles.get(c["label"], plots.Style(plots.SINGLE_COLOUR, "o", "-"))
                err = None
                if np.isfinite(iv.low):
                    err = [[iv.mean - iv.low], [iv.high - iv.mean]]
                ax.errorbar([iv.mean], [i], xerr=err, color=st.color, marker=st.marker,
                            capsize=3, linestyle="none", label="ours" if i == 0 else "_")
                ax.plot([c["paper"]], [i], marker="x", color=plots.REFERENCE_COLOUR,
                        markersize=8, linestyle="none", label="paper" if i == 0 else "_")
            ax.axvline(0, color="#999999", linewidth=0.8, linestyle=":")
            ax.set_yticks(range(len(names)), names)
            ax.invert_yaxis()
            ax.set_xlabel(f"{task}: accuracy − uniform scaling (percentage points)")
            ax.grid(axis="x", alpha=0.3)
        axes[0].legend(fontsize="small", frameon=False)
        fig.suptitle("multi-digits: differences to equal weights, ours against the paper's")
        return fig


# -- command line ------------------------------------------------------------------------------
REPRODUCTIONS: dict[str, Reproduction] = {r.name: r for r in (GradNormToy(), MultiDigits())}


def run_reproduction(name: str, seeds: Sequence[int] | None = None, epochs: int | None = None,
                     jobs: int = 2, runs_root: str | Path = RUNS_ROOT,
                     docs: str | Path = DOCS_FILE, report_only: bool = False,
                     quiet: bool = False) -> Path:
    """Train (as needed) and write one reproduction's section; returns the docs path."""
    if name not in REPRODUCTIONS:
        raise UserError(f"unknown reproduction '{name}'; choose from: "
                        + ", ".join([*REPRODUCTIONS, "all"]))
    if jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {jobs}")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be a positive integer, got {epochs}")
    rep = REPRODUCTIONS[name]
    seeds = list(seeds) if seeds is not None else list(range(rep.default_seeds))
    epochs = epochs or rep.default_epochs
    store = RunStore(Path(runs_root) / name)
    records, timing = run_grid(rep.configs(seeds, epochs), store, jobs, quiet, report_only)
    ctx = Context(seeds, epochs, jobs, store.root, Path(docs), timing)
    body = rep.section(records, ctx)
    write_section(ctx.docs, name, body, list(REPRODUCTIONS))
    return ctx.docs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="python -m mtl_bench.reproduce",
                description="Reproduce published findings and write docs/reproductions.md.")
    p.add_argument("name", help=f"{', '.join(REPRODUCTIONS)} or all")
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
        names = list(REPRODUCTIONS) if args.name == "all" else [args.name]
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        for name in names:
            start = time.perf_counter()
            path = run_reproduction(name, seeds, args.epochs, args.jobs, args.runs_dir,
                                    args.docs, args.report_only, args.quiet)
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


if __name__ == "__main__":
    sys.exit(main())
