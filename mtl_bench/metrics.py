"""Metric functions, each with its direction (higher or lower is better).

Classification metrics take class probabilities (N, C) and integer targets (N,); regression
metrics take predictions and targets (N,) in the target's original units. All return floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    fn: Callable[[np.ndarray, np.ndarray], float]
    kind: str  # "classification" or "regression"
    description: str = ""
    #: The range the metric can take: intervals over seeds stay inside it, and model selection
    #: measures progress as the fraction of the gap to the ideal end closed (see ``ideal``).
    bounds: tuple[float, float] = (-math.inf, math.inf)
    #: False for a read-out that has no better direction (a coordinate, a position on a
    #: front): reported and plotted, but never in Delta_m%, its terms, or a regression check.
    scored: bool = True

    @property
    def ideal(self) -> float:
        """The best value the metric can take (1 for accuracy, 0 for an error), NaN if none."""
        return self.bounds[1] if self.higher_is_better else self.bounds[0]

    @property
    def unit_interval(self) -> bool:
        return self.bounds == (0.0, 1.0)

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float:
        return float(self.fn(np.asarray(pred), np.asarray(target)))


METRICS: dict[str, Metric] = {}
UNIT, NON_NEGATIVE = (0.0, 1.0), (0.0, math.inf)


def metric(name: str, higher_is_better: bool, kind: str, description: str = "",
           bounds: tuple[float, float] = (-math.inf, math.inf), scored: bool = True):
    def decorator(fn):
        if name in METRICS:
            raise ValueError(f"metric '{name}' is already defined")
        METRICS[name] = Metric(name, higher_is_better, fn, kind, description,
                               (float(bounds[0]), float(bounds[1])), scored)
        return fn

    return decorator


def is_scored(name: str) -> bool:
    """Whether a metric has a better direction that scores can use (unknown names: True)."""
    m = METRICS.get(name)
    return m is None or m.scored


def get_metric(name: str) -> Metric:
    from mtl_bench.errors import UserError

    try:
        return METRICS[name]
    except KeyError:
        raise UserError(
            f"unknown metric '{name}'; choose from: {', '.join(sorted(METRICS))}"
        ) from None


def higher_is_better(name: str) -> bool:
    return get_metric(name).higher_is_better


# -- classification ----------------------------------------------------------------------------
def confusion_matrix(pred_labels: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows true class, columns predicted class (the layout of the run record's
    ``details[task]["confusion"]``)."""
    pred_labels = np.asarray(pred_labels).astype(int)
    target = np.asarray(target).astype(int)
    cm = np.bincount(target * n_classes + pred_labels, minlength=n_classes * n_classes)
    return cm.reshape(n_classes, n_classes)


def counts_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class one-vs-rest counts of a confusion matrix (rows true, columns predicted), shape
    (C, 4): columns TP, FP, FN, TN. Accepts the nested list stored in a run record."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1)


def confusion_counts(pred_labels: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class one-vs-rest counts, shape (C, 4): columns TP, FP, FN, TN."""
    return counts_from_confusion(confusion_matrix(pred_labels, target, n_classes))


def per_class_table(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class TP, FP, FN, TN, support, precision, recall and F1 from a confusion matrix
    (rows true, columns predicted). A ratio with a zero denominator is 0, as in scikit-learn's
    ``zero_division=0``."""
    counts = counts_from_confusion(confusion)
    tp, fp, fn, tn = counts.T
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "support": tp + fn,
            "precision": _safe_div(tp, tp + fp), "recall": _safe_div(tp, tp + fn),
            "f1": _safe_div(2 * tp, 2 * tp + fp + fn)}


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_precision_recall_f1(proba: np.ndarray, target: np.ndarray):
    counts = confusion_counts(proba.argmax(axis=1), target, proba.shape[1])
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return precision, recall, f1, counts


def _present(proba: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Classes that occur in the target or the prediction (macro averages skip absent ones)."""
    c = proba.shape[1]
    return np.union1d(np.unique(target.astype(int)), np.unique(proba.argmax(axis=1))).clip(0, c - 1)


@metric("accuracy", True, "classification", "fraction of correct argmax predictions", UNIT)
def accuracy(proba: np.ndarray, target: np.ndarray) -> float:
    return float((proba.argmax(axis=1) == target.astype(int)).mean())


@metric("macro_f1", True, "classification", "unweighted mean of per-class F1", UNIT)
def macro_f1(proba: np.ndarray, target: np.ndarray) -> float:
    _, _, f1, _ = per_class_precision_recall_f1(proba, target)
    return float(f1[_present(proba, target)].mean())


@metric("precision", True, "classification", "macro-averaged precision", UNIT)
def macro_precision(proba: np.ndarray, target: np.ndarray) -> float:
    p, _, _, _ = per_class_precision_recall_f1(proba, target)
    return float(p[_present(proba, target)].mean())


@metric("recall", True, "classification", "macro-averaged recall", UNIT)
def macro_recall(proba: np.ndarray, target: np.ndarray) -> float:
    _, r, _, _ = per_class_precision_recall_f1(proba, target)
    return float(r[_present(proba, target)].mean())


@metric("ece", False, "classification", "expected calibration error, 15 equal-width bins", UNIT)
def expected_calibration_error(proba: np.ndarray, target: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width confidence bins."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == target.astype(int)).astype(float)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


@metric("auroc", True, "classification", "macro one-vs-rest area under the ROC curve", UNIT)
def auroc(proba: np.ndarray, target: np.ndarray) -> float:
    from scipy.stats import rankdata

    target = target.astype(int)
    scores = []
    for c in range(proba.shape[1]):
        pos = target == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(proba[:, c])
        scores.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(scores)) if scores else float("nan")


# -- regression --------------------------------------------------------------------------------
@metric("mae", False, "regression", "mean absolute error, target units", NON_NEGATIVE)
def mae(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.abs(pred - target).mean())


@metric("rmse", False, "regression", "root mean squared error, target units",
        NON_NEGATIVE)
def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(((pred - target) ** 2).mean()))


@metric("r2", True, "regression", "coefficient of determination", (-math.inf, 1.0))
def r2(pred: np.ndarray, target: np.ndarray) -> float:
    ss_res = ((target - pred) ** 2).sum()
    ss_tot = ((target - target.mean(axis=0)) ** 2).sum()
    return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def delta_m(mtl: dict[str, float], single: dict[str, float], higher: dict[str, bool]) -> float:
    """Delta_m% = mean_k (-1)^{h_k} (M_mtl,k - M_single,k) / |M_single,k| * 100.

    ``h_k`` is 1 when higher is better for metric k (Maninis et al. 2019; Navon et al. 2022), so
    *lower* Delta_m is better and a negative value means the multi-task model beats single-task.
    Keys are (task, metric) labels; every key of ``mtl`` must be in ``single`` and ``higher``.
    Dividing by |M_single| (the papers divide by M_single, the same for positive metrics) keeps
    the sign meaning "worse" for a metric whose baseline is negative, such as a poor R^2.
    Raises ValueError for an empty ``mtl``, a missing key or a zero baseline (undefined ratio).
    """
    if not mtl:
        raise ValueError("delta_m needs at least one metric")
    terms = []
    for key, m in mtl.items():
        if key not in single or key not in higher:
            raise ValueError(f"delta_m: metric {key!r} has no single-task value or direction")
        s = single[key]
        if s == 0:
            raise ValueError(f"delta_m: single-task value of {key!r} is 0; the relative change "
                             "is undefined")
        sign = -1.0 if higher[key] else 1.0
        terms.append(sign * (m - s) / abs(s) * 100.0)
    return float(np.mean(terms))


# -- read-outs of problems with a known answer -------------------------------------------------
#: Column layout of the evaluation output of a task whose head reports where the model stands
#: (synthetic problems whose Pareto set is known, where the parameters are the point being
#: optimised). Column 0 is the task's objective; the others are read-outs the head computes
#: from the parameters in eval mode, NaN where a pair has no such quantity. A task lists only
#: the ones it fills. The coordinates, ``front_position`` and ``pareto_weight`` have no better
#: direction; the flag they carry only satisfies the protocol.
READOUT_COLUMNS = ("objective", "pareto_distance", "front_position", "pareto_weight", "x1", "x2")


def _readout(name: str, higher: bool, description: str,
             bounds: tuple[float, float] = (-math.inf, math.inf), scored: bool = True) -> None:
    column = READOUT_COLUMNS.index(name)

    def fn(pred: np.ndarray, target: np.ndarray) -> float:
        return float(np.mean(np.asarray(pred, dtype=float).reshape(len(pred), -1)[:, column]))

    metric(name, higher, "regression", description, bounds, scored)(fn)


_readout("objective", False, "the task's objective at the model's parameters (read-out column 0)")
_readout("pareto_distance", False, "Euclidean distance from the parameters to the Pareto set",
         NON_NEGATIVE)
_readout("front_position", False, "where the nearest Pareto point lies: 0 at task 1's optimum, "
         "1 at task 2's (no better direction)", UNIT, scored=False)
_readout("pareto_weight", False, "this task's weight w_i of the Pareto point x*(w) nearest to "
         "the parameters (no better direction)", UNIT, scored=False)
_readout("x1", False, "first coordinate of the parameters (no better direction)", scored=False)
_readout("x2", False, "second coordinate of the parameters (no better direction)", scored=False)
