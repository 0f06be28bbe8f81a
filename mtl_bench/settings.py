"""Settings, cells and roles: how run records are grouped before any table is computed.

A *setting* is one experiment: a task pair with its options, architecture and every other
config field that changes what a run computes (epochs, batch size, weight decay, sampling,
selection rule, record schema), and one version of the harness and task-pair code. Records of
different settings are never averaged and never refused: each setting is a table of its own,
labelled with what tells it apart from the other settings of its pair (``clsreg [epochs=2]``,
``clsreg [code=1a2b3c/4d5e6f]``). Inside a setting a *cell* is one method: a strategy label
(``gradnorm(alpha=0.5)``) or the single-task baseline of one task; its seeds are the replicates.

Grid points. The learning rate, and the strategy hyper-parameters marked tuned
(``run --tune NAME.PARAM``, recorded in ``tuning.json``), are a grid to select over, not
methods: per cell the grid point with the best validation score is chosen
(:mod:`mtl_bench.tuning`) and the setting keeps that point's records. A cell whose records come
from two versions of the strategy's code is split into one cell per version (``dwa@1a2b3c``).

Roles. ``single-task`` runs (``config.single_task`` set) are the Delta_m baseline. The
*reference* is fixed equal weights: label ``fixed`` (``config.strategy`` is
:data:`REFERENCE_STRATEGY` without weights), else a fixed run whose weights are all equal. Two or
more fixed runs with explicit weights form the *fixed-weight front* (the scalarisation sweep of
Xin et al., NeurIPS 2022); they are listed and plotted but not ranked, so that mean ranks do not
depend on how densely the front was sampled. Everything else is a *method*.

Summary metrics (Delta_m%, ranks, "best") are each task's primary metric unless others are asked
for (:func:`summary_metrics`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtl_bench.errors import UserError
from mtl_bench.metrics import is_scored
from mtl_bench.store import RUN_ID, STATUS
from mtl_bench.strategy import format_value
from mtl_bench.tuning import Choice, choose_all, point_text

REFERENCE_STRATEGY = "fixed"
SETTING, ROLE, ARCHITECTURE = "setting", "role", "architecture"
METHOD, REFERENCE, FRONT, SINGLE_TASK = "method", "reference", "front", "single-task"
ROLE_ORDER = {REFERENCE: 0, METHOD: 1, FRONT: 2, SINGLE_TASK: 3}
RANKED_ROLES = (REFERENCE, METHOD)

#: Config fields that do not make a setting: the cell (strategy and its hyper-parameters, the
#: single task), the replicate (seed), the grid to select over (learning rate), and placement
#: (where and how fast a run went: device, threads, diagnostics cadence, CUDA graphs). Every
#: other config field (epochs, batch size, weight decay, sampling, selection rule, task options,
#: architecture, and any field added later) makes a setting.
CELL_FIELDS = frozenset({"task", "strategy", "strategy_params", "seed", "single_task"})
GRID_FIELDS = frozenset({"lr"})
PLACEMENT_FIELDS = frozenset({"device", "threads", "diag_every", "cuda_graph"})
NOT_SETTING_FIELDS = CELL_FIELDS | GRID_FIELDS | PLACEMENT_FIELDS
#: Setting fields the label always shows in its own way (options in brackets, architecture).
LABEL_FIELDS = frozenset({"task_options", "architecture"})
def setting_label(task_pair: str, options: dict[str, Any], architecture: str,
                  extra: dict[str, Any] | None = None) -> str:
    """``clsreg``, ``clsreg [dataset=synthetic, noise=0.5]``, ``clsreg (separate)``, and with
    ``extra`` (the other setting fields that differ) ``clsreg [epochs=2]``."""
    text = task_pair
    shown = [f"{k}={format_value(v)}" for k, v in sorted(options.items())]
    shown += [f"{k}={format_value(v)}" for k, v in (extra or {}).items()]
    if shown:
        text += " [" + ", ".join(shown) + "]"
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
    fields: dict[str, Any] = field(default_factory=dict)  # the setting fields' values
    choices: list[Choice] = field(default_factory=list)  # tuned grids, one per cell
    all_records: list[dict[str, Any]] = field(default_factory=list)  # every grid point
    summary_metrics: list[tuple[str, str]] = field(default_factory=list)  # drive summaries

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
                "epochs": config_of(self.records[0]).get("epochs") if self.records else None,
                "fields": self.fields, "notes": self.notes,
                "primary": {t["name"]: t.get("primary") or t["metrics"][0] for t in self.tasks},
                "tuned": [{"strategy": c.cell, "single_task": c.single_task,
                           "chosen": point_text(c.chosen.point), "at_edge": c.at_edge}
                          for c in self.choices]}


def config_of(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("config") or {}


def _require(record: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise UserError(f"run record {record.get(RUN_ID, '?')} lacks {', '.join(missing)}; "
                        "it was not written by this version of mtl-bench")


#: Value of a setting field that records of earlier versions did not store.
LEGACY_DEFAULTS = {"select": "loss"}


def setting_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The config fields that make the record's setting (every field that is not a cell, grid
    or placement field, so a field added later is a setting field until declared otherwise),
    plus the record schema."""
    cfg = config_of(record)
    out = {k: v for k, v in cfg.items() if k not in NOT_SETTING_FIELDS}
    for k, v in LEGACY_DEFAULTS.items():
        out.setdefault(k, v)
    out["schema"] = record.get("schema")
    return out


def _code_key(record: dict[str, Any]) -> tuple[Any, Any]:
    code = record.get("code") or {}
    return code.get("harness"), code.get("task")


def _code_text(key: tuple[Any, Any]) -> str:
    return "/".join(str(k)[:6] for k in key)


def group_settings(records: Sequence[dict[str, Any]], tuned: Sequence[str] = ()
                   ) -> list[Setting]:
    """Records grouped by setting (task pair, its options, architecture, every other setting
    field and the harness/task code version), labelled with what tells them apart, in a stable
    order. Inside each setting, tuned grids are resolved to their chosen points."""
    by_fields: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        _require(r, "task_pair", "strategy", "seed", "config")
        key = (r["task_pair"], json.dumps(setting_fields(r), sort_keys=True, default=str))
        by_fields.setdefault(key, []).append(r)
    groups: list[tuple[str, dict[str, Any], tuple[Any, Any] | None, list]] = []
    for (pair, fields), recs in by_fields.items():
        versions = sorted({_code_key(r) for r in recs if any(_code_key(r))}, key=str)
        if len(versions) <= 1:  # a record without code (older failures) joins the one version
            groups.append((pair, json.loads(fields), None, recs))
            continue
        for v in versions:
            mine = [r for r in recs if _code_key(r) == v]
            if v == versions[0]:
                mine += [r for r in recs if not any(_code_key(r))]
            groups.append((pair, json.loads(fields), v, mine))
    # label each setting with the fields that vary among the settings of its task pair
    varying: dict[str, set[str]] = {}
    for pair in {g[0] for g in groups}:
        mine = [g for g in groups if g[0] == pair]
        keys = {k for g in mine for k in g[1]}
        varying[pair] = {k for k in keys if len({json.dumps(g[1].get(k), sort_keys=True,
                                                            default=str) for g in mine}) > 1}
    settings = []
    for pair, fields, version, recs in groups:
        extra = {k: fields.get(k) for k in sorted(varying[pair] - LABEL_FIELDS)}
        if version is not None:
            extra["code"] = _code_text(version)
        s = Setting(pair, dict(fields.get("task_options") or {}),
                    fields.get("architecture") or "shared", recs)
        s.fields = fields
        s.label = setting_label(pair, s.options, s.architecture, extra)
        if version is not None:
            n = sum(g[0] == pair and g[1] == fields for g in groups)
            s.notes.append(f"records from {n} code versions of the harness/task pair are "
                           f"reported apart (code {_code_text(version)} here); rerun "
                           "`mtl-bench run` to retrain stale runs with the current code")
        _resolve_grid(s, tuned)
        settings.append(s)
    settings.sort(key=lambda s: s.label)
    slugs: set[str] = set()
    for i, s in enumerate(settings):
        slug = slugify(s.label)
        if slug in slugs:  # two labels that only differ in punctuation
            slug = slugify(s.label + f"#{i}", limit=40) + f"-{i}"
        slugs.add(slug)
        s.slug = slug
    return settings


def _resolve_grid(setting: Setting, tuned: Sequence[str]) -> None:
    """Keep the records of each cell's chosen grid point; remember the grid for the tables."""
    versions: dict[str, set[Any]] = {}
    for r in setting.records:
        versions.setdefault(r["strategy"], set()).add((r.get("code") or {}).get("strategy"))
    records = [{**r, "cell_suffix": "@" + str((r.get("code") or {}).get("strategy"))[:6]}
               if len(versions[r["strategy"]] - {None}) > 1 else r for r in setting.records]
    choices = choose_all(records, tuned)
    kept = []
    for (cell, single), ch in choices.items():
        for c in ch.candidates:
            for r in c.records:
                r_label = cell if single is None else r["strategy"]
                if c is ch.chosen:
                    kept.append({**r, "strategy": r_label})
        if ch.tuned:
            setting.choices.append(ch)
            if ch.note:
                setting.notes.append(f"{cell}{f' [{single}]' if single else ''}: {ch.note}")
    setting.all_records = records
    setting.records = kept


def prepare(records: Sequence[dict[str, Any]], tuned: Sequence[str] = (),
            metrics: Sequence[str] = ()) -> list[Setting]:
    """Settings with their chosen grid points, roles, summary metrics and Delta_m baselines:
    the grouping every table (and ``run``'s terminal table) is built on."""
    settings = group_settings(records, tuned)
    for s in settings:
        check_comparable(s)
        _assign_roles(s)
        s.summary_metrics = summary_metrics(s.tasks, metrics)
    _link_baselines(settings)
    return settings


def summary_metrics(tasks: Sequence[dict[str, Any]], wanted: Sequence[str] = ()
                    ) -> list[tuple[str, str]]:
    """(task, metric) pairs that drive Delta_m%, ranks and "best": each task's primary metric,
    or the ``wanted`` metrics the task reports (its primary when it reports none of them)."""
    out = []
    for t in tasks:
        mine = [m for m in wanted if m in t["metrics"] and is_scored(m)]
        out += [(t["name"], m) for m in (mine or [t.get("primary") or t["metrics"][0]])]
    return out


def check_comparable(setting: Setting) -> None:
    """Metric directions must agree inside a setting (the one thing no grouping can fix)."""
    directions: dict[str, bool] = {}
    for r in setting.records:
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
        lb, cfg = r["strategy"], config_of(r)
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
    multi = [r for r in setting.records if config_of(r).get("single_task") is None]
    if multi:
        setting.tasks = [dict(t) for t in multi[0].get("tasks", [])]
    else:
        seen: dict[str, dict[str, Any]] = {}
        for r in setting.records:
            for t in r.get("tasks", []):
                seen.setdefault(t["name"], dict(t))
        setting.tasks = list(seen.values())


def _link_baselines(settings: list[Setting]) -> None:
    """Single-task baselines from the same setting, else from the same pair and options under
    another architecture (one task alone has nothing to share, so the architecture is moot)."""
    def moot(fields: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fields.items() if k != ARCHITECTURE}

    for s in settings:
        if SINGLE_TASK in s.roles.values():
            s.baseline = "setting"
            continue
        for other in settings:
            if (other is not s and other.task_pair == s.task_pair
                    and moot(other.fields) == moot(s.fields)
                    and SINGLE_TASK in other.roles.values()):
                s.baseline = other.label
                s.notes.append(f"Δm% uses the single-task runs of '{other.label}'")
                break
        else:
            if len(s.roles) > 0 and any(r != SINGLE_TASK for r in s.roles.values()):
                s.notes.append("Δm% not computed: no single-task runs "
                               "(run with --single-task to add them)")



def one_setting(records: list[dict[str, Any]], tuned: Sequence[str], wanted: str,
                 store: Any) -> str:
    """The label of the one setting ``wanted`` names (its label, or a task pair with a single
    setting); a name that fits several settings stops with the settings and their files."""
    settings = group_settings(records, tuned)
    exact = [s for s in settings if s.label == wanted]
    found = exact or [s for s in settings if s.task_pair == wanted]
    if len(found) == 1:
        return found[0].label
    if not found:
        raise UserError(f"--setting '{wanted}' names no setting here; settings: "
                        + "; ".join(s.label for s in settings))

    def files(s: Setting) -> str:
        paths = [str(store.path_for(r["task_pair"], r[RUN_ID])) for r in s.all_records]
        return f"'{s.label}' ({len(paths)} records: {', '.join(paths[:3])}" + (
            ", ...)" if len(paths) > 3 else ")")

    raise UserError(f"--setting '{wanted}' is ambiguous: it fits {len(found)} settings: "
                    + "; ".join(files(s) for s in found) + "; name one by its label")


