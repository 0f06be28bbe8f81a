"""Expand a grid of runs, skip the finished ones, hand the rest to an executor and store each
record.

Executors (this process, local worker processes, GPU workers, Dask; :mod:`mtl_bench.executors`)
return run records to the client, which writes them through the store; so a cluster needs no
shared file system, every write stays atomic and a worker that dies never leaves a
half-written record behind.
"""

from __future__ import annotations

import inspect
import itertools
import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from mtl_bench import progress as progress_view
from mtl_bench import registry
from mtl_bench.errors import UserError
from mtl_bench.executors import InProcess, make_executor
from mtl_bench.executors.base import Executor, Finish
from mtl_bench.store import RunStore
from mtl_bench.train import RunConfig, build_task_pair, current_code, validate

#: Default ``--tune lr`` grid: these factors times the task pair's default learning rate.
TUNE_LR_FACTORS = (1 / 3, 1.0, 3.0)


# -- parsing -----------------------------------------------------------------------------------
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


#: Most seeds one sweep may name (far beyond any study; a typo such as 100000000000 would
#: otherwise build the whole list in memory).
MAX_SEEDS = 10_000
#: Largest seed value: the 32-bit range of numpy's legacy seeding (torch takes 64 bits).
MAX_SEED = 2**32 - 1


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """``3`` -> [0, 1, 2]; ``0,5,7`` (or a list) -> [0, 5, 7]. At most :data:`MAX_SEEDS`
    seeds, each from 0 to :data:`MAX_SEED`."""
    count = None
    try:
        if isinstance(text, (list, tuple)):
            seeds = [int(s) for s in text]
            if not seeds or min(seeds) < 0 or any(isinstance(s, bool) for s in text):
                raise ValueError
        elif isinstance(text, int) or "," not in str(text):
            if isinstance(text, bool):
                raise ValueError
            count = int(text)
            if count < 1:
                raise ValueError
        else:
            seeds = [int(s) for s in str(text).split(",") if s.strip()]
            if not seeds or min(seeds) < 0:
                raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"--seeds expects a count (3) or a list (0,5,7), got '{text}'") from None
    if count is not None:
        if count > MAX_SEEDS:
            raise UserError(f"--seeds: at most {MAX_SEEDS} seeds per sweep, got {count}")
        return list(range(count))
    if len(seeds) > MAX_SEEDS:
        raise UserError(f"--seeds: at most {MAX_SEEDS} seeds per sweep, got {len(seeds)}")
    if max(seeds) > MAX_SEED:
        raise UserError(f"--seeds: a seed must be at most {MAX_SEED} (2**32 - 1), "
                        f"got {max(seeds)}")
    return seeds


def check_lrs(values: Sequence[Any], source: str = "--lr") -> list[float]:
    """Learning rates must be positive finite numbers; returns them as floats."""
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        if not ok:
            raise UserError(f"{source} expects positive numbers such as 1e-3,3e-3; got {v!r}")
        out.append(float(v))
    if not out:
        raise UserError(f"{source} expects at least one learning rate")
    return out


def parse_lrs(text: str) -> list[float]:
    """``1e-3,3e-3`` -> [0.001, 0.003] (one value is a grid of one)."""
    values: list[Any] = []
    for t in text.split(","):
        try:
            values.append(float(t))
        except ValueError:
            values.append(t.strip())
    return check_lrs(values)


# -- the grid ----------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    """What to run. ``lrs``: explicit learning-rate grid for every task pair (None: the base
    config's lr, or the pair's default). ``lr_factors``: grid relative to each pair's default
    (``--tune lr`` without ``--lr``); ignored when ``lrs`` is given."""

    tasks: Sequence[str]
    strategies: Sequence[str]
    seeds: Sequence[int]
    assignments: dict[str, dict[str, list[Any]]]
    base: RunConfig
    single_task: bool = False
    lrs: Sequence[float] | None = None
    lr_factors: Sequence[float] | None = field(default=None)
    settings: dict[str, Sequence[Any]] = field(default_factory=dict)


def setting_grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """The combinations of ``spec.settings`` (config field -> values, e.g. ``{"sampling":
    ["equal", "temperature"]}``); each combination replaces those fields of the base config and
    is a setting of its own. One empty dict when there is no such grid."""
    for key in spec.settings:
        if key not in SETTING_GRID_FIELDS:
            raise ValueError(f"SweepSpec.settings: '{key}' is not a setting field that can form "
                             f"a grid ({', '.join(SETTING_GRID_FIELDS)})")
    return grid({k: list(dict.fromkeys(v)) for k, v in spec.settings.items()})


#: Config fields a sweep may list several values of (``run --epochs 2,4``): each value makes
#: a setting of its own. The learning rate is a grid to select over instead (``lrs``).
SETTING_GRID_FIELDS = ("architecture", "sampling", "epochs", "batch_size", "weight_decay")


def _round_sig(x: float, digits: int = 3) -> float:
    # 3e-3 / 3 is 0.0009999999999999998 in binary; round so that run ids and labels stay tidy
    return float(f"{x:.{digits}g}")


def lr_grid(spec: SweepSpec, task: str) -> list[float | None]:
    if spec.lrs:
        return list(spec.lrs)
    if spec.lr_factors:
        centre = spec.base.lr if spec.base.lr is not None else registry.tasks.get(task).lr
        return sorted({_round_sig(centre * f) for f in spec.lr_factors})
    return [spec.base.lr]


def expand(spec: SweepSpec) -> list[RunConfig]:
    """All runs of the grid, plus single-task baselines (one per task and seed) if asked: per
    task pair, each setting of ``spec.settings``, each task-pair option combination, then
    strategies x hyper-parameter variants x learning rates x seeds."""
    known = set(spec.tasks) | set(spec.strategies)
    for name in spec.assignments:
        if name not in known:
            kind = ("task pair" if name in registry.tasks.names() else
                    "strategy" if name in registry.strategies.names() else None)
            if kind is None:
                raise UserError(f"--set names '{name}', which is neither a strategy nor a task "
                                "pair; choose from: " + ", ".join(sorted(known)))
            option, chosen = (("--task", spec.tasks) if kind == "task pair" else
                              ("--strategy", spec.strategies))
            raise UserError(f"--set names {kind} '{name}', which is not in this sweep "
                            f"({option} {','.join(chosen)})")
    configs: list[RunConfig] = []
    for task, setting in itertools.product(spec.tasks, setting_grid(spec)):
        base = replace(spec.base, **setting)
        task_grid = grid(spec.assignments.get(task, {}))
        lrs = lr_grid(spec, task)
        for task_options in task_grid:
            n_tasks = len(build_task_pair(task, task_options).tasks())
            for strategy in spec.strategies:
                cls = registry.strategies.get(strategy)
                variants = [v for params in grid(spec.assignments.get(strategy, {}))
                            for v in cls.variants(params, n_tasks)]
                for params in variants:
                    for lr in lrs:
                        for seed in spec.seeds:
                            configs.append(replace(base, task=task, strategy=strategy,
                                                   strategy_params=params, seed=seed, lr=lr,
                                                   task_options=task_options))
            if spec.single_task:
                pair = build_task_pair(task, task_options)
                for t in pair.tasks():
                    for lr in lrs:
                        for seed in spec.seeds:
                            configs.append(replace(base, task=task, strategy="fixed",
                                                   strategy_params={}, seed=seed, lr=lr,
                                                   task_options=task_options,
                                                   single_task=t.name))
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
                    sorted(c.strategy_params.items()), c.architecture, c.single_task, c.lr,
                    c.epochs, c.batch_size, c.sampling, c.weight_decay))
        if key not in checked:
            checked.add(key)
            validate(c)


#: Failure kinds a plain rerun retries: the cause was the worker or the machine, not the run.
RETRYABLE = frozenset({"worker", "timeout"})
CODE_PARTS = (("strategy", "strategy"), ("task", "task-pair"), ("harness", "harness"))


def failure_kind(record: dict[str, Any]) -> str:
    """``diverged``, ``timeout``, ``worker`` (the process died or a Dask task was lost) or
    ``error``; records of earlier versions are read from their reason."""
    kind = record.get("failure")
    if kind:
        return str(kind)
    reason = str(record.get("reason", ""))
    if reason.startswith(("worker process", "Dask task failed")):
        return "worker"
    if "--max-run-seconds" in reason:
        return "timeout"
    if record.get("failed_epoch") is not None or "non-finite" in reason:
        return "diverged"
    return "error"


def stale_reason(record: dict[str, Any], config: RunConfig) -> str:
    """Why a stored record does not come from the code installed now ('' when it does)."""
    stored = record.get("code") or {}
    if not stored:
        return "the record carries no code identity"
    now = current_code(config.resolved())
    changed = [what for key, what in CODE_PARTS if stored.get(key) != now.get(key)]
    return f"{', '.join(changed)} code changed" if changed else ""


@dataclass
class Planned:
    """One config of the grid with what its stored record says: ``new``, ``done``, ``stale``,
    ``failed`` (deterministic: kept), ``retry`` (the worker failed) or ``corrupt``."""

    config: RunConfig
    state: str
    reason: str = ""
    todo: bool = True

    def describe(self) -> str:
        if self.state == "new":
            return "to run"
        if self.state == "done":
            return "done"
        if self.state == "stale":
            return f"stale ({self.reason}): " + ("will retrain" if self.todo else "kept")
        if self.state == "retry":
            return f"failed ({self.reason}): will retry"
        if self.state == "failed":
            return f"failed ({self.reason}): " + ("will rerun" if self.todo else
                                                   "kept (--retry-failed reruns it)")
        return "corrupt record: will rerun"


def plan(configs: Sequence[RunConfig], store: RunStore, retry_failed: bool = False,
         keep_stale: bool = False) -> list[Planned]:
    """What to do with each config: train it, or keep its stored record. A record trained with
    other strategy, task-pair or harness code is stale and retrained (unless ``keep_stale``);
    a failure whose cause was the worker (killed, out of memory, timeout) is retried; a
    deterministic failure (divergence, an error in the run) is kept unless ``retry_failed``."""
    out = []
    for c in configs:
        path = store.path_for(c.task, c.run_id)
        if not path.exists():
            out.append(Planned(c, "new"))
            continue
        try:
            record = store.read(path)
        except ValueError:
            out.append(Planned(c, "corrupt"))
            continue
        stale = stale_reason(record, c)
        if stale:
            out.append(Planned(c, "stale", stale, not keep_stale))
        elif record.get("status") == "ok":
            out.append(Planned(c, "done", todo=False))
        elif failure_kind(record) in RETRYABLE:
            out.append(Planned(c, "retry", failure_kind(record)))
        else:
            out.append(Planned(c, "failed", failure_kind(record), retry_failed))
    return out


def check_writable(store: RunStore) -> None:
    """Fail before any training when the results folder cannot take a record."""
    try:
        store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=store.root, prefix=".probe-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write run records to '{store.root}': "
                        f"{exc.strerror or exc}") from None


def method_text(c: RunConfig) -> str:
    """``gradnorm(alpha=0.5)``, or for a single-task run the task it trains:
    ``single-task (species)``."""
    return c.strategy_label + (f" ({c.single_task})" if c.single_task is not None else "")


def setting_text(c: RunConfig, fields: Sequence[str]) -> str:
    """The values of the given setting fields: ``sampling=equal epochs=2`` ('' for none)."""
    return " ".join(f"{k}={getattr(c, k)}" for k in fields)


def describe(c: RunConfig, with_lr: bool = False, fields: Sequence[str] = ()) -> str:
    lr = f" lr {c.resolved().lr:g}" if with_lr else ""
    setting = f" [{setting_text(c, fields)}]" if fields else ""
    return f"{c.task}{setting} {method_text(c)}{lr} seed {c.seed}"


# -- progress ----------------------------------------------------------------------------------
class Progress(progress_view.Progress):
    """One line per finished run, ``[done/total] what: status (time, elapsed, ETA)``, and in a
    terminal a live view of the runs in progress (:mod:`mtl_bench.progress`). Runs are named
    by :func:`describe` (with the lr where the sweep has an lr grid, and the given setting
    ``fields``)."""

    def __init__(self, total: int, quiet: bool = False, stream: TextIO | None = None,
                 with_lr: bool = False, fields: Sequence[str] = (), live: bool | None = None):
        self.with_lr = with_lr
        self.fields = tuple(fields)
        super().__init__(total, quiet, stream, label=self.describe_run, live=live)

    def describe_run(self, config: RunConfig) -> str:
        return describe(config, self.with_lr, self.fields)


# -- execution ---------------------------------------------------------------------------------
def _sweep_device(configs: Sequence[RunConfig]) -> str:
    """The device that places the workers: the configs' one device; ``cuda`` where some say
    ``cuda`` (only those are placed); else ``cpu``."""
    devices = {c.device for c in configs}
    if len(devices) == 1:
        return devices.pop()
    return "cuda" if "cuda" in devices else "cpu"


def execute(configs: Sequence[RunConfig], store: RunStore, jobs: int = 1,
            max_seconds: float | None = None, quiet: bool = False,
            on_record: Finish | None = None, executor: str | Executor = "local",
            scheduler: str | None = None, plugins: Sequence[tuple[str, str]] = (),
            progress: progress_view.Progress | None = None,
            seed_batch: int = 1) -> progress_view.Progress:
    """Run every config, writing each record as soon as it arrives.

    ``executor`` names one (:func:`~mtl_bench.executors.make_executor`: ``jobs == 1`` runs in
    this process, more in worker processes, placed on GPUs when the configs say ``cuda``;
    ``dask`` on a cluster) or is an :class:`~mtl_bench.executors.base.Executor` itself.
    Records are written here, in the client, one atomic write each. ``progress`` shows the
    sweep (its live view, in a terminal, is closed again on any exit, Ctrl-C included).
    """
    progress = progress or Progress(len(configs), quiet)

    def finish(config: RunConfig, record: dict[str, Any]) -> None:
        store.write(record)
        progress.finished(config, record)
        if on_record is not None:
            on_record(config, record)

    workers = jobs
    if isinstance(executor, str):
        n_jobs = len(configs) if seed_batch <= 1 else -(-len(configs) // seed_batch)
        workers = min(jobs, max(n_jobs, 1))
        executor = make_executor(executor, workers, _sweep_device(configs),
                                 max_seconds, plugins, scheduler, seed_batch)
    workers = int(getattr(executor, "jobs", workers) or 1)
    if isinstance(executor, InProcess):
        workers = 1
    # a seed group trains its runs side by side on one worker
    progress.begin(configs, workers * max(seed_batch, 1))
    try:
        if _takes_report(executor):
            executor.run(configs, finish, report=progress.report)
        else:
            executor.run(configs, finish)
    finally:
        progress.close()
    return progress


def _takes_report(executor: Executor) -> bool:
    """Whether ``executor.run`` accepts the optional ``report`` callback (an executor written
    before it existed takes ``(configs, finish)`` only)."""
    try:
        params = inspect.signature(executor.run).parameters
    except (TypeError, ValueError):
        return False
    return "report" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
