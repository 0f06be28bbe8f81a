"""Metrics against values worked out by hand (and scikit-learn as an independent check)."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from mtl_bench.metrics import (
    METRICS,
    confusion_counts,
    confusion_matrix,
    counts_from_confusion,
    delta_m,
    get_metric,
    per_class_table,
)

# Six samples, three classes. Worked by hand:
#   true 0 0 0 1 1 2
#   pred 0 1 0 1 2 2
# confusion (rows true, cols pred) = [[2,1,0],[0,1,1],[0,0,1]]
# TP = diag = [2,1,1]; FP = column sums - TP = [0,1,1]; FN = row sums - TP = [1,1,0];
# TN = 6 - TP - FP - FN = [3,3,4]
TARGET = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 1, 0, 1, 2, 2])


def _proba(pred, n_classes=3, top=0.8):
    p = np.full((len(pred), n_classes), (1 - top) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = top
    return p


def test_confusion_and_one_vs_rest_counts_by_hand():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    expected = [[2, 0, 1, 3], [1, 1, 1, 3], [1, 1, 0, 4]]  # TP FP FN TN per class
    assert confusion_counts(PRED, TARGET, 3).tolist() == expected
    assert counts_from_confusion(cm.tolist()).tolist() == expected  # the record's nested list
    table = per_class_table(cm)
    np.testing.assert_allclose(table["precision"], [2 / 2, 1 / 2, 1 / 2])
    np.testing.assert_allclose(table["recall"], [2 / 3, 1 / 2, 1 / 1])
    np.testing.assert_allclose(table["f1"], [4 / 5, 2 / 4, 2 / 3])
    assert table["support"].tolist() == [3, 2, 1]


def test_classification_metrics_by_hand_and_against_sklearn():
    proba = _proba(PRED)
    by_hand = {
        "accuracy": 4 / 6,
        "macro_f1": (4 / 5 + 2 / 4 + 2 / 3) / 3,
        "precision": (1 + 1 / 2 + 1 / 2) / 3,
        "recall": (2 / 3 + 1 / 2 + 1) / 3,
    }
    for name, value in by_hand.items():
        assert get_metric(name)(proba, TARGET) == pytest.approx(value)
    sk = {"accuracy": skm.accuracy_score(TARGET, PRED),
          "macro_f1": skm.f1_score(TARGET, PRED, average="macro"),
          "precision": skm.precision_score(TARGET, PRED, average="macro"),
          "recall": skm.recall_score(TARGET, PRED, average="macro")}
    for name, value in sk.items():
        assert get_metric(name)(proba, TARGET) == pytest.approx(value)


def test_macro_average_skips_classes_absent_from_target_and_prediction():
    # 4 output units but class 3 never occurs: macro metrics average over classes 0..2 only
    proba = np.hstack([_proba(PRED), np.zeros((6, 1))])
    assert get_metric("macro_f1")(proba, TARGET) == pytest.approx((4 / 5 + 2 / 4 + 2 / 3) / 3)


def test_ece_by_hand():
    # confidences 0.9, 0.9, 0.62, 0.65; correct 1, 0, 1, 0.
    # 15 bins of width 1/15: 0.9 -> bin 13 (13/15 < 0.9 <= 14/15); 0.62 and 0.65 -> bin 9.
    # bin 13: |acc 0.5 - conf 0.9| = 0.4; bin 9: |0.5 - 0.635| = 0.135; each holds 2 of 4.
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.38, 0.62], [0.35, 0.65]])
    target = np.array([0, 1, 1, 0])
    assert get_metric("ece")(proba, target) == pytest.approx(0.5 * 0.4 + 0.5 * 0.135)
    # a single bin: |mean accuracy - mean confidence|
    ece = METRICS["ece"].fn(proba, target, n_bins=1)
    assert ece == pytest.approx(abs(0.5 - (0.9 + 0.9 + 0.62 + 0.65) / 4))
    # confident and always right: perfectly calibrated
    assert get_metric("ece")(np.eye(3), np.arange(3)) == 0.0


def test_ece_accepts_unnormalised_sigmoid_scores():
    # raw sigmoid scores of a BCE block (rows need not sum to one): the top score is the
    # confidence. Scores 0.7 and 0.2 in one bin each, both right: |1-0.7|/2 + |1-0.2|/2.
    proba = np.array([[0.7, 0.1], [0.05, 0.2]])
    assert get_metric("ece")(proba, np.array([0, 1])) == pytest.approx(0.15 + 0.4)


def test_auroc_by_hand():
    # positives score 0.8, 0.4; negatives 0.6, 0.2: 3 of the 4 positive-negative pairs are
    # ordered correctly -> AUROC 0.75 for class 1; class 0 uses 1 - score -> also 0.75
    s = np.array([0.8, 0.4, 0.6, 0.2])
    proba = np.stack([1 - s, s], axis=1)
    target = np.array([1, 1, 0, 0])
    assert get_metric("auroc")(proba, target) == pytest.approx(0.75)
    assert get_metric("auroc")(proba, target) == pytest.approx(skm.roc_auc_score(target, s))


def test_regression_metrics_by_hand():
    pred, target = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0])
    # errors 0, 1, 2; target mean 3: SS_res = 5, SS_tot = 8
    assert get_metric("mae")(pred, target) == pytest.approx(1.0)
    assert get_metric("rmse")(pred, target) == pytest.approx(math.sqrt(5 / 3))
    assert get_metric("r2")(pred, target) == pytest.approx(1 - 5 / 8)
    assert math.isnan(get_metric("r2")(pred, np.ones(3)))  # constant target: undefined


def test_directions():
    higher = {name: m.higher_is_better for name, m in METRICS.items()}
    assert higher["accuracy"] and higher["macro_f1"] and higher["r2"] and higher["auroc"]
    assert not (higher["mae"] or higher["rmse"] or higher["ece"])


def test_delta_m_signs():
    h = {"acc": True, "mae": False, "r2": True}
    # better accuracy (0.9 vs 0.8): -(0.1 / 0.8) * 100 = -12.5 (negative = better)
    assert delta_m({"acc": 0.9}, {"acc": 0.8}, h) == pytest.approx(-12.5)
    # worse accuracy: positive
    assert delta_m({"acc": 0.7}, {"acc": 0.8}, h) == pytest.approx(12.5)
    # lower MAE (1 vs 2) is better: (1 - 2) / 2 * 100 = -50
    assert delta_m({"mae": 1.0}, {"mae": 2.0}, h) == pytest.approx(-50.0)
    assert delta_m({"mae": 3.0}, {"mae": 2.0}, h) == pytest.approx(50.0)
    # the mean over tasks: (-12.5 + 50) / 2
    assert delta_m({"acc": 0.9, "mae": 3.0}, {"acc": 0.8, "mae": 2.0, "r2": 1.0}, h) == \
        pytest.approx(18.75)
    # a negative baseline keeps "negative = better": R^2 from -0.5 to 0 is an improvement
    assert delta_m({"r2": 0.0}, {"r2": -0.5}, h) == pytest.approx(-100.0)
    assert delta_m({"acc": 0.8}, {"acc": 0.8}, h) == 0.0


@pytest.mark.parametrize("mtl,single,message", [
    ({}, {}, "at least one"),
    ({"acc": 0.9}, {}, "no single-task value"),
    ({"acc": 0.9}, {"acc": 0.0}, "is 0"),
])
def test_delta_m_rejects_undefined_inputs(mtl, single, message):
    with pytest.raises(ValueError, match=message):
        delta_m(mtl, single, {"acc": True})


def test_read_outs_without_a_direction_are_never_scored():
    """A coordinate or a position on a front has no better direction: it is reported, but a
    baseline keeps no test value of it (so check never calls it worse) and it never counts
    towards Delta_m%."""
    from mtl_bench.baselines import compact_run
    from mtl_bench.metrics import is_scored
    from mtl_bench.settings import summary_metrics

    assert not any(is_scored(m) for m in ("x1", "x2", "front_position", "pareto_weight"))
    assert is_scored("pareto_distance") and is_scored("accuracy") and is_scored("no-such-metric")
    record = {"run_id": "r", "status": "ok", "task_pair": "toy-2d", "strategy": "fixed",
              "config": {"task": "toy-2d", "strategy": "fixed", "seed": 0},
              "metric_directions": {"pareto_distance": False, "x1": False},
              "summary": [[3, "test", "task1", "pareto_distance", 0.5],
                          [3, "test", "task1", "x1", 2.0]]}
    assert set(compact_run(record)["test"]) == {"task1.pareto_distance"}
    tasks = [{"name": "task1", "metrics": ["pareto_distance", "x1"], "primary": "pareto_distance"}]
    assert summary_metrics(tasks, ["x1"]) == [("task1", "pareto_distance")]
