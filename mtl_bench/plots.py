"""Report figures: the shared figure kit, and the figures that compare strategies at the end of
training (matplotlib, no pyplot: no global state, no display).

The kit, used by every figure here and in :mod:`mtl_bench.plot_training`: the Okabe-Ito palette
(safe for the common colour-vision deficiencies) and one colour, marker and line style per
strategy in every figure (:func:`style_map`); figures capped at :data:`MAX_WIDTH_PX`
(:func:`new_figure`); log axes only where values span more than a decade (:func:`wants_log`);
axis labels with unit and direction (:func:`metric_label`); legends outside the data area
(:func:`outside_legend`) and titles wrapped to the space they leave (:func:`figure_title`);
:func:`save`, which writes PNG and SVG atomically under a stable name.

The comparison figures take tidy frames (already restricted to one setting where they say so)
and return a :class:`~matplotlib.figure.Figure`: the test-metric trade-off with the fixed-weight
Pareto front (:func:`pareto`, :func:`nondominated`), throughput, calibration and confusion, and
the critical-difference diagram. Figures over the epochs of training live in
:mod:`mtl_bench.plot_training`, which builds on this module; this module never imports it.
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
from matplotlib.lines import Line2D

from mtl_bench.store import atomic_write_bytes

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
#: No figure is wider than this (pixels at :data:`DPI`): small multiples wrap into rows instead.
MAX_WIDTH_PX = 1600


# -- style, figure size, axis scale ------------------------------------------------------------
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


def new_figure(width: float, height: float) -> Figure:
    """A figure at most :data:`MAX_WIDTH_PX` wide: a wider one would be shrunk by the page
    until its labels are unreadable, or hidden behind a scroll bar."""
    return Figure(figsize=(min(width, MAX_WIDTH_PX / DPI), height), dpi=DPI,
                  layout="constrained")


def wants_log(values: Iterable[float] | np.ndarray | pd.Series) -> bool:
    """True when positive values span more than a decade (max / min > 10): on a linear axis
    everything but the largest values would sit in a flat line at the bottom. Any value <= 0
    (a cosine, an R^2) keeps the axis linear. NaN and infinities are ignored."""
    v = np.asarray(values if isinstance(values, np.ndarray | pd.Series) else list(values),
                   dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or (v <= 0).any():
        return False
    return bool(v.max() / v.min() > 10)


# -- legends, titles, labels -------------------------------------------------------------------
def outside_legend(fig: Figure, axes: Sequence, title: str | None = None) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lb in zip(*ax.get_legend_handles_labels()):
            if lb not in labels and not lb.startswith("_"):
                handles.append(h)
                labels.append(lb)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", title=title, fontsize="small",
                   frameon=False)
        # the legend's column reaches the top of the figure: keep the title clear of it
        longest = max(len(t) for t in [*labels, title or ""])
        fig._mtl_right = max(getattr(fig, "_mtl_right", 0.0), 0.068 * longest + 0.7)
        if fig._suptitle is not None and hasattr(fig._suptitle, "_mtl_text"):
            figure_title(fig, fig._suptitle._mtl_text)


def figure_title(fig: Figure, text: str) -> None:
    """Figure title wrapped to, and centred over, the width the legend on the right leaves
    (setting labels with options get long)."""
    width_in = fig.get_figwidth()
    free = max(width_in - getattr(fig, "_mtl_right", 0.0), width_in * 0.5)
    # about 9 characters per inch at the title's size
    chars = max(30, int(free * 9))
    lines = [w for line in text.split("\n") for w in textwrap.wrap(line, chars)]
    t = fig.suptitle("\n".join(lines), x=free / 2 / width_in)
    t._mtl_text = text


def direction_text(higher_is_better: bool | None) -> str:
    if higher_is_better is None:
        return ""
    return "higher is better" if higher_is_better else "lower is better"


def metric_label(task: str, metric: str, higher_is_better: bool | None, unit: str = "") -> str:
    """``body_mass mae (target units; lower is better)``; without a task, ``mae (...)``."""
    bits = [b for b in (unit, direction_text(higher_is_better)) if b]
    return f"{task} {metric}".strip() + (f" ({'; '.join(bits)})" if bits else "")


def metric_unit(metric: str) -> str:
    """Unit of a registered metric, read from its description (target units or unitless)."""
    from mtl_bench.metrics import METRICS

    m = METRICS.get(metric)
    if m is not None and "target units" in m.description:
        return "target units"
    if m is not None and m.kind == "classification":
        return "fraction"
    return ""


# -- Pareto front ------------------------------------------------------------------------------
def nondominated(points: Sequence[tuple[float, float]] | np.ndarray, higher_a: bool,
                 higher_b: bool) -> np.ndarray:
    """Boolean mask of the points no other point dominates (at least as good on both axes and
    better on one, each axis in its own direction). Equal points do not dominate each other, so
    ties are all kept; points with a NaN are never on the front and dominate nothing."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    s = p * np.array([1.0 if higher_a else -1.0, 1.0 if higher_b else -1.0])
    ok = np.isfinite(s).all(axis=1)
    valid = s[ok]
    mask = np.zeros(len(p), dtype=bool)
    for i in np.flatnonzero(ok):
        beaten = (valid >= s[i]).all(axis=1) & (valid > s[i]).any(axis=1)
        mask[i] = not beaten.any()
    return mask


def front_staircase(points: Sequence[tuple[float, float]] | np.ndarray, higher_a: bool,
                    higher_b: bool) -> tuple[np.ndarray, np.ndarray]:
    """x, y of the staircase through mutually non-dominated points: sorted by the first
    objective, each step turns at the corner worse on both axes. That outline bounds what the
    points attain; a straight line between two of them would claim trade-offs no fixed
    weighting reached."""
    p = np.unique(np.asarray(points, dtype=float).reshape(-1, 2), axis=0)
    p = p[np.argsort(p[:, 0], kind="stable")]
    worse_a = min if higher_a else max
    worse_b = min if higher_b else max
    xs, ys = [], []
    for i, (a, b) in enumerate(p):
        if i:
            xs.append(worse_a(p[i - 1, 0], a))
            ys.append(worse_b(p[i - 1, 1], b))
        xs.append(a)
        ys.append(b)
    return np.array(xs), np.array(ys)


#: Offsets (points) tried in turn for a label: right/left, above/below, then further out.
_LABEL_OFFSETS = [(dx * k, dy * k) for k in (1, 2.6) for dx, dy in
                  ((6, 5), (6, -5), (-6, 5), (-6, -5), (0, 9), (0, -9))]


def _place_labels(fig: Figure, ax, items: Sequence[tuple[float, float, str]],
                  avoid: Sequence[tuple[float, float]], color: str) -> list:
    """Annotate points so that no two labels overlap, no label covers a point of ``avoid``
    and every label stays inside the axes: each takes the first free offset of a ring; one
    with no free offset is left out. Positions are measured after the layout is solved, and
    the labels are kept out of the layout so that saving solves the same one again."""
    renderer = fig._get_renderer()
    fig.draw_without_rendering()
    box = ax.get_window_extent(renderer)
    pts = ax.transData.transform(np.asarray(avoid, dtype=float).reshape(-1, 2)) \
        if len(avoid) else np.zeros((0, 2))
    pad = 3.0 * fig.dpi / 72  # a marker's half-width, in pixels
    placed, out = [], []
    for x, y, text in items:
        for dx, dy in _LABEL_OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                              fontsize=7, color=color,
                              ha="left" if dx > 0 else "right" if dx < 0 else "center",
                              va="bottom" if dy > 0 else "top")
            ann.set_in_layout(False)
            bb = ann.get_window_extent(renderer)
            clear = (bb.x0 >= box.x0 and bb.x1 <= box.x1 and bb.y0 >= box.y0
                     and bb.y1 <= box.y1
                     and not any(bb.overlaps(o) for o in placed)
                     and not any(bb.x0 - pad < px < bb.x1 + pad and bb.y0 - pad < py < bb.y1 + pad
                                 for px, py in pts))
            if clear:
                placed.append(bb)
                out.append(ann)
                break
            ann.remove()
    return out


def pareto(points: pd.DataFrame, setting: str, axes_labels: tuple[str, str],
           styles: dict[str, Style], level: float = 0.95, *,
           directions: tuple[bool, bool], task_a: str = "the first task") -> Figure:
    """Task A metric vs task B metric on the test split; every ranked strategy as a point with
    CI whiskers. With two or more fixed-weight sweep points, the non-dominated ones
    (:func:`nondominated`, each axis in its ``directions``: higher is better?) form the front,
    drawn as a staircase (:func:`front_staircase`) and labelled with w_A where a label fits;
    dominated sweep points are drawn faintly; a table under the axes lists every sweep point.
    ``points`` comes from :func:`mtl_bench.aggregate.pareto_points`."""
    fig = new_figure(8.5, 6.2)
    ax = fig.subplots()
    sweep = points[points["on_front"] & points["a"].notna() & points["b"].notna()]
    sweep = sweep.sort_values("front_weight")
    has_front = len(sweep) >= 2
    on = nondominated(sweep[["a", "b"]].to_numpy(), *directions) if has_front else \
        np.zeros(len(sweep), dtype=bool)
    front, dominated = sweep[on].sort_values("a"), sweep[~on]
    if has_front:
        xs, ys = front_staircase(front[["a", "b"]].to_numpy(), *directions)
        ax.plot(xs, ys, color=FRONT_COLOUR, linewidth=1.5, zorder=1, label="fixed-weight front")
        ax.plot(front["a"], front["b"], color=FRONT_COLOUR, marker="x", markersize=7,
                linestyle="none", zorder=2, label="_front points")
        if not dominated.empty:
            ax.plot(dominated["a"], dominated["b"], color=FRONT_COLOUR, alpha=0.35, marker="x",
                    markersize=6, linestyle="none", label="dominated fixed weights")
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
    better = ("right" if directions[0] else "left", "up" if directions[1] else "down")
    title = (f"{setting}: test metrics, mean and {level:.0%} CI over seeds "
             f"(better: {better[1]} and to the {better[0]})")
    if has_front:
        title += f"\nw_A: share of the total weight on {task_a}"
        rows = [f"{'*' if m else ' '} w_A={w:.2f}: {a:.4g}, {b:.4g}"
                for w, a, b, m in zip(sweep["front_weight"], sweep["a"], sweep["b"], on)]
        handles = [Line2D([], [], linestyle="none") for _ in rows]
        fig.legend(handles, rows, loc="outside lower center", ncols=min(len(rows), 3),
                   fontsize="x-small", frameon=False, handlelength=0, handletextpad=0,
                   prop={"family": "monospace", "size": "x-small"},
                   title="fixed-weight sweep: w_A: x, y (* on the front)",
                   title_fontsize="x-small")
    figure_title(fig, title)
    outside_legend(fig, [ax])
    if has_front:
        _place_labels(fig, ax, [(a, b, f"w_A={w:.2f}") for a, b, w in
                                zip(front["a"], front["b"], front["front_weight"])],
                      list(zip(points["a"], points["b"])), FRONT_COLOUR)
    return fig


def _err(mean: float, low: float, high: float) -> np.ndarray | None:
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return np.array([[max(mean - low, 0.0)], [max(high - mean, 0.0)]])


# -- throughput --------------------------------------------------------------------------------
def throughput_bars(tp: pd.DataFrame, setting: str, reference: str | None,
                    styles: dict[str, Style], phases: Sequence[str]) -> Figure:
    """The sweep's own timers: samples per second per strategy (log-scale CI whiskers) and the
    mean step time split into its phases. Wall time under the sweep's concurrency: no ratios
    and no ranking here (the speed stage's table makes speed comparisons)."""
    tp = tp.reset_index(drop=True)
    fig = new_figure(12, 1.2 + 0.45 * len(tp))
    ax_sps, ax_ms = fig.subplots(1, 2)
    y = np.arange(len(tp))
    colours = [styles.get(s, Style(FRONT_COLOUR, "o", "-")).color for s in tp["strategy"]]
    err = np.array([[max(m - lo, 0) if np.isfinite(lo) else 0 for m, lo in
                     zip(tp["samples_per_s"], tp["samples_per_s_low"])],
                    [max(hi - m, 0) if np.isfinite(hi) else 0 for m, hi in
                     zip(tp["samples_per_s"], tp["samples_per_s_high"])]])
    ax_sps.barh(y, tp["samples_per_s"], xerr=err, color=colours, capsize=3)
    xmax = float(np.nanmax(tp["samples_per_s"] + err[1])) if len(tp) else 1.0
    ax_sps.set_xlim(0, xmax * 1.1 if np.isfinite(xmax) and xmax > 0 else 1)
    ax_sps.set_yticks(y, tp["strategy"])
    ax_sps.invert_yaxis()
    ax_sps.set_xlabel("training throughput (samples/s)")
    ax_sps.set_title("samples/s during the sweep (wall time, runs sharing the machine)")
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
    figure_title(fig, f"{setting}: sweep timers (descriptive, not a speed comparison)")
    outside_legend(fig, [ax_ms], "phase")
    return fig


# -- calibration and confusion -----------------------------------------------------------------
def calibration(panels: Sequence[tuple[str, pd.DataFrame, str]], task: str,
                styles: dict[str, Style], strategies: Sequence[str], title: str) -> Figure:
    """Reliability diagrams side by side (one column per formulation) over a confusion matrix
    (row-normalised, pooled over seeds). ``panels``: (column title, the details rows of that
    setting, the strategy whose confusion matrix is shown)."""
    fig = new_figure(4.6 * len(panels) + 2, 8.5)
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
        ticks = range(0, size, max(1, math.ceil(size / 12)))  # readable with many classes
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xlabel("predicted class (index)")
        ax.set_ylabel("true class (index)")
        ax.set_title(f"{name}: confusion of {confusion_of} (row share)")
    if images := [im for ax in grid[1] for im in ax.images]:
        fig.colorbar(images[0], ax=list(grid[1]), shrink=0.8, label="share of the true class")
    figure_title(fig, title)
    outside_legend(fig, list(grid[0]), "strategy")
    return fig


# -- critical-difference diagram ---------------------------------------------------------------
def cd_diagram(avg_ranks: dict[str, float], cd: float, cliques: Sequence[Sequence[str]],
               styles: dict[str, Style], title: str) -> Figure:
    """Demšar's critical-difference diagram: average ranks on an axis (1 = best, on the left),
    the CD as a bar, and a thick line under each group whose ranks differ by less than CD."""
    names = sorted(avg_ranks, key=lambda s: (avg_ranks[s], s))
    k = len(names)
    half = math.ceil(k / 2)
    fig = new_figure(9, 1.6 + 0.3 * half + 0.15 * len(cliques))
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
    """Write ``stem.png`` and ``stem.svg``, each atomically (:func:`atomic_write_bytes`);
    reproducible (no date, fixed SVG id salt)."""
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    with matplotlib.rc_context({"svg.hashsalt": "mtl-bench"}):
        atomic_write_bytes(png, lambda fh: fig.savefig(fh, format="png", dpi=DPI,
                                                       metadata={"Software": None}))
        # same size, same layout: freeze the positions the PNG computed instead of solving the
        # constrained layout a second time (a third of the report's time)
        fig.set_layout_engine("none")
        atomic_write_bytes(svg, lambda fh: fig.savefig(fh, format="svg",
                                                       metadata={"Date": None}))
    return [png, svg]
