"""The "What this shows" sentences of the report, each computed from the table beside it.

Rules every sentence keeps (tests plant a case that would make a careless sentence false):
* ties are ties: a strategy is called best only when it is the single best and the runner-up's
  value lies outside its interval (:func:`mtl_bench.stats.unique_best`); otherwise the sentence
  names every strategy that shares the top; a mean rank (a rank of means, with no interval of
  its own) is best only when its lead does not rest on differences inside the intervals
  (:func:`mtl_bench.display.mean_rank_top`, which also decides the bold);
* summaries speak of the summary metrics (each task's primary metric unless ``--metrics`` chose
  others) and say which those are; a non-primary metric that would swing Delta_m% is named;
* a difference is called significant only after the Holm correction;
* speed is called faster or slower only when the speed stage's interval excludes 1; the sweep's
  own timers are never ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mtl_bench import stats
from mtl_bench.aggregate import DELTA_M, METHOD, RANKED_ROLES, SETTING, Tables
from mtl_bench.display import fmt_ci, fmt_number, fmt_p, mean_rank_top, summary_columns
from mtl_bench.speed import IS_REFERENCE
from mtl_bench.store import METRIC, SPLIT, STRATEGY, TASK

#: A non-primary metric is named beside Delta_m% when its term is at least this many points
#: and larger in size than the whole Delta_m%.
SWING_POINTS = 5.0


def names(items: Sequence[str]) -> str:
    items = list(items)
    if not items:
        return "none"
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1]


def _top(labels: Sequence[str], values: Sequence[float], lows: Sequence[float],
         highs: Sequence[float], higher_is_better: bool) -> tuple[str | None, list[str]]:
    """(the unique best label or None, the labels that share the top: equal to the best value
    or inside the best's interval)."""
    vals = np.asarray(values, dtype=float)
    if not np.isfinite(vals).any():
        return None, []
    unique = stats.unique_best(vals, lows, highs, higher_is_better)
    if unique.any():
        return labels[int(np.argmax(unique))], [labels[int(np.argmax(unique))]]
    best_i = int(np.nanargmax(vals) if higher_is_better else np.nanargmin(vals))
    lo, hi = float(np.asarray(lows, dtype=float)[best_i]), float(
        np.asarray(highs, dtype=float)[best_i])
    has_ci = np.isfinite(lo) and np.isfinite(hi)
    shared = [lb for lb, v in zip(labels, vals) if np.isfinite(v) and (
        v == vals[best_i] or (has_ci and lo <= v <= hi))]
    return None, shared


def comparison_line(tables: Tables, s: dict) -> str:
    label, method = s["label"], tables.meta["ci"]["method"]
    cols = summary_columns(tables, label)
    used = ", ".join(f"{t} {m}" for t, m in cols)
    parts = []
    rk = tables["ranks"][tables["ranks"][SETTING] == label].dropna(subset=["mean_rank"])
    if not rk.empty:
        best, leaders, close = mean_rank_top(tables, label)
        top = float(rk["mean_rank"].min())
        n_rank = int(rk["n_strategies"].iloc[0])
        over = f"{top:.2f} over {used}; {n_rank} strategies ranked"
        if best is not None:
            parts.append(f"{best} has the best mean rank ({over})")
        elif not close:
            parts.append(f"{names(leaders)} share the best mean rank ({over})")
        else:
            parts.append(f"no single strategy has the best mean rank: {names(leaders)} "
                         f"{'has' if len(leaders) == 1 else 'share'} the lowest ({over}), but "
                         f"{names(close)} {'trails' if len(close) == 1 else 'trail'} only by "
                         "differences inside the intervals")
    dm = tables["delta_m"][tables["delta_m"][SETTING] == label]
    dm = dm[dm["role"].isin(RANKED_ROLES) & dm["mean"].notna()].sort_values(STRATEGY)
    if not dm.empty:
        best, shared = _top(list(dm[STRATEGY]), list(dm["mean"]), list(dm["ci_low"]),
                            list(dm["ci_high"]), False)
        beats = dm[dm["ci_high"] < 0][STRATEGY].tolist()
        if best is not None:
            row = dm[dm[STRATEGY] == best].iloc[0]
            value = fmt_ci(row["mean"], row["ci_low"], row["ci_high"], method)
            parts.append(f"the lowest Δm% is {best}'s ({value}%), clear of the runner-up")
        else:
            parts.append(f"no single strategy has the lowest Δm%: {names(shared)} lie within "
                         "the interval of the lowest")
        parts.append(f"better than single-task with the whole CI below 0: {names(beats)}")
        swing = _delta_m_swing(tables, label)
        if swing:
            parts.append(swing)
    elif any("Δm%" in n for n in s["notes"]):
        parts.append("Δm% is absent because there are no usable single-task runs")
    if s["n_failed"]:
        parts.append(f"{s['n_failed']} failed run(s) are counted in the runs column, not "
                     "averaged")
    return "; ".join(parts) + "." if parts else "no completed runs."


def _delta_m_swing(tables: Tables, label: str) -> str:
    """Name the largest non-primary term when it alone would outweigh Delta_m%."""
    terms = tables.frames.get("delta_m_terms")
    if terms is None or terms.empty:
        return ""
    dm = tables["delta_m"][tables["delta_m"][SETTING] == label].set_index(STRATEGY)["mean"]
    t = terms[(terms[SETTING] == label) & ~terms["in_delta_m"].astype(bool)
              & terms["term"].notna()]
    worst = None
    for _, r in t.iterrows():
        total = abs(float(dm.get(r[STRATEGY], math.nan)))
        if abs(r["term"]) >= SWING_POINTS and not abs(r["term"]) <= total:
            if worst is None or abs(r["term"]) > abs(worst["term"]):
                worst = r
    if worst is None:
        return ""
    used = ", ".join(f"{t} {m}" for t, m in summary_columns(tables, label))
    return (f"Δm% counts {used} only; {worst[TASK]} {worst[METRIC]} alone would move "
            f"{worst[STRATEGY]}'s by {worst['term']:+.1f} points (see the table delta_m_terms)")


def significance_line(tables: Tables, s: dict) -> str:
    sig = tables["significance"][tables["significance"][SETTING] == s["label"]]
    sig = sig[sig["role"] == METHOD]
    ref, alpha = s["reference"], tables.meta["alpha"]
    hits = sig[sig["significant"].astype(bool)]
    if hits.empty:
        text = (f"no strategy differs from {ref} at Holm-adjusted p < {alpha:g} on any "
                "summary metric")
    else:
        items = [f"{r[STRATEGY]} on {'Δm%' if r[METRIC] == DELTA_M else r[TASK] + ' ' + r[METRIC]}"
                 f" ({'better' if r['better'] else 'worse'}, Holm p = {fmt_p(r['p_holm'])}, "
                 f"{r['test']})" for _, r in hits.iterrows()]
        text = f"differs from {ref} at Holm-adjusted p < {alpha:g}: " + "; ".join(items)
    n_max = int(sig["n"].max()) if len(sig) else 0
    if n_max and sig["min_p"].min() >= alpha:
        text += (f". With {n_max} paired seeds no test can reach p < {alpha:g} (smallest "
                 f"possible p = {sig['min_p'].min():.3g}); run at least 6 seeds")
    return text + "."


def speed_line(tables: Tables, s: dict) -> str:
    sp = tables.frames.get("speed")
    sp = sp[sp[SETTING] == s["label"]] if sp is not None and not sp.empty else pd.DataFrame()
    if sp.empty or "ratio" not in sp:
        return "no speed measurement for this setting (run `mtl-bench speed`)."
    sp = sp[sp["ratio"].notna()]
    if "verdict" in sp:  # the reference's own row (ratio 1 by definition) is no comparison
        sp = sp[sp["verdict"] != IS_REFERENCE]
    slower = sp[sp["ratio_low"] > 1]
    faster = sp[sp["ratio_high"] < 1]
    unclear = sp[~sp.index.isin(slower.index) & ~sp.index.isin(faster.index)]

    def listed(df: pd.DataFrame) -> str:
        return names([f"{r[STRATEGY]} ({r['ratio']:.2f}×)" for _, r in
                      df.sort_values("ratio").iterrows()])

    parts = []
    if len(slower):
        parts.append(f"slower than fixed weights, the interval above 1: {listed(slower)}")
    if len(faster):
        parts.append(f"faster, the interval below 1: {listed(faster)}")
    if len(unclear):
        parts.append(f"no clear difference from fixed weights (the interval contains 1): "
                     f"{names(sorted(unclear[STRATEGY]))}")
    return "; ".join(parts) + "."


def tuning_line(tables: Tables, s: dict) -> str:
    tu = tables["tuning"]
    tu = tu[(tu[SETTING] == s["label"]) & tu["chosen"].astype(bool)]
    if tu.empty:
        return "nothing was tuned."
    chosen = []
    for _, r in tu.iterrows():
        single = r["single_task"] if pd.notna(r["single_task"]) and r["single_task"] else ""
        chosen.append(f"{r[STRATEGY]}{f' [{single}]' if single else ''} {r['point']}")
    edge = tu[tu["at_edge"].astype(object).fillna("").astype(str).str.len() > 0]
    text = "chosen on validation: " + "; ".join(chosen)
    if len(edge):
        text += (f". At the edge of its grid (the best value may lie beyond it): "
                 f"{names(list(edge[STRATEGY]))}")
    return text + "."


def curves_line(curves: pd.DataFrame, s: dict, chosen: dict, ranked: Sequence[str],
                selected: dict | None = None) -> str:
    parts = []
    for t in s["tasks"]:
        name, m = t["name"], chosen[t["name"]]
        hib = s["directions"].get(m)
        val = curves[(curves[SPLIT] == "val") & (curves[TASK] == name) & (curves[METRIC] == m)
                     & curves[STRATEGY].isin(ranked)]
        if val.empty or hib is None:
            continue
        last = val[val["epoch"] == val["epoch"].max()].dropna(subset=["mean"])
        if last.empty:
            continue
        last = last.sort_values(STRATEGY)
        best, shared = _top(list(last[STRATEGY]), list(last["mean"]), list(last["ci_low"]),
                            list(last["ci_high"]), bool(hib))
        epoch = int(last["epoch"].iloc[0])
        top = last["mean"].max() if hib else last["mean"].min()
        if best is not None:
            parts.append(f"at the last epoch ({epoch}) {best} has the best validation {name} "
                         f"{m} ({fmt_number(top)})")
        else:
            parts.append(f"at the last epoch ({epoch}) {names(shared)} share the best "
                         f"validation {name} {m} ({fmt_number(top)})")
    if selected:
        means = {lb: float(np.mean(v)) for (lb, _), v in selected.items() if lb in ranked}
        if means:
            parts.append("mean selected epoch: " + ", ".join(
                f"{lb} {v:.1f}" for lb, v in sorted(means.items())))
    return "; ".join(parts) + "." if parts else "no validation curves."


def weights_line(weights: pd.DataFrame, s: dict, ranked: Sequence[str]) -> str:
    tasks = [t["name"] for t in s["tasks"]]
    items = []
    for lb in ranked:
        w = weights[weights[STRATEGY] == lb]
        if w.empty:
            continue
        last = w[w["epoch"] == w["epoch"].max()].set_index(TASK)["mean"]
        items.append(f"{lb} " + "/".join(fmt_number(last.get(t, math.nan)) for t in tasks))
    return (f"final-epoch mean weights ({'/'.join(tasks)}): " + "; ".join(items) + "."
            if items else "no weights recorded.")


def cosine_line(diag: pd.DataFrame, ranked: Sequence[str]) -> str:
    items = []
    for lb in ranked:
        d = diag[diag[STRATEGY] == lb]
        if d.empty:
            continue
        neg = float((d["mean"] < 0).mean())
        items.append(f"{lb} {d['mean'].mean():+.2f} (negative at {neg:.0%} of measurements)")
    return ("mean task-gradient cosine over training: " + "; ".join(items)
            + ". Negative values mean the tasks pull the shared weights in conflicting "
            "directions.") if items else "no diagnostics."


def throughput_line(tp: pd.DataFrame, s: dict) -> str:
    """The sweep's timers: described, never ranked."""
    if tp.empty:
        return "no runs were timed."
    return ("these are wall times of runs that shared the machine during the sweep, so they "
            "differ from run to run for reasons unrelated to the strategies; they are not "
            "compared here (see the speed table, or run `mtl-bench speed`).")


def pareto_line(pts: pd.DataFrame, ta: str, ma: str, tb: str, mb: str) -> str:
    """Which strategies some fixed weighting matches or beats on both tasks (means compared;
    ``dominated_by`` from :func:`mtl_bench.aggregate.pareto_points`)."""
    if not pts["on_front"].any():
        return ("no fixed-weight sweep in this setting (add one with --set fixed.sweep=9), so "
                "there is no front to compare with.")
    others = pts[~pts["on_front"]]
    inside = [r[STRATEGY] for _, r in others.iterrows() if r["dominated_by"]]
    beyond = [r[STRATEGY] for _, r in others.iterrows() if not r["dominated_by"]]
    return (f"comparing means of {ta} {ma} and {tb} {mb}, strategies inside the fixed-weight "
            f"front (some fixed weighting is at least as good on both and better on one): "
            f"{names(inside)}; on or beyond the front: {names(beyond)}.")
