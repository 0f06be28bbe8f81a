"""Report figures from aggregated tables (matplotlib, no pyplot: no global state, no display).

Every function takes tidy frames (already restricted to one setting where it says so) and returns
a :class:`~matplotlib.figure.Figure`; :func:`save` writes it as PNG and SVG under a stable name.
Colours come from the Okabe-Ito palette (safe for the common colour-vision deficiencies) and one
strategy keeps one colour, marker and line style in every figure (:func:`style_map`). Legends sit
outside the data area.
"""

from __future__ import annotations

import hashlib
import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Okabe & Ito (2008), "Color Universal Design"; yellow last: faint on white, used on overflow.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
REFERENCE_COLOUR = "#000000"
FRONT_COLOUR = "#7F7F7F"
SINGLE_COLOUR = "#4D4D4D"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
#: Phases of a training step (cividis shades: ordered and colour-blind safe).
PHASE_COLOURS = ("#00224E", "#575C6D", "#A59C74", "#FEE838")
DPI = 110


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: str


def _hash(text: str) -> int:
    return int(hashlib.md5(text.encode()).hexdigest(), 16)


def style_map(labels: Iterable[str], references: Iterable[str] = ()) -> dict[str, Style]:
    """Colour, marker and line style per strategy label.

    The preferred colour is a hash of the label, so a strategy keeps its colour from one report
    to the next; when two labels of one report want the same slot, the later one in name order
    takes the next free slot (solid lines in the six main colours first, then yellow, then the
    colours again dashed, ...). The reference (fixed equal weights) is black.
    """
    refs = set(references)
    slots = [(c, ls) for ls in LINESTYLES for c in OKABE_ITO]
    out: dict[str, Style] = {}
    taken: set[int] = set()
    for lb in sorted(set(labels)):
        h = _hash(lb)
        if lb in refs:
            out[lb] = Style(REFERENCE_COLOUR, "o", "-")
            continue
        start = h % (len(OKABE_ITO) - 1)
        slot = next((i % len(slots) for i in range(start, start + len(slots))
                     if i % len(slots) not in taken), start)
        taken.add(slot)
        color, ls = slots[slot]
        out[lb] = Style(color, MARKERS[slot % len(MARKERS)], ls)
    return out


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _legend(fig: Figure, axes: Sequence, title: str | None = None) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lb in zip(*ax.get_legend_handles_labels()):
            if lb not in labels and not lb.startswith("_"):
                handles.append(h)
                labels.append(lb)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", title=title, fontsize="small",
                   frameon=False)


def _title(fig: Figure, text: str) -> None:
    """Figure title wrapped to the figure's width (setting labels with options get long)."""
    # about 7 characters per inch keeps a centred title clear of the legend on the right
    width = max(40, int(fig.get_figwidth() * 7))
    lines = [w for line in text.split("\n") for w in textwrap.wrap(line, width)]
    fig.suptitle("\n".join(lines))


def direction_text(higher_is_better: bool | None) -> str:
    if higher_is_better is None:
        return ""
    return "higher is better" if higher_is_better else "lower is better"


def metric_label(task: str, metric: str, higher_is_better: bool | None, unit: str = "") -> str:
    """``body_mass mae (target units; lower is better)``."""
    bits = [b for b in (unit, direction_text(higher_is_better)) if b]
    return f"{task} {metric}" + (f" ({'; '.join(bits)})" if bits else "")


def metric_unit(metric: str) -> str:
    """Unit of a registered metric, read from its description (target units or unitless)."""
    from mtl_bench.metrics import METRICS

    m = METRICS.get(metric)
    if m is not None and "target units" in m.description:
        return "target units"
    if m is not None and m.kind == "classification":
        return "fraction"
    return ""


def _band(ax, df: pd.DataFrame, x: str, style: Style | None, label: str,
          color: str | None = None, linestyle: str | None = None) -> None:
    df = df.sort_values(x)
    col = color or (style.color if style else FRONT_COLOUR)
    ls = linestyle or (style.linestyle if style else "-")
    ax.plot(df[x], df["mean"], color=col, linestyle=ls, label=label,
            marker=style.marker if style and len(df) <= 12 else None, markersize=4)
    ok = df["ci_low"].notna() & df["ci_high"].notna()
    if ok.any():
        ax.fill_between(df.loc[ok, x], df.loc[ok, "ci_low"], df.loc[ok, "ci_high"], color=col,
                        alpha=0.15, linewidth=0)


# -- 1 learning curves -------------------------------------------------------------------------
def learning_curves(curves: pd.DataFrame, setting: str, task: str, metric: str,
                    higher_is_better: bool | None, styles: dict[str, Style],
                    strategies: Sequence[str], single_task: str | None = None,
                    level: float = 0.95) -> Figure:
    """Train loss and a validation metric of one task vs epoch: mean line and CI band per
    strategy (``curves``: the setting's rows of the curves table)."""
    fig = _figure(11, 4.2)
    ax_loss, ax_val = fig.subplots(1, 2)
    here = curves[curves["task"] == task]
    for lb in [*strategies, *([single_task] if single_task else [])]:
        df = here[here["strategy"] == lb]
        single = lb == single_task
        style = None if single else styles.get(lb)
        kwargs = {"color": SINGLE_COLOUR, "linestyle": "--"} if single else {}
        loss = df[(df["split"] == "train") & (df["metric"] == "loss")]
        val = df[(df["split"] == "val") & (df["metric"] == metric)]
        if not loss.empty:
            _band(ax_loss, loss, "epoch", style, lb, **kwargs)
        if not val.empty:
            _band(ax_val, val, "epoch", style, lb, **kwargs)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel(f"{task} train loss (mean over the epoch)")
    ax_loss.set_title("training loss")
    ax_val.set_xlabel("epoch (0 = before training)")
    ax_val.set_ylabel(metric_label(task, metric, higher_is_better, metric_unit(metric)))
    ax_val.set_title(f"validation {metric}")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _title(fig, f"{setting}: learning curves of {task} "
                 f"(mean and {level:.0%} CI over seeds)")
    _legend(fig, (ax_loss, ax_val), "strategy")
    return fig


# -- 2 task weights ----------------------------------------------------------------------------
def weight_trajectories(weights: pd.DataFrame, setting: str, tasks: Sequence[str],
                        styles: dict[str, Style], strategies: Sequence[str],
                        level: float = 0.95) -> Figure:
    """One panel per task: the weight each strategy gave it per epoch (mean of the per-step
    weights), mean and CI band over seeds."""
    fig = _figure(4.2 * len(tasks) + 2, 4)
    axes = np.atleast_1d(fig.subplots(1, len(tasks), sharey=True))
    for ax, task in zip(axes, tasks):
        for lb in strategies:
            df = weights[(weights["strategy"] == lb) & (weights["task"] == task)]
            if not df.empty:
                _band(ax, df, "epoch", styles.get(lb), lb)
        ax.set_title(f"weight of {task}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("task weight (mean over the epoch's steps)")
    _title(fig, f"{setting}: task-weight trajectories (mean and {level:.0%} CI over seeds)")
    _legend(fig, axes, "strategy")
    return fig


# -- 3 Pareto ----------------------------------------------------------------------------------
def pareto(points: pd.DataFrame, setting: str, axes_labels: tuple[str, str],
           styles: dict[str, Style], level: float = 0.95) -> Figure:
    """Task A metric vs task B metric on the test split: the fixed-weight sweep as a line
    (ordered by the weight on task A), every other strategy as a point with CI whiskers.
    ``points`` comes from :func:`mtl_bench.aggregate.pareto_points`."""
    fig = _figure(8.5, 5.5)
    ax = fig.subplots()
    front = points[points["on_front"]].sort_values("front_weight")
    if not front.empty:
        ax.plot(front["a"], front["b"], color=FRONT_COLOUR, marker="x", linestyle="-",
                linewidth=1.5, label="fixed-weight front")
        for _, f in front.iterrows():
            ax.annotate(f"w_A={f['front_weight']:.2f}", (f["a"], f["b"]), fontsize=7,
                        color=FRONT_COLOUR, xytext=(4, 4), textcoords="offset points")
    shown = points[~points["on_front"] | (points["role"] == "reference")]
    # the reference last, as a ring: methods often sit on it and must stay visible
    shown = shown.assign(_last=shown["role"] == "reference").sort_values("_last", kind="stable")
    for _, p in shown.iterrows():
        st = styles.get(p["strategy"], Style(FRONT_COLOUR, "o", "-"))
        xerr = _err(p["a"], p["a_low"], p["a_high"])
        yerr = _err(p["b"], p["b_low"], p["b_high"])
        ring = {"markerfacecolor": "none", "markersize": 12, "markeredgewidth": 1.8,
                "elinewidth": 0.8} if p["_last"] else {"markersize": 7}
        ax.errorbar([p["a"]], [p["b"]], xerr=xerr, yerr=yerr, color=st.color, marker=st.marker,
                    capsize=3, linestyle="none", label=p["strategy"], **ring)
    ax.set_xlabel(axes_labels[0])
    ax.set_ylabel(axes_labels[1])
    ax.grid(alpha=0.3)
    _title(fig, f"{setting}: test metrics, mean and {level:.0%} CI over seeds\n"
                "w_A: share of the total weight on the first task")
    _legend(fig, [ax])
    return fig


def _err(mean: float, low: float, high: float) -> np.ndarray | None:
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return np.array([[max(mean - low, 0.0)], [max(high - mean, 0.0)]])


# -- 4 throughput ------------------------------------------------------------------------------
def throughput_bars(tp: pd.DataFrame, setting: str, reference: str | None,
                    styles: dict[str, Style], phases: Sequence[str]) -> Figure:
    """Samples per second per strategy (CI whiskers, step-time ratio to the reference written
    at the bar) and the mean step time split into its phases."""
    tp = tp.reset_index(drop=True)
    fig = _figure(12, 1.2 + 0.45 * len(tp))
    ax_sps, ax_ms = fig.subplots(1, 2)
    y = np.arange(len(tp))
    colours = [styles.get(s, Style(FRONT_COLOUR, "o", "-")).color for s in tp["strategy"]]
    err = np.array([[max(m - lo, 0) if np.isfinite(lo) else 0 for m, lo in
                     zip(tp["samples_per_s"], tp["samples_per_s_low"])],
                    [max(hi - m, 0) if np.isfinite(hi) else 0 for m, hi in
                     zip(tp["samples_per_s"], tp["samples_per_s_high"])]])
    ax_sps.barh(y, tp["samples_per_s"], xerr=err, color=colours, capsize=3)
    xmax = float(np.nanmax(tp["samples_per_s"] + err[1])) if len(tp) else 1.0
    for yi, (sps, ratio) in enumerate(zip(tp["samples_per_s"], tp["overhead"])):
        if np.isfinite(sps) and np.isfinite(ratio):
            ax_sps.text(xmax * 1.02, yi, f"{ratio:.2f}× step time", va="center", fontsize=8)
    ax_sps.set_xlim(0, xmax * 1.45 if np.isfinite(xmax) and xmax > 0 else 1)
    ax_sps.set_yticks(y, tp["strategy"])
    ax_sps.invert_yaxis()
    ax_sps.set_xlabel("training throughput (samples/s)")
    ax_sps.set_title(f"samples/s; ratio: step time / {reference or 'reference'}")
    left = np.zeros(len(tp))
    for phase, colour in zip(phases, PHASE_COLOURS):
        vals = tp[phase].fillna(0).to_numpy(dtype=float)
        ax_ms.barh(y, vals, left=left, color=colour, label=phase.replace("_ms", ""))
        left += vals
    ax_ms.set_yticks(y, [""] * len(tp))
    ax_ms.invert_yaxis()
    ax_ms.set_xlabel("time per training step (ms)")
    ax_ms.set_title("step time by phase")
    for ax in (ax_sps, ax_ms):
        ax.grid(axis="x", alpha=0.3)
    _title(fig, f"{setting}: throughput")
    _legend(fig, [ax_ms], "phase")
    return fig


# -- 5 gradient diagnostics --------------------------------------------------------------------
def gradient_cosine(diag: pd.DataFrame, setting: str, styles: dict[str, Style],
                    strategies: Sequence[str], level: float = 0.95) -> Figure:
    """Cosine between task gradients over training, one panel per pair of tasks."""
    pairs = diag[["task_a", "task_b"]].drop_duplicates().itertuples(index=False)
    pairs = list(pairs)
    fig = _figure(max(9.0, 5 * len(pairs) + 2), 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(pairs), sharey=True))
    sources = sorted({s for v in diag["source"].dropna() for s in str(v).split(",")})
    for ax, (a, b) in zip(axes, pairs):
        for lb in strategies:
            df = diag[(diag["strategy"] == lb) & (diag["task_a"] == a) & (diag["task_b"] == b)]
            if not df.empty:
                _band(ax, df, "epoch", styles.get(lb), lb)
        ax.axhline(0, color="#999999", linewidth=0.8, linestyle=":")
        ax.set_title(f"cos(g_{a}, g_{b})")
        ax.set_xlabel("training progress (epochs)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine of task gradients (unitless; < 0: conflict)")
    where = " and ".join(sources) if sources else "shared"
    _title(fig, f"{setting}: task-gradient cosine at the {where} gradient source\n"
                 f"(mean and {level:.0%} CI over seeds)")
    _legend(fig, axes, "strategy")
    return fig


# -- 6 calibration and confusion ---------------------------------------------------------------
def calibration(panels: Sequence[tuple[str, pd.DataFrame, str]], task: str,
                styles: dict[str, Style], strategies: Sequence[str], title: str) -> Figure:
    """Reliability diagrams side by side (one column per formulation) over a confusion matrix
    (row-normalised, pooled over seeds). ``panels``: (column title, the details rows of that
    setting, the strategy whose confusion matrix is shown)."""
    fig = _figure(4.6 * len(panels) + 2, 8.5)
    grid = fig.subplots(2, len(panels), squeeze=False)
    for col, (name, det, confusion_of) in enumerate(panels):
        ax = grid[0, col]
        rel = det[(det["kind"] == "reliability") & (det["task"] == task)]
        ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", label="perfect calibration")
        for lb in strategies:
            df = rel[(rel["strategy"] == lb) & (rel["count"] > 0)].sort_values("row")
            if df.empty:
                continue
            st = styles.get(lb, Style(FRONT_COLOUR, "o", "-"))
            ax.plot(df["mean_conf"], df["accuracy"], color=st.color, marker=st.marker,
                    linestyle=st.linestyle, label=lb, markersize=4)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("mean confidence in bin (probability)")
        ax.set_ylabel("accuracy in bin (fraction)")
        ax.set_title(f"{name}: reliability")
        ax.grid(alpha=0.3)
        ax = grid[1, col]
        cm = det[(det["kind"] == "confusion") & (det["task"] == task)
                 & (det["strategy"] == confusion_of)]
        if cm.empty:
            ax.set_axis_off()
            continue
        size = int(max(cm["row"].max(), cm["col"].max())) + 1
        mat = np.zeros((size, size))
        mat[cm["row"].astype(int), cm["col"].astype(int)] = cm["count"]
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = mat / mat.sum(axis=1, keepdims=True)
        ax.imshow(np.nan_to_num(norm), cmap="cividis", vmin=0, vmax=1)
        if size <= 12:
            for i in range(size):
                for j in range(size):
                    ax.text(j, i, f"{norm[i, j]:.2f}" if np.isfinite(norm[i, j]) else "-",
                            ha="center", va="center", fontsize=7,
                            color="white" if np.nan_to_num(norm[i, j]) < 0.6 else "black")
        ax.set_xticks(range(size))
        ax.set_yticks(range(size))
        ax.set_xlabel("predicted class (index)")
        ax.set_ylabel("true class (index)")
        ax.set_title(f"{name}: confusion of {confusion_of} (row share)")
    if images := [im for ax in grid[1] for im in ax.images]:
        fig.colorbar(images[0], ax=list(grid[1]), shrink=0.8, label="share of the true class")
    _title(fig, title)
    _legend(fig, list(grid[0]), "strategy")
    return fig


# -- 7 critical-difference diagram -------------------------------------------------------------
def cd_diagram(avg_ranks: dict[str, float], cd: float, cliques: Sequence[Sequence[str]],
               styles: dict[str, Style], title: str) -> Figure:
    """Demšar's critical-difference diagram: average ranks on an axis (1 = best, on the left),
    the CD as a bar, and a thick line under each group whose ranks differ by less than CD."""
    names = sorted(avg_ranks, key=lambda s: (avg_ranks[s], s))
    k = len(names)
    half = math.ceil(k / 2)
    fig = _figure(9, 1.6 + 0.3 * half + 0.15 * len(cliques))
    ax = fig.subplots()
    lo, hi = 1, max(k, 2)
    ax.set_xlim(lo - 0.6, hi + 0.6)
    # labels start below the clique bars and step down 0.35 per strategy on each side
    depth = 0.35 + 0.2 * len(cliques) + 0.35 * (half - 1) + 0.25
    ax.set_ylim(-depth, 1.4)
    ax.axis("off")
    ax.hlines(0, lo, hi, color="black", linewidth=1)
    for r in range(lo, hi + 1):
        ax.vlines(r, 0, 0.12, color="black", linewidth=1)
        ax.text(r, 0.2, str(r), ha="center", va="bottom", fontsize=9)
    ax.text((lo + hi) / 2, 1.25, "average rank (1 = best)", ha="center", fontsize=9)
    ax.hlines(0.85, lo, lo + cd, color="black", linewidth=2)
    ax.vlines([lo, lo + cd], 0.78, 0.92, color="black", linewidth=1)
    ax.text(lo + cd / 2, 0.95, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    line_y = -0.15
    for i, group in enumerate(cliques):
        y = line_y - 0.2 * i
        ax.hlines(y, avg_ranks[group[0]] - 0.03, avg_ranks[group[-1]] + 0.03, color="#333333",
                  linewidth=4, label="_clique")
    first_label = line_y - 0.2 * len(cliques) - 0.2
    for i, name in enumerate(names):
        r = avg_ranks[name]
        st = styles.get(name, Style(FRONT_COLOUR, "o", "-"))
        left = i < half
        y = first_label - 0.35 * (i if left else k - 1 - i)
        x_text = lo - 0.5 if left else hi + 0.5
        ax.plot([r, r, x_text], [0, y, y], color=st.color, linewidth=1.2)
        ax.plot([r], [0], marker=st.marker, color=st.color, markersize=6)
        ax.text(x_text + (-0.05 if left else 0.05), y, f"{name} ({r:.2f})",
                ha="right" if left else "left", va="center", fontsize=9, color="black")
    ax.set_title(title, fontsize=10)
    return fig


# -- saving ------------------------------------------------------------------------------------
def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; reproducible (no date, fixed SVG id salt)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    with matplotlib.rc_context({"svg.hashsalt": "mtl-bench"}):
        fig.savefig(png, dpi=DPI, metadata={"Software": None})
        # same size, same layout: freeze the positions the PNG computed instead of solving the
        # constrained layout a second time (a third of the report's time)
        fig.set_layout_engine("none")
        fig.savefig(svg, metadata={"Date": None})
    return [png, svg]
