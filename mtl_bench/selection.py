"""Model selection on validation: which epoch of a run is reported, and how good it was.

Every run (multi-task or single-task, any strategy) is selected by the same named rule, stored
in its record. The rules score an epoch by validation numbers only; the test split is never
looked at.

* ``primary`` (default): the mean over tasks of the *fraction of the gap to the ideal value
  closed* by the task's primary metric since epoch 0 (before training):
  ``(M_t(e) - M_t(0)) / (ideal_t - M_t(0))``, where the ideal is 1 for accuracy-like metrics
  and 0 for errors (MAE, RMSE, ECE). Each task counts equally whatever its units, a task that
  overfits lowers its own term only, and one task's early peak cannot end another task's
  training while that task's validation metric still improves.
* ``loss``: the same fraction for each task's validation loss (ideal 0), i.e. the mean of
  ``1 - L_t(e) / L_t(0)``; the rule of earlier versions (they summed ``L_t(e) / L_t(0)``, which
  orders epochs identically).
* ``last``: the last epoch; its score is the ``primary`` score at that epoch.

The score is higher-is-better and comparable across runs that share an initialisation (the
same seed gives the same epoch-0 model whatever the learning rate), which is what tuning over a
grid of learning rates or hyper-parameters needs: see :mod:`mtl_bench.tuning`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mtl_bench.metrics import get_metric

SELECT_RULES = ("primary", "loss", "last")
DEFAULT_SELECT = "primary"
LOSS = "loss"


def gap_closed(value: float, start: float, metric: str) -> float:
    """Fraction of the distance from ``start`` to the metric's ideal value covered by ``value``
    (1: ideal reached, 0: no progress, negative: worse than at the start). A start already at
    the ideal gives 0; a metric without a finite ideal falls back to the change relative to
    ``|start|`` in its better direction."""
    if not (math.isfinite(value) and math.isfinite(start)):
        return math.nan
    if metric == LOSS:
        ideal, higher = 0.0, False
    else:
        m = get_metric(metric)
        ideal, higher = m.ideal, m.higher_is_better
    if math.isfinite(ideal):
        gap = ideal - start
        return 0.0 if gap == 0 else (value - start) / gap
    scale = abs(start) or 1.0
    return (value - start) / scale * (1 if higher else -1)


def selection_metrics(rule: str, tasks: Iterable[Any]) -> dict[str, str]:
    """Task name -> the validation quantity the rule scores (``loss`` or the primary metric).
    ``tasks`` are :class:`~mtl_bench.task.Task` objects or record task dicts."""
    out = {}
    for t in tasks:
        name = t["name"] if isinstance(t, Mapping) else t.name
        primary = (t.get("primary") or t["metrics"][0]) if isinstance(t, Mapping) else t.primary
        out[name] = LOSS if rule == LOSS else primary
    return out


def score(values: Mapping[tuple[str, str], float], start: Mapping[tuple[str, str], float],
          metrics: Mapping[str, str]) -> float:
    """Mean over tasks of :func:`gap_closed` (non-finite terms left out; -inf if none is left).
    ``values``/``start`` map (task, metric) to the validation value at an epoch / at epoch 0."""
    terms = [gap_closed(float(values.get((t, m), math.nan)), float(start.get((t, m), math.nan)),
                        m) for t, m in metrics.items()]
    finite = [x for x in terms if math.isfinite(x)]
    return sum(finite) / len(finite) if finite else -math.inf


def check_rule(rule: str) -> None:
    from mtl_bench.errors import UserError

    if rule not in SELECT_RULES:
        raise UserError(f"--select must be one of {', '.join(SELECT_RULES)}; got '{rule}'")


class Selector:
    """Follows a run epoch by epoch and says when the current epoch becomes the selected one."""

    def __init__(self, rule: str, tasks: Sequence[Any]):
        check_rule(rule)
        self.rule = rule
        self.metrics = selection_metrics(rule, tasks)
        # ``last`` reports the primary score of the epoch it keeps
        self.scored = selection_metrics("primary", tasks) if rule == "last" else self.metrics
        self.start: Mapping[tuple[str, str], float] = {}
        self.epoch, self.best = 0, 0.0

    def begin(self, val0: Mapping[tuple[str, str], float]) -> None:
        self.start = dict(val0)
        self.epoch, self.best = 0, 0.0

    def offer(self, epoch: int, val: Mapping[tuple[str, str], float]) -> bool:
        """True when ``epoch`` is now the selected epoch (earliest of equal scores)."""
        s = score(val, self.start, self.scored)
        if self.rule == "last" or s > self.best:
            self.epoch, self.best = epoch, s
            return True
        return False

    def summary(self) -> dict[str, Any]:
        return {"rule": self.rule, "epoch": self.epoch,
                "score": self.best if math.isfinite(self.best) else None,
                "metrics": dict(self.scored)}


def record_score(record: Mapping[str, Any]) -> float | None:
    """The validation score of an ok run at its selected epoch (None for a failed run). Records
    of earlier versions, which stored no score, are scored from their curves by the ``loss``
    rule they were selected with."""
    if record.get("status") != "ok":
        return None
    sel = record.get("selection")
    if isinstance(sel, Mapping) and sel.get("score") is not None:
        return float(sel["score"])
    c = record.get("curves") or {}
    cols = c.get("columns", [])
    try:
        ie, isp, it, im, iv = (cols.index(k) for k in ("epoch", "split", "task", "metric",
                                                         "value"))
    except ValueError:
        return None
    epoch = record.get("selected_epoch")
    at: dict[tuple[str, str], float] = {}
    start: dict[tuple[str, str], float] = {}
    for row in c.get("rows", []):
        if row[isp] == "val" and row[im] == LOSS:
            if row[ie] == epoch:
                at[(row[it], LOSS)] = row[iv]
            if row[ie] == 0:
                start[(row[it], LOSS)] = row[iv]
    metrics = {t: LOSS for t, _ in start}
    s = score(at, start, metrics) if metrics else -math.inf
    return s if math.isfinite(s) else None
