"""Run records -> tidy tables (the ``aggregate`` stage of DESIGN.md).

Reads only run records (through :mod:`mtl_bench.store`) and produces :class:`Tables`: one CSV per
table plus ``meta.json`` and a Markdown rendering, in one folder that the ``report`` stage reads.

Grouping. A *setting* is one (task pair, task options, architecture): a pair run with other
options (another dataset, another loss formulation) or another architecture is another
experiment, never averaged with the first. Inside a setting a *cell* is one strategy label
(``gradnorm(alpha=0.5)``); its seeds are the replicates.

Roles. ``single-task`` runs (``config.single_task`` set) are the Delta_m baseline. The
*reference* is fixed equal weights: label ``fixed`` (``config.strategy`` is
:data:`REFERENCE_STRATEGY` without weights), else a fixed run whose weights are all equal. Two or
more fixed runs with explicit weights form the *fixed-weight front* (the scalarisation sweep of
Xin et al., NeurIPS 2022); they are listed and plotted but not ranked, so that mean ranks do not
depend on how densely the front was sampled. Everything else is a *method*.

Comparability. Inside a setting every record must share the schema version, the config fields
that change results (epochs, batch size, learning rate, ...) and the task and harness code
hashes; inside a cell the strategy code hash too. Otherwise aggregate stops with a
"not comparable" :class:`~mtl_bench.errors.UserError` instead of averaging different experiments.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtl_bench import stats
from mtl_bench.errors import UserError
from mtl_bench.metrics import delta_m
from mtl_bench.store import (
    EPOCH,
    METRIC,
    REASON,
    RUN_ID,
    SEED,
    SPLIT,
    STATUS,
    STEP,
    STRATEGY,
    TASK,
    TASK_PAIR,
    VALUE,
    atomic_write_text,
)
from mtl_bench.strategy import format_value

REFERENCE_STRATEGY = "fixed"
SETTING, ROLE, ARCHITECTURE = "setting", "role", "architecture"
METHOD, REFERENCE, FRONT, SINGLE_TASK = "method", "reference", "front", "single-task"
ROLE_ORDER = {REFERENCE: 0, METHOD: 1, FRONT: 2, SINGLE_TASK: 3}
RANKED_ROLES = (REFERENCE, METHOD)
DELTA_M = "delta_m"
TEST, VAL, TRAIN = "test", "val", "train"
FRONT_WEIGHT = "front_weight"
#: Task option whose values are alternative loss formulations of one pair (calibration plots).
FORMULATION_OPTION = "formulation"

#: Config fields that may differ inside one table: they name the setting or the cell, or only
#: change where and how fast a run went (device, threads, diagnostics cadence), not its result.
CELL_FIELDS = frozenset({"task", "task_options", "architecture", "strategy", "strategy_params",
                         "seed", "single_task", "device", "threads", "diag_every"})
PHASES = ("forward_ms", "strategy_ms", "backward_ms", "optimizer_ms")

#: Table files in a tables folder, in the order they are written.
TABLE_NAMES = ("runs", "long", "summary", "delta_m", "ranks", "significance", "throughput",
               "curves", "weights", "diagnostics", "details", "cross_pair")
META_FILE = "meta.json"
MARKDOWN_FILE = "tables.md"


# -- settings ----------------------------------------------------------------------------------
def setting_label(task_pair: str, options: dict[str, Any], architecture: str) -> str:
    """``clsreg``, ``clsreg [dataset=synthetic, noise=0.5]``, ``clsreg (separate)``."""
    text = task_pair
    if options:
        text += " [" + ", ".join(f"{k}={format_value(v)}" for k, v in sorted(options.items())) + "]"
    if architecture and architecture != "shared":
        text += f" ({architecture})"
    return text


def slugify(text: str, limit: int = 60) -> str:
    """File-name-safe, stable form of a label (a hash suffix keeps long ones unique)."""
    import hashlib

    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"
    if len(slug) > limit:
        slug = slug[:limit].rstrip("-") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return slug


@dataclass
class Setting:
    """One (task pair, task options, architecture) with its records and the roles of labels."""

    task_pair: str
    options: dict[str, Any]
    architecture: str
    records: list[dict[str, Any]]
    label: str = ""
    slug: str = ""
    tasks: list[dict[str, Any]] = field(default_factory=list)
    directions: dict[str, bool] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    front_weights: dict[str, float] = field(default_factory=dict)
    reference: str | None = None
    baseline: str | None = None  # where single-task runs come from: None, "setting" or a label
    notes: list[str] = field(default_factory=list)

    def labels(self, roles: Iterable[str] | None = None) -> list[str]:
        """Labels in display order: reference, methods (by name), front (by weight), single."""
        keep = set(roles) if roles is not None else set(ROLE_ORDER)
        chosen = [lb for lb, r in self.roles.items() if r in keep]
        return sorted(chosen, key=lambda lb: (ROLE_ORDER[self.roles[lb]],
                                              self.front_weights.get(lb, 0.0), lb))

    def metric_columns(self) -> list[tuple[str, str]]:
        return [(t["name"], m) for t in self.tasks for m in t["metrics"]]

    def meta(self) -> dict[str, Any]:
        ok = sum(r.get(STATUS) == "ok" for r in self.records)
        return {"label": self.label, "slug": self.slug, "task_pair": self.task_pair,
                "options": self.options, "architecture": self.architecture, "tasks": self.tasks,
                "directions": self.directions, "reference": self.reference,
                "strategies": self.labels(), "roles": self.roles,
                "front_weights": self.front_weights, "baseline": self.baseline,
                "n_runs": len(self.records), "n_ok": ok, "n_failed": len(self.records) - ok,
                "epochs": _config(self.records[0]).get("epochs"), "notes": self.notes}


def _config(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("config") or {}


def _require(record: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise UserError(f"run record {record.get(RUN_ID, '?')} lacks {', '.join(missing)}; "
                        "it was not written by this version of mtl-bench")


def group_settings(records: Sequence[dict[str, Any]]) -> list[Setting]:
    """Records grouped by (task pair, task options, architecture), in a stable order."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        _require(r, "task_pair", "strategy", "seed", "config")
        cfg = _config(r)
        key = (r["task_pair"], json.dumps(cfg.get("task_options") or {}, sort_keys=True),
               cfg.get("architecture") or "shared")
        groups.setdefault(key, []).append(r)
    settings = []
    slugs: set[str] = set()
    ordered = sorted(groups.items(), key=lambda kv: (
        setting_label(kv[0][0], json.loads(kv[0][1]), kv[0][2]), kv[0]))
    for (pair, options, arch), recs in ordered:
        s = Setting(pair, json.loads(options), arch, recs)
        s.label = setting_label(pair, s.options, arch)
        slug = slugify(s.label)
        if slug in slugs:  # two labels that only differ in punctuation
            slug = slugify(s.label + "#" + options + arch, limit=40) + f"-{len(slugs)}"
        slugs.add(slug)
        s.slug = slug
        settings.append(s)
    return settings


def check_comparable(setting: Setting) -> None:
    """Raise "not comparable" when one table would mix different experiments."""
    recs = setting.records

    def differing(values: list[Any], what: str) -> None:
        texts = [json.dumps(v, sort_keys=True, default=str) for v in values]
        counts = pd.Series(texts).value_counts()
        if len(counts) > 1:
            shown = ", ".join(f"{what}={t} ({c} runs)" for t, c in counts.items())
            raise UserError(f"not comparable: '{setting.label}' mixes {shown}; keep one "
                            "configuration per --runs-dir or remove the stale records")

    differing([r.get("schema") for r in recs], "schema")
    keys = sorted({k for r in recs for k in _config(r)} - CELL_FIELDS)
    for key in keys:
        differing([_config(r).get(key) for r in recs], key)
    for part in ("harness", "task"):
        differing([(r.get("code") or {}).get(part) for r in recs], f"{part} code hash")
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_label.setdefault(r["strategy"], []).append(r)
    for lb, rs in sorted(by_label.items()):
        differing([(r.get("code") or {}).get("strategy") for r in rs],
                  f"'{lb}' strategy code hash")
    directions: dict[str, bool] = {}
    for r in recs:
        for m, hib in (r.get("metric_directions") or {}).items():
            if directions.setdefault(m, bool(hib)) != bool(hib):
                raise UserError(f"not comparable: '{setting.label}' has runs where metric '{m}' "
                                "is higher-is-better and runs where it is lower-is-better")
    setting.directions = directions


def _assign_roles(setting: Setting) -> None:
    roles: dict[str, str] = {}
    weighted: dict[str, list[float]] = {}
    plain_fixed = None
    for r in setting.records:
        lb, cfg = r["strategy"], _config(r)
        if cfg.get("single_task") is not None:
            roles[lb] = SINGLE_TASK
            continue
        roles.setdefault(lb, METHOD)
        if cfg.get("strategy") == REFERENCE_STRATEGY:
            w = (cfg.get("strategy_params") or {}).get("weights")
            if w:
                weighted[lb] = [float(x) for x in w]
            else:
                plain_fixed = lb
    equal = sorted(lb for lb, w in weighted.items() if len(set(w)) == 1)
    setting.reference = plain_fixed or (equal[0] if equal else None)
    if len(weighted) >= 2:
        for lb, w in weighted.items():
            roles[lb] = FRONT
            setting.front_weights[lb] = w[0] / sum(w) if sum(w) else math.nan
    if setting.reference is not None:
        roles[setting.reference] = REFERENCE
    setting.roles = roles
    # Tasks and metrics in the order the pair declares them (from a multi-task record).
    multi = [r for r in setting.records if _config(r).get("single_task") is None]
    if multi:
        setting.tasks = [dict(t) for t in multi[0].get("tasks", [])]
    else:
        seen: dict[str, dict[str, Any]] = {}
        for r in setting.records:
            for t in r.get("tasks", []):
                seen.setdefault(t["name"], dict(t))
        setting.tasks = list(seen.values())


# -- the tables --------------------------------------------------------------------------------
@dataclass
class Tables:
    """The aggregated tables and ``meta`` (settings, roles, tests used, notes)."""

    meta: dict[str, Any]
    frames: dict[str, pd.DataFrame]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frames[name]

    def setting(self, label: str) -> dict[str, Any]:
        for s in self.meta["settings"]:
            if s["label"] == label:
                return s
        raise KeyError(label)

    def write(self, folder: str | Path) -> list[Path]:
        """One CSV per table (+ ``long.parquet`` when pyarrow is installed) and ``meta.json``,
        each written atomically (``display.write_tables`` adds ``tables.md``)."""
        folder = Path(folder)
        written = []
        for name in TABLE_NAMES:
            path = folder / f"{name}.csv"
            atomic_write_text(path, self.frames[name].to_csv(index=False))
            written.append(path)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            path = folder / "long.parquet"
            self.frames["long"].to_parquet(path, index=False)
            written.append(path)
        path = folder / META_FILE
        atomic_write_text(path, json.dumps(self.meta, indent=1, sort_keys=True, default=str))
        written.append(path)
        return written

    @classmethod
    def read(cls, folder: str | Path) -> Tables:
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise UserError(f"no aggregated tables in '{folder}' (missing {META_FILE}); run "
                            "`mtl-bench aggregate` first")
        try:
            meta = json.loads(meta_path.read_text())
            frames = {}
            for name in TABLE_NAMES:
                path = folder / f"{name}.csv"
                try:
                    frames[name] = pd.read_csv(path, keep_default_na=True, na_values=[""])
                except pd.errors.EmptyDataError:
                    frames[name] = pd.DataFrame()
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read aggregated tables in '{folder}': {exc}") from None
        for name in ("long", "summary", "curves", "weights", "diagnostics", "details",
                     "ranks", "delta_m", "significance", "throughput", "runs"):
            if SETTING in frames[name]:
                frames[name][SETTING] = frames[name][SETTING].astype(str)
        return cls(meta, frames)


def _band(df: pd.DataFrame, keys: list[str], level: float) -> pd.DataFrame:
    """Mean and t-interval of VALUE per group (descriptive bands of curves)."""
    if df.empty:
        return pd.DataFrame(columns=[*keys, "n", "mean", "sd", "ci_low", "ci_high"])
    df = df.assign(**{VALUE: df[VALUE].astype(float).replace([np.inf, -np.inf], np.nan)})
    out = df.groupby(keys, sort=True)[VALUE].agg(n="count", mean="mean", sd="std").reset_index()
    half = stats.t_half_width(out["sd"].to_numpy(), out["n"].to_numpy(), level)
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    return out


def _cell(values: Sequence[float], ci: str, level: float) -> dict[str, Any]:
    iv = stats.mean_ci(values, level, ci)
    return {"n": iv.n, "mean": iv.mean, "sd": iv.sd, "ci_low": iv.low, "ci_high": iv.high}


def aggregate_records(records: Sequence[dict[str, Any]],
                      corrupt: Sequence[tuple[Any, str]] = (), ci: str = "t",
                      level: float = 0.95, alpha: float = 0.05) -> Tables:
    """Every table of the report from run records (see the module docstring for the rules)."""
    stats.check_ci(ci, level)
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1; got {alpha!r}")
    if not records:
        raise UserError("no run records to aggregate" + (
            f" ({len(corrupt)} corrupt file(s), e.g. {corrupt[0][0]}: {corrupt[0][1]})"
            if corrupt else "; run `mtl-bench run` first"))
    settings = group_settings(records)
    for s in settings:
        check_comparable(s)
        _assign_roles(s)
    _link_baselines(settings)

    runs = _runs_table(settings)
    long = _long_table(settings)
    values = _per_seed(long)
    summary, ranks = _summary_tables(settings, values, ci, level)
    dm, dm_seed = _delta_m_table(settings, values, ci, level)
    significance = _significance_table(settings, values, dm_seed, alpha)
    throughput = _throughput_table(settings, runs, ci, level)
    curves, weights, diagnostics, details = _trajectory_tables(settings, level)
    cross, friedman = _cross_pair(ranks, alpha)

    meta = {
        "ci": {"method": ci, "level": level, "bands": "t"}, "alpha": alpha,
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
              "cross_pair": cross}
    return Tables(meta, frames)


def aggregate_dir(runs_dir: str | Path, ci: str = "t", level: float = 0.95,
                  alpha: float = 0.05) -> Tables:
    """Load every record under ``runs_dir`` (the store's layout) and aggregate it."""
    from mtl_bench.store import RunStore

    root = Path(runs_dir)
    if not root.is_dir():
        raise UserError(f"runs folder '{root}' does not exist; run `mtl-bench run` first "
                        "(or pass --runs-dir)")
    loaded = RunStore(root).load()
    if not loaded.records:
        raise UserError(f"no run records in '{root}'" + (
            f" ({len(loaded.corrupt)} corrupt file(s), e.g. {loaded.corrupt[0][0]}: "
            f"{loaded.corrupt[0][1]})" if loaded.corrupt else "; run `mtl-bench run` first"))
    tables = aggregate_records(loaded.records, loaded.corrupt, ci, level, alpha)
    tables.meta["runs_dir"] = str(root)
    return tables


def _link_baselines(settings: list[Setting]) -> None:
    """Single-task baselines from the same setting, else from the same pair and options under
    another architecture (one task alone has nothing to share, so the architecture is moot)."""
    for s in settings:
        if SINGLE_TASK in s.roles.values():
            s.baseline = "setting"
            continue
        for other in settings:
            if (other is not s and other.task_pair == s.task_pair
                    and other.options == s.options and SINGLE_TASK in other.roles.values()):
                s.baseline = other.label
                s.notes.append(f"Δm% uses the single-task runs of '{other.label}'")
                break
        else:
            if len(s.roles) > 0 and any(r != SINGLE_TASK for r in s.roles.values()):
                s.notes.append("Δm% not computed: no single-task runs "
                               "(run with --single-task to add them)")


def _runs_table(settings: list[Setting]) -> pd.DataFrame:
    rows = []
    for s in settings:
        for r in s.records:
            cfg = _config(r)
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
                   "code_harness": code.get("harness"), "git_commit": prov.get("git_commit")}
            for k, v in (r.get("throughput") or {}).items():
                row[f"tp_{k}"] = v
            rows.append(row)
    df = pd.DataFrame(rows)
    for col in (*PHASES, "step_ms", "steps_per_s", "samples_per_s", "peak_memory_mb"):
        if f"tp_{col}" not in df:  # no run was timed (all failed early): keep the columns
            df[f"tp_{col}"] = math.nan
    return df.sort_values([SETTING, STRATEGY, SEED, RUN_ID], kind="stable").reset_index(drop=True)


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
                rows.append((*head, epoch, split, task, metric, _float(value), s.task_pair,
                             s.architecture, s.directions.get(metric)))
    cols = [SETTING, STRATEGY, ROLE, SEED, RUN_ID, EPOCH, SPLIT, TASK, METRIC, VALUE, TASK_PAIR,
            ARCHITECTURE, "higher_is_better"]
    return pd.DataFrame(rows, columns=cols)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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
            c = counts.setdefault((r["strategy"], _config(r).get("single_task")), [0, 0])
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
                        "n_runs": n_runs, "n_failed": n_failed, **_cell(vals, ci, level),
                        "rank": math.nan, "best": False}
                cells[(lb, task, metric)] = cell
                rows.append(cell)
        ranked = s.labels(RANKED_ROLES)
        per_label: dict[str, list[float]] = {lb: [] for lb in ranked}
        for task, metric in s.metric_columns():
            hib = s.directions.get(metric)
            if hib is None or not ranked:
                continue
            r = stats.rank_values([cells[(lb, task, metric)]["mean"] for lb in ranked], hib)
            best = np.nanmin(r) if np.isfinite(r).any() else math.nan
            for lb, rank in zip(ranked, r):
                if np.isfinite(rank):
                    cells[(lb, task, metric)]["rank"] = float(rank)
                    cells[(lb, task, metric)]["best"] = bool(rank == best)
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
        keys = s.metric_columns()
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
                     for task, metric in s.metric_columns()]
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
                             "significant": bool(res.n and res.p < alpha),
                             "min_p": stats.min_attainable_p(res.n)})
    cols = [SETTING, STRATEGY, ROLE, "reference", TASK, METRIC, "higher_is_better", "test", "n",
            "statistic", "p", "mean_diff", "better", "significant", "min_p"]
    return pd.DataFrame(rows, columns=cols)


def _throughput_table(settings: list[Setting], runs: pd.DataFrame, ci: str, level: float
                      ) -> pd.DataFrame:
    """Per cell: samples/s (mean, CI), ms per phase, peak memory, and the step time as a ratio
    to the reference measured on the same machine, device and thread count."""
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
            sps = stats.mean_ci(rs["tp_samples_per_s"].to_numpy(dtype=float), level, ci)
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


def _trajectory_tables(settings: list[Setting], level: float
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
                                row[idx[3]], _float(row[idx[4]])) for row in c["rows"]]
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
