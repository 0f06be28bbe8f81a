"""What happened during training, per setting and cell: learning curves, task weights,
gradient diagnostics and pooled classification details, each as mean and band over seeds
(the tables the report's figures are drawn from). Bands of a metric stay inside its range.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mtl_bench import stats
from mtl_bench.metrics import METRICS, get_metric
from mtl_bench.settings import ROLE, SETTING, SINGLE_TASK, Setting
from mtl_bench.store import EPOCH, METRIC, SPLIT, STATUS, STEP, STRATEGY, TASK, VALUE


def as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _band(df: pd.DataFrame, keys: list[str], level: float) -> pd.DataFrame:
    """Mean and t-interval of VALUE per group (descriptive bands of curves)."""
    if df.empty:
        return pd.DataFrame(columns=[*keys, "n", "mean", "sd", "ci_low", "ci_high"])
    df = df.assign(**{VALUE: df[VALUE].astype(float).replace([np.inf, -np.inf], np.nan)})
    out = df.groupby(keys, sort=True)[VALUE].agg(n="count", mean="mean", sd="std").reset_index()
    half = stats.t_half_width(out["sd"].to_numpy(), out["n"].to_numpy(), level)
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    if METRIC in out:  # bands stay inside each metric's range, as the tables' intervals do
        for metric in out[METRIC].dropna().unique():
            if metric in METRICS:
                rows = out[METRIC] == metric
                lo_b, hi_b = get_metric(metric).bounds
                out.loc[rows, "ci_low"] = out.loc[rows, "ci_low"].clip(lower=lo_b, upper=hi_b)
                out.loc[rows, "ci_high"] = out.loc[rows, "ci_high"].clip(lower=lo_b, upper=hi_b)
    return out


def trajectory_tables(settings: list[Setting], level: float
                       ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Curves, task weights (per-epoch means of per-step weights), gradient cosines and pooled
    classification details, each as mean and t-band over the seeds of a cell."""
    curve_rows: list[tuple] = []
    weight_rows, diag_rows, detail_rows = [], [], []
    for s in settings:
        for r in s.records:
            if r.get(STATUS) != "ok":
                continue
            lb, role = r["strategy"], s.roles[r["strategy"]]
            c = r.get("curves") or {}
            if c.get("rows"):
                idx = [c["columns"].index(k) for k in (SPLIT, TASK, METRIC, EPOCH, VALUE)]
                curve_rows += [(s.label, lb, role, row[idx[0]], row[idx[1]], row[idx[2]],
                                row[idx[3]], as_float(row[idx[4]])) for row in c["rows"]]
            w = r.get("weights") or {}
            spe = max(int(w.get("steps_per_epoch") or 1), 1)
            if w.get("values") and role != SINGLE_TASK:
                arr = np.asarray(w["values"], dtype=float)
                epochs = np.arange(len(arr)) // spe + 1
                for e in np.unique(epochs):
                    per_task = arr[epochs == e].mean(axis=0)
                    weight_rows += [(s.label, lb, role, task, int(e), float(v))
                                    for task, v in zip(w["tasks"], per_task)]
            names = w.get("tasks") or [t["name"] for t in r.get("tasks", [])]
            for d in r.get("diagnostics") or []:
                for i, j, v in d.get("cos", []):
                    diag_rows.append((s.label, lb, role, names[i], names[j],
                                      d.get("source", ""), int(d["step"]),
                                      d["step"] / spe, float(v)))
            for task, det in (r.get("details") or {}).items():
                for i, row in enumerate(det.get("confusion") or []):
                    for j, count in enumerate(row):
                        detail_rows.append((s.label, lb, role, task, "confusion", i, j,
                                            float(count), math.nan, math.nan))
                for b, (count, conf, acc) in enumerate(det.get("reliability") or []):
                    detail_rows.append((s.label, lb, role, task, "reliability", b, 0,
                                        float(count or 0), conf, acc))

    keys = [SETTING, STRATEGY, ROLE, SPLIT, TASK, METRIC, EPOCH]
    curves = _band(pd.DataFrame(curve_rows, columns=[*keys, VALUE]), keys, level)
    wdf = pd.DataFrame(weight_rows, columns=[SETTING, STRATEGY, ROLE, TASK, EPOCH, VALUE])
    weights = _band(wdf, [SETTING, STRATEGY, ROLE, TASK, EPOCH], level)
    ddf = pd.DataFrame(diag_rows, columns=[SETTING, STRATEGY, ROLE, "task_a", "task_b",
                                           "source", STEP, EPOCH, VALUE])
    diagnostics = _band(ddf, [SETTING, STRATEGY, ROLE, "task_a", "task_b", STEP], level)
    if not ddf.empty:
        extra = ddf.groupby([SETTING, STRATEGY, STEP]).agg(
            epoch=(EPOCH, "first"), source=("source", lambda x: ",".join(sorted(set(x)))))
        diagnostics = diagnostics.merge(extra.reset_index(), on=[SETTING, STRATEGY, STEP])
    else:
        diagnostics = diagnostics.assign(epoch=[], source=[])
    det = pd.DataFrame(detail_rows, columns=[SETTING, STRATEGY, ROLE, TASK, "kind", "row", "col",
                                             "count", "mean_conf", "accuracy"])
    details = _pool_details(det)
    return curves, weights, diagnostics, details


def _pool_details(det: pd.DataFrame) -> pd.DataFrame:
    """Sum confusion counts over seeds; reliability bins pooled with count-weighted means."""
    cols = [SETTING, STRATEGY, ROLE, TASK, "kind", "row", "col", "count", "mean_conf",
            "accuracy", "n_runs"]
    if det.empty:
        return pd.DataFrame(columns=cols)
    det = det.copy()
    det["conf_x"] = det["mean_conf"].astype(float).fillna(0) * det["count"]
    det["acc_x"] = det["accuracy"].astype(float).fillna(0) * det["count"]
    keys = [SETTING, STRATEGY, ROLE, TASK, "kind", "row", "col"]
    out = det.groupby(keys, sort=True).agg(count=("count", "sum"), conf_x=("conf_x", "sum"),
                                           acc_x=("acc_x", "sum"),
                                           n_runs=("count", "size")).reset_index()
    rel = out["kind"] == "reliability"
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean_conf"] = np.where(rel & (out["count"] > 0), out["conf_x"] / out["count"],
                                    np.nan)
        out["accuracy"] = np.where(rel & (out["count"] > 0), out["acc_x"] / out["count"], np.nan)
    return out[cols]


