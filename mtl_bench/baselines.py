"""Baseline files and the compact runs they hold: what ``check`` compares new runs against.

A baseline is a compact, versioned JSON file ``<baselines>/<NAME>/baseline.json``: per run its
keys, config, config hash, code hashes, machine fingerprint, status, the test metrics at the
selected epoch and the throughput; no curves; since version 2 also the speed entries of the
runs folder's ``speed.json`` when there was one. This module owns that layout: compacting run
records (:func:`compact_run`, also applied to the new runs by :func:`load_new_runs`), the run
key and the config keys that identify a run, building, writing (one run per line, for readable
diffs), reading, validating and listing baseline files. Every problem with a file is a one-line
:class:`~mtl_bench.errors.UserError`. The comparison rule is :mod:`mtl_bench.check`'s; this
module never imports it.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtl_bench.aggregate import setting_label
from mtl_bench.errors import UserError
from mtl_bench.metrics import is_scored
from mtl_bench.store import RunStore, atomic_write_text
from mtl_bench.strategy import format_value

BASELINE_FORMAT = "mtl-bench-baseline"
#: Version of the baseline file layout written; versions in READABLE_VERSIONS are read (1 has
#: no speed section), any other is refused (exit 2).
BASELINE_VERSION = 2
READABLE_VERSIONS = (1, 2)
BASELINE_FILE = "baseline.json"
DEFAULT_BASELINES_DIR = Path("results") / "baselines"
#: The committed baselines of the source tree this package runs from (an editable install).
PROJECT_BASELINES_DIR = Path(__file__).resolve().parent.parent / DEFAULT_BASELINES_DIR
#: The same baselines as installed from a wheel: pyproject.toml ships results/baselines as the
#: package data ``mtl_bench/baselines_data``.
PACKAGE_BASELINES_DIR = Path(__file__).resolve().parent / "baselines_data"


def default_baselines_dir() -> Path:
    """Where ``baseline save`` writes without ``--baselines-dir``: ``results/baselines`` of the
    current folder when it has one (a project of your own), else the committed baselines of the
    mtl-bench source tree when there is one (an editable install), else ``results/baselines``
    of the current folder (created). Installed package data is never written."""
    if DEFAULT_BASELINES_DIR.is_dir() or not PROJECT_BASELINES_DIR.is_dir():
        return DEFAULT_BASELINES_DIR
    return PROJECT_BASELINES_DIR


def baseline_roots(baselines_dir: str | Path | None = None) -> list[Path]:
    """Where baselines are looked up, first match wins: ``baselines_dir`` alone when given, else
    ``results/baselines`` of the current folder, the mtl-bench source tree's committed ones and
    the copies installed with the package (duplicates dropped)."""
    if baselines_dir is not None:
        return [Path(baselines_dir)]
    out: list[Path] = []
    seen: set[Path] = set()
    for root in (DEFAULT_BASELINES_DIR, PROJECT_BASELINES_DIR, PACKAGE_BASELINES_DIR):
        key = root.resolve()
        if key not in seen:
            seen.add(key)
            out.append(root)
    return out


def find_baseline(name: str, baselines_dir: str | Path | None = None) -> Path:
    """The folder holding baseline ``name`` (its ``NAME/baseline.json``), searched in
    :func:`baseline_roots` order; a one-line UserError lists every place looked in and the
    baselines found there."""
    roots = baseline_roots(baselines_dir)
    for root in roots:
        if _present(baseline_path(root, name)):
            return root
    places = []
    for root in roots:
        shown = os.path.abspath(root)
        if not root.is_dir():
            places.append(f"{shown}/ (no such folder)")
            continue
        known = [b["name"] for b in list_baselines(root, read=False)]
        held = f"saved baselines: {', '.join(known)}" if known else "no baselines"
        places.append(f"{shown}/ ({held})")
    hint = ("pass --baselines-dir DIR for baselines elsewhere, or create it" if baselines_dir
            is None else "create it")
    where = f" in {places[0]}" if len(places) == 1 else f"; looked in {'; '.join(places)}"
    raise UserError(f"baseline '{name}' not found{where}; {hint} with "
                    f"`mtl-bench baseline save {name} --runs-dir DIR`")

#: Config keys that say where a run ran, not what it computed (placement changes speed only).
PLACEMENT_KEYS = ("device", "threads", "cuda_graph")
#: Config keys that do not change results (diagnostics run outside the timed phases).
IGNORED_KEYS = ("diag_every",)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# -- compact runs --------------------------------------------------------------------------------
def pair_label(config: dict[str, Any]) -> str:
    """The task pair with its settings, labelled as ``aggregate`` labels them:
    ``clsreg``, ``clsreg [dataset=synthetic]``, ``clsreg (separate)``."""
    return setting_label(str(config.get("task")), config.get("task_options") or {},
                         config.get("architecture") or "shared")


def reported(records: Sequence[dict[str, Any]], tuned: Sequence[str]
             ) -> list[dict[str, Any]]:
    """The records the report would report: grouped into settings and cells as ``aggregate``
    groups them, with each tuned grid resolved to its chosen point (so a baseline of an lr grid
    holds, like the report, one run per strategy and seed)."""
    from mtl_bench.settings import prepare

    return [r for s in prepare(records, tuned) for r in s.records]


def compact_run(record: dict[str, Any], tuned: Sequence[str] = ()) -> dict[str, Any]:
    """What a baseline keeps of one run record (and what ``check`` compares). Grid fields (the
    learning rate and tuned hyper-parameters) are chosen on validation, not settings: they are
    kept under ``grid`` and left out of the config that decides comparability."""
    from mtl_bench.tuning import grid_point, tuned_params

    config = dict(record.get("config") or {})
    config.setdefault("task", record.get("task_pair"))
    grid = grid_point(record, tuned)
    config.pop("lr", None)
    drop = tuned_params(str(config.get("strategy")), tuned)
    if drop:
        config["strategy_params"] = {k: v for k, v in (config.get("strategy_params") or {})
                                     .items() if k not in drop}
    strategy = str(record.get("strategy"))
    if config.get("single_task"):
        strategy = f"single-task:{config['single_task']}"
    directions = {str(k): bool(v) for k, v in (record.get("metric_directions") or {}).items()}
    test: dict[str, float | None] = {}
    if record.get("status") == "ok":
        for row in record.get("summary") or []:
            try:
                _, split, task, metric, value = row
            except (TypeError, ValueError):
                raise UserError(f"run record {record.get('run_id')}: summary rows should be "
                                f"[epoch, split, task, metric, value], found {row!r}") from None
            if split == "test" and metric in directions and is_scored(metric):
                test[f"{task}.{metric}"] = _finite_or_none(value)
    tp = record.get("throughput") or {}
    prov = record.get("provenance") or {}
    out = {
        "grid": grid,
        "run_id": record.get("run_id"),
        "task_pair": record.get("task_pair"),
        "pair": pair_label(config),
        "strategy": strategy,
        "seed": record.get("seed"),
        "schema": record.get("schema"),
        "config": config,
        "code": dict(record.get("code") or {}),
        "machine": prov.get("machine", "unknown"),
        "created": prov.get("created", ""),
        "status": record.get("status"),
        "directions": directions,
        "test": test,
        "throughput": {k: _finite_or_none(tp.get(k)) for k in ("samples_per_s", "step_ms")},
    }
    if record.get("status") != "ok":
        out["reason"] = str(record.get("reason", ""))[:300]
    return out


def _finite_or_none(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def run_key(run: dict[str, Any]) -> tuple[str, str, int]:
    """What matches a new run to a baseline run: (task pair + settings, strategy, seed)."""
    return run["pair"], run["strategy"], run["seed"]


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``key old->new`` for each config key that differs, placement and ignored keys aside."""
    keys = sorted((set(a) | set(b)) - set(PLACEMENT_KEYS) - set(IGNORED_KEYS))
    return [f"{k} {format_value(a.get(k))}->{format_value(b.get(k))}"
            for k in keys if a.get(k) != b.get(k)]


# -- baseline files ------------------------------------------------------------------------------
def check_name(name: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise UserError(f"baseline name '{name}' should be letters, digits, '.', '_' or '-' "
                        "(starting with a letter or digit)")


def baseline_path(root: str | Path, name: str) -> Path:
    check_name(name)
    return Path(root) / name / BASELINE_FILE


def build_baseline(records: Sequence[dict[str, Any]], name: str, note: str = "",
                   source: str = "", speed: Sequence[dict[str, Any]] | None = None,
                   tuned: Sequence[str] = ()) -> dict[str, Any]:
    """Compact the run records of one run set (and its speed entries, when measured) into a
    baseline document."""
    tuned = list(tuned)
    runs = [compact_run(r, tuned) for r in reported(records, tuned)]
    seen: dict[tuple[str, str, int], dict[str, Any]] = {}
    for run in runs:
        key = run_key(run)
        if key in seen:
            diff = config_diff(seen[key]["config"], run["config"]) or ["device/threads"]
            raise UserError(
                f"the run set holds two runs of {key[0]} / {key[1]} / seed {key[2]} "
                f"(they differ in {', '.join(diff)}); save a baseline from a runs folder that "
                "holds one profile's runs (run with a fresh --runs-dir)")
        seen[key] = run
    runs.sort(key=lambda r: (r["pair"], r["strategy"], r["seed"]))
    commits = sorted({str((r.get("provenance") or {}).get("git_commit", "unknown"))
                      for r in records})
    doc = {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": note,
        "source": source,
        "git_commits": commits,
        "n_runs": len(runs),
        "runs": runs,
    }
    if speed:
        doc["speed"] = list(speed)
    return doc


def dump_baseline(doc: dict[str, Any]) -> str:
    """JSON with one run (and one speed entry) per line, so that a regenerated baseline gives a
    readable diff."""
    lists = [k for k in ("runs", "speed") if k in doc]
    head = {k: v for k, v in doc.items() if k not in lists}
    lines = ["{"]
    lines += [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}," for k, v in head.items()]
    for i, key in enumerate(lists):
        items = [f"    {json.dumps(r, sort_keys=True, separators=(',', ':'))}" for r in doc[key]]
        lines.append(f'  "{key}": [')
        lines.append(",\n".join(items))
        lines.append("  ]" + ("," if i < len(lists) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def save_baseline(root: str | Path, name: str, doc: dict[str, Any], force: bool = False) -> Path:
    path = baseline_path(root, name)
    if path.exists() and not force:
        raise UserError(f"baseline '{name}' already exists ({path}); pass --force to replace it")
    try:
        atomic_write_text(path, dump_baseline(doc))
        path.chmod(0o644)  # a committed, shared file (the temporary file was private)
    except OSError as exc:
        raise UserError(f"cannot write baseline to '{path.parent}': {exc.strerror or exc}") \
            from exc
    return path


_RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "pair": str, "strategy": str, "seed": int, "schema": int, "config": dict, "code": dict,
    "machine": str, "status": str, "directions": dict, "test": dict, "throughput": dict,
}


def _present(path: Path) -> bool:
    """Something is at ``path``: a file, a folder, or a link (even a broken or looping one)."""
    return os.path.lexists(path)


def load_baseline(root: str | Path, name: str) -> dict[str, Any]:
    """Read and validate a baseline; every problem is a one-line UserError."""
    from mtl_bench.speed import entries_problem

    path = baseline_path(root, name)
    redo = f"re-create it with `mtl-bench baseline save {name} --runs-dir DIR --force`"
    if not _present(path):
        known = [b["name"] for b in list_baselines(root, read=False)]
        hint = f"; saved baselines: {', '.join(known)}" if known else \
            f"; create it with `mtl-bench baseline save {name} --runs-dir DIR`"
        raise UserError(f"baseline '{name}' not found (no {path}){hint}")
    try:
        if not path.is_file():
            what = ("a link that loops or points nowhere" if path.is_symlink()
                    else "a folder" if path.is_dir() else "not a regular file")
            raise UserError(f"baseline '{name}' is broken: {path} is {what}; remove it and "
                            f"{redo}")
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        broken = "cannot be read" if isinstance(exc, OSError) else "is corrupt or truncated"
        raise UserError(f"baseline '{name}' ({path}) {broken} ({type(exc).__name__}: {why}); "
                        f"{redo}") from None
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        raise UserError(f"'{path}' is not an mtl-bench baseline file; {redo}")
    if doc.get("version") not in READABLE_VERSIONS:
        raise UserError(f"baseline '{name}' has format version {doc.get('version')!r}, this "
                        f"mtl-bench reads versions {', '.join(map(str, READABLE_VERSIONS))}; "
                        f"{redo}")
    if "speed" in doc:
        problem = entries_problem(doc["speed"])
        if problem:
            raise UserError(f"baseline '{name}' ({path}) is corrupt: speed {problem}; {redo}")
    runs = doc.get("runs")
    if not isinstance(runs, list) or doc.get("n_runs") != len(runs):
        raise UserError(f"baseline '{name}' ({path}) is corrupt: expected {doc.get('n_runs')!r} "
                        f"runs, found {len(runs) if isinstance(runs, list) else 'none'}; {redo}")
    for i, run in enumerate(runs):
        bad = [k for k, t in _RUN_FIELDS.items()
               if not isinstance(run, dict) or not isinstance(run.get(k), t)
               or isinstance(run.get(k), bool)]
        if bad:
            raise UserError(f"baseline '{name}' ({path}) is corrupt: run {i} has no valid "
                            f"{', '.join(bad)}; {redo}")
    if not runs:
        raise UserError(f"baseline '{name}' ({path}) holds no runs; {redo}")
    return doc


def list_baselines(root: str | Path, read: bool = True) -> list[dict[str, Any]]:
    """One summary dict per folder under ``root`` holding something named like a baseline file;
    a broken one (unreadable, corrupt, a folder, a looping link) has an ``error``. With
    ``read=False`` only the names of the regular files are listed, nothing is read."""
    out: list[dict[str, Any]] = []
    root = Path(root)
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    except OSError:
        return out
    for folder in folders:
        path, name = folder / BASELINE_FILE, folder.name
        if not _present(path) or not _NAME_RE.match(name):
            continue
        if not read:
            if path.is_file():
                out.append({"name": name})
            continue
        try:
            doc = load_baseline(root, name)
        except UserError as exc:
            out.append({"name": name, "error": str(exc)})
            continue
        out.append({"name": name, "created": doc.get("created", ""), "note": doc.get("note", ""),
                    "runs": doc["n_runs"], "pairs": sorted({r["pair"] for r in doc["runs"]}),
                    "strategies": sorted({r["strategy"] for r in doc["runs"]}),
                    "speed": len(doc.get("speed") or []), "version": doc["version"]})
    return out


# -- new runs ------------------------------------------------------------------------------------
def load_new_runs(runs_dir: str | Path) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Compact runs of a run folder; an empty set is a UserError (never a silent pass)."""
    store = RunStore(runs_dir)
    if not store.root.is_dir():
        raise UserError(f"runs folder '{store.root}' does not exist; "
                        "run `mtl-bench run --runs-dir ...` first")
    loaded = store.load()
    if not loaded.records:
        extra = f" ({len(loaded.corrupt)} corrupt)" if loaded.corrupt else ""
        raise UserError(f"no run records in '{store.root}'{extra}; nothing to check")
    from mtl_bench.tuning import read_spec

    tuned = read_spec(store.root)
    return [compact_run(r, tuned) for r in reported(loaded.records, tuned)], loaded.corrupt
