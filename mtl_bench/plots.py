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
import os
import tempfile
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
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
#: No figure is wider than this (pixels at :data:`DPI`): small multiples wrap into rows instead.
MAX_WIDTH_PX = 1600
#: Panels per row of a small-multiple grid (one panel per task, strategy, ...).
PANEL_COLUMNS = 3
#: Marker of the epoch selected on validation, drawn on every learning curve.
SELECTED_MARKER = "D"
SELECTED_LABEL = "epoch selected on validation (mean over seeds)"


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
    """A figure at most :data:`MAX_WIDTH_PX` wide: a wider one would be shrunk by the page
    until its labels are unreadable, or hidden behind a scroll bar."""
    return Figure(figsize=(min(width, MAX_WIDTH_PX / DPI), height), dpi=DPI,
                  layout="constrained")


def grid_shape(n: int, columns: int = PANEL_COLUMNS) -> tuple[int, int]:
    """(rows, columns) of a small-multiple grid of ``n`` panels wrapping at ``columns``."""
    cols = max(1, min(n, columns))
    return max(1, math.ceil(n / cols)), cols


def _panels(fig: Figure, n: int, sharey: bool = False) -> list:
    """``n`` axes in rows of :data:`PANEL_COLUMNS`; the unused cells of the last row removed
    (x is never shared: the panels above those cells would lose their tick labels)."""
    rows, cols = grid_shape(n)
    grid = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    axes = list(grid.flat)
    for ax in axes[n:]:
        fig.delaxes(ax)
    return axes[:n]


def _grid_figure(n: int, panel_width: float, panel_height: float, legend_width: float = 2.2
                 ) -> Figure:
    rows, cols = grid_shape(n)
    return _figure(panel_width * cols + legend_width, panel_height * rows + 0.9)


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


def _scale_y(axes, values: Iterable[float] | np.ndarray | pd.Series, label: str) -> bool:
    """Log y on ``axes`` (one, or panels sharing y) when :func:`wants_log` says so of the
    plotted ``values``, and say it in the axis label. The lower limit then follows the curves,
    not the CI bands that reach zero or below (those run off the bottom of the panel).
    Returns whether the axis is logarithmic."""
    axes = list(axes) if isinstance(axes, list | tuple) else [axes]
    v = np.asarray(list(values), dtype=float)
    log = wants_log(v)
    if log:
        bottom = float(np.nanmin(v[v > 0])) / 1.5
        for ax in axes:
            for band in ax.collections:  # a band's edge at <= 0 would tear the band apart
                for path in band.get_paths():
                    path.vertices[:, 1] = np.maximum(path.vertices[:, 1], bottom / 10)
            ax.set_yscale("log", nonpositive="clip")
            ax.set_ylim(bottom=bottom)
        label += " (log scale)" if label else ""
    if label:
        axes[0].set_ylabel(label)
    return log


def _mark_selected(ax, df: pd.DataFrame, x: str, epochs: Sequence[float] | None,
                   color: str) -> None:
    """An open diamond on a curve at the mean epoch its seeds selected on validation."""
    e = [float(v) for v in (epochs if epochs is not None else []) if np.isfinite(float(v))]
    df = df.dropna(subset=["mean"]).sort_values(x)
    if not e or df.empty:
        return
    at = float(np.mean(e))
    y = float(np.interp(at, df[x].to_numpy(dtype=float), df["mean"].to_numpy(dtype=float)))
    ax.plot([at], [y], marker=SELECTED_MARKER, markersize=8, markerfacecolor="white",
            markeredgecolor=color, markeredgewidth=1.6, linestyle="none", zorder=5,
            label="_selected")


def _selected_legend_entry(ax) -> None:
    ax.plot([], [], marker=SELECTED_MARKER, markersize=8, markerfacecolor="white",
            markeredgecolor="black", markeredgewidth=1.6, linestyle="none",
            label=SELECTED_LABEL)


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
        # the legend's column reaches the top of the figure: keep the title clear of it
        longest = max(len(t) for t in [*labels, title or ""])
        fig._mtl_right = max(getattr(fig, "_mtl_right", 0.0), 0.068 * longest + 0.7)
        if fig._suptitle is not None and hasattr(fig._suptitle, "_mtl_text"):
            _title(fig, fig._suptitle._mtl_text)


def _title(fig: Figure, text: str) -> None:
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
                    level: float = 0.95,
                    selected: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Train loss and a validation metric of one task vs epoch: mean line and CI band per
    strategy (``curves``: the setting's rows of the curves table). ``selected``: per label,
    the epochs its seeds selected on validation (marked on both curves)."""
    fig = _figure(11, 4.2)
    ax_loss, ax_val = fig.subplots(1, 2)
    here = curves[curves["task"] == task]
    drawn: dict[str, list[float]] = {"loss": [], "val": []}
    for lb in [*strategies, *([single_task] if single_task else [])]:
        df = here[here["strategy"] == lb]
        single = lb == single_task
        style = None if single else styles.get(lb)
        kwargs = {"color": SINGLE_COLOUR, "linestyle": "--"} if single else {}
        colour = SINGLE_COLOUR if single else (style.color if style else FRONT_COLOUR)
        loss = df[(df["split"] == "train") & (df["metric"] == "loss")]
        val = df[(df["split"] == "val") & (df["metric"] == metric)]
        for ax, part, key in ((ax_loss, loss, "loss"), (ax_val, val, "val")):
            if part.empty:
                continue
            _band(ax, part, "epoch", style, lb, **kwargs)
            _mark_selected(ax, part, "epoch", (selected or {}).get(lb), colour)
            drawn[key] += part["mean"].tolist()
    ax_loss.set_xlabel("epoch")
    _scale_y(ax_loss, drawn["loss"], f"{task} train loss (mean over the epoch)")
    ax_loss.set_title("training loss")
    ax_val.set_xlabel("epoch (0 = before training)")
    _scale_y(ax_val, drawn["val"],
             metric_label(task, metric, higher_is_better, metric_unit(metric)))
    ax_val.set_title(f"validation {metric}")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if selected:
        _selected_legend_entry(ax_val)
    _title(fig, f"{setting}: learning curves of {task} "
                 f"(mean and {level:.0%} CI over seeds)")
    _legend(fig, (ax_loss, ax_val), "strategy")
    return fig


def metric_grid(curves: pd.DataFrame, setting: str,
                tasks: Sequence[tuple[str, str, bool | None]], styles: dict[str, Style],
                strategies: Sequence[str], single_task: str | None = None,
                level: float = 0.95,
                selected: Mapping[tuple[str, str], Sequence[float]] | None = None) -> Figure:
    """One panel per task, wrapping at :data:`PANEL_COLUMNS`: the validation metric of each
    ``(task, metric, higher_is_better)`` per epoch, mean and CI band per strategy.
    ``selected``: per (label, task), the epochs the seeds selected on validation."""
    fig = _grid_figure(len(tasks), 4.2, 3.4)
    axes = _panels(fig, len(tasks))
    for ax, (task, metric, hib) in zip(axes, tasks):
        here = curves[(curves["task"] == task) & (curves["split"] == "val")
                      & (curves["metric"] == metric)]
        drawn: list[float] = []
        for lb in [*strategies, *([single_task] if single_task else [])]:
            df = here[here["strategy"] == lb]
            if df.empty:
                continue
            single = lb == single_task
            style = None if single else styles.get(lb)
            kwargs = {"color": SINGLE_COLOUR, "linestyle": "--"} if single else {}
            _band(ax, df, "epoch", style, lb, **kwargs)
            colour = SINGLE_COLOUR if single else (style.color if style else FRONT_COLOUR)
            _mark_selected(ax, df, "epoch", (selected or {}).get((lb, task)), colour)
            drawn += df["mean"].tolist()
        # the panel's title names the task
        _scale_y(ax, drawn, metric_label("", metric, hib, metric_unit(metric)))
        ax.set_title(f"{task}: validation {metric}", fontsize="medium")
        ax.set_xlabel("epoch (0 = before training)")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if selected and axes:
        _selected_legend_entry(axes[0])
    _title(fig, f"{setting}: validation curves per task (mean and {level:.0%} CI over seeds)")
    _legend(fig, axes, "strategy")
    return fig


def normalised_losses(curves: pd.DataFrame, setting: str, tasks: Sequence[str],
                      strategies: Sequence[str],
                      selected: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Every task's loss divided by its value at the first epoch, one panel per strategy
    (wrapping at :data:`PANEL_COLUMNS`), one line per task: whether a strategy trains all
    tasks at a similar rate (GradNorm's L_i(t) / L_i(0)). The validation loss is used when it
    was measured before training (epoch 0), else the training loss. Ratios of seed means.
    ``selected``: per label, the epochs its seeds selected on validation (a dotted line)."""
    loss = curves[curves["metric"] == "loss"]
    val = loss[loss["split"] == "val"]
    split = "val" if not val.empty and (val["epoch"] == 0).any() else "train"
    loss = loss[loss["split"] == split]
    present = [lb for lb in strategies if (loss["strategy"] == lb).any()]
    fig = _grid_figure(max(len(present), 1), 4.2, 3.4)
    axes = _panels(fig, max(len(present), 1), sharey=True)
    colours = _task_colours(len(tasks))
    drawn: list[float] = []
    for ax, lb in zip(axes, present):
        for i, task in enumerate(tasks):
            df = loss[(loss["strategy"] == lb) & (loss["task"] == task)].sort_values("epoch")
            df = df.dropna(subset=["mean"])
            if df.empty or not df["mean"].iloc[0]:
                continue
            ratio = df["mean"] / df["mean"].iloc[0]
            ax.plot(df["epoch"], ratio, color=colours[i], linestyle=LINESTYLES[i % 2],
                    label=task, linewidth=1.4)
            drawn += ratio.tolist()
        e = [float(v) for v in (selected or {}).get(lb, []) if np.isfinite(float(v))]
        if e:
            ax.axvline(float(np.mean(e)), color="black", linestyle=":", linewidth=1,
                       label="epoch selected on validation (mean over seeds)")
        ax.axhline(1, color="#999999", linewidth=0.8)
        ax.set_title(lb, fontsize="medium")
        ax.set_xlabel("epoch (0 = before training)" if split == "val" else "epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    what = "validation loss / loss before training" if split == "val" else \
        "train loss / first-epoch train loss"
    if _scale_y(axes, drawn, ""):
        what += " (log scale)"
    fig.supylabel(what, fontsize="medium")
    _title(fig, f"{setting}: {what} for every task (mean over seeds; one panel per strategy)")
    _legend(fig, axes, "task")
    return fig


def _task_colours(n: int) -> list:
    """Tasks in their declared order along viridis (ordered, colour-blind safe; no yellow)."""
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


# -- 2 task weights ----------------------------------------------------------------------------
def weight_trajectories(weights: pd.DataFrame, setting: str, tasks: Sequence[str],
                        styles: dict[str, Style], strategies: Sequence[str],
                        level: float = 0.95) -> Figure:
    """One panel per task (rows of :data:`PANEL_COLUMNS`): the weight each strategy gave it
    per epoch (mean of the per-step weights), mean and CI band over seeds."""
    fig = _grid_figure(len(tasks), 4.2, 3.6)
    axes = _panels(fig, len(tasks), sharey=True)
    drawn: list[float] = []
    for ax, task in zip(axes, tasks):
        for lb in strategies:
            df = weights[(weights["strategy"] == lb) & (weights["task"] == task)]
            if not df.empty:
                _band(ax, df, "epoch", styles.get(lb), lb)
                drawn += df["mean"].tolist()
        ax.set_title(f"weight of {task}", fontsize="medium")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    what = "task weight (mean over the epoch's steps)"
    if len(axes) == 1:
        _scale_y(axes[0], drawn, what)
    else:  # one label for the grid: repeated per row it would not fit
        fig.supylabel(what + (" (log scale)" if _scale_y(axes, drawn, "") else ""),
                      fontsize="medium")
    _title(fig, f"{setting}: task-weight trajectories (mean and {level:.0%} CI over seeds)")
    _legend(fig, axes, "strategy")
    return fig


# -- 3 Pareto ----------------------------------------------------------------------------------
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
    fig = _figure(8.5, 6.2)
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
    _title(fig, title)
    _legend(fig, [ax])
    if has_front:
        _place_labels(fig, ax, [(a, b, f"w_A={w:.2f}") for a, b, w in
                                zip(front["a"], front["b"], front["front_weight"])],
                      list(zip(points["a"], points["b"])), FRONT_COLOUR)
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


def cosine_matrix(diag: pd.DataFrame, tasks: Sequence[str], strategy: str) -> np.ndarray:
    """T x T matrix of one strategy's task-gradient cosines, each pair's mean over the
    measurements of the last epoch of training (seed means); 1 on the diagonal, NaN where a
    pair was never measured. ``diag``: rows of the diagnostics table."""
    idx = {t: i for i, t in enumerate(tasks)}
    mat = np.full((len(tasks), len(tasks)), np.nan)
    np.fill_diagonal(mat, 1.0)
    d = diag[(diag["strategy"] == strategy) & diag["mean"].notna()]
    if d.empty:
        return mat
    last = d[d["epoch"] > float(d["epoch"].max()) - 1]
    for (a, b), v in last.groupby(["task_a", "task_b"])["mean"].mean().items():
        if a in idx and b in idx:
            mat[idx[a], idx[b]] = mat[idx[b], idx[a]] = float(v)
    return mat


def gradient_cosine_heatmap(diag: pd.DataFrame, setting: str, tasks: Sequence[str],
                            strategies: Sequence[str]) -> Figure:
    """One T x T heat map of :func:`cosine_matrix` per strategy (rows of
    :data:`PANEL_COLUMNS`), on one diverging scale from -1 (conflict) to 1 (agreement)."""
    present = [lb for lb in strategies if (diag["strategy"] == lb).any()]
    n = len(tasks)
    side = min(4.6, max(3.2, 0.38 * n + 1.2))
    fig = _grid_figure(max(len(present), 1), side, side, legend_width=1.4)
    axes = _panels(fig, max(len(present), 1))
    image = None
    for ax, lb in zip(axes, present):
        mat = cosine_matrix(diag, tasks, lb)
        shown = mat.copy()
        np.fill_diagonal(shown, np.nan)  # cos(g, g) = 1 says nothing and would own the scale
        cmap = matplotlib.colormaps["PuOr_r"].with_extremes(bad="#E6E6E6")
        image = ax.imshow(shown, cmap=cmap, vmin=-1, vmax=1)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    if i != j and np.isfinite(mat[i, j]):
                        text = f"{mat[i, j]:.2f}"
                        ax.text(j, i, text.replace("0.", ".", 1) if n > 6 else text,
                                ha="center", va="center", fontsize=6 if n > 6 else 8,
                                color="white" if abs(mat[i, j]) > 0.6 else "black")
        ax.set_xticks(range(n), tasks, rotation=90, fontsize="x-small")
        ax.set_yticks(range(n), tasks, fontsize="x-small")
        ax.set_title(lb, fontsize="medium")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8,
                     label="cosine of task gradients (< 0: conflict)")
    sources = sorted({s for v in diag["source"].dropna() for s in str(v).split(",")})
    where = " and ".join(sources) if sources else "shared"
    _title(fig, f"{setting}: task-gradient cosine at the {where} gradient source, mean over "
                "the last epoch's measurements (seed means)")
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
        ticks = range(0, size, max(1, math.ceil(size / 12)))  # readable with many classes
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
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
def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the user's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path``.

    A writer that raises, or a process killed half-way, leaves ``path`` as it was (absent or the
    previous complete file) and no temporary file behind (short of a kill, which leaves a hidden
    ``.NAME.*.tmp`` that the next report removes). The file gets the mode a plain write would
    give (the umask applies), not the private mode of a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
