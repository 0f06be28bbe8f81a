"""Expand a grid of runs, skip the finished ones, execute the rest and store each record.

Workers (local processes, or Dask workers) return run records to the client, which writes them
through the store; so a cluster needs no shared file system and every write stays atomic.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from mtl_bench import registry
from mtl_bench.errors import UserError
from mtl_bench.store import RunStore
from mtl_bench.train import RunConfig, train_run, validate


def parse_value(text: str) -> Any:
    """``3`` -> 3, ``0.5`` -> 0.5, ``true`` -> True, ``none`` -> None, ``1/0.5`` -> [1, 0.5]."""
    text = text.strip()
    if "/" in text:
        return [parse_value(t) for t in text.split("/") if t.strip()]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_assignments(items: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    """``--set NAME.key=v1,v2`` -> {NAME: {key: [v1, v2]}}; comma-separated values form a grid."""
    out: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"--set expects NAME.PARAM=VALUE[,VALUE...], got '{item}'")
        key, values = item.split("=", 1)
        name, param = key.split(".", 1)
        if not name or not param or not values.strip():
            raise UserError(f"--set expects NAME.PARAM=VALUE[,VALUE...], got '{item}'")
        out.setdefault(name.strip(), {})[param.strip()] = [
            parse_value(v) for v in values.split(",")]
    return out


def grid(params: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of parameter value lists; one empty dict when there are none."""
    if not params:
        return [{}]
    keys = sorted(params)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(params[k] for k in keys))]


def parse_seeds(text: str | int) -> list[int]:
    """``3`` -> [0, 1, 2]; ``0,5,7`` -> [0, 5, 7]."""
    try:
        if isinstance(text, int) or "," not in str(text):
            n = int(text)
            if n < 1:
                raise ValueError
            return list(range(n))
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
        if not seeds or min(seeds) < 0:
            raise ValueError
        return seeds
    except ValueError:
        raise UserError(f"--seeds expects a count (3) or a list (0,5,7), got '{text}'") from None


@dataclass
class SweepSpec:
    tasks: Sequence[str]
    strategies: Sequence[str]
    seeds: Sequence[int]
    assignments: dict[str, dict[str, list[Any]]]
    base: RunConfig
    single_task: bool = False


def expand(spec: SweepSpec) -> list[RunConfig]:
    """All runs of the grid, plus single-task baselines (one per task and seed) if asked."""
    known = set(spec.tasks) | set(spec.strategies)
    for name in spec.assignments:
        if name not in known:
            kind = ("task pair" if name in registry.tasks.names() else
                    "strategy" if name in registry.strategies.names() else None)
            if kind is None:
                raise UserError(f"--set names '{name}', which is neither a strategy nor a task "
                                "pair; choose from: " + ", ".join(sorted(known)))
    configs: list[RunConfig] = []
    for task in spec.tasks:
        task_grid = grid(spec.assignments.get(task, {}))
        for task_options in task_grid:
            n_tasks = len(registry.tasks.get(task)(**task_options).tasks())
            for strategy in spec.strategies:
                cls = registry.strategies.get(strategy)
                variants = [v for params in grid(spec.assignments.get(strategy, {}))
                            for v in cls.variants(params, n_tasks)]
                for params in variants:
                    for seed in spec.seeds:
                        configs.append(replace(spec.base, task=task, strategy=strategy,
                                               strategy_params=params, seed=seed,
                                               task_options=task_options))
            if spec.single_task:
                pair = registry.tasks.get(task)(**task_options)
                for t in pair.tasks():
                    for seed in spec.seeds:
                        configs.append(replace(spec.base, task=task, strategy="fixed",
                                               strategy_params={}, seed=seed,
                                               task_options=task_options, single_task=t.name))
    seen: set[str] = set()
    unique = []
    for c in configs:
        if c.run_id not in seen:
            seen.add(c.run_id)
            unique.append(c)
    return unique


def validate_all(configs: Sequence[RunConfig]) -> None:
    """Every distinct (task, options, strategy, params) is built once before anything runs."""
    checked: set[str] = set()
    for c in configs:
        key = repr((c.task, sorted(c.task_options.items()), c.strategy,
                    sorted(c.strategy_params.items()), c.architecture, c.single_task))
        if key not in checked:
            checked.add(key)
            validate(c)


def plan(configs: Sequence[RunConfig], store: RunStore,
         retry_failed: bool = False) -> list[tuple[RunConfig, str | None]]:
    """Each config with its stored status: None (to run), ok, failed, or corrupt (to rerun)."""
    out = []
    for c in configs:
        status = store.status(c.task, c.run_id)
        out.append((c, status))
    return out


def needs_run(status: str | None, retry_failed: bool) -> bool:
    return status is None or status == "corrupt" or (retry_failed and status == "failed")


def _describe(c: RunConfig) -> str:
    return f"{c.task} {c.strategy_label} seed {c.seed}"


def _run_in_worker(config: RunConfig, max_seconds: float | None) -> dict[str, Any]:
    # one process per run slot: the config's thread count applies to this process only
    return train_run(config, max_seconds=max_seconds)


class Progress:
    """One overall line per finished run: [done/total] what, status, time, ETA."""

    def __init__(self, total: int, quiet: bool = False, stream=None):
        self.total = total
        self.done = 0
        self.failed = 0
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def finished(self, config: RunConfig, record: dict[str, Any]) -> None:
        self.done += 1
        ok = record.get("status") == "ok"
        self.failed += not ok
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        status = "ok" if ok else f"FAILED: {record.get('reason', '')}"
        print(f"[{self.done}/{self.total}] {_describe(config)}: {status} "
              f"({record.get('wall_s', 0):.1f}s, ETA {eta:.0f}s)", file=self.stream, flush=True)


def execute(configs: Sequence[RunConfig], store: RunStore, jobs: int = 1,
            max_seconds: float | None = None, quiet: bool = False,
            on_record: Callable[[RunConfig, dict[str, Any]], None] | None = None,
            executor: str = "local", scheduler: str | None = None) -> Progress:
    """Run every config, writing each record as soon as it arrives."""
    progress = Progress(len(configs), quiet)

    def finish(config: RunConfig, record: dict[str, Any]) -> None:
        store.write(record)
        progress.finished(config, record)
        if on_record is not None:
            on_record(config, record)

    if executor == "dask":
        from mtl_bench.dask_executor import run_on_dask

        run_on_dask(configs, finish, scheduler, max_seconds, jobs)
        return progress
    if jobs <= 1 or len(configs) <= 1:
        for c in configs:
            finish(c, train_run(c, max_seconds=max_seconds))
        return progress
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork after torch has started threads
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        pending = {pool.submit(_run_in_worker, c, max_seconds): c for c in configs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    c = pending.pop(fut)
                    finish(c, fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return progress


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)
