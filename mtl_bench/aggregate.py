"""Run records -> tidy tables (the ``aggregate`` stage of DESIGN.md).

Reads only run records (through :mod:`mtl_bench.store`) and produces :class:`Tables`: one CSV per
table plus ``meta.json``, in one folder that the ``report`` stage reads. Records are first
grouped into settings, cells and roles (:mod:`mtl_bench.settings`: what is compared with what,
tuned grids resolved to their chosen points); this module computes the numbers: means and
intervals over seeds that stay inside each metric's range (:func:`mtl_bench.stats.interval_for`),
Delta_m% against same-seed single-task runs, ranks, Holm-adjusted paired tests against the
reference, the sweep's timers, the speed stage's measurements, curves, weights, diagnostics and
the cross-pair Friedman/Nemenyi summary. Formatting lives in :mod:`mtl_bench.display`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtl_bench import stats
from mtl_bench.errors import UserError
from mtl_bench.metrics import METRICS, delta_m, get_metric, is_scored
from mtl_bench.settings import (  # noqa: F401  (names the tables' readers use via aggregate)
    ARCHITECTURE,
    FRONT,
    METHOD,
    RANKED_ROLES,
    REFERENCE,
    REFERENCE_STRATEGY,
    ROLE,
    ROLE_ORDER,
    SETTING,
    SINGLE_TASK,
    Setting,
    config_of,
    group_settings,
    one_setting,
    prepare,
    setting_label,
    slugify,
)
from mtl_bench.store import (
    EPOCH,
    METRIC,
    REASON,
    RUN_ID,
    SEED,
    SPLIT,
    STATUS,
    STRATEGY,
    TASK,
    TASK_PAIR,
    VALUE,
)
from mtl_bench.tables import (  # noqa: F401  (re-exported: the tables' readers import them here)
    MARKDOWN_FILE,
    META_FILE,
    SPEED_COLUMNS,
    TABLE_NAMES,
    Tables,
)
from mtl_bench.trajectories import as_float, trajectory_tables
from mtl_bench.tuning import point_text

DELTA_M = "delta_m"
TEST, VAL, TRAIN = "test", "val", "train"
FRONT_WEIGHT = "front_weight"
#: Task option whose values are alternative loss formulations of one pair (calibration plots).
FORMULATION_OPTION = "formulation"
PHASES = ("forward_ms", "strategy_ms", "backward_ms", "optimizer_ms")



def _cell(values: Sequence[float], ci: str, level: float, metric: str = "") -> dict[str, Any]:
    """Mean and interval over seeds; a metric's interval never leaves the metric's range."""
    if metric in METRICS:
        iv = stats.bounded_interval(values, level, ci, get_metric(metric).bounds)
    else:  # Delta_m% and other derived numbers
        iv = stats.mean_ci(values, level, ci)
    return {"n": iv.n, "mean": iv.mean, "sd": iv.sd, "ci_low": iv.low, "ci_high": iv.high,
            "ci_scale": iv.scale}


def aggregate_records(records: Sequence[dict[str, Any]],
                      corrupt: Sequence[tuple[Any, str]] = (), ci: str = "t",
                      level: float = 0.95, alpha: float = 0.05, tuned: Sequence[str] = (),
                      metrics: Sequence[str] = (), speed: pd.DataFrame | None = None) -> Tables:
    """Every table of the report from run records (see the module docstring for the rules)."""
    stats.check_ci(ci, level)
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1; got {alpha!r}")
    if not records:
        raise UserError("no run records to aggregate" + (
            f" ({len(corrupt)} corrupt file(s), e.g. {corrupt[0][0]}: {corrupt[0][1]})"
            if corrupt else "; run `mtl-bench run` first"))
    settings = prepare(records, tuned, metrics)

    runs = _runs_table(settings)
    _note_solver_failures(settings, runs)
    long = _long_table(settings)
    values = _per_seed(long)
    summary, ranks = _summary_tables(settings, values, ci, level)
    dm, dm_seed = _delta_m_table(settings, values, ci, level)
    dm_terms = _delta_m_terms(settings, values)
    significance = _significance_table(settings, values, dm_seed, alpha)
    throughput = _throughput_table(settings, runs, ci, level)
    curves, weights, diagnostics, details = trajectory_tables(settings, level)
    cross, friedman = _cross_pair(ranks, alpha)

    meta = {
        "ci": {"method": ci, "level": level, "bands": "t",
               "bounded": "t-intervals of bounded metrics are cut at the metric's bounds "
                          "(accuracy-like and ECE at 0 and 1, errors at 0; ci_scale 'clipped'); "
                          "the percentile bootstrap stays in range by itself; samples/s and "
                          "speed ratios: log scale"},
        "alpha": alpha, "correction": "Holm across the strategies compared with the reference",
        "metrics": list(metrics), "tuned": list(tuned),
        "paired_test": {"wilcoxon_min_n": stats.WILCOXON_MIN_N, "small_n": stats.SIGN_FLIP,
                        "large_n": stats.WILCOXON},
        "n_records": len(records), "n_ok": int((runs[STATUS] == "ok").sum()),
        "n_failed": int((runs[STATUS] != "ok").sum()),
        "corrupt": [[str(p), str(why)] for p, why in corrupt],
        "settings": [s.meta() for s in settings], "friedman": friedman,
        "schema": sorted({r.get("schema") for r in records}, key=str),
    }
    frames = {"runs": runs, "long": long, "summary": summary, "delta_m": dm, "ranks": ranks,
              "significance": significance, "throughput": throughput, "curves": curves,
              "weights": weights, "diagnostics": diagnostics, "details": details,
              "cross_pair": cross, "delta_m_terms": dm_terms, "tuning": _tuning_table(settings),
              "speed": _speed_table(settings, speed)}
    return Tables(meta, frames)


def aggregate_dir(runs_dir: str | Path, ci: str = "t", level: float = 0.95,
                  alpha: float = 0.05, metrics: Sequence[str] = (),
                  tuned: Sequence[str] = (), setting: str | None = None) -> Tables:
    """Load every record under ``runs_dir`` (the store's layout), the tuned fields recorded by
    ``run --tune`` (plus ``tuned``) and the speed stage's measurements, and aggregate them."""
    from mtl_bench.speed import load_speed
    from mtl_bench.store import RunStore
    from mtl_bench.tuning import read_spec

    root = Path(runs_dir)
    if not root.is_dir():
        raise UserError(f"runs folder '{root}' does not exist; run `mtl-bench run` first "
                        "(or pass --runs-dir)")
    loaded = RunStore(root).load()
    if not loaded.records:
        raise UserError(f"no run records in '{root}'" + (
            f" ({len(loaded.corrupt)} corrupt file(s), e.g. {loaded.corrupt[0][0]}: "
            f"{loaded.corrupt[0][1]})" if loaded.corrupt else "; run `mtl-bench run` first"))
    tuned = list(dict.fromkeys([*read_spec(root), *tuned]))
    label = one_setting(loaded.records, tuned, setting, RunStore(root)) if setting else None
    tables = aggregate_records(loaded.records, loaded.corrupt, ci, level, alpha, tuned,
                               metrics, load_speed(root))
    tables.meta["runs_dir"] = str(root)
    return tables if label is None else _only(tables, label, alpha)


def _only(tables: Tables, label: str, alpha: float) -> Tables:
    """The tables of one setting, labelled as among all (the label says what sets it apart)."""
    frames = {name: df[df[SETTING] == label].reset_index(drop=True) if SETTING in df else df
              for name, df in tables.frames.items()}
    frames["cross_pair"], friedman = _cross_pair(frames["ranks"], alpha)
    runs = frames["runs"]
    meta = {**tables.meta, "settings": [s for s in tables.meta["settings"]
                                        if s["label"] == label], "friedman": friedman,
            "n_records": len(runs), "n_ok": int((runs[STATUS] == "ok").sum()),
            "n_failed": int((runs[STATUS] != "ok").sum()), "setting": label}
    return Tables(meta, frames)


def _speed_table(settings: list[Setting], speed: pd.DataFrame | None) -> pd.DataFrame:
    """The speed stage's entries under the label of each setting they measured: speed depends
    on the pair, its options, the architecture and the batch size, not on epochs or the code
    of other settings, so one measurement serves every setting that shares those."""
    if speed is None or speed.empty:
        return pd.DataFrame(columns=SPEED_COLUMNS)

    def key(options: Any) -> str:
        if isinstance(options, str):
            try:
                options = json.loads(options)
            except ValueError:
                return options
        return json.dumps(options or {}, sort_keys=True, default=str)

    frames = []
    for s in settings:
        mine = speed[(speed[TASK_PAIR] == s.task_pair)
                     & (speed["options"].map(key) == key(s.options))
                     & (speed[ARCHITECTURE] == s.architecture)]
        batch = s.fields.get("batch_size")
        if batch is not None and "batch_size" in mine:
            mine = mine[pd.to_numeric(mine["batch_size"], errors="coerce") == batch]
        if not mine.empty:
            frames.append(mine.assign(**{SETTING: s.label}))
    if not frames:
        return pd.DataFrame(columns=SPEED_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _tuning_table(settings: list[Setting]) -> pd.DataFrame:
    """Every grid point of every tuned cell: its validation score (mean over seeds), failures,
    whether it was chosen and whether the choice sits at an end of the grid."""
    rows = []
    for s in settings:
        for ch in s.choices:
            for c in ch.candidates:
                rows.append({SETTING: s.label, STRATEGY: ch.cell, "single_task": ch.single_task,
                             "point": point_text(c.point), **{f"grid_{k}": v for k, v in
                                                              c.point.items()},
                             "n": len(c.records), "n_failed": c.n_failed,
                             "val_score": c.score if c.score is not None else math.nan,
                             "chosen": c is ch.chosen,
                             "at_edge": ",".join(ch.at_edge) if c is ch.chosen else ""})
    cols = [SETTING, STRATEGY, "single_task", "point", "n", "n_failed", "val_score", "chosen",
            "at_edge"]
    df = pd.DataFrame(rows)
    return df if not df.empty else pd.DataFrame(columns=cols)


def _runs_table(settings: list[Setting]) -> pd.DataFrame:
    rows = []
    for s in settings:
        for r in s.records:
            cfg = config_of(r)
            prov = r.get("provenance") or {}
            code = r.get("code") or {}
            row = {SETTING: s.label, TASK_PAIR: s.task_pair, ARCHITECTURE: s.architecture,
                   STRATEGY: r["strategy"], ROLE: s.roles.get(r["strategy"], METHOD),
                   "single_task": cfg.get("single_task"), SEED: r["seed"],
                   RUN_ID: r.get(RUN_ID), STATUS: r.get(STATUS), REASON: r.get(REASON, ""),
                   "failed_epoch": r.get("failed_epoch"), "selected_epoch": r.get(
                       "selected_epoch"), "epochs": cfg.get("epochs"), "wall_s": r.get("wall_s"),
                   "device": prov.get("device"), "machine": prov.get("machine"),
                   "threads": prov.get("threads"), "schema": r.get("schema"),
                   "code_strategy": code.get("strategy"), "code_task": code.get("task"),
                   "code_harness": code.get("harness"), "git_commit": prov.get("git_commit"),
                   "solver_failures": sum(r.get("solver_failures") or [])}
            for k, v in (r.get("throughput") or {}).items():
                row[f"tp_{k}"] = v
            rows.append(row)
    df = pd.DataFrame(rows)
    for col in (*PHASES, "step_ms", "steps_per_s", "samples_per_s", "peak_memory_mb"):
        if f"tp_{col}" not in df:  # no run was timed (all failed early): keep the columns
            df[f"tp_{col}"] = math.nan
    return df.sort_values([SETTING, STRATEGY, SEED, RUN_ID], kind="stable").reset_index(drop=True)


def _note_solver_failures(settings: list[Setting], runs: pd.DataFrame) -> None:
    """A strategy whose inner solver did not converge gets a note in its setting (the runs
    table has the count per run, the records per epoch)."""
    failing = runs[runs["solver_failures"] > 0] if "solver_failures" in runs else runs.iloc[0:0]
    for s in settings:
        mine = failing[failing[SETTING] == s.label]
        for lb, rows in mine.groupby(STRATEGY, sort=True):
            n = int(rows["solver_failures"].sum())
            s.notes.append(f"{lb}: its inner solver did not converge {n} time(s) in "
                           f"{len(rows)} run(s) (per epoch in the records, solver_failures)")


def _long_table(settings: list[Setting]) -> pd.DataFrame:
    """Tidy: one row per ok run x split x task x metric at the selected epoch."""
    rows = []
    for s in settings:
        for r in s.records:
            if r.get(STATUS) != "ok" or not r.get("summary"):
                continue
            lb = r["strategy"]
            head = (s.label, lb, s.roles[lb], r["seed"], r.get(RUN_ID))
            for epoch, split, task, metric, value in r["summary"]:
                rows.append((*head, epoch, split, task, metric, as_float(value), s.task_pair,
                             s.architecture, s.directions.get(metric)))
    cols = [SETTING, STRATEGY, ROLE, SEED, RUN_ID, EPOCH, SPLIT, TASK, METRIC, VALUE, TASK_PAIR,
            ARCHITECTURE, "higher_is_better"]
    return pd.DataFrame(rows, columns=cols)


#: (setting, label, task, metric) -> {seed: test value}
SeedValues = dict[tuple[str, str, str, str], dict[int, float]]


def _per_seed(long: pd.DataFrame) -> SeedValues:
    """Test values by seed. Duplicate runs of one seed (the same config run again on another
    device or thread count) count once, as their mean: seeds are the replicates."""
    test = long[(long[SPLIT] == TEST) & long["higher_is_better"].notna()]
    out: SeedValues = {}
    if test.empty:
        return out
    means = test.groupby([SETTING, STRATEGY, TASK, METRIC, SEED], sort=True)[VALUE].mean()
    for (setting, lb, task, metric, seed), v in means.items():
        out.setdefault((setting, lb, task, metric), {})[seed] = float(v)
    return out


def _summary_tables(settings: list[Setting], values: SeedValues, ci: str, level: float
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, rank_rows = [], []
    for s in settings:
        cells: dict[tuple[str, str, str], dict[str, Any]] = {}
        counts: dict[tuple[str, str | None], list[int]] = {}
        for r in s.records:  # runs and failures per label (per task for single-task runs)
            c = counts.setdefault((r["strategy"], config_of(r).get("single_task")), [0, 0])
            c[0] += 1
            c[1] += r.get(STATUS) != "ok"
        for lb in s.labels():
            for task, metric in s.metric_columns():
                n_runs, n_failed = counts.get((lb, None), [0, 0])
                if s.roles[lb] == SINGLE_TASK:
                    n_runs, n_failed = counts.get((lb, task), [0, 0])
                vals = list(values.get((s.label, lb, task, metric), {}).values())
                cell = {SETTING: s.label, STRATEGY: lb, ROLE: s.roles[lb],
                        FRONT_WEIGHT: s.front_weights.get(lb, math.nan), TASK: task,
                        METRIC: metric, "higher_is_better": s.directions.get(metric),
                        "n_runs": n_runs, "n_failed": n_failed,
                        **_cell(vals, ci, level, metric), "rank": math.nan, "best": False,
                        "in_summary": (task, metric) in s.summary_metrics}
                cells[(lb, task, metric)] = cell
                rows.append(cell)
        ranked = s.labels(RANKED_ROLES)
        per_label: dict[str, list[float]] = {lb: [] for lb in ranked}
        for task, metric in s.metric_columns():
            hib = s.directions.get(metric)
            if hib is None or not ranked:
                continue
            col = [cells[(lb, task, metric)] for lb in ranked]
            r = stats.rank_values([c["mean"] for c in col], hib)
            best = stats.unique_best([c["mean"] for c in col], [c["ci_low"] for c in col],
                                     [c["ci_high"] for c in col], hib)
            for lb, c, rank, b in zip(ranked, col, r, best):
                if np.isfinite(rank):
                    c["rank"] = float(rank)
                    c["best"] = bool(b)  # a unique winner only: never among ties
                    if (task, metric) in s.summary_metrics:
                        per_label[lb].append(float(rank))
        mean_ranks = {lb: float(np.mean(v)) if v else math.nan for lb, v in per_label.items()}
        position = stats.rank_values([mean_ranks[lb] for lb in ranked], False)
        for lb, pos in zip(ranked, position):
            rank_rows.append({SETTING: s.label, STRATEGY: lb, ROLE: s.roles[lb],
                              "mean_rank": mean_ranks[lb], "n_metrics": len(per_label[lb]),
                              "n_strategies": len(ranked), "position": pos})
    summary = pd.DataFrame(rows)
    ranks = pd.DataFrame(rank_rows, columns=[SETTING, STRATEGY, ROLE, "mean_rank", "n_metrics",
                                             "n_strategies", "position"])
    return summary, ranks


def _delta_m_table(settings: list[Setting], values: SeedValues, ci: str, level: float
                   ) -> tuple[pd.DataFrame, dict[tuple[str, str], dict[int, float]]]:
    """Delta_m% per seed against the single-task run of the same seed, then mean and CI."""
    rows, by_seed = [], {}
    for s in settings:
        if s.baseline is None:
            continue
        base_setting = s.label if s.baseline == "setting" else s.baseline
        keys = s.summary_metrics
        higher = {f"{t}/{m}": bool(s.directions[m]) for t, m in keys}
        single = {(t, m): values.get((base_setting, SINGLE_TASK, t, m), {}) for t, m in keys}
        mine = []
        for lb in s.labels((REFERENCE, METHOD, FRONT)):
            mtl = {(t, m): values.get((s.label, lb, t, m), {}) for t, m in keys}
            seeds = sorted({seed for d in mtl.values() for seed in d})
            deltas, missing = {}, 0
            for seed in seeds:
                m = {f"{t}/{k}": mtl[(t, k)].get(seed, math.nan) for t, k in keys}
                b = {f"{t}/{k}": single[(t, k)].get(seed, math.nan) for t, k in keys}
                if not (np.isfinite(list(m.values())).all() and np.isfinite(list(b.values())).all()
                        and all(v != 0 for v in b.values())):
                    missing += 1  # no same-seed baseline for every metric (or a zero one)
                    continue
                deltas[seed] = delta_m(m, b, higher)
            by_seed[(s.label, lb)] = deltas
            mine.append({SETTING: s.label, STRATEGY: lb, ROLE: s.roles[lb],
                         **_cell(list(deltas.values()), ci, level),
                         "n_without_baseline": missing})
        if mine and all(r["n"] == 0 for r in mine):
            s.notes.append("Δm% not computed: no seed has both a multi-task run and single-task "
                           "runs of every task with finite, non-zero metrics")
        rows += mine
    cols = [SETTING, STRATEGY, ROLE, "n", "mean", "sd", "ci_low", "ci_high",
            "n_without_baseline"]
    return pd.DataFrame(rows, columns=cols), by_seed


def _delta_m_terms(settings: list[Setting], values: SeedValues) -> pd.DataFrame:
    """What each metric would add to Delta_m%: per strategy and metric the mean over seeds of
    (-1)^higher_is_better (M_mtl - M_single) / M_single * 100, for every metric, with whether
    Delta_m% uses it (a headline driven by ECE or R^2 shows up here)."""
    rows = []
    for s in settings:
        if s.baseline is None:
            continue
        base_setting = s.label if s.baseline == "setting" else s.baseline
        for lb in s.labels((REFERENCE, METHOD, FRONT)):
            for task, metric in s.metric_columns():
                if not is_scored(metric):  # a read-out without a better direction
                    continue
                mine = values.get((s.label, lb, task, metric), {})
                base = values.get((base_setting, SINGLE_TASK, task, metric), {})
                sign = -1.0 if s.directions.get(metric) else 1.0
                terms = [sign * (mine[k] - base[k]) / base[k] * 100 for k in mine
                         if k in base and base[k] != 0 and np.isfinite(mine[k] - base[k])]
                rows.append({SETTING: s.label, STRATEGY: lb, TASK: task, METRIC: metric,
                             "n": len(terms), "term": float(np.mean(terms)) if terms else math.nan,
                             "in_delta_m": (task, metric) in s.summary_metrics})
    return pd.DataFrame(rows, columns=[SETTING, STRATEGY, TASK, METRIC, "n", "term",
                                       "in_delta_m"])


def _significance_table(settings: list[Setting], values: SeedValues,
                        dm_seed: dict[tuple[str, str], dict[int, float]], alpha: float
                        ) -> pd.DataFrame:
    """Each strategy vs the reference, paired by seed, per test metric and for Delta_m%."""
    rows = []
    for s in settings:
        ref = s.reference
        if ref is None:
            if any(r != SINGLE_TASK for r in s.roles.values()):
                s.notes.append("no significance tests: no fixed equal-weight runs (reference)")
            continue
        for lb in s.labels((METHOD, FRONT)):
            pairs = [(task, metric, bool(s.directions[metric]),
                      values.get((s.label, lb, task, metric), {}),
                      values.get((s.label, ref, task, metric), {}))
                     for task, metric in s.summary_metrics]
            if s.baseline is not None:
                pairs.append(("", DELTA_M, False, dm_seed.get((s.label, lb), {}),
                              dm_seed.get((s.label, ref), {})))
            for task, metric, hib, a, b in pairs:
                seeds = sorted(set(a) & set(b))
                res = stats.paired_test([a[k] for k in seeds], [b[k] for k in seeds])
                better = bool((res.mean_diff > 0) == hib) if res.mean_diff else False
                rows.append({SETTING: s.label, STRATEGY: lb, ROLE: s.roles[lb], "reference": ref,
                             TASK: task, METRIC: metric, "higher_is_better": hib,
                             "test": res.test, "n": res.n, "statistic": res.statistic,
                             "p": res.p, "mean_diff": res.mean_diff, "better": better,
                             "min_p": stats.min_attainable_p(res.n)})
    cols = [SETTING, STRATEGY, ROLE, "reference", TASK, METRIC, "higher_is_better", "test", "n",
            "statistic", "p", "p_holm", "mean_diff", "better", "significant", "min_p"]
    df = pd.DataFrame(rows, columns=cols)
    # Holm across the strategies compared with the reference, per setting and metric (the
    # family a reader scans when asking "which of these beats fixed on this metric?")
    for _, idx in df.groupby([SETTING, TASK, METRIC, ROLE], dropna=False).groups.items():
        df.loc[idx, "p_holm"] = stats.holm(df.loc[idx, "p"].to_numpy(dtype=float))
    df["significant"] = (df["n"] > 0) & (df["p_holm"].astype(float) < alpha)
    return df


def _throughput_table(settings: list[Setting], runs: pd.DataFrame, ci: str, level: float
                      ) -> pd.DataFrame:
    """Per cell: the sweep's own timers (wall time under the sweep's concurrency: several runs
    shared the machine), samples/s as a geometric mean with a log-scale interval, ms per phase,
    peak memory and the step-time ratio to the reference on the same machine, device and
    thread count. Descriptive only: speed claims come from the speed stage
    (:mod:`mtl_bench.speed`), never from these timers."""
    rows = []
    env = ["machine", "device", "threads"]
    ok = runs[(runs[STATUS] == "ok") & runs["tp_step_ms"].notna()]
    for s in settings:
        here = ok[ok[SETTING] == s.label]
        ref = here[here[STRATEGY] == s.reference] if s.reference else here.iloc[0:0]
        ref_ms = ref.groupby(env, dropna=False)["tp_step_ms"].mean()
        for lb in s.labels((REFERENCE, METHOD, FRONT)):
            rs = here[here[STRATEGY] == lb]
            n_runs = int(((runs[SETTING] == s.label) & (runs[STRATEGY] == lb)).sum())
            sps = stats.log_interval(rs["tp_samples_per_s"].to_numpy(dtype=float), level)
            ratios = []
            for _, row in rs.iterrows():
                key = tuple(row[k] for k in env)
                if key in ref_ms.index and ref_ms[key] > 0:
                    ratios.append(row["tp_step_ms"] / ref_ms[key])
            out = {SETTING: s.label, STRATEGY: lb, ROLE: s.roles[lb], "n": len(rs),
                   "n_runs": n_runs, "samples_per_s": sps.mean, "samples_per_s_low": sps.low,
                   "samples_per_s_high": sps.high}
            for col in (*PHASES, "step_ms", "peak_memory_mb", "steps_per_s"):
                src = f"tp_{col}"
                out[col] = float(rs[src].mean()) if len(rs) else math.nan
            out["overhead"] = float(np.mean(ratios)) if ratios else math.nan
            out["n_overhead"] = len(ratios)
            out["device"] = ",".join(sorted({str(d) for d in rs["device"]})) if len(rs) else ""
            rows.append(out)
    cols = [SETTING, STRATEGY, ROLE, "n", "n_runs", "samples_per_s", "samples_per_s_low",
            "samples_per_s_high", *PHASES, "step_ms", "peak_memory_mb", "steps_per_s",
            "overhead", "n_overhead", "device"]
    return pd.DataFrame(rows, columns=cols)


def _cross_pair(ranks: pd.DataFrame, alpha: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Mean rank per strategy across settings; Friedman + Nemenyi over the strategies ranked in
    every setting (a complete block design is what the test needs)."""
    cols = [STRATEGY, "n_settings", "mean_rank", "friedman_rank", "in_test"]
    if ranks.empty:
        return pd.DataFrame(columns=cols), {"reason": "no ranked strategies"}
    table = ranks.pivot_table(index=SETTING, columns=STRATEGY, values="mean_rank",
                              aggfunc="first")
    n_settings = table.notna().sum()
    common = [c for c in table.columns if n_settings[c] == len(table)]
    info: dict[str, Any] = {"settings": list(table.index), "strategies": common,
                            "excluded": sorted(set(table.columns) - set(common))}
    result = None
    if len(table) < 2:
        info["reason"] = (f"the Friedman test needs >= 2 task pairs/settings; found "
                          f"{len(table)}")
    elif len(common) < 3:
        info["reason"] = (f"the Friedman test needs >= 3 strategies ranked in every setting; "
                          f"found {len(common)}")
    else:
        result = stats.friedman_nemenyi(table[common].to_numpy(), common, alpha)
        info.update(statistic=result.statistic, p=result.p, n_blocks=result.n_blocks,
                    k=result.k, q_alpha=result.q_alpha, cd=result.cd, alpha=alpha,
                    cliques=result.cliques)
    rows = []
    for lb in table.columns:
        rows.append({STRATEGY: lb, "n_settings": int(n_settings[lb]),
                     "mean_rank": float(table[lb].mean()),
                     "friedman_rank": result.avg_ranks.get(lb, math.nan) if result else math.nan,
                     "in_test": result is not None and lb in common})
    cross = pd.DataFrame(rows, columns=cols).sort_values(["mean_rank", STRATEGY])
    return cross.reset_index(drop=True), info


def pareto_points(tables: Tables, label: str, metrics: Sequence[tuple[str, str]]
                  ) -> pd.DataFrame:
    """Means and CIs of two (task, metric) columns per strategy, with front membership and
    which ranked strategies a fixed-weight run dominates (at least as good on both, better on
    one, comparing means)."""
    meta = tables.setting(label)
    summ = tables["summary"][tables["summary"][SETTING] == label]
    (ta, ma), (tb, mb) = metrics
    ha, hb = meta["directions"][ma], meta["directions"][mb]
    rows = []
    for lb in meta["strategies"]:
        role = meta["roles"][lb]
        if role == SINGLE_TASK:
            continue
        a = summ[(summ[STRATEGY] == lb) & (summ[TASK] == ta) & (summ[METRIC] == ma)]
        b = summ[(summ[STRATEGY] == lb) & (summ[TASK] == tb) & (summ[METRIC] == mb)]
        if a.empty or b.empty:
            continue
        a, b = a.iloc[0], b.iloc[0]
        rows.append({STRATEGY: lb, ROLE: role, FRONT_WEIGHT: meta["front_weights"].get(lb),
                     "a": a["mean"], "a_low": a["ci_low"], "a_high": a["ci_high"],
                     "b": b["mean"], "b_low": b["ci_low"], "b_high": b["ci_high"],
                     "on_front": lb in meta["front_weights"]})
    pts = pd.DataFrame(rows)
    if pts.empty:
        return pts
    sa, sb = (1 if ha else -1), (1 if hb else -1)
    front = pts[pts["on_front"] & pts["a"].notna() & pts["b"].notna()]
    dominated_by = []
    for _, p in pts.iterrows():
        doms = [f[STRATEGY] for _, f in front.iterrows() if f[STRATEGY] != p[STRATEGY]
                and sa * f["a"] >= sa * p["a"] and sb * f["b"] >= sb * p["b"]
                and (sa * f["a"] > sa * p["a"] or sb * f["b"] > sb * p["b"])]
        dominated_by.append(doms)
    pts["dominated_by"] = dominated_by
    return pts
