"""GradNorm's toy regression tasks (Chen et al., "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018, section 5.1 and Figure 2).

Grid: equal weights, GradNorm (the paper's alpha = 0.12), uncertainty weighting and DWA on the
task pair ``gradnorm-toy`` with 2 and 10 tasks. Findings: GradNorm's weights move against the
tasks' scales, the normalised test losses end closer together, and the task-normalised test loss
is lower than under equal weights and uncertainty weighting, each tested per seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from mtl_bench import plot_training, plots, stats
from mtl_bench.aggregate import aggregate_records
from mtl_bench.display import Display, fmt_p, markdown_table
from mtl_bench.reproductions.common import (
    LEVEL,
    PLOT_POINTS,
    Context,
    Finding,
    Reproduction,
    band,
    ci_text,
    count,
    seeds_text,
    task_colours,
    text_display,
    verdict_all_seeds,
)
from mtl_bench.store import EPOCH, METRIC, SPLIT, TASK, VALUE, curves_frame
from mtl_bench.strategy import label
from mtl_bench.sweep import SweepSpec, expand
from mtl_bench.train import RunConfig

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
                f"--set gradnorm.alpha={GRADNORM_ALPHA:g} --seeds {seeds_text(seeds)} "
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
        out = self.head(records, ctx, self._setup(cfg, data, ctx))
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
                    row[f"final weight {name}"] = ci_text(w[:, j])
                for j, name in enumerate(tasks):
                    row[f"r {name} ↓"] = ci_text(ratios[:, j])
            else:
                row[f"final weight, sigma={sig[lo]:g}"] = ci_text(w[:, lo])
                row[f"final weight, sigma={sig[hi]:g}"] = ci_text(w[:, hi])
                row["Spearman(weight, sigma)"] = ci_text([_spearman(x, sig) for x in w])
                row[f"r, sigma={sig[lo]:g} ↓"] = ci_text(ratios[:, lo])
                row[f"r, sigma={sig[hi]:g} ↓"] = ci_text(ratios[:, hi])
            row["r_max / r_min ↓"] = ci_text([r.spread for r in rs])
            row["sum_i r_i ↓"] = ci_text([r.total for r in rs])
            rows.append(row)
        note = ("After the last epoch, test split; r = test loss / test loss before training; "
                f"mean ± {LEVEL:.0%} CI over seeds (t-interval). Spearman: rank correlation of "
                "a run's final weights with the tasks' sigma (negative: smaller-scale tasks "
                "get larger weights).")
        return text_display(f"{t} tasks: final weights and normalised test losses", rows, note)

    def _figure(self, runs: list[ToyRun], t: int, styles: dict[str, plots.Style]) -> Figure:
        fig = Figure(figsize=(15, 4.3), layout="constrained")
        ax_w, ax_r, ax_s = fig.subplots(1, 3)
        gn = [r for r in runs if r.strategy == GRADNORM]
        if gn:
            steps = min(len(r.weights) for r in gn)
            # every k-th step keeps the figure files small and looks the same at this size
            at = np.arange(0, steps, max(1, math.ceil(steps / PLOT_POINTS)))
            w = np.stack([r.weights[at] for r in gn])  # seed x step x task
            colours = task_colours(len(gn[0].tasks))
            for j, name in enumerate(gn[0].tasks):
                band(ax_w, at, w[:, :, j], colours[j],
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
                    band(ax_r, epochs, ratios[:, :, j], st.color,
                          lb if j == 0 else "_" + lb, ls)
            else:
                band(ax_r, epochs, ratios.max(axis=2) / ratios.min(axis=2), st.color, lb,
                      st.linestyle)
            band(ax_s, epochs, ratios.sum(axis=2), st.color, lb, st.linestyle)
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
        k, n = count([r.final_weights[1] < r.final_weights[0] for r in gn])
        w = np.array([r.final_weights for r in gn]) if gn else np.zeros((0, 2))
        out.append(Finding(
            "Two tasks: GradNorm gives the large-scale task the smaller weight",
            "with sigma = (1, 100), GradNorm raises the weight of the sigma = 1 task and lowers "
            "that of the sigma = 100 task to counter its larger gradients (Figure 2, top).",
            f"the final weight of {t2} (sigma=100) is below that of {t1} in {k} of {n} seeds "
            f"(final weights {t1} {ci_text(w[:, 0]) if n else '-'}, {t2} "
            f"{ci_text(w[:, 1]) if n else '-'}). Rule: reproduced if it holds in "
            "every seed, partly if in some.", verdict_all_seeds(k, n)))

        pairs = _paired(runs, GRADNORM, FIXED)
        k, n = count([g.spread < f.spread for g, f in pairs])
        fixed_r = np.array([f.final_ratios for _, f in pairs]) if pairs else np.zeros((0, 2))
        reason = ""
        if n:
            if (fixed_r[:, 0] > fixed_r[:, 1]).all():
                reason = (f"Under equal weights {t1}'s test loss ends at "
                          f"{ci_text(fixed_r[:, 0])} times its initial value against "
                          f"{ci_text(fixed_r[:, 1])} for {t2}: the large-scale task "
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
            f"in {k} of {n} seeds (paired by seed: {ci_text([g.spread for g, _ in pairs])} vs "
            f"{ci_text([f.spread for _, f in pairs])}). Rule: reproduced if in every seed.",
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
        k, n = count([x < 0 for x in rho])
        order = ""
        if gn:
            mean_w = np.mean([r.final_weights for r in gn], axis=0)
            order = " Mean final weights by increasing sigma: " + ", ".join(
                f"{w:.3g}" for w in mean_w[np.argsort(sig)]) + "."
        out = [Finding(
            "Ten tasks: GradNorm's weights grow for the smaller-scale tasks",
            "for T = 10 the w_i(t) grow larger for smaller sigma_i tasks (Figure 2, bottom).",
            f"the Spearman correlation between a run's final GradNorm weights and sigma is "
            f"negative in {k} of {n} seeds (mean {ci_text(rho) if rho else '-'})." + order
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
        k, n = count([g.total < o.total for g, o in pairs])
        diff = [g.total - o.total for g, o in pairs]
        test = stats.paired_test([g.total for g, _ in pairs], [o.total for _, o in pairs])
        t = len(runs[0].tasks)
        evidence = (f"sum_i r_i after training is lower under {GRADNORM} than under {other} in "
                    f"{k} of {n} seeds ({ci_text([g.total for g, _ in pairs]) if n else '-'} "
                    f"vs {ci_text([o.total for _, o in pairs]) if n else '-'}; paired "
                    f"difference {ci_text(diff) if n else '-'}, {test.test or 'no'} test "
                    f"p = {fmt_p(test.p)}; with {n} pairs no p below "
                    f"{stats.min_attainable_p(n):.3g} is possible). Rule: reproduced if lower in "
                    "every seed.")
        reason = ""
        if with_weights and n:
            sums = np.array([float(o.final_weights.sum()) for _, o in pairs])
            reason = (f"{other}'s final weights sum to {ci_text(sums)} (GradNorm keeps the "
                      f"sum at T = {t})")
            if (sums < t).all():
                reason += (": here they shrank rather than grew, so the paper's explanation "
                           "(weights growing too large) does not apply to this run")
            reason += "."
        return Finding(title, claim, evidence, verdict_all_seeds(k, n), reason)

    @staticmethod
    def _context_finding(runs: list[ToyRun], other: str) -> Finding:
        pairs = _paired(runs, GRADNORM, other)
        k, n = count([g.total < o.total for g, o in pairs])
        ks, _ = count([g.spread < o.spread for g, o in pairs])
        return Finding(
            f"Two tasks: {other} for context", "",
            f"{other} (not in the paper) ends with sum_i r_i "
            f"{ci_text([o.total for _, o in pairs]) if n else '-'} and r_max / r_min "
            f"{ci_text([o.spread for _, o in pairs]) if n else '-'}; GradNorm is lower on the "
            f"first in {k} of {n} seeds and on the second in {ks} of {n}.", None)

