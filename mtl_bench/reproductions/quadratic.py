"""Convex quadratics with imbalanced scales: where each strategy lands on a known Pareto set.

Two quadratics f_i(x) = (x - u_i)^T A_i (x - u_i) of one point x (task pair ``quadratic``):
their Pareto set is {x*(w)} with x*(w) = (sum_i w_i A_i)^-1 sum_i w_i A_i u_i, so where a run
ends can be checked exactly. The grid raises the scale ratio between the tasks (``condition``:
task 2's matrix is ``condition`` times larger) and checks four things, each by a rule stated
here and computed from the records:

1. every strategy ends on the Pareto set (distance below a tolerance), as the methods'
   convergence analyses say (MGDA: Desideri 2012, Sener & Koltun 2018; PCGrad: Yu et al.
   2020, Theorem 1; CAGrad: Liu et al. 2021; Nash-MTL: Navon et al. 2022; equal weights
   minimise the sum);
2. IMTL-G (Liu et al., ICLR 2021), Nash-MTL (whose bargaining solution is invariant to
   rescaled utilities) and FAMO (log-losses) pick the same trade-off at every scale ratio;
3. fixed weights w converge to x*(w);
4. for context, which strategies stay balanced as the scales drift apart: a run is balanced
   when the tasks' relative remaining losses f_i(end) / f_i(start) are within a factor
   ``BALANCE_FACTOR`` of each other (equal relative decrease).

The picked trade-off is also reported on the scale of the unscaled problem: condition c
multiplies A_2 by c, and x*(w) for the scaled matrices equals x*(w') for the unscaled ones with
w' proportional to (w_1, c w_2); a strategy that ignores loss scales picks the same w' at every c.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtl_bench.display import Display, markdown_table
from mtl_bench.reproductions.common import (
    NOT_REPRODUCED,
    Context,
    Finding,
    Reproduction,
    combine_verdicts,
    seeds_text,
    text_display,
    verdict_all_seeds,
)
from mtl_bench.store import EPOCH, METRIC, SPLIT, TASK, VALUE, curves_frame
from mtl_bench.strategy import label
from mtl_bench.sweep import SweepSpec, expand
from mtl_bench.tasks.quadratic import Quadratic, scales, stationary_point
from mtl_bench.train import RunConfig

#: Scale ratios between task 2 and task 1.
CONDITIONS = (1.0, 100.0, 10000.0)
#: Fixed weights other than equal: favour the small-scale task 3 : 1.
SKEWED = [1.5, 0.5]
STRATEGY_GRID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fixed", {}), ("fixed", {"weights": SKEWED}), ("mgda", {}), ("pcgrad", {}),
    ("cagrad", {}), ("imtl_g", {}), ("nash_mtl", {}), ("famo", {}))
STRATEGIES = tuple(label(n, p) for n, p in STRATEGY_GRID)
FIXED, FIXED_SKEWED = STRATEGIES[:2]
#: Strategies whose update does not depend on the tasks' loss scales (finding 2).
INVARIANT = (label("imtl_g", {}), label("nash_mtl", {}), label("famo", {}))
#: Tolerances are this fraction of |u_1 - u_2|, the distance between the tasks' minimisers.
REL_TOL = 0.01
#: Balanced: max_i r_i / min_i r_i <= this, r_i = f_i(end) / f_i(start).
BALANCE_FACTOR = 10.0
#: The picked trade-off (on the unscaled problem) is unchanged when it moves at most this.
DRIFT_TOL = 0.05
#: A run ends at a task's own optimum when its unscaled trade-off w'_1 is this close to 0 or 1.
AT_END = 1e-3
SPLIT_READ = "test"


@dataclass
class QuadEnd:
    """One run: where it ended (NaN for a failed run)."""

    strategy: str
    condition: float
    seed: int
    ok: bool
    distance: float  # to the Pareto set
    weight: float  # w_1 of the nearest Pareto point (scaled problem)
    ratios: tuple[float, float]  # f_i(end) / f_i(start)
    tol: float  # REL_TOL * |u_1 - u_2|
    fixed_gap: float = float("nan")  # bound on |x - x*(w)| for fixed weights, else NaN

    @property
    def on_set(self) -> bool:
        return self.ok and self.distance < self.tol

    @property
    def spread(self) -> float:
        """max r_i / min r_i: 1 when both tasks kept the same share of their starting loss."""
        return max(self.ratios) / min(self.ratios) if min(self.ratios) > 0 else float("inf")

    @property
    def balanced(self) -> bool:
        return self.ok and self.spread <= BALANCE_FACTOR

    @property
    def unscaled_weight(self) -> float:
        """w_1 of the picked trade-off on the unscaled problem: w_1 / (w_1 + c w_2)."""
        w1, w2 = self.weight, 1.0 - self.weight
        return w1 / (w1 + self.condition * w2) if self.ok else float("nan")


def fixed_weights(strategy_params: dict[str, Any]) -> np.ndarray:
    w = np.asarray(strategy_params.get("weights") or [1.0, 1.0], dtype=float)
    return w / w.sum()


def quad_end(record: dict[str, Any]) -> QuadEnd:
    """What the analysis needs from one record (the metrics of task1 and task2, test split)."""
    cfg = record.get("config") or {}
    pair = Quadratic(**(cfg.get("task_options") or {}))
    u = pair.u
    tol = REL_TOL * float(np.linalg.norm(u[0] - u[1]))
    strategy, seed = str(record.get("strategy", "?")), int(record.get("seed", 0))
    if record.get("status") != "ok":
        return QuadEnd(strategy, pair.condition, seed, False, np.nan, np.nan, (np.nan, np.nan),
                       tol)
    c = curves_frame([record])
    c = c[c[SPLIT] == SPLIT_READ]
    table = c.pivot_table(index=EPOCH, columns=[TASK, METRIC], values=VALUE).sort_index()
    first, last = table.iloc[0], table.iloc[-1]
    distance = float(last[("task1", "pareto_distance")])
    weight = float(last[("task1", "pareto_weight")])
    ratios = tuple(float(last[(t, "objective")] / first[(t, "objective")])
                   for t in ("task1", "task2"))
    gap = np.nan
    if cfg.get("strategy") == "fixed":
        # |x - x*(w)| <= |x - x*(w_near)| + |x*(w_near) - x*(w)|: both terms known
        w = fixed_weights(cfg.get("strategy_params") or {})
        near = stationary_point(pair.a, u, np.array([weight, 1.0 - weight]))
        gap = distance + float(np.linalg.norm(near - stationary_point(pair.a, u, w)))
    return QuadEnd(strategy, pair.condition, seed, True, distance, weight, ratios, tol, gap)


def _cond_text(c: float) -> str:
    return f"{c:g}"


def _by(ends: Sequence[QuadEnd], strategy: str) -> list[QuadEnd]:
    return sorted((e for e in ends if e.strategy == strategy), key=lambda e: (e.condition,
                                                                              e.seed))


def _present(ends: Sequence[QuadEnd]) -> list[str]:
    return [s for s in STRATEGIES if any(e.strategy == s for e in ends)] + sorted(
        {e.strategy for e in ends} - set(STRATEGIES))


# -- verdict rules -----------------------------------------------------------------------------
def pareto_finding(ends: Sequence[QuadEnd]) -> Finding:
    """Per strategy: runs ending within the tolerance of the Pareto set (a failed run counts
    against); reproduced if all do, partly if some; combined over strategies."""
    verdicts, bits = [], []
    for s in _present(ends):
        runs = _by(ends, s)
        k, n = sum(e.on_set for e in runs), len(runs)
        verdicts.append(verdict_all_seeds(k, n))
        worst = max((e.distance for e in runs if e.ok), default=float("nan"))
        bits.append(f"{s} {k} of {n} (largest distance {worst:.2g})")
    tol = ends[0].tol if ends else float("nan")
    return Finding(
        "Every strategy ends on the Pareto set",
        "each method converges to a Pareto-stationary point, which for strictly convex tasks "
        "is Pareto optimal (MGDA: Désidéri 2012, Sener & Koltun 2018; PCGrad: Yu et al. 2020, "
        "Theorem 1; CAGrad: Liu et al. 2021; Nash-MTL: Navon et al. 2022); equal or fixed "
        "weights minimise a weighted sum, whose minimiser is on the set.",
        "runs ending within the tolerance: " + "; ".join(bits) + f". Rule: a run is on the set "
        f"when its final distance is below {REL_TOL:g} |u_1 - u_2| (= {tol:.3g} here); "
        "reproduced if every run of every strategy is, partly if some are.",
        combine_verdicts(verdicts) if verdicts else NOT_REPRODUCED)


def balance_class(runs: Sequence[QuadEnd]) -> str:
    """'stays balanced' (every run at every condition), 'never balanced' (no run), 'loses
    balance at condition c' (every run balanced below c, not every run at c), else 'balanced
    in k of n runs' (not ordered by the condition)."""
    k, n = sum(e.balanced for e in runs), len(runs)
    if n and k == n:
        return "stays balanced"
    if k == 0:
        return "never balanced"
    conditions = sorted({e.condition for e in runs})
    for i, c in enumerate(conditions):
        if not all(e.balanced for e in runs if e.condition == c):
            if i > 0:
                return f"loses balance at condition {_cond_text(c)}"
            break
    return f"balanced in {k} of {n} runs"


def balance_finding(ends: Sequence[QuadEnd]) -> Finding:
    """Context (no published claim is tested): each strategy's balance class and its largest
    spread per condition."""
    bits = []
    for s in _present(ends):
        runs = _by(ends, s)
        spreads = ", ".join(
            f"{_cond_text(c)}: {max(e.spread for e in runs if e.condition == c):.3g}"
            for c in sorted({e.condition for e in runs}))
        ends_at = sum(e.ok and min(e.unscaled_weight, 1.0 - e.unscaled_weight) < AT_END
                      for e in runs)
        bits.append(f"{s}: {balance_class(runs)} (largest spread per condition {spreads}"
                    + (f"; {ends_at} of {len(runs)} runs end at a task's own optimum"
                       if ends_at else "") + ")")
    return Finding(
        "Which strategies stay balanced as the scales drift apart", "",
        "; ".join(bits) + f". Definition: a run is balanced when the tasks' relative remaining "
        f"losses r_i = f_i(end) / f_i(start) are within a factor {BALANCE_FACTOR:g} of each "
        "other (equal relative decrease: spread 1). A run that ends at a task's own optimum "
        f"(unscaled trade-off w'_1 within {AT_END:g} of 0 or 1) has r_i near 0 for that "
        "task and a huge spread: it traded the other task away completely.", None)


def drift(ends: Sequence[QuadEnd], strategy: str) -> list[float]:
    """Per run at a condition above the smallest: |w'_1(c) - w'_1(c_min)| against the same
    seed's run (the trade-off on the unscaled problem); NaN where either run failed or the
    seed has no run at c_min."""
    runs = _by(ends, strategy)
    if not runs:
        return []
    base_c = min(e.condition for e in runs)
    base = {e.seed: e.unscaled_weight for e in runs if e.condition == base_c}
    return [abs(e.unscaled_weight - base.get(e.seed, np.nan)) for e in runs
            if e.condition != base_c]


def invariance_finding(ends: Sequence[QuadEnd]) -> Finding:
    """Reproduced when every scale-invariant strategy keeps its trade-off (drift <= DRIFT_TOL,
    a failed run counting against) in every seed at every larger condition; partly when some
    do; the other strategies are reported for context."""
    verdicts, claimed, others = [], [], []
    for s in _present(ends):
        d = drift(ends, s)
        if not d:
            continue
        k = sum(bool(x <= DRIFT_TOL) for x in d)  # NaN compares False: counts against
        finite = [x for x in d if np.isfinite(x)]
        text = f"{s} {k} of {len(d)} (largest {max(finite) if finite else float('nan'):.2g})"
        if s in INVARIANT:
            verdicts.append(verdict_all_seeds(k, len(d)))
            claimed.append(text)
        else:
            others.append(text)
    for s in INVARIANT:
        if not drift(ends, s):
            verdicts.append(NOT_REPRODUCED)
            claimed.append(f"{s}: no runs to compare")
    return Finding(
        "IMTL-G, Nash-MTL and FAMO pick the same trade-off whatever the scales",
        "IMTL is designed to be impartial to the tasks' loss scales (Liu et al., ICLR 2021); "
        "Nash-MTL's bargaining solution is invariant to rescaling a task's utility (Navon et "
        "al., ICML 2022); FAMO descends log-losses, whose gradients do not change when a loss "
        "is rescaled (Liu et al., NeurIPS 2023).",
        "runs whose trade-off on the unscaled problem, w'_1 = w_1 / (w_1 + c w_2), stays within "
        f"{DRIFT_TOL:g} of the same seed's run at condition {_cond_text(min(CONDITIONS))}: "
        + "; ".join(claimed) + ". For context: " + "; ".join(others) + ". Rule: reproduced if "
        "every run of the three strategies keeps its trade-off, partly if some do. Equal "
        "weights keep w = (1/2, 1/2) on the scaled losses, so their w' moves towards the "
        "large-scale task.",
        combine_verdicts(verdicts))


def fixed_finding(ends: Sequence[QuadEnd]) -> Finding:
    verdicts, bits = [], []
    for s in (FIXED, FIXED_SKEWED):
        runs = _by(ends, s)
        if not runs:
            continue
        k = sum(e.ok and e.fixed_gap < e.tol for e in runs)
        verdicts.append(verdict_all_seeds(k, len(runs)))
        worst = max((e.fixed_gap for e in runs if e.ok), default=float("nan"))
        bits.append(f"{s} {k} of {len(runs)} (largest bound {worst:.2g})")
    return Finding(
        "Fixed weights converge to x*(w)",
        "Adam on sum_i w_i f_i with fixed w converges to its unique minimiser x*(w) = "
        "(sum_i w_i A_i)^-1 sum_i w_i A_i u_i.",
        "runs whose distance to x*(w) is below the tolerance: " + "; ".join(bits) + ". The "
        "distance is bounded by the distance to the Pareto set plus |x*(w_near) - x*(w)| "
        "(w_near: the nearest Pareto point's weights), both from the record. Rule: reproduced "
        f"if the bound is below {REL_TOL:g} |u_1 - u_2| in every run, partly if in some.",
        combine_verdicts(verdicts) if verdicts else NOT_REPRODUCED)


def findings(ends: Sequence[QuadEnd]) -> list[Finding]:
    return [pareto_finding(ends), invariance_finding(ends), fixed_finding(ends),
            balance_finding(ends)]


def end_table(ends: Sequence[QuadEnd]) -> Display:
    """Strategy x condition: median over seeds (runs that failed are counted, not summarised)."""
    rows = []
    for s in _present(ends):
        for c in sorted({e.condition for e in ends}):
            runs = [e for e in _by(ends, s) if e.condition == c]
            ok = [e for e in runs if e.ok]
            if not runs:
                continue

            def med(values: Sequence[float], fmt: str = ".3g") -> str:
                return format(float(np.median(values)), fmt) if values else "-"

            rows.append({
                "strategy": s, "condition": _cond_text(c), "runs ok": f"{len(ok)}/{len(runs)}",
                "distance to set ↓": med([e.distance for e in ok], ".2g"),
                "on set": f"{sum(e.on_set for e in runs)}/{len(runs)}",
                "w_1 (scaled)": med([e.weight for e in ok]),
                "w'_1 (unscaled)": med([e.unscaled_weight for e in ok]),
                "r_1": med([e.ratios[0] for e in ok]), "r_2": med([e.ratios[1] for e in ok]),
                "spread ↓": med([e.spread for e in ok]),
                "balanced": f"{sum(e.balanced for e in runs)}/{len(runs)}"})
    note = ("After the last epoch; medians over seeds. Distance: Euclidean distance of the final "
            "x to the Pareto set; w_1: task 1's weight of the nearest Pareto point x*(w) for "
            "the scaled losses, w'_1 the same point's weight on the unscaled problem; r_i = "
            "f_i(end) / f_i(start); spread = max r_i / min r_i (balanced when <= "
            f"{BALANCE_FACTOR:g}).")
    return text_display("Where every strategy ends, per condition", rows, note)


class QuadraticRepro(Reproduction):
    name = "quadratic"
    title = "Convex quadratics with imbalanced scales: a known Pareto set"
    default_seeds = 3
    default_epochs = 30
    seed_batch = 3

    def configs(self, seeds: Sequence[int], epochs: int) -> list[RunConfig]:
        out: list[RunConfig] = []
        for name, params in STRATEGY_GRID:
            spec = SweepSpec(["quadratic"], [name], list(seeds),
                             {"quadratic": {"condition": list(CONDITIONS)},
                              name: {k: [v] for k, v in params.items()}},
                             RunConfig(epochs=epochs))
            out += expand(spec)
        return out

    def command(self, seeds: Sequence[int], epochs: int, runs_dir: Path, jobs: int) -> str:
        common = (f"--task quadratic --set quadratic.condition="
                  f"{','.join(_cond_text(c) for c in CONDITIONS)} --seeds {seeds_text(seeds)} "
                  f"--epochs {epochs} --seed-batch {self.seed_batch} --jobs {jobs} "
                  f"--runs-dir {runs_dir}")
        plain = [n for n, p in STRATEGY_GRID if not p]
        return (f"python -m mtl_bench run --strategy {','.join(plain)} {common}\n"
                f"python -m mtl_bench run --strategy fixed "
                f"--set fixed.weights={'/'.join(f'{w:g}' for w in SKEWED)} {common}")

    def section(self, records: list[dict[str, Any]], ctx: Context) -> str:
        ok = [r for r in records if r.get("status") == "ok"]
        first = ok[0] if ok else (records[0] if records else {})
        out = self.head(records, ctx, self._setup(first, ctx), "the others train the same "
                        "runs, with the same run ids, through the generic command")
        ends = [quad_end(r) for r in records]
        table = end_table(ends)
        out += ["### Where every run ends", "", markdown_table(table), "", table.note, ""]
        out += ["### Findings", ""]
        out += [f.markdown(i) + "\n" for i, f in enumerate(findings(ends), 1)]
        return "\n".join(out)

    @staticmethod
    def _setup(record: dict[str, Any], ctx: Context) -> str:
        cfg, data = record.get("config", {}), record.get("data", {})
        opts = Quadratic(**{k: v for k, v in (cfg.get("task_options") or {}).items()
                            if k != "condition"}).options()
        steps = data.get("n_train", "?")
        return (
            "Setup. Task pair `quadratic` (its docstring has the construction): "
            f"{opts['n_tasks']} tasks f_i(x) = (x - u_i)^T A_i (x - u_i) of a point x in "
            f"R^{opts['dim']}, A_i a random rotation of eigenvalues in [1, 10] times the "
            "task's scale s_i = (1, condition), centres u_i ~ N(0, I) (problem seed "
            f"{opts['problem_seed']}, the same for every run); the run seed draws the start "
            f"x0 ~ N(0, 9 I). Conditions: {', '.join(_cond_text(c) for c in CONDITIONS)} "
            f"(scale of task 2 over task 1; scales {scales(2, CONDITIONS[-1]).tolist()} at "
            f"the largest). Adam (lr {cfg.get('lr', '?')}), batch {cfg.get('batch_size', '?')}, "
            f"{cfg.get('epochs', '?')} epochs of {steps} steps, {len(ctx.seeds)} seeds. "
            f"Strategies with their defaults; `{FIXED_SKEWED}` is a second fixed weighting "
            f"(w = {fixed_weights({'weights': SKEWED}).round(3).tolist()} after normalising). "
            "Every quantity is read from the records' last epoch: the distance to the Pareto "
            "set and the nearest Pareto point's weights (computed by the task pair from x, "
            "exactly for two tasks) and f_i at the start and at the end.")
