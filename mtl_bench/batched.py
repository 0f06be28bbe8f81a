"""Seed batching: K seeds of one config trained as one vectorised model, K ordinary records out.

:func:`train_batched` takes K configs that differ only in their seed. Each seed is set up exactly
as :func:`mtl_bench.train.train_run` sets up a run (same seeding order, so the same split, the
same initial weights and the same strategy state), then the K models' parameters are stacked
(``torch.func.stack_module_state``) and trained together:

* each seed keeps its own data split and its own shuffling generator; a step gathers the K
  batches into one (K, B, ...) tensor;
* the task losses of all seeds come from one ``vmap`` of the model over the stacked parameters,
  and task gradients (for strategies that ask for them) from one autograd call per task;
* the strategy's ``combine`` and ``after_step`` run under ``vmap`` over the K instances' stacked
  parameters and buffers, or through the strategy's own ``combine_seeds`` ("written batched");
  a strategy says it supports either with ``batchable = True``. ``on_epoch_end`` runs per seed;
* one backward pass of the sum over seeds (seeds share nothing, so the gradient at each seed's
  slice is that seed's own gradient) and one optimiser, built by ``make_optimizer``, over the
  stacked tensors: Adam is elementwise, so it equals K optimisers;
* per epoch, each seed's model is evaluated and selected exactly as in ``train_run``.

Records equal those of K separate ``train_run`` calls up to floating-point rounding (batched
matrix products and reductions add in another order): :data:`RTOL` / :data:`ATOL` bound every
curve value and weight, :data:`DIAGNOSTICS_RTOL` / :data:`DIAGNOSTICS_ATOL` the gradient
diagnostics, and the selected epoch is the same (``tests/test_batched.py``). A record's identity
(run id, config, code hashes) is the unbatched run's, so it stands in for that run in the store;
its provenance says ``seed_batch: K``. Throughput and ``wall_s`` are each run's share of the
batch: times divided by K, rates multiplied by K (``throughput["batch_step_ms"]`` is the whole
batch's step, ``throughput["seed_batch"]`` is K).
"""

from __future__ import annotations

import hashlib
import inspect
import resource
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from mtl_bench import registry
from mtl_bench.batched_step import StackedModel, StackedStrategy, batched_step
from mtl_bench.clock import PhaseTimer, make_clock
from mtl_bench.errors import RunDiverged, UserError
from mtl_bench.selection import Selector
from mtl_bench.strategy import Strategy
from mtl_bench.task import MultiTaskNet, Task, TaskData, TaskPair, steps_per_epoch
from mtl_bench.train import (
    ReadPoints,
    RunConfig,
    RunTimeout,
    build_task_pair,
    classification_details,
    evaluate,
    failures_since,
    make_optimizer,
    set_up_run,
    train_run,
)

#: Tolerance of seed batching (float32 training, stated and tested): a batched record's curve
#: values (every train/val/test metric at every epoch) and logged weights are within
#: ``ATOL + RTOL * |value alone|`` of the same config trained alone (measured on clsreg: below
#: 3e-7 relative after 3 epochs, 2.2e-6 after 30).
RTOL, ATOL = 1e-5, 1e-6
#: Gradient diagnostics (norms, cosines) are sums over many products: looser.
DIAGNOSTICS_RTOL, DIAGNOSTICS_ATOL = 1e-3, 1e-5
_STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def can_batch(config: RunConfig) -> str | None:
    """None when ``config`` can be trained in a seed batch, else the reason it cannot (the run
    then goes to ``train_run`` alone). Builds the task pair and loads its data for this seed."""
    cls = registry.strategies.get(config.strategy)
    if getattr(cls, "needs_meta_batch", False):
        return (f"strategy '{config.strategy}' is bilevel (it draws a meta batch and runs a "
                "look-ahead of the model at every step), which seed batching does not vectorise")
    if not getattr(cls, "batchable", False):
        return (f"strategy '{config.strategy}' is not batchable (its combine is not pure tensor "
                "code that vmap can run for K seeds at once)")
    pair = build_task_pair(config.task, config.task_options)
    data = pair.load(config.seed)
    if not data.train.shared_inputs:
        return (f"task pair '{config.task}' gives each task its own dataset; per-task sampling "
                "is not batched")
    model = pair.build_model(data, None, config.architecture)
    odd = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _STOCHASTIC)})
    if odd:
        return f"the model has {', '.join(odd)} layers, whose randomness or statistics vmap " \
               "cannot split per seed"
    return None


# -- one seed's setup, as train_run does it ------------------------------------------------------
@dataclass
class _Seed:
    config: RunConfig
    pair: TaskPair
    tasks: list[Task]
    data: TaskData
    model: MultiTaskNet
    strategy: Strategy
    record: dict[str, Any]
    generator: torch.Generator
    selector: Selector
    best_state: dict[str, Tensor] = field(default_factory=dict)
    curves: list[list[Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    unread: list[dict[str, Any]] = field(default_factory=list)
    solver_failures: list[int] = field(default_factory=list)
    steps: int = 0
    alive: bool = True
    wall_s: float = 0.0


def _set_up(config: RunConfig, device: torch.device) -> _Seed:
    """One seed set up exactly as ``train_run`` sets up a run (:func:`~mtl_bench.train.set_up_run`),
    plus its own data-order generator and selector."""
    pair, tasks, data, model, strategy, record = set_up_run(config, device)
    return _Seed(config, pair, tasks, data, model, strategy, record,
                 torch.Generator().manual_seed(config.seed), Selector(config.select, tasks))


def _check_batch(configs: Sequence[RunConfig]) -> list[RunConfig]:
    if not configs:
        raise ValueError("train_batched needs at least one config")
    resolved = [c.resolved() for c in configs]
    first = replace(resolved[0], seed=0)
    for c in resolved[1:]:
        if replace(c, seed=0) != first:
            raise ValueError("a seed batch holds configs that differ only in their seed; got "
                             f"{resolved[0]} and {c}")
    seeds = [c.seed for c in resolved]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed batch needs distinct seeds, got {seeds}")
    reason = can_batch(resolved[0])
    if reason is not None:
        raise ValueError(f"this config cannot be seed-batched: {reason}")
    return resolved


# -- what a sweep calls ----------------------------------------------------------------------
def seed_batches(configs: Sequence[RunConfig], k: int) -> list[list[RunConfig]]:
    """``configs`` in groups of at most ``k`` that differ only in their seed (distinct seeds),
    in the order their first members appear; a config with no partner is a group of one."""
    if k < 1:
        raise ValueError(f"a seed batch holds at least one run, got k = {k}")
    groups: dict[str, list[list[RunConfig]]] = {}
    order: list[list[RunConfig]] = []
    for config in configs:
        key = _without_seed(config)
        chunks = groups.setdefault(key, [])
        if not chunks or len(chunks[-1]) >= k or any(c.seed == config.seed for c in chunks[-1]):
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(config)
    return order


def _without_seed(config: RunConfig) -> str:
    return repr(replace(config.resolved(), seed=0))


def train_seed_batch(configs: Sequence[RunConfig],
                     progress: Callable[[str], None] | None = None,
                     max_seconds: float | None = None) -> list[dict[str, Any]]:
    """One group of :func:`seed_batches`: trained as one batch when :func:`can_batch` allows
    it (and the group has more than one run), otherwise run by run with ``train_run``, each
    record then noting why (``seed_batch: not used, REASON``). ``max_seconds`` is per run (the
    batch gets K times as long). Records come back in the order of ``configs``."""
    reason = can_batch(configs[0]) if len(configs) > 1 else "a group of one run"
    if reason is None:
        limit = None if max_seconds is None else max_seconds * len(configs)
        try:
            return train_batched(configs, progress, limit)
        except ValueError as exc:  # raised before any training (the seeds' splits differ...)
            reason = str(exc)
    records = []
    for config in configs:
        record = train_run(config, progress, max_seconds)
        record.setdefault("notes", []).append(f"seed_batch: not used, {reason}")
        records.append(record)
    return records


# -- timing and read points --------------------------------------------------------------------
def _share(summary: dict[str, float], k: int) -> dict[str, float]:
    """One run's share of the batch's phase timings: times divided by K, rates multiplied."""
    out = dict(summary)
    for key in summary:
        if key.endswith("_ms"):
            out[key] = summary[key] / k
        elif key.endswith("_per_s"):
            out[key] = summary[key] * k
    if "step_ms" in summary:
        out["batch_step_ms"] = summary["step_ms"]
    return out


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


@lru_cache(maxsize=1)
def _source_hash() -> str:
    """Hash of the seed-batching code (in the provenance: the harness hash does not cover it)."""
    h = hashlib.sha256()
    for name in (__name__, "mtl_bench.batched_step"):
        h.update(inspect.getsource(sys.modules[name]).encode())
    return h.hexdigest()[:16]


# -- the batched run ---------------------------------------------------------------------------
def train_batched(configs: Sequence[RunConfig], progress: Callable[[str], None] | None = None,
                  max_seconds: float | None = None) -> list[dict[str, Any]]:
    """Train K configs that differ only in their seed as one batch; one record per config, in
    order, laid out as train_run's. ``max_seconds`` limits the whole batch. A seed whose loss
    becomes non-finite is recorded as diverged (at its first non-finite step, as train_run
    does) while the others go on; a timeout or an error inside the batch fails every seed still
    running. Raises ValueError for a batch that :func:`can_batch` refuses or whose configs
    differ in more than the seed."""
    resolved = _check_batch(configs)
    first = resolved[0]
    torch.set_num_threads(first.threads)
    device = torch.device(first.device)
    seeds = [_set_up(c, device) for c in resolved]
    sizes = sorted({len(s.data.train.inputs[0]) for s in seeds})
    if len(sizes) > 1:
        raise ValueError(f"the seeds' training splits differ in size ({sizes}); train them apart")
    n_batch = len(seeds)
    notes = []
    if getattr(first, "cuda_graph", False):
        notes.append("cuda_graph: not used in a seed batch; every step ran eagerly")
    for s in seeds:
        s.record["provenance"].update(seed_batch=n_batch,
                                      seed_batch_seeds=[t.config.seed for t in seeds],
                                      seed_batch_code=_source_hash())
    tasks = seeds[0].tasks
    model = StackedModel([s.model for s in seeds], tasks)
    strategy = StackedStrategy([s.strategy for s in seeds])
    # make_optimizer reads only .parameters() (and the strategy's .lr): the stacked tensors
    optimizer = make_optimizer(SimpleNamespace(parameters=model.trainable),  # type: ignore
                               strategy, first.lr, first.weight_decay)  # type: ignore
    clock = make_clock(device)
    timer = PhaseTimer(clock)
    n_train = sizes[0]
    n_steps = steps_per_epoch(seeds[0].data.train, first.batch_size)
    diag_every = first.diag_every if first.diag_every > 0 else n_steps
    xs = torch.stack([s.data.train.inputs[0] for s in seeds])
    ys = [torch.stack([s.data.train.targets[i] for s in seeds]) for i in range(len(tasks))]
    rows = torch.arange(n_batch, device=device)[:, None]
    weights_log = torch.zeros(n_batch, first.epochs * n_steps, len(tasks), device=device)
    pending: list[tuple[int, Tensor]] = []  # (step, (K, T) losses) since the last read point
    start = time.perf_counter()

    def log_eval(s: _Seed, k: int, epoch: int) -> dict[str, Any]:
        net = model.copy_to(k)
        res = {}
        for split_name in ("val", "test"):
            res[split_name] = evaluate(net, s.tasks, s.data, getattr(s.data, split_name))
            for (task_name, metric), value in res[split_name].items():
                s.curves.append([epoch, split_name, task_name, metric, value])
        return res

    def read_back(epoch: int) -> None:
        """At a read point: find each live seed's first step with a non-finite loss since the
        last one; such a seed is recorded as diverged there, as train_run records it."""
        timer.flush()
        if pending:
            stacked = torch.stack([losses for _, losses in pending])
            finite = clock.read(torch.isfinite(stacked).all(dim=2))
            for k, s in enumerate(seeds):
                bad = next((i for i, row in enumerate(finite) if not row[k]), None)
                if not s.alive or bad is None:
                    continue
                step = pending[bad][0]
                exc = RunDiverged(epoch, step, clock.read(stacked[bad, k]))
                s.record.update(status="failed", failure="diverged", reason=str(exc),
                                failed_epoch=exc.epoch)
                s.alive, s.steps = False, step
                s.wall_s = (time.perf_counter() - start) / n_batch
            pending.clear()
        for s in seeds:
            s.diagnostics.extend(d for d in s.unread if d["step"] < s.steps or s.alive)
            s.unread.clear()

    step = 0
    try:
        for k, s in enumerate(seeds):
            s.best_state = {n: v.detach().clone() for n, v in s.model.state_dict().items()}
            s.selector.begin(log_eval(s, k, 0)["val"])
        pace = ReadPoints(clock, read_back, max_seconds, start)
        for epoch in range(1, first.epochs + 1):
            loss_sum = torch.zeros(n_batch, len(tasks), device=device)
            batches = pace.unread = 0
            perms = torch.stack([torch.randperm(n_train, generator=s.generator).to(device)
                                 for s in seeds])
            for begin in range(0, n_train, first.batch_size):
                idx = perms[:, begin:begin + first.batch_size]
                inputs = (xs[rows, idx],)
                targets = tuple(y[rows, idx] for y in ys)
                try:
                    losses, weights, marks, diags = batched_step(
                        model, strategy, inputs, targets, optimizer, clock,
                        want_diag=step % diag_every == 0)
                except Exception:
                    read_back(epoch)  # a seed that diverged before this error fails as such
                    raise
                pending.append((step, losses))
                timer.record(step, marks, idx.shape[1])
                weights_log[:, step] = weights
                for k, s in enumerate(seeds):
                    if s.alive:
                        s.steps = step + 1
                        if diags is not None:
                            diags[k].update(step=step, epoch=epoch)
                            s.unread.append(diags[k])
                loss_sum += losses
                batches += 1
                step += 1
                pace.step_done(epoch)
            read_back(epoch)
            if not any(s.alive for s in seeds):
                break
            mean_losses = loss_sum / max(batches, 1)
            train_rows = clock.read(mean_losses)
            for k, s in enumerate(seeds):
                if not s.alive:
                    continue
                for task, value in zip(tasks, train_rows[k]):
                    s.curves.append([epoch, "train", task.name, "loss", value])
                strategy.on_epoch_end(k, epoch, mean_losses[k])
                s.solver_failures.append(failures_since(strategy.members[k],
                                                        s.solver_failures))
                res = log_eval(s, k, epoch)
                if s.selector.offer(epoch, res["val"]):
                    s.best_state = {n: v.detach().clone()
                                    for n, v in s.model.state_dict().items()}
            if progress is not None:
                progress(f"epoch {epoch}/{first.epochs}")
        for s in seeds:
            if s.alive:
                s.model.load_state_dict(s.best_state)
                s.record["details"] = classification_details(s.model, s.tasks, s.data.test)
                s.record["status"] = "ok"
    except UserError:
        raise
    except RunTimeout as exc:
        for s in seeds:
            if s.alive:
                s.record.update(status="failed", failure="timeout", reason=str(exc))
    except Exception as exc:  # a crash fails the batch's runs, never the sweep
        for s in seeds:
            if s.alive:
                s.record.update(status="failed", failure="error",
                                reason=f"{type(exc).__name__}: {exc}",
                                traceback=traceback.format_exc(limit=8))

    wall = (time.perf_counter() - start) / n_batch
    throughput = _share(timer.summary(), n_batch)
    throughput["peak_memory_mb"] = _peak_memory_mb(device)
    throughput["batch_size"] = first.batch_size
    throughput["seed_batch"] = n_batch
    records = []
    for k, s in enumerate(seeds):
        record = s.record
        record["wall_s"] = wall if s.alive or not s.wall_s else s.wall_s
        record["selected_epoch"] = s.selector.epoch
        record["selection"] = s.selector.summary()
        record["curves"] = {"columns": ["epoch", "split", "task", "metric", "value"],
                            "rows": s.curves}
        record["weights"] = {"tasks": [t.name for t in tasks], "steps_per_epoch": n_steps,
                             "values": weights_log[k, :s.steps].cpu().tolist()}
        record["diagnostics"] = s.diagnostics
        record["solver_failures"] = s.solver_failures
        record["throughput"] = dict(throughput)
        record["summary"] = [row for row in s.curves
                             if row[0] == s.selector.epoch and row[1] != "train"]
        record["notes"] = list(notes)
        records.append(record)
    return records
