"""Choosing a grid point on validation: the learning rate and any hyper-parameter marked tuned.

A *cell* is one method inside one setting: a strategy with the hyper-parameters that are not
tuned (or a single-task baseline of one task). Its *grid points* are the values of the tuned
fields: always the learning rate (an lr grid is a grid to select over, never a set of methods),
plus the strategy hyper-parameters named with ``run --tune NAME.PARAM``. For each grid point the
score is the mean over seeds of the run's validation score at its selected epoch
(:func:`mtl_bench.selection.record_score`, the same rule that picked the epoch). The chosen point
has the highest score among the points whose seeds all finished; ties go to the first point in
grid order (the smaller learning rate). Test metrics are then reported at the chosen point only
(Kurin et al., NeurIPS 2022; Xin et al., NeurIPS 2022: untuned baselines flatter weighting
methods).

``run --tune`` writes the tuned fields to ``tuning.json`` beside the records (:data:`SPEC_FILE`),
so that ``aggregate`` and ``report`` read them without being told again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtl_bench.errors import UserError
from mtl_bench.selection import record_score
from mtl_bench.strategy import format_value, label

LR = "lr"
SPEC_FILE = "tuning.json"
SPEC_SCHEMA = 2


def _config(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("config") or {}


def parse_tuned(items: Iterable[str]) -> list[str]:
    """``lr`` and ``NAME.PARAM`` entries (``--tune lr,gradnorm.alpha``), validated for shape."""
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item != LR and (item.count(".") != 1 or not all(item.split("."))):
            raise UserError(f"--tune expects 'lr' or NAME.PARAM such as gradnorm.alpha; "
                            f"got '{item}'")
        if item not in out:
            out.append(item)
    if not out:
        raise UserError("--tune expects at least one of: lr, NAME.PARAM")
    return out


def read_spec(runs_dir: str | Path) -> list[str]:
    """Tuned fields recorded in ``runs_dir/tuning.json`` (``[]`` when there is none)."""
    path = Path(runs_dir) / SPEC_FILE
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read '{path}' ({type(exc).__name__}: {exc}); delete it or "
                        "rerun `mtl-bench run --tune ...`") from None
    tuned = doc.get("tuned") if isinstance(doc, dict) else None
    if not isinstance(tuned, list):
        return [LR] if isinstance(doc, dict) and doc.get("param") == LR else []  # older file
    return [str(t) for t in tuned]


def write_spec(runs_dir: str | Path, tuned: Sequence[str]) -> Path:
    """Add ``tuned`` to the fields recorded in ``runs_dir/tuning.json`` (kept across sweeps)."""
    from mtl_bench.store import atomic_write_text

    merged = list(dict.fromkeys([*read_spec(runs_dir), *tuned]))
    path = Path(runs_dir) / SPEC_FILE
    try:
        atomic_write_text(path, json.dumps({"schema": SPEC_SCHEMA, "tuned": merged}, indent=1)
                          + "\n")
    except OSError as exc:
        raise UserError(f"cannot write '{path}': {exc.strerror or exc}") from None
    return path


def tuned_params(strategy: str, tuned: Sequence[str]) -> set[str]:
    return {t.split(".", 1)[1] for t in tuned if t != LR and t.split(".", 1)[0] == strategy}


def cell_label(record: dict[str, Any], tuned: Sequence[str]) -> str:
    """The record's strategy label without its tuned hyper-parameters (``single-task`` for a
    baseline run)."""
    cfg = _config(record)
    if cfg.get("single_task") is not None:
        return "single-task"
    name = cfg.get("strategy") or record.get("strategy", "?")
    params = cfg.get("strategy_params") or {}
    drop = tuned_params(str(name), tuned)
    suffix = record.get("cell_suffix", "")  # the strategy code version, when a cell mixes them
    if not drop:
        return str(record.get("strategy") or label(str(name), params)) + suffix
    return label(str(name), {k: v for k, v in params.items() if k not in drop}) + suffix


def grid_point(record: dict[str, Any], tuned: Sequence[str]) -> dict[str, Any]:
    """The values of the tuned fields of one record: ``{"lr": 0.003, "alpha": 1.5}``."""
    cfg = _config(record)
    point: dict[str, Any] = {LR: cfg.get(LR)}
    params = cfg.get("strategy_params") or {}
    for p in sorted(tuned_params(str(cfg.get("strategy")), tuned)):
        point[p] = params.get(p, "default")
    return point


def point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in point.items())


@dataclass
class Candidate:
    point: dict[str, Any]
    records: list[dict[str, Any]]
    score: float | None  # mean over seeds; None when no seed finished
    n_failed: int

    @property
    def eligible(self) -> bool:
        return self.score is not None and self.n_failed == 0


@dataclass
class Choice:
    """The grid of one cell and the point chosen on validation."""

    cell: str
    single_task: str | None
    candidates: list[Candidate]
    chosen: Candidate
    at_edge: list[str] = field(default_factory=list)  # fields whose choice is a grid end
    note: str = ""

    @property
    def tuned(self) -> bool:
        return len(self.candidates) > 1


def _sort_key(point: dict[str, Any]) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool)
                 else (1, 0, json.dumps(v, default=str)) for v in point.values())


def choose(cell: str, records: list[dict[str, Any]], tuned: Sequence[str]) -> Choice:
    """Group one cell's records by grid point and choose the point (see the module docstring)."""
    by_point: dict[str, list[dict[str, Any]]] = {}
    points: dict[str, dict[str, Any]] = {}
    for r in records:
        p = grid_point(r, tuned)
        key = json.dumps(p, sort_keys=True, default=str)
        by_point.setdefault(key, []).append(r)
        points[key] = p
    candidates = []
    for key in sorted(by_point, key=lambda k: _sort_key(points[k])):
        rs = sorted(by_point[key], key=lambda r: r.get("seed", 0))
        scores = [record_score(r) for r in rs]
        ok = [s for s in scores if s is not None]
        candidates.append(Candidate(points[key], rs, sum(ok) / len(ok) if ok else None,
                                    sum(s is None for s in scores)))
    eligible = [c for c in candidates if c.eligible]
    note = ""
    if eligible:
        chosen = max(eligible, key=lambda c: c.score)  # max keeps the first of equal scores
    else:
        # every point lost a seed: prefer the one that finished most seeds, then its score
        chosen = max(candidates, key=lambda c: (len(c.records) - c.n_failed,
                                                -math.inf if c.score is None else c.score))
        if len(candidates) > 1:
            note = "no grid point finished every seed; chose the one that finished most"
    single = _config(records[0]).get("single_task") if records else None
    edge = []
    if len(candidates) > 1:
        for k in chosen.point:
            values = sorted({json.dumps(c.point[k], default=str) for c in candidates})
            numeric = [c.point[k] for c in candidates
                       if isinstance(c.point[k], (int, float)) and not isinstance(c.point[k],
                                                                                   bool)]
            if len(values) > 1 and len(numeric) == len(candidates) and chosen.point[k] in (
                    min(numeric), max(numeric)):
                edge.append(k)
    return Choice(cell, single, candidates, chosen, edge, note)


def choose_all(records: Sequence[dict[str, Any]], tuned: Sequence[str]
               ) -> dict[tuple[str, str | None], Choice]:
    """One :class:`Choice` per (cell label, single task) of records from ONE setting."""
    cells: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in records:
        key = (cell_label(r, tuned), _config(r).get("single_task"))
        cells.setdefault(key, []).append(r)
    return {key: choose(key[0], rs, tuned) for key, rs in sorted(
        cells.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))}
