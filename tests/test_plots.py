"""Figures that cannot mislead: the front, the axis scales, layouts for many tasks, atomic files.

Every test builds small tidy frames by hand (the columns the aggregated tables have), so each
planted case is visible in the test itself.
"""

import os
import stat

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from mtl_bench import plot_training, plots, store


# -- the fixed-weight front --------------------------------------------------------------------
def test_nondominated_drops_a_planted_dominated_point_and_keeps_ties():
    pts = [(1.0, 5.0), (2.0, 4.0), (3.0, 3.0),
           (1.5, 3.5),   # planted: worse than (2, 4) on both axes
           (2.0, 3.9),   # equal on a, worse on b than (2, 4): dominated too
           (3.0, 3.0),   # an exact tie with a front point: neither dominates the other
           (np.nan, 9)]  # unmeasured: never on the front, dominates nothing
    assert plots.nondominated(pts, True, True).tolist() == [
        True, True, True, False, False, True, False]


def test_nondominated_respects_each_axis_direction():
    pts = [(0.9, 10.0), (0.8, 5.0), (0.7, 20.0)]
    # accuracy up, error down: (0.7, 20) is worse on both than (0.9, 10)
    assert plots.nondominated(pts, True, False).tolist() == [True, True, False]
    # both higher is better: (0.8, 5) is dominated by (0.9, 10)
    assert plots.nondominated(pts, True, True).tolist() == [True, False, True]
    # both lower is better: only (0.8, 5) and (0.7, 20) survive
    assert plots.nondominated(pts, False, False).tolist() == [False, True, True]


def test_front_staircase_turns_at_the_corner_worse_on_both_axes():
    xs, ys = plots.front_staircase([(2.0, 4.0), (1.0, 5.0)], True, True)
    assert xs.tolist() == [1.0, 1.0, 2.0] and ys.tolist() == [5.0, 4.0, 4.0]
    # lower is better on b: the worse corner has the larger b
    xs, ys = plots.front_staircase([(1.0, 1.0), (2.0, 3.0)], True, False)
    assert xs.tolist() == [1.0, 1.0, 2.0] and ys.tolist() == [1.0, 3.0, 3.0]


def _points(rows):
    """Rows of aggregate.pareto_points: (strategy, role, w_A or None, a, b)."""
    out = []
    for lb, role, w, a, b in rows:
        out.append({"strategy": lb, "role": role, "front_weight": w, "a": a, "a_low": a - 0.01,
                    "a_high": a + 0.01, "b": b, "b_low": b - 0.01, "b_high": b + 0.01,
                    "on_front": w is not None, "dominated_by": []})
    return pd.DataFrame(out)


SWEEP = [("fixed(w=0.2)", "front", 0.2, 0.70, 0.90), ("fixed(w=0.4)", "front", 0.4, 0.80, 0.85),
         ("fixed(w=0.5)", "reference", 0.5, 0.84, 0.84),
         ("fixed(w=0.6)", "front", 0.6, 0.75, 0.80),  # planted: dominated by w=0.4
         ("fixed(w=0.8)", "front", 0.8, 0.90, 0.70)]


def test_pareto_figure_draws_only_nondominated_points_on_the_front():
    pts = _points([*SWEEP, ("dwa", "method", None, 0.86, 0.86)])
    styles = plots.style_map(["fixed(w=0.5)", "dwa"], ["fixed(w=0.5)"])
    fig = plots.pareto(pts, "s", ("a", "b"), styles, directions=(True, True), task_a="ta")
    (ax,) = fig.axes
    line = {ln.get_label(): ln for ln in ax.lines}
    front = line["_front points"]
    assert sorted(front.get_xdata()) == [0.70, 0.80, 0.84, 0.90]
    faint = line["dominated fixed weights"]
    assert list(faint.get_xdata()) == [0.75] and faint.get_alpha() < 0.5
    # the staircase visits the 4 front points and 3 corners, nothing else
    stairs = line["fixed-weight front"]
    assert len(stairs.get_xdata()) == 7 and 0.75 not in list(stairs.get_xdata())
    assert "w_A: share of the total weight on ta" in fig._suptitle.get_text()


def test_pareto_w_labels_never_overlap_even_for_crowded_points():
    crowded = [(f"fixed(w={w:.2f})", "front", w, 0.5 + 0.001 * i, 0.6 - 0.001 * i)
               for i, w in enumerate(np.linspace(0.1, 0.9, 9))]
    fig = plots.pareto(_points(crowded), "s", ("a", "b"), {}, directions=(True, True))
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text().startswith("w_A=")]
    assert labels, "at least one front point is labelled"
    renderer = fig._get_renderer()
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        assert all(not a.overlaps(b) for b in boxes[i + 1:])
    # every sweep point's w_A stays readable in the table under the axes
    table = [lg for lg in fig.legends if "sweep" in lg.get_title().get_text()]
    assert len(table) == 1 and len(table[0].get_texts()) == 9


def test_pareto_without_a_sweep_has_no_front_subtitle():
    pts = _points([("fixed", "reference", None, 0.8, 0.8), ("dwa", "method", None, 0.9, 0.7),
                   ("fixed(w=0.3)", "front", 0.3, 0.7, 0.9)])  # one sweep point: no front
    fig = plots.pareto(pts, "s", ("a", "b"), {}, directions=(True, True))
    assert "w_A" not in fig._suptitle.get_text()
    assert not [ln for ln in fig.axes[0].lines if ln.get_label() == "fixed-weight front"]
    assert not [lg for lg in fig.legends if "sweep" in lg.get_title().get_text()]


# -- axis scales -------------------------------------------------------------------------------
def test_wants_log_only_for_positive_values_spanning_a_decade():
    assert plots.wants_log(np.linspace(1, 100, 50))
    assert not plots.wants_log(np.linspace(1, 5, 50))
    assert not plots.wants_log([1.0, 10.0])  # exactly a decade: linear
    assert not plots.wants_log([0.0, 1.0, 100.0])  # log cannot show 0
    assert not plots.wants_log([-0.5, 0.9])  # cosines
    assert plots.wants_log([np.nan, 0.01, np.inf, 2.0])  # non-finite values are ignored
    assert not plots.wants_log([])


def _curves(tasks, strategies, epochs=6, start=None):
    """Curves-table rows: train loss from epoch 1 and val loss + mae from epoch 0; task i's
    loss falls from ``start[i]`` by half per epoch (over three decades in 10 epochs)."""
    rows = []
    for lb in strategies:
        for i, t in enumerate(tasks):
            s0 = (start or [1.0] * len(tasks))[i]
            for e in range(epochs + 1):
                v = s0 * 0.5 ** e
                for split, metric, value in (("train", "loss", v), ("val", "loss", v),
                                             ("val", "mae", 3.0 - 0.1 * e)):
                    if split == "train" and e == 0:
                        continue
                    rows.append({"setting": "s", "strategy": lb, "role": "method",
                                 "split": split, "task": t, "metric": metric, "epoch": e, "n": 2,
                                 "mean": value, "sd": 0.0, "ci_low": value - 0.1 * abs(value),
                                 "ci_high": value + 0.1 * abs(value)})
    return pd.DataFrame(rows)


def test_learning_curves_use_log_y_for_a_loss_over_decades_and_mark_the_selected_epoch():
    curves = _curves(["t"], ["a", "b"], epochs=8)
    styles = plots.style_map(["a", "b"])
    fig = plot_training.learning_curves(curves, "s", "t", "mae", False, styles, ["a", "b"],
                                        selected={"a": [2, 4], "b": [8, 8]})
    loss_ax, val_ax = fig.axes
    assert loss_ax.get_yscale() == "log" and "log scale" in loss_ax.get_ylabel()
    assert val_ax.get_yscale() == "linear"  # 3.0 -> 2.2: no decade
    marks = [ln for ln in val_ax.lines if ln.get_marker() == plot_training.SELECTED_MARKER
             and len(ln.get_xdata())]
    at = sorted((float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in marks)
    assert at == [(3.0, pytest.approx(2.7)), (8.0, pytest.approx(2.2))]  # mean epoch, on curve
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert plot_training.SELECTED_LABEL in legend


# -- layouts for many tasks --------------------------------------------------------------------
TEN = [f"task{i}" for i in range(1, 11)]


def _png_width(fig, tmp_path, name):
    plots.save(fig, tmp_path / name)
    return imread(str(tmp_path / f"{name}.png")).shape[1]


def test_ten_task_figures_wrap_into_rows_under_the_width_cap(tmp_path):
    strategies = ["a", "b", "c", "d"]
    styles = plots.style_map(strategies)
    weights = pd.DataFrame([{"setting": "s", "strategy": lb, "role": "method", "task": t,
                             "epoch": e, "n": 2, "mean": 1.0, "sd": 0.0, "ci_low": 0.9,
                             "ci_high": 1.1} for lb in strategies for t in TEN
                            for e in range(1, 4)])
    fig = plot_training.weight_trajectories(weights, "s", TEN, styles, strategies)
    assert len(fig.axes) == 10
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
    cols = {round(ax.get_position().x0, 3) for ax in fig.axes}
    assert (len(rows), len(cols)) == (4, plot_training.PANEL_COLUMNS)
    assert _png_width(fig, tmp_path, "weights") <= plots.MAX_WIDTH_PX

    curves = _curves(TEN, strategies, start=[10.0 ** i for i in range(10)])
    grid = plot_training.metric_grid(curves, "s", [(t, "mae", False) for t in TEN], styles,
                                     strategies)
    assert len(grid.axes) == 10
    assert _png_width(grid, tmp_path, "curves") <= plots.MAX_WIDTH_PX

    # a figure asked to be wider than the cap is clamped, not drawn 5,000 px wide
    assert plots.new_figure(44, 4).get_figwidth() * plots.DPI <= plots.MAX_WIDTH_PX


def test_normalised_losses_start_at_one_one_panel_per_strategy():
    curves = _curves(["t1", "t2", "t3"], ["a", "b"], start=[1.0, 50.0, 2000.0])
    fig = plot_training.normalised_losses(curves, "s", ["t1", "t2", "t3"], ["a", "b"],
                                          selected={"a": [3, 5]})
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    a = fig.axes[0]
    tasks = [ln for ln in a.lines if ln.get_label() in ("t1", "t2", "t3")]
    assert len(tasks) == 3
    for ln in tasks:  # the val loss before training is the denominator: every task starts at 1
        assert ln.get_xdata()[0] == 0 and ln.get_ydata()[0] == pytest.approx(1.0)
        assert ln.get_ydata()[-1] == pytest.approx(0.5 ** 6)
    assert a.get_yscale() == "log"  # 1 -> 0.016: more than a decade
    assert [ln.get_xdata()[0] for ln in a.lines if ln.get_linestyle() == ":"] == [4.0]


def _diag(tasks, strategies, cos):
    """Diagnostics rows over two epochs; ``cos(i, j, epoch)`` the planted cosine."""
    rows = []
    for lb in strategies:
        for step, epoch in ((10, 1.0), (20, 2.0), (25, 2.5)):
            for i, a in enumerate(tasks):
                for j in range(i + 1, len(tasks)):
                    rows.append({"setting": "s", "strategy": lb, "role": "method", "task_a": a,
                                 "task_b": tasks[j], "step": step, "n": 2,
                                 "mean": cos(i, j, epoch), "sd": 0.0, "ci_low": np.nan,
                                 "ci_high": np.nan, "epoch": epoch, "source": "shared"})
    return pd.DataFrame(rows)


def test_cosine_matrix_is_t_by_t_over_the_last_epoch():
    tasks = ["t1", "t2", "t3", "t4"]
    diag = _diag(tasks, ["a"], lambda i, j, e: -0.5 if (i, j) == (0, 3) and e > 1.5
                 else 0.1 * (i + j) if e > 1.5 else 0.9)
    m = plot_training.cosine_matrix(diag, tasks, "a")
    assert m.shape == (4, 4) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1)
    assert m[0, 3] == pytest.approx(-0.5) and m[1, 2] == pytest.approx(0.3)  # not epoch 1's 0.9
    assert np.isnan(plot_training.cosine_matrix(diag, [*tasks, "t5"], "a")[0, 4])  # never measured


def test_cosine_heatmap_has_one_t_by_t_image_per_strategy(tmp_path):
    diag = _diag(TEN, ["a", "b", "c", "d"], lambda i, j, e: 0.05 * (j - i) - 0.2)
    fig = plot_training.gradient_cosine_heatmap(diag, "s", TEN, ["a", "b", "c", "d"])
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 4 and all(im.get_array().shape == (10, 10) for im in images)
    assert _png_width(fig, tmp_path, "gradcos") <= plots.MAX_WIDTH_PX


# -- atomic files ------------------------------------------------------------------------------
def test_atomic_write_leaves_no_partial_file_when_the_writer_raises(tmp_path):
    path = tmp_path / "fig.png"

    def broken(fh):
        fh.write(b"\x89PNG half a figure")
        raise RuntimeError("killed while drawing")

    with pytest.raises(RuntimeError):
        store.atomic_write_bytes(path, broken)
    assert not path.exists() and list(tmp_path.iterdir()) == []

    path.write_bytes(b"the previous complete figure")
    with pytest.raises(RuntimeError):
        store.atomic_write_bytes(path, broken)
    assert path.read_bytes() == b"the previous complete figure"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_save_writes_complete_files_with_the_umask_mode(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        fig = Figure()
        fig.subplots().plot([0, 1], [0, 1])
        png, svg = plots.save(fig, tmp_path / "figures" / "x")
    finally:
        os.umask(old)
    for p in (png, svg):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640  # 0o666 less the umask, not 0o600
    assert png.read_bytes()[:4] == b"\x89PNG" and "</svg>" in svg.read_text()[-20:]
    assert sorted(p.name for p in png.parent.iterdir()) == ["x.png", "x.svg"]

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    before = png.read_bytes()
    with pytest.raises(OSError):
        plots.save(fig, tmp_path / "figures" / "x")
    assert png.read_bytes() == before
    assert sorted(p.name for p in png.parent.iterdir()) == ["x.png", "x.svg"]
