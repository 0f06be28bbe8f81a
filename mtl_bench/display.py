"""Tables -> what people read: the terminal table of ``run``, Markdown tables and their notes.

Numbers are computed in :mod:`mtl_bench.aggregate`; this module only formats them, so that a
sentence or a bold cell can never disagree with the table it describes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtl_bench import stats
from mtl_bench.aggregate import (
    DELTA_M,
    FRONT,
    MARKDOWN_FILE,
    RANKED_ROLES,
    REFERENCE,
    ROLE,
    ROLE_ORDER,
    SETTING,
    SINGLE_TASK,
    Tables,
    prepare,
)
from mtl_bench.store import (
    METRIC,
    REASON,
    SEED,
    STATUS,
    STRATEGY,
    TASK,
    atomic_write_text,
)
from mtl_bench.tuning import point_text


# -- the terminal table printed at the end of ``run`` -----------------------------------------
def terminal_table(records: list[dict[str, Any]], tuned: Sequence[str] = ()) -> str:
    """Compact comparison printed at the end of ``run``, one table per setting (the grouping
    of ``aggregate``: other settings and code versions are never mixed, lr grids show their
    chosen point).

    Per strategy: runs ok/total, mean ± sd over seeds (labelled) of each task's primary metric
    on the test split at the selected epoch, the mean selected epoch, and the sweep's own
    samples/s (wall time under the sweep's concurrency: shown, never ranked; see
    ``mtl-bench speed`` for speed claims).
    """
    lines: list[str] = []
    for s in prepare(records, tuned):
        rows = []
        for lb in s.labels():
            rs = [r for r in s.records if r["strategy"] == lb]
            ok = [r for r in rs if r.get(STATUS) == "ok"]
            row: dict[str, Any] = {"strategy": lb, "runs": f"{len(ok)}/{len(rs)}"}
            for task, metric in s.summary_metrics:
                vals = [float(v) for r in ok for (_, split, t, m, v) in r.get("summary") or []
                        if split == "test" and t == task and m == metric]
                row[f"{task} {metric}"] = _mean_sd(pd.Series(vals, dtype=float))
            epochs = [r.get("selected_epoch") for r in ok if r.get("selected_epoch") is not None]
            row["epoch"] = f"{np.mean(epochs):.1f}" if epochs else "-"
            sps = [r["throughput"]["samples_per_s"] for r in ok
                   if (r.get("throughput") or {}).get("samples_per_s")]
            row["samples/s (sweep)"] = f"{np.exp(np.mean(np.log(sps))):,.0f}" if sps else "-"
            rows.append(row)
        rule = s.fields.get("select", "")
        lines.append(f"\n{s.label}  (test split, mean ± sd over seeds, epoch selected on "
                     f"validation by rule '{rule}')")
        lines.append(pd.DataFrame(rows).to_string(index=False))
        for ch in s.choices:
            edge = f" (at the edge of the grid: {', '.join(ch.at_edge)})" if ch.at_edge else ""
            name = ch.cell + (f" [{ch.single_task}]" if ch.single_task else "")
            lines.append(f"  tuned {name}: {point_text(ch.chosen.point)} chosen from "
                         f"{len(ch.candidates)} grid points on validation{edge}")
        for r in s.records:
            if r.get(STATUS) != "ok":
                lines.append(f"  failed: {r['strategy']} seed {r['seed']}: "
                             f"{r.get(REASON, '')}")
    lines.append("\nsamples/s (sweep): wall time of runs sharing the machine; not a speed "
                 "comparison (use `mtl-bench speed`).")
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


# -- presentation (shared by tables.md and the report) -----------------------------------------
def fmt_number(x: float, half: float = math.nan) -> str:
    """Decimals follow the uncertainty: two significant digits of the CI half-width; without
    one, three significant digits of the value."""
    if x is None or not np.isfinite(x):
        return "-"
    if half is not None and np.isfinite(half) and half > 1e-9 * max(1.0, abs(x)):
        decimals = int(min(6, max(0, 1 - math.floor(math.log10(half)))))
        return f"{x:,.{decimals}f}"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{x:,.0f}"
    decimals = int(min(6, max(0, 2 - math.floor(math.log10(a)))))
    return f"{x:.{decimals}f}"


def fmt_ci(mean: float, low: float, high: float, method: str = "t") -> str:
    """``0.952 ± 0.012`` (t) or ``0.952 [0.941, 0.960]`` (bootstrap); the mean alone if n < 2."""
    if mean is None or not np.isfinite(mean):
        return "-"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return fmt_number(mean)
    half = (high - low) / 2
    if half <= 1e-9 * max(1.0, abs(mean)):  # no spread over seeds (up to rounding)
        return f"{fmt_number(mean)} ± 0"
    symmetric = abs((mean - low) - (high - mean)) <= 0.05 * max(high - low, 1e-300)
    if method == "t" and symmetric:
        return f"{fmt_number(mean, half)} ± {fmt_number(half, half)}"
    return f"{fmt_number(mean, half)} [{fmt_number(low, half)}, {fmt_number(high, half)}]"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def arrow(higher_is_better: bool | None) -> str:
    return "" if higher_is_better is None else ("↑" if higher_is_better else "↓")


@dataclass
class Display:
    """A table ready to render: text cells and which cells to set in bold."""

    title: str
    text: pd.DataFrame
    bold: pd.DataFrame
    note: str = ""


def _runs_text(n_runs: int, n_failed: int) -> str:
    ok = n_runs - n_failed
    return f"{ok}/{n_runs}" + (f" ({n_failed} failed)" if n_failed else "")


def summary_columns(tables: Tables, label: str) -> list[tuple[str, str]]:
    """The (task, metric) columns that drive Δm%, ranks and "best" in a setting."""
    meta = tables.setting(label)
    summ = tables["summary"]
    if "in_summary" in summ:
        here = summ[(summ[SETTING] == label) & summ["in_summary"].astype(bool)]
        pairs = list(dict.fromkeys(zip(here[TASK], here[METRIC])))
        if pairs:
            return pairs
    return [(t, m) for t, m in (meta.get("primary") or {}).items()]


def _metrics_sentence(cols: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{t} {m}" for t, m in cols)


def leaderboard_display(tables: Tables, label: str) -> Display:
    """The headline: primary (summary) metrics, Δm% and mean rank only."""
    d = comparison_display(tables, label, summary_columns(tables, label))
    d.title = f"Leaderboard: {label}"
    return d


def comparison_display(tables: Tables, label: str,
                       columns: Sequence[tuple[str, str]] | None = None) -> Display:
    """Strategies x test metrics (mean and CI, n per cell), Δm% and mean rank for one setting;
    ``columns`` limits the metric columns (default: every metric of every task)."""
    meta = tables.setting(label)
    method = tables.meta["ci"]["method"]
    summ = tables["summary"][tables["summary"][SETTING] == label]
    dm = tables["delta_m"][tables["delta_m"][SETTING] == label]
    rk = tables["ranks"][tables["ranks"][SETTING] == label]
    sig = tables["significance"][tables["significance"][SETTING] == label]
    cols = list(columns) if columns is not None else [
        (t["name"], m) for t in meta["tasks"] for m in t["metrics"]]
    order = sorted(meta["strategies"], key=lambda lb: (
        ROLE_ORDER[meta["roles"][lb]], _rank_of(rk, lb), meta["front_weights"].get(lb, 0), lb))
    text_rows, bold_rows = [], []
    for lb in order:
        role = meta["roles"][lb]
        cells = summ[summ[STRATEGY] == lb]
        name = lb + {REFERENCE: " (reference)", FRONT: " (front)"}.get(role, "")
        runs = _runs_of(tables, label, lb)
        trow = {"strategy": name, "runs": _runs_text(*runs),
                "epoch": _selected_epoch(tables, label, lb)}
        brow = {"strategy": False, "runs": False, "epoch": False}
        n_ok = runs[0] - runs[1] if role != SINGLE_TASK else None
        for task, metric in cols:
            key = f"{task} {metric} {arrow(meta['directions'].get(metric))}".strip()
            c = cells[(cells[TASK] == task) & (cells[METRIC] == metric)]
            if c.empty or c["n_runs"].iloc[0] == 0:
                trow[key], brow[key] = "", False
                continue
            c = c.iloc[0]
            txt = fmt_ci(c["mean"], c["ci_low"], c["ci_high"], method)
            expected = n_ok if n_ok is not None else c["n_runs"] - c["n_failed"]
            if c["n"] != expected:
                txt += f" (n={int(c['n'])})"
            s = sig[(sig[STRATEGY] == lb) & (sig[TASK] == task) & (sig[METRIC] == metric)]
            if not s.empty and bool(s["significant"].iloc[0]):
                txt += " †"
            trow[key], brow[key] = txt, bool(c["best"])
        if not dm.empty:
            d = dm[dm[STRATEGY] == lb]
            if d.empty:
                trow["Δm% ↓"] = ""
            else:
                d = d.iloc[0]
                txt = fmt_ci(d["mean"], d["ci_low"], d["ci_high"], method)
                s = sig[(sig[STRATEGY] == lb) & (sig[METRIC] == DELTA_M)]
                if not s.empty and bool(s["significant"].iloc[0]):
                    txt += " †"
                trow["Δm% ↓"] = txt + (f" (n={int(d['n'])})" if d["n"] != n_ok else "")
            brow["Δm% ↓"] = False
        r = rk[rk[STRATEGY] == lb]
        trow["mean rank ↓"] = fmt_number(r["mean_rank"].iloc[0]) if not r.empty else ""
        brow["mean rank ↓"] = False
        text_rows.append(trow)
        bold_rows.append(brow)
    text = pd.DataFrame(text_rows)
    bold = pd.DataFrame(bold_rows).astype(bool)
    ranked = [meta["roles"][lb] in RANKED_ROLES for lb in order]
    for col in ("Δm% ↓", "mean rank ↓"):
        if col not in text:
            continue
        src = dm if col.startswith("Δ") else rk
        vcol = "mean" if col.startswith("Δ") else "mean_rank"

        def pick(lb: str, ok: bool, field: str, src=src) -> float:
            if not ok or not (src[STRATEGY] == lb).any() or field not in src:
                return math.nan
            return float(src.loc[src[STRATEGY] == lb, field].iloc[0])

        vals = [pick(lb, ok, vcol) for lb, ok in zip(order, ranked)]
        lows = [pick(lb, ok, "ci_low") for lb, ok in zip(order, ranked)]
        highs = [pick(lb, ok, "ci_high") for lb, ok in zip(order, ranked)]
        # ties are ties: bold only a unique best, clear of the runner-up's value
        bold[col] = list(stats.unique_best(vals, lows, highs, False))
        if col == "mean rank ↓":  # ranks of means have no interval: see mean_rank_top
            best = mean_rank_top(tables, label)[0]
            bold[col] = [b and lb == best for b, lb in zip(bold[col], order)]
    level = int(round(tables.meta["ci"]["level"] * 100))
    interval = "t-interval" if method == "t" else "percentile bootstrap"
    rule = (meta.get("fields") or {}).get("select", "?")
    note = (f"Test split at the epoch selected on validation (rule '{rule}'; column epoch: "
            "its mean over seeds); mean ± half-width "
            f"of the {level}% CI over seeds ({interval}), or mean [low, high] where the interval "
            "is asymmetric (cut at a bound the metric cannot cross, e.g. 1 for accuracy); bold: a "
            "single best among ranked strategies, clear of the runner-up (none on a tie); "
            f"Δm% and mean rank use {_metrics_sentence(summary_columns(tables, label))}")
    note += (f"; † differs from {meta['reference']} at Holm-adjusted p < "
             f"{tables.meta['alpha']:g} (paired over seeds)." if meta["reference"] else ".")
    return Display(f"Test metrics: {label}", text, bold, note)


def mean_rank_top(tables: Tables, label: str) -> tuple[str | None, list[str], list[str]]:
    """Who has the best mean rank: (the single best or None, the ranked strategies with the
    lowest mean rank, the other ranked strategies whose higher mean rank rests on differences
    inside the intervals).

    A mean rank is a rank of means and has no interval of its own, so a difference inside an
    interval still moves it. A leader is clear of another strategy when, over the summary
    metrics, it is ahead with the other's mean outside its own interval more often than the
    other is ahead with the leader's mean outside the other's interval (each comparison by
    :func:`mtl_bench.stats.unique_best` of the two). The best mean rank is a single strategy's
    only when it alone has the lowest mean rank and is clear of every other ranked strategy."""
    rk = tables["ranks"][tables["ranks"][SETTING] == label].dropna(subset=["mean_rank"])
    if rk.empty:
        return None, [], []
    top = float(rk["mean_rank"].min())
    leaders = sorted(rk.loc[rk["mean_rank"] == top, STRATEGY])
    summ = tables["summary"][tables["summary"][SETTING] == label]
    cells = {(r[STRATEGY], r[TASK], r[METRIC]): r for _, r in summ.iterrows()}
    directions = tables.setting(label)["directions"]

    def clear_of(a: str, b: str) -> bool:
        wins = losses = 0
        for task, metric in summary_columns(tables, label):
            ca, cb = cells.get((a, task, metric)), cells.get((b, task, metric))
            if ca is None or cb is None or directions.get(metric) is None:
                continue
            won = stats.unique_best([ca["mean"], cb["mean"]], [ca["ci_low"], cb["ci_low"]],
                                    [ca["ci_high"], cb["ci_high"]], bool(directions[metric]))
            wins, losses = wins + bool(won[0]), losses + bool(won[1])
        return wins > losses

    close = [lb for lb in sorted(rk[STRATEGY]) if lb not in leaders
             and not any(clear_of(ld, lb) for ld in leaders)]
    best = leaders[0] if len(leaders) == 1 and not close else None
    return best, leaders, close


def _selected_epoch(tables: Tables, label: str, lb: str) -> str:
    """Mean epoch the cell's ok runs selected on validation."""
    runs = tables["runs"]
    if "selected_epoch" not in runs:
        return ""
    rs = runs[(runs[SETTING] == label) & (runs[STRATEGY] == lb) & (runs[STATUS] == "ok")]
    epochs = pd.to_numeric(rs["selected_epoch"], errors="coerce").dropna()
    return f"{epochs.mean():.1f}" if len(epochs) else ""


def _rank_of(ranks: pd.DataFrame, lb: str) -> float:
    r = ranks.loc[ranks[STRATEGY] == lb, "mean_rank"]
    return float(r.iloc[0]) if len(r) and np.isfinite(r.iloc[0]) else math.inf


def _runs_of(tables: Tables, label: str, lb: str) -> tuple[int, int]:
    runs = tables["runs"]
    rs = runs[(runs[SETTING] == label) & (runs[STRATEGY] == lb)]
    return len(rs), int((rs[STATUS] != "ok").sum())


def significance_display(tables: Tables, label: str, include_front: bool = False
                         ) -> Display | None:
    """Per strategy: test used, n pairs, and mean difference with p per metric (and Δm%)."""
    meta = tables.setting(label)
    sig = tables["significance"][tables["significance"][SETTING] == label]
    if not include_front:
        sig = sig[sig[ROLE] != FRONT]
    if sig.empty:
        return None
    cols = summary_columns(tables, label)  # the family the tests (and Holm) run over
    if (sig[METRIC] == DELTA_M).any():
        cols.append(("", DELTA_M))
    text_rows, bold_rows = [], []
    for lb in [s for s in meta["strategies"] if s in set(sig[STRATEGY])]:
        rows = sig[sig[STRATEGY] == lb]
        tests = sorted({t for t in rows["test"] if isinstance(t, str) and t})
        trow = {"strategy": lb, "test": ", ".join(tests) or "-",
                "n": str(int(rows["n"].max())) if len(rows) else "0"}
        brow = dict.fromkeys(trow, False)
        for task, metric in cols:
            key = "Δm%" if metric == DELTA_M else f"{task} {metric}"
            r = rows[(rows[TASK].fillna("") == task) & (rows[METRIC] == metric)]
            if r.empty or not r["n"].iloc[0]:
                trow[key], brow[key] = "-", False
                continue
            r = r.iloc[0]
            holm = r["p_holm"] if "p_holm" in r and pd.notna(r["p_holm"]) else r["p"]
            trow[key] = f"{r['mean_diff']:+.3g}, p={fmt_p(r['p'])}, Holm p={fmt_p(holm)}"
            brow[key] = bool(r["significant"])
        text_rows.append(trow)
        bold_rows.append(brow)
    ref = meta["reference"]
    alpha = tables.meta["alpha"]
    note = (f"Difference to {ref} (strategy minus {ref}, paired by seed), two-sided p and the "
            f"Holm-adjusted p across the strategies compared with {ref} on that metric; bold: "
            f"Holm p < {alpha:g}. {stats.WILCOXON} test with >= {stats.WILCOXON_MIN_N} pairs, "
            f"else the {stats.SIGN_FLIP} test (with n pairs no p below 2/2^n is possible). "
            f"Metrics: {_metrics_sentence(summary_columns(tables, label))} (the summary "
            "metrics) and Δm%.")
    return Display(f"Paired tests against {ref}: {label}", pd.DataFrame(text_rows),
                   pd.DataFrame(bold_rows).astype(bool), note)


def throughput_display(tables: Tables, label: str) -> Display | None:
    """The sweep's own timers: wall time of runs that shared the machine. Shown, never ranked
    (no bold, no "faster"): speed claims come from :func:`speed_display`."""
    tp = tables["throughput"][tables["throughput"][SETTING] == label]
    tp = tp[tp[ROLE].isin(RANKED_ROLES) & (tp["n"] > 0)]
    if tp.empty:  # no timed runs (all failed, or records without throughput)
        return None
    text_rows = []
    for _, r in tp.iterrows():
        text_rows.append({
            "strategy": r[STRATEGY], "n": str(int(r["n"])),
            "samples/s (geometric mean [95% CI])": fmt_ci(
                r["samples_per_s"], r["samples_per_s_low"], r["samples_per_s_high"],
                "bootstrap"),
            "forward ms": fmt_number(r["forward_ms"]), "strategy ms": fmt_number(r["strategy_ms"]),
            "backward ms": fmt_number(r["backward_ms"]),
            "optimizer ms": fmt_number(r["optimizer_ms"]), "step ms": fmt_number(r["step_ms"]),
            "peak memory MB": fmt_number(r["peak_memory_mb"])})
    text = pd.DataFrame(text_rows)
    devices = ", ".join(sorted({d for d in tp["device"] if isinstance(d, str) and d}))
    note = (f"Wall time measured inside the sweep on {devices or 'unknown device'}, while other "
            "runs shared the machine: descriptive only, not ranked and not a speed comparison "
            "(`mtl-bench speed` measures that). Peak memory is the process's peak resident set "
            "on CPU, allocated device memory on CUDA.")
    return Display(f"Sweep timers: {label}", text,
                   pd.DataFrame(False, index=text.index, columns=text.columns), note)


def speed_display(tables: Tables, label: str) -> Display | None:
    """Step time as a ratio to fixed weights from the speed stage (interleaved rounds in one
    process), with its log-scale interval and the verdict that interval supports."""
    sp = tables.frames.get("speed")
    if sp is None or sp.empty or SETTING not in sp:
        return None
    sp = sp[sp[SETTING] == label]
    if sp.empty:
        return None
    rows = []
    for _, r in sp.iterrows():
        where = f"{r.get('device', '')}, {r.get('threads', '')} thread(s)" \
            if "device" in sp else ""
        rows.append({"strategy": r[STRATEGY],
                     "step ms": fmt_number(_num(r.get("step_ms"))),
                     "samples/s [95% CI]": fmt_ci(_num(r.get("samples_per_s")),
                                                  _num(r.get("samples_per_s_low")),
                                                  _num(r.get("samples_per_s_high")), "bootstrap"),
                     "step time / fixed [95% CI]": _ratio_text(r),
                     "verdict": str(r.get("verdict") or "-"), "measured on": where})
    text = pd.DataFrame(rows)
    rounds = sp["n_rounds"].dropna() if "n_rounds" in sp else pd.Series(dtype=float)
    n = f"{int(rounds.min())}" if len(rounds) else "several"
    note = (f"From `mtl-bench speed`: each strategy's training step on this pair's model and "
            f"batch, timed in {n} interleaved rounds in one process; the ratio is the geometric "
            "mean of per-round ratios to fixed weights with a 95% interval on the log scale. "
            "A strategy is called faster or slower only when that interval excludes 1.")
    return Display(f"Speed (step time relative to fixed weights): {label}", text,
                   pd.DataFrame(False, index=text.index, columns=text.columns), note)


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _ratio_text(r: pd.Series) -> str:
    ratio, low, high = _num(r.get("ratio")), _num(r.get("ratio_low")), _num(r.get("ratio_high"))
    if not np.isfinite(ratio):
        return "-"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{ratio:.2f}×"
    return f"{ratio:.2f}× [{low:.2f}, {high:.2f}]"


def tuning_display(tables: Tables, label: str) -> Display | None:
    """The grid of each tuned cell: validation score per point, the chosen one, edge flags."""
    tu = tables.frames.get("tuning")
    if tu is None or tu.empty:
        return None
    tu = tu[tu[SETTING] == label]
    if tu.empty:
        return None
    rows = []
    # read back from CSV, a column with no single-task run is all-NaN float64
    single_task = tu["single_task"].astype(object).fillna("")
    for (lb, single), g in tu.groupby([STRATEGY, single_task], sort=False):
        chosen = g[g["chosen"].astype(bool)]
        grid = "; ".join(f"{p}: " + ("failed seed(s)" if int(f) else fmt_number(v))
                         for p, v, f in zip(g["point"], g["val_score"], g["n_failed"]))
        edge = str(chosen["at_edge"].iloc[0]) if len(chosen) else ""
        rows.append({"strategy": lb + (f" [{single}]" if single else ""),
                     "chosen": str(chosen["point"].iloc[0]) if len(chosen) else "-",
                     "validation score per grid point": grid,
                     "at the edge of the grid": edge if edge and edge != "nan" else ""})
    text = pd.DataFrame(rows)
    note = ("Grid points selected on validation only: the mean over seeds of each run's "
            "selection score (the rule that picked its epoch; higher is better); every other "
            "table reports the chosen point. A choice at the edge of the grid may lie beyond "
            "it: widen the grid.")
    return Display(f"Tuning: {label}", text,
                   pd.DataFrame(False, index=text.index, columns=text.columns), note)


def cross_pair_display(tables: Tables) -> Display | None:
    cross = tables["cross_pair"]
    if cross.empty or len(tables.meta["settings"]) < 2:
        return None
    rows, bold = [], []
    for _, r in cross.iterrows():
        rows.append({"strategy": r[STRATEGY], "settings": str(int(r["n_settings"])),
                     "mean of mean ranks ↓": fmt_number(r["mean_rank"]),
                     "Friedman rank ↓": fmt_number(r["friedman_rank"])})
        bold.append(dict.fromkeys(rows[-1], False))
    text = pd.DataFrame(rows)
    b = pd.DataFrame(bold).astype(bool)
    for col, src in (("mean of mean ranks ↓", "mean_rank"), ("Friedman rank ↓", "friedman_rank")):
        vals = cross[src].to_numpy(dtype=float)
        if np.isfinite(vals).any():
            b[col] = np.isclose(vals, np.nanmin(vals))
    return Display("Across task pairs and settings", text, b, friedman_sentence(tables))


def friedman_sentence(tables: Tables) -> str:
    f = tables.meta.get("friedman") or {}
    if "statistic" not in f:
        return f"No Friedman test: {f.get('reason', 'not enough data')}."
    text = (f"Friedman test over {f['n_blocks']} settings and {f['k']} strategies: "
            f"χ² = {f['statistic']:.2f}, p = {fmt_p(f['p'])}. Nemenyi critical difference at "
            f"α = {f['alpha']:g}: CD = {f['cd']:.2f} (q = {f['q_alpha']:.3f}).")
    if f.get("excluded"):
        text += " Not ranked in every setting, left out: " + ", ".join(f["excluded"]) + "."
    return text


def failed_display(tables: Tables) -> Display | None:
    runs = tables["runs"]
    failed = runs[runs[STATUS] != "ok"]
    if failed.empty:
        return None
    rows = [{"setting": r[SETTING], "strategy": r[STRATEGY], "seed": str(r[SEED]),
             "epoch": "" if pd.isna(r["failed_epoch"]) else str(int(r["failed_epoch"])),
             "reason": str(r[REASON])[:160]} for _, r in failed.iterrows()]
    text = pd.DataFrame(rows)
    return Display("Failed runs", text, pd.DataFrame(False, index=text.index,
                                                     columns=text.columns),
                   "Failed runs are counted in every table (column runs) and never averaged.")


def markdown_table(display: Display) -> str:
    """GitHub-flavoured Markdown table; bold cells as ``**x**``; pipes escaped."""
    text, bold = display.text, display.bold
    if text.empty:
        return ""

    def cell(value: Any, strong: bool) -> str:
        s = str(value).replace("|", "\\|").replace("\n", " ")
        return f"**{s}**" if strong and s not in ("", "-") else s

    header = "| " + " | ".join(str(c) for c in text.columns) + " |"
    rule = "| " + " | ".join("---" for _ in text.columns) + " |"
    lines = [header, rule]
    for i in range(len(text)):
        lines.append("| " + " | ".join(cell(text.iat[i, j], bool(bold.iat[i, j]))
                                       for j in range(text.shape[1])) + " |")
    return "\n".join(lines)


def setting_displays(tables: Tables, label: str) -> list[Display]:
    """Leaderboard first, then every metric, tuning, tests, speed, the sweep's timers."""
    full = comparison_display(tables, label)
    full.title = f"All test metrics: {label}"
    out = [leaderboard_display(tables, label), full]
    for d in (tuning_display(tables, label), significance_display(tables, label),
              speed_display(tables, label), throughput_display(tables, label)):
        if d is not None:
            out.append(d)
    return out


def markdown_tables(tables: Tables) -> str:
    """Every table in Markdown (what ``aggregate`` writes to ``tables.md``)."""
    parts = ["# Aggregated tables", ""]
    m = tables.meta
    parts.append(f"{m['n_records']} run records ({m['n_ok']} ok, {m['n_failed']} failed"
                 + (f", {len(m['corrupt'])} corrupt files skipped" if m["corrupt"] else "")
                 + ").")
    for s in m["settings"]:
        parts += ["", f"## {s['label']}", ""]
        for note in s["notes"]:
            parts.append(f"- {note}")
        for d in setting_displays(tables, s["label"]):
            parts += ["", f"### {d.title}", "", markdown_table(d), "", d.note]
    for d in (cross_pair_display(tables), failed_display(tables)):
        if d is not None:
            parts += ["", f"## {d.title}", "", markdown_table(d), "", d.note]
    if len(m["settings"]) < 2:
        parts += ["", friedman_sentence(tables)]
    return "\n".join(parts) + "\n"


def write_tables(tables: Tables, folder: str | Path) -> list[Path]:
    """Every table file (CSV, ``meta.json``) plus ``tables.md``, each written atomically."""
    written = tables.write(folder)
    path = Path(folder) / MARKDOWN_FILE
    atomic_write_text(path, markdown_tables(tables))
    return [*written, path]
