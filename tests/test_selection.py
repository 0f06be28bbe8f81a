"""Model selection rules: hand-computed scores and a planted overfitting case."""

import math

import pytest

from mtl_bench.errors import UserError
from mtl_bench.selection import Selector, gap_closed, record_score, score
from mtl_bench.strategy import CLASSIFICATION, REGRESSION
from mtl_bench.task import Task


def test_gap_closed_by_hand():
    # accuracy 0.5 -> 0.8: 0.3 of the 0.5 gap to 1
    assert gap_closed(0.8, 0.5, "accuracy") == pytest.approx(0.6)
    # MAE 10 -> 4: 6 of the 10 gap to 0
    assert gap_closed(4.0, 10.0, "mae") == pytest.approx(0.6)
    # worse than the start is negative; a start at the ideal gives 0
    assert gap_closed(0.4, 0.5, "accuracy") == pytest.approx(-0.2)
    assert gap_closed(1.0, 1.0, "accuracy") == 0.0
    # loss: ideal 0, so 1 - L/L0
    assert gap_closed(0.25, 1.0, "loss") == pytest.approx(0.75)
    # R^2 has the ideal 1 and no lower bound: -1 -> 0 closes half the gap
    assert gap_closed(0.0, -1.0, "r2") == pytest.approx(0.5)
    assert math.isnan(gap_closed(math.nan, 1.0, "mae"))


def test_score_means_tasks_and_skips_non_finite_terms():
    start = {("a", "accuracy"): 0.5, ("b", "mae"): 10.0}
    val = {("a", "accuracy"): 0.8, ("b", "mae"): 8.0}
    assert score(val, start, {"a": "accuracy", "b": "mae"}) == pytest.approx((0.6 + 0.2) / 2)
    val_nan = {("a", "accuracy"): 0.8, ("b", "mae"): math.nan}
    assert score(val_nan, start, {"a": "accuracy", "b": "mae"}) == pytest.approx(0.6)
    assert score({}, start, {"a": "accuracy"}) == -math.inf


def _planted_curves():
    """Task 'sex' peaks at epoch 2 and then overfits (its loss rises fast); task 'age' keeps
    improving until epoch 6. Validation accuracy and loss per epoch (epoch 0 = before)."""
    sex_acc = [0.50, 0.80, 0.85, 0.84, 0.83, 0.82, 0.82]
    age_acc = [0.05, 0.10, 0.15, 0.25, 0.32, 0.38, 0.42]
    sex_loss = [0.70, 0.40, 0.30, 0.45, 0.60, 0.80, 1.00]
    age_loss = [3.00, 2.80, 2.60, 2.40, 2.30, 2.25, 2.20]
    return [{("sex", "accuracy"): sa, ("age", "accuracy"): aa, ("sex", "loss"): sl,
             ("age", "loss"): al} for sa, aa, sl, al in zip(sex_acc, age_acc, sex_loss, age_loss)]


def _select(rule):
    tasks = [Task("age", CLASSIFICATION, 18, ("accuracy", "macro_f1")),
             Task("sex", CLASSIFICATION, 2, ("accuracy",))]
    sel = Selector(rule, tasks)
    curves = _planted_curves()
    sel.begin(curves[0])
    for epoch, val in enumerate(curves[1:], start=1):
        sel.offer(epoch, val)
    return sel


def test_primary_rule_is_not_cut_short_by_one_task_overfitting():
    # loss rule: sum of relative losses is lowest at epoch 2, when sex peaks
    assert _select("loss").epoch == 2
    # primary rule: age's gain outweighs sex's small decline; epoch 6 by hand:
    # age (0.42-0.05)/0.95 = 0.389, sex (0.82-0.5)/0.5 = 0.64 -> 0.515 vs epoch 2: 0.105, 0.70
    sel = _select("primary")
    assert sel.epoch == 6
    assert sel.best == pytest.approx(((0.42 - 0.05) / 0.95 + (0.82 - 0.5) / 0.5) / 2)
    last = _select("last")
    assert last.epoch == 6 and last.summary()["rule"] == "last"


def test_ties_keep_the_earliest_epoch_and_no_progress_keeps_epoch_0():
    tasks = [Task("y", REGRESSION, 1, ("mae",))]
    sel = Selector("primary", tasks)
    sel.begin({("y", "mae"): 2.0})
    for epoch, v in enumerate([1.0, 1.0, 1.5], start=1):
        sel.offer(epoch, {("y", "mae"): v})
    assert sel.epoch == 1
    worse = Selector("primary", tasks)
    worse.begin({("y", "mae"): 2.0})
    worse.offer(1, {("y", "mae"): 3.0})
    assert worse.epoch == 0 and worse.summary()["score"] == 0.0


def test_unknown_rule_is_a_user_error():
    with pytest.raises(UserError, match="--select"):
        Selector("best", [])


def test_record_score_reads_the_stored_score_or_rescores_old_records():
    assert record_score({"status": "ok", "selection": {"score": 0.4}}) == 0.4
    assert record_score({"status": "failed"}) is None
    old = {"status": "ok", "selected_epoch": 1,
           "curves": {"columns": ["epoch", "split", "task", "metric", "value"],
                      "rows": [[0, "val", "a", "loss", 2.0], [1, "val", "a", "loss", 0.5],
                               [0, "val", "b", "loss", 1.0], [1, "val", "b", "loss", 0.5]]}}
    assert record_score(old) == pytest.approx((0.75 + 0.5) / 2)


def test_task_primary_defaults_and_validation():
    assert Task("c", CLASSIFICATION, 3, ("macro_f1", "accuracy")).primary == "accuracy"
    assert Task("r", REGRESSION, 1, ("rmse", "mae")).primary == "mae"
    assert Task("r", REGRESSION, 1, ("rmse", "r2")).primary == "rmse"
    assert Task("r", REGRESSION, 1, ("rmse", "mae"), primary="rmse").primary == "rmse"
    with pytest.raises(ValueError, match="primary metric 'auroc'"):
        Task("c", CLASSIFICATION, 2, ("accuracy",), primary="auroc")
