"""The speed stage: step time of each strategy on each task pair's own model, with intervals.

Per setting (task pair, task options, architecture) every strategy gets the pair's real model
and the same real training batch (the first batch of an epoch); a bilevel strategy also gets
one fixed meta batch (the first of the stream its runs draw from the training split).
Strategies are timed in interleaved rounds in one process: each round times every strategy for
``steps`` steps (the order is shuffled from round to round), so a burst of machine load hits all
of them alike. Per
round, each strategy's step time is divided by the step time of the reference (fixed weights)
in the same round; the ratio reported is the geometric mean of these paired ratios with a 95%
t-interval computed on the log scale (always positive). A strategy is called ``faster`` or
``slower`` only when that interval excludes 1. Samples/s are the median over rounds, with a
log-scale interval too.

Results go to ``speed.json`` in the runs folder; a later measurement replaces the entries of
the same (setting, strategy, device, threads) and keeps the others.
"""

from __future__ import annotations

import gc
import json
import math
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from mtl_bench.errors import UserError
from mtl_bench.stats import t_interval
from mtl_bench.store import atomic_write_text

SPEED_FILE = "speed.json"
SPEED_FORMAT = "mtl-bench-speed"
#: Version of the speed.json layout; a file of another version is refused.
SPEED_VERSION = 1
REFERENCE = "fixed"
DEFAULT_ROUNDS, DEFAULT_STEPS, DEFAULT_WARMUP = 9, 20, 5
FASTER, SLOWER, NO_CLEAR, IS_REFERENCE = "faster", "slower", "no clear difference", "reference"

#: One entry per (setting, strategy, device, threads); also the columns of :func:`load_speed`.
COLUMNS = ["setting", "task_pair", "options", "architecture", "strategy", "code",
           "reference_code", "batch_size", "samples_per_step", "device", "threads", "machine",
           "torch", "created", "rounds", "steps", "n_rounds", "step_ms", "samples_per_s",
           "samples_per_s_low", "samples_per_s_high", "ratio", "ratio_low", "ratio_high",
           "verdict"]
KEY = ("setting", "strategy", "device", "threads")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "setting": str, "task_pair": str, "options": dict, "architecture": str, "strategy": str,
    "device": str, "threads": int, "n_rounds": int}
_NUMBERS = ("step_ms", "samples_per_s", "samples_per_s_low", "samples_per_s_high", "ratio",
            "ratio_low", "ratio_high")


# -- statistics ----------------------------------------------------------------------------------
def log_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Geometric mean and the t-interval of the mean log, exponentiated: (centre, low, high).

    Positive whatever the spread; NaN bounds with fewer than two positive finite values."""
    logs = [math.log(v) for v in values if v > 0 and math.isfinite(v)]
    if not logs:
        return math.nan, math.nan, math.nan
    ci = t_interval(logs, level)
    return math.exp(ci.mean), math.exp(ci.low), math.exp(ci.high)


def ratio_verdict(low: float | None, high: float | None) -> str:
    """``slower`` / ``faster`` when the interval of step-time ratios excludes 1."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return NO_CLEAR
    return SLOWER if low > 1 else FASTER if high < 1 else NO_CLEAR


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def summarise(step_s: Sequence[float], reference_s: Sequence[float], samples: int,
              reference: bool = False) -> dict[str, Any]:
    """Per-round step times (seconds) of one strategy and of the reference in the same rounds
    -> step ms, samples/s with its interval, paired ratio with its interval, verdict."""
    _, sps_low, sps_high = log_interval([samples / s for s in step_s])
    ratios = [s / r for s, r in zip(step_s, reference_s)]
    ratio, low, high = (1.0, 1.0, 1.0) if reference else log_interval(ratios)
    median = statistics.median(step_s)
    return {"n_rounds": len(step_s), "step_ms": _finite(median * 1000),
            "samples_per_s": _finite(samples / median), "samples_per_s_low": _finite(sps_low),
            "samples_per_s_high": _finite(sps_high), "ratio": _finite(ratio),
            "ratio_low": _finite(low), "ratio_high": _finite(high),
            "verdict": IS_REFERENCE if reference else ratio_verdict(low, high)}


# -- measuring -----------------------------------------------------------------------------------
class _Setup(NamedTuple):
    """One strategy ready to step on a setting's model and fixed batch."""

    model: Any
    tasks: list
    strategy: Any
    inputs: tuple
    targets: tuple
    samples: int
    optimizer: Any
    #: A bilevel strategy's meta batch (inputs, targets), fixed like the batch; None otherwise.
    meta: Any = None


def _settings(configs: Sequence[Any]) -> dict[tuple[str, str, str], list[Any]]:
    """Resolved configs grouped by (task, options, architecture), one per strategy label, the
    reference first (added when missing). Single-task runs are left out."""
    from mtl_bench.train import RunConfig

    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for c in configs:
        if c.single_task is not None:
            continue
        c = c.resolved()
        key = (c.task, json.dumps(c.task_options, sort_keys=True, default=str), c.architecture)
        groups.setdefault(key, {}).setdefault(c.strategy_label, c)
    out = {}
    for key, by_label in groups.items():
        first = next(iter(by_label.values()))
        ref = by_label.pop(REFERENCE, None) or RunConfig(
            task=first.task, strategy=REFERENCE, task_options=first.task_options,
            architecture=first.architecture, batch_size=first.batch_size, lr=first.lr,
            sampling=first.sampling).resolved()
        out[key] = [ref, *by_label.values()]
    return out


def measure(configs: Sequence[Any], device: str = "cpu", threads: int = 1,
            rounds: int = DEFAULT_ROUNDS, steps: int = DEFAULT_STEPS,
            warmup: int = DEFAULT_WARMUP, seed: int = 0,
            progress: Callable[[str], None] | None = None) -> tuple[list[dict], list[str]]:
    """Time the strategies of ``configs`` (RunConfigs; seeds, epochs, lr grids and single-task
    runs do not matter) per setting. Returns the speed entries and notes on what was skipped."""
    import torch

    from mtl_bench.aggregate import setting_label
    from mtl_bench.train import machine_fingerprint, source_hash

    if rounds < 2 or steps < 1 or warmup < 0:
        raise UserError(f"speed needs at least 2 rounds of at least 1 step (got {rounds} "
                        f"rounds, {steps} steps)")
    if threads < 1:
        raise UserError(f"--threads must be a positive integer, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    entries: list[dict[str, Any]] = []
    notes: list[str] = []
    common = {"device": device, "threads": threads, "machine": machine_fingerprint(),
              "torch": torch.__version__, "rounds": rounds, "steps": steps,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        for group in _settings(configs).values():
            ref = group[0]
            label = setting_label(ref.task, ref.task_options, ref.architecture)
            if progress is not None:
                progress(f"{label}: {len(group)} strategies, {rounds} rounds x {steps} steps")
            setups, skipped = _prepare(group, device, seed, warmup)
            by_reason: dict[str, list[str]] = {}
            for name, reason in skipped:
                by_reason.setdefault(reason, []).append(name)
            notes += [f"{label}: {', '.join(names)} skipped: {reason}"
                      for reason, names in by_reason.items()]
            if not setups or setups[0][0] != REFERENCE:
                notes.append(f"{label}: skipped, the reference '{REFERENCE}' could not run")
                continue
            times, failed = _rounds(setups, rounds, steps, device)
            notes += [f"{label}: {n}" for n in failed]
            ref_code = source_hash(type(setups[0][1].strategy))
            for name, setup in setups:
                if name not in times:
                    continue
                entries.append({
                    "setting": label, "task_pair": ref.task, "options": ref.task_options,
                    "architecture": ref.architecture, "strategy": name,
                    "code": source_hash(type(setup.strategy)), "reference_code": ref_code,
                    "batch_size": ref.batch_size, "samples_per_step": setup.samples, **common,
                    **summarise(times[name], times[REFERENCE], setup.samples,
                                name == REFERENCE)})
    finally:
        torch.set_num_threads(previous)
    return entries, notes


def _prepare(group: Sequence[Any], device: str, seed: int, warmup: int
             ) -> tuple[list[tuple[str, _Setup]], list[tuple[str, str]]]:
    """(label, setup) per strategy that can run on this setting, warmed up; (label, reason)
    for the others."""
    import torch

    from mtl_bench.task import iterate_batches
    from mtl_bench.train import (
        build_strategy,
        build_task_pair,
        make_optimizer,
        meta_batches,
        validate,
    )

    ref = group[0]
    dev = torch.device(device)
    pair = build_task_pair(ref.task, ref.task_options)
    tasks = list(pair.tasks())
    data = pair.load(seed).to(dev)
    gen = torch.Generator().manual_seed(seed)
    inputs, targets = next(iter(iterate_batches(data.train, ref.batch_size, gen, ref.sampling)))
    samples = sum(len(x) for x in inputs)
    setups, notes = [], []
    for c in group:
        name = c.strategy_label
        try:
            validate(replace(c, device=device))
            strategy = build_strategy(c.strategy, c.strategy_params)
            strategy.setup([t.info for t in tasks], seed=seed)
            strategy.to(dev)
            if strategy.grad_source == "rep" and not data.train.shared_inputs:
                raise UserError("takes gradients at the shared representation, which needs "
                                "inputs shared by all tasks")
            torch.manual_seed(seed)
            model = pair.build_model(data, list(range(len(tasks))), c.architecture).to(dev)
            opt = make_optimizer(model, strategy, c.lr, c.weight_decay)
            # a bilevel strategy also gets a fixed meta batch: the first of its own stream
            meta = (next(meta_batches(data.train, ref.batch_size, seed, ref.sampling))
                    if strategy.needs_meta_batch else None)
            setup = _Setup(model, tasks, strategy, inputs, targets, samples, opt, meta)
            _time(setup, warmup, dev)
        except UserError as exc:
            notes.append((name, str(exc).replace(f"strategy '{name}' ", "")))
            continue
        except Exception as exc:  # one strategy that cannot step must not end the stage
            notes.append((name, f"{type(exc).__name__}: {exc}"))
            continue
        setups.append((name, setup))
    return setups, notes


def _time(setup: _Setup, steps: int, dev: Any) -> float:
    """Seconds per step over ``steps`` training steps on the fixed batch."""
    import torch

    from mtl_bench.train import train_step

    model, tasks, strategy, inputs, targets, _, opt, meta = setup
    extra = {} if meta is None else {"meta": meta}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, tasks, strategy, inputs, targets, opt, **extra)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - start) / max(steps, 1)


def _rounds(setups: list[tuple[str, _Setup]], rounds: int, steps: int, device: str
            ) -> tuple[dict[str, list[float]], list[str]]:
    """Interleaved rounds, each in its own shuffled (seeded) order so that no strategy always
    goes first or follows the same neighbour; garbage collection runs between rounds, not
    inside a timed block. A strategy that raises is dropped (with a note)."""
    import torch

    dev = torch.device(device)
    times: dict[str, list[float]] = {name: [] for name, _ in setups}
    notes = []
    was_enabled = gc.isenabled()
    try:
        for r in range(rounds):
            gc.collect()
            gc.disable()
            for name, setup in random.Random(r).sample(setups, len(setups)):
                if name not in times:
                    continue
                try:
                    times[name].append(_time(setup, steps, dev))
                except Exception as exc:
                    notes.append(f"{name} dropped in round {r + 1}: {type(exc).__name__}: {exc}")
                    del times[name]
                    if name == REFERENCE:
                        return {}, notes
            if was_enabled:
                gc.enable()
    finally:
        if was_enabled:
            gc.enable()
    return times, notes


# -- the file ------------------------------------------------------------------------------------
def speed_path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / SPEED_FILE


def read_speed(runs_dir: str | Path) -> dict[str, Any] | None:
    """The validated speed.json of a runs folder, None when there is none; a corrupt file is a
    one-line UserError."""
    path = speed_path(runs_dir)
    redo = f"delete it and rerun `mtl-bench speed --runs-dir {Path(runs_dir)}`"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"speed file '{path}' cannot be read or is corrupt "
                        f"({type(exc).__name__}: {exc}); {redo}") from None
    if not isinstance(doc, dict) or doc.get("format") != SPEED_FORMAT:
        raise UserError(f"'{path}' is not an mtl-bench speed file; {redo}")
    if doc.get("version") != SPEED_VERSION:
        raise UserError(f"speed file '{path}' has version {doc.get('version')!r}, this mtl-bench "
                        f"reads version {SPEED_VERSION}; {redo}")
    problem = entries_problem(doc.get("entries"))
    if problem:
        raise UserError(f"speed file '{path}' is corrupt: {problem}; {redo}")
    return doc


def entries_problem(entries: Any) -> str | None:
    """What is wrong with a list of speed entries, or None (also used for baselines)."""
    if not isinstance(entries, list):
        return "no list of entries"
    for i, e in enumerate(entries):
        bad = [k for k, t in _TYPES.items() if not isinstance(e, dict)
               or not isinstance(e.get(k), t) or isinstance(e.get(k), bool)]
        bad += [k for k in _NUMBERS if isinstance(e, dict) and e.get(k) is not None
                and (not isinstance(e.get(k), (int, float)) or isinstance(e.get(k), bool))]
        if bad:
            return f"entry {i} has no valid {', '.join(bad)}"
    return None


def _key(entry: dict[str, Any]) -> tuple:
    return tuple(entry.get(k) for k in KEY)


def merge_entries(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """Old entries not measured again, then the new ones, sorted by setting and strategy."""
    fresh = {_key(e) for e in new}
    merged = [e for e in old if _key(e) not in fresh] + list(new)
    return sorted(merged, key=lambda e: (e["setting"], e["strategy"] != REFERENCE,
                                         e["strategy"], e["device"], e["threads"]))


def write_speed(runs_dir: str | Path, entries: Sequence[dict[str, Any]]) -> tuple[Path, int]:
    """Merge ``entries`` into the runs folder's speed.json; returns its path and how many
    entries of earlier measurements were kept."""
    old = read_speed(runs_dir)
    old_entries = old["entries"] if old else []
    merged = merge_entries(old_entries, entries)
    last = entries[0] if entries else {}
    doc = {"format": SPEED_FORMAT, "version": SPEED_VERSION,
           "provenance": {k: last.get(k) for k in ("machine", "torch", "device", "threads",
                                                    "created", "rounds", "steps")}
           | {"python": platform.python_version(), "platform": platform.platform()},
           "entries": merged}
    path = speed_path(runs_dir)
    lines = [f"    {json.dumps(e, sort_keys=True, allow_nan=False)}" for e in merged]
    head = {k: v for k, v in doc.items() if k != "entries"}
    text = "{\n" + "".join(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)},\n"
                           for k, v in head.items())
    text += '  "entries": [\n' + ",\n".join(lines) + "\n  ]\n}\n"
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise UserError(f"cannot write '{path}': {exc.strerror or exc}") from exc
    return path, len(merged) - len(entries)


def load_speed(runs_dir: str | Path):
    """speed.json as a DataFrame with :data:`COLUMNS` (empty, same columns, when absent)."""
    import pandas as pd

    doc = read_speed(runs_dir)
    rows = [{c: e.get(c) for c in COLUMNS} for e in (doc["entries"] if doc else [])]
    return pd.DataFrame(rows, columns=COLUMNS)


def format_interval(x: float | None, low: float | None, high: float | None, fmt: str) -> str:
    if x is None:
        return "-"
    text = format(x, fmt)
    if low is not None and high is not None:
        text += f" [{format(low, fmt)}, {format(high, fmt)}]"
    return text
