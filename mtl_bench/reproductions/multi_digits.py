"""MultiMNIST on scikit-learn digits against Sener & Koltun's table ("Multi-Task Learning as
Multi-Objective Optimization", NeurIPS 2018).

Grid: every registered strategy and the single-task baselines on the task pair ``multi-digits``.
Findings: the paper's ordering (MGDA-UB and single-task above uniform scaling, Kendall et al. and
GradNorm) and its published accuracy differences, each against our paired-by-seed intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from mtl_bench import plot_training, plots, registry, stats
from mtl_bench.aggregate import METHOD, REFERENCE, SETTING, SINGLE_TASK, Tables, aggregate_records
from mtl_bench.display import (
    Display,
    comparison_display,
    fmt_ci,
    fmt_number,
    fmt_p,
    markdown_table,
    significance_display,
)
from mtl_bench.reproductions.common import (
    CLAIMED_GAP,
    LEVEL,
    NOT_REPRODUCED,
    REPRODUCED,
    Context,
    Finding,
    Reproduction,
    ci_text,
    combine_verdicts,
    seeds_text,
    text_display,
    verdict_gap,
)
from mtl_bench.store import METRIC, SEED, SPLIT, STRATEGY, TASK, VALUE
from mtl_bench.strategy import label
from mtl_bench.sweep import SweepSpec, expand
from mtl_bench.train import RunConfig

FIXED = label("fixed", {})
UNCERTAINTY = label("uncertainty", {})
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
                f"--seeds {seeds_text(seeds)} --epochs {epochs} --jobs {jobs} "
                f"--runs-dir {runs_dir}")

    def section(self, records: list[dict[str, Any]], ctx: Context) -> str:
        ok = [r for r in records if r.get("status") == "ok"]
        first = ok[0] if ok else (records[0] if records else {})
        out = self.head(records, ctx, self._setup(first.get("config", {}), first.get("data", {}),
                                                  ctx),
                        "the second trains the same runs through the generic command")
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
                         "ours left % ↑": ci_text(a["left"].dropna()) if a is not None else "-",
                         "ours right % ↑": (ci_text(a["right"].dropna()) if a is not None
                                            else "-"),
                         "seeds": str(len(a)) if a is not None else "0"})
        note = (f"Test accuracy in %; ours: mean ± {LEVEL:.0%} CI over seeds (t-interval) at the "
                "epoch selected on validation. Absolute values are not comparable (other "
                "images, network and data size); the differences below are what is tested.")
        return text_display("Sener & Koltun's MultiMNIST table and this reproduction", rows, note)

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
        return text_display("Published differences against ours", rows, note), data

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

