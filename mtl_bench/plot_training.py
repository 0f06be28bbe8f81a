"""Report figures over the epochs of training: learning curves, validation curves per task,
normalised losses, task-weight trajectories and task-gradient cosines (matplotlib, no pyplot).

Every function takes tidy frames of the curves, weights or diagnostics tables (already
restricted to one setting) and returns a :class:`~matplotlib.figure.Figure`. A figure with one
panel per task or per strategy is a small-multiple grid wrapping at :data:`PANEL_COLUMNS`
panels a row, so no figure outgrows :data:`~mtl_bench.plots.MAX_WIDTH_PX` however many tasks
there are. Curves are seed means with a CI band; the epoch each strategy's seeds selected on
validation is marked on them. Style, sizing, labels, legends and saving come from
:mod:`mtl_bench.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mtl_bench.plots import (
    FRONT_COLOUR,
    LINESTYLES,
    SINGLE_COLOUR,
    Style,
    figure_title,
    metric_label,
    metric_unit,
    new_figure,
    outside_legend,
    wants_log,
)

#: Panels per row of a small-multiple grid (one panel per task, strategy, ...).
PANEL_COLUMNS = 3
#: Marker of the epoch selected on validation, drawn on every learning curve.
SELECTED_MARKER = "D"
SELECTED_LABEL = "epoch selected on validation (mean over seeds)"


# -- small-multiple grids, log axes, curve bands -----------------------------------------------
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
    return new_figure(panel_width * cols + legend_width, panel_height * rows + 0.9)


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


# -- learning curves ---------------------------------------------------------------------------
def learning_curves(curves: pd.DataFrame, setting: str, task: str, metric: str,
                    higher_is_better: bool | None, styles: dict[str, Style],
                    strategies: Sequence[str], single_task: str | None = None,
                    level: float = 0.95,
                    selected: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Train loss and a validation metric of one task vs epoch: mean line and CI band per
    strategy (``curves``: the setting's rows of the curves table). ``selected``: per label,
    the epochs its seeds selected on validation (marked on both curves)."""
    fig = new_figure(11, 4.2)
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
    figure_title(fig, f"{setting}: learning curves of {task} "
                 f"(mean and {level:.0%} CI over seeds)")
    outside_legend(fig, (ax_loss, ax_val), "strategy")
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
    figure_title(fig, f"{setting}: validation curves per task (mean and {level:.0%} CI over seeds)")
    outside_legend(fig, axes, "strategy")
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
    figure_title(fig, f"{setting}: {what} for every task (mean over seeds; one panel per strategy)")
    outside_legend(fig, axes, "task")
    return fig


def _task_colours(n: int) -> list:
    """Tasks in their declared order along viridis (ordered, colour-blind safe; no yellow)."""
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


# -- task weights ------------------------------------------------------------------------------
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
    figure_title(fig, f"{setting}: task-weight trajectories (mean and {level:.0%} CI over seeds)")
    outside_legend(fig, axes, "strategy")
    return fig


# -- gradient diagnostics ----------------------------------------------------------------------
def gradient_cosine(diag: pd.DataFrame, setting: str, styles: dict[str, Style],
                    strategies: Sequence[str], level: float = 0.95) -> Figure:
    """Cosine between task gradients over training, one panel per pair of tasks."""
    pairs = diag[["task_a", "task_b"]].drop_duplicates().itertuples(index=False)
    pairs = list(pairs)
    fig = new_figure(max(9.0, 5 * len(pairs) + 2), 4.4)
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
    figure_title(fig, f"{setting}: task-gradient cosine at the {where} gradient source\n"
                 f"(mean and {level:.0%} CI over seeds)")
    outside_legend(fig, axes, "strategy")
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
    figure_title(fig, f"{setting}: task-gradient cosine at the {where} gradient source, mean over "
                "the last epoch's measurements (seed means)")
    return fig
