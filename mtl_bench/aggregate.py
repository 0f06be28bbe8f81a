"""Run records -> tidy tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mtl_bench.store import METRIC, SEED, SPLIT, STRATEGY, TASK, TASK_PAIR, VALUE

REFERENCE_STRATEGY = "fixed"


def selected_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Val and test metrics of each ok run at its selected (best-on-validation) epoch."""
    frames = []
    for r in records:
        if r.get("status") != "ok" or not r.get("summary"):
            continue
        df = pd.DataFrame(r["summary"], columns=["epoch", SPLIT, TASK, METRIC, VALUE])
        df[TASK_PAIR] = r["task_pair"]
        df[STRATEGY] = r["strategy"]
        df[SEED] = r["seed"]
        df["architecture"] = r.get("config", {}).get("architecture", "shared")
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def terminal_table(records: list[dict[str, Any]]) -> str:
    """Compact per-task-pair comparison printed at the end of ``run``.

    Per strategy: mean (± sd over seeds) of each task's first metric on the test split at the
    selected epoch, samples/s, and step time relative to fixed weights in the same records.
    """
    sel = selected_frame(records)
    lines: list[str] = []
    by_pair: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_pair.setdefault(r["task_pair"], []).append(r)
    for pair, recs in sorted(by_pair.items()):
        first_metric = {}
        for r in recs:
            for t in r.get("tasks", []):
                first_metric.setdefault(t["name"], t["metrics"][0])
        rows = []
        strategies = sorted({r["strategy"] for r in recs})
        speed: dict[str, list[float]] = {}
        for r in recs:
            sps = r.get("throughput", {}).get("samples_per_s")
            if r.get("status") == "ok" and sps:
                speed.setdefault(r["strategy"], []).append(sps)
        ref = np.mean(speed[REFERENCE_STRATEGY]) if REFERENCE_STRATEGY in speed else None
        for s in strategies:
            rs = [r for r in recs if r["strategy"] == s]
            n_ok = sum(r.get("status") == "ok" for r in rs)
            row: dict[str, Any] = {"strategy": s, "runs": f"{n_ok}/{len(rs)}"}
            for task, metric in first_metric.items():
                if sel.empty:
                    vals = pd.Series(dtype=float)
                else:
                    m = ((sel[TASK_PAIR] == pair) & (sel[STRATEGY] == s) & (sel[SPLIT] == "test")
                         & (sel[TASK] == task) & (sel[METRIC] == metric))
                    vals = sel.loc[m, VALUE]
                row[f"{task} {metric}"] = _mean_sd(vals)
            sp = speed.get(s)
            row["samples/s"] = f"{np.mean(sp):,.0f}" if sp else "-"
            row["speed vs fixed"] = f"{np.mean(sp) / ref:.2f}x" if sp and ref else "-"
            rows.append(row)
        lines.append(f"\n{pair}  (test split, epoch selected on validation)")
        lines.append(pd.DataFrame(rows).to_string(index=False))
        failed = [r for r in recs if r.get("status") != "ok"]
        for r in failed:
            lines.append(f"  failed: {r['strategy']} seed {r['seed']}: {r.get('reason', '')}")
    return "\n".join(lines)


def _mean_sd(values: pd.Series) -> str:
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return "-"
    if len(v) == 1:
        return _fmt(v[0])
    return f"{_fmt(v.mean())} ± {_fmt(v.std(ddof=1))}"


def _fmt(x: float) -> str:
    if x != x:
        return "nan"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"
