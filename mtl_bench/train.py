"""One training run: config in, run record (a JSON-able dict) out.

The loop hands each batch to the training step (:mod:`mtl_bench.step`: forward, backward, the
optimiser step and the phase marks for all strategy families) and reads the device back only at
its read points (:mod:`mtl_bench.clock`): the phase times, the divergence check and the gradient
diagnostics of the steps since the last one. For a bilevel strategy (``needs_meta_batch``) it
also draws a meta batch per step from the training split (:func:`meta_batches`). It never looks
at a strategy's or task pair's name.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl_bench import registry
from mtl_bench.architectures import canonical_architecture, check_gradient_source
from mtl_bench.clock import DivergenceGuard, PhaseTimer, StepClock, make_clock
from mtl_bench.errors import RunDiverged, UserError
from mtl_bench.metrics import get_metric
from mtl_bench.selection import DEFAULT_SELECT, Selector, check_rule
from mtl_bench.step import (  # noqa: F401  (the step's helpers are imported from here too)
    GraphedSteps,
    _cosines,
    _split_like,
    _sum_pieces,
    diagnostics_to_host,
    graph_obstacle,
    representation_gradients,
    task_gradients,
    train_step,
)
from mtl_bench.strategy import REGRESSION, Strategy, label
from mtl_bench.task import (
    SAMPLING_POLICIES,
    MultiTaskNet,
    Split,
    Task,
    TaskData,
    TaskPair,
    iterate_batches,
    steps_per_epoch,
)

#: 2: records carry ``selection`` (rule, epoch, score), each task's ``primary`` metric, and a
#: harness hash that covers selection, metrics and the task/strategy protocols.
SCHEMA_VERSION = 2


class RunTimeout(RuntimeError):
    pass


class ReadPoints:
    """When a training loop reads the device back: every ``clock.read_every`` steps, before a
    timeout is raised, and (by the loop) at each epoch end. Shared by ``train_run`` and seed
    batching, so both keep one policy."""

    def __init__(self, clock: StepClock, read_back: Callable[[int], None],
                 max_seconds: float | None, start: float):
        self.clock, self.read_back = clock, read_back
        self.max_seconds, self.start = max_seconds, start
        self.unread = 0

    def step_done(self, epoch: int) -> None:
        self.unread += 1
        if self.unread >= self.clock.read_every:
            self.read_back(epoch)
            self.unread = 0
        if self.max_seconds is not None and time.perf_counter() - self.start > self.max_seconds:
            self.read_back(epoch)
            raise RunTimeout(f"exceeded --max-run-seconds {self.max_seconds:g} at epoch {epoch}")


@dataclass
class RunConfig:
    """Everything that determines a run's result. ``None`` fields take the task pair's default
    when the config is resolved, so the run id always hashes concrete values."""

    task: str = "clsreg"
    strategy: str = "fixed"
    seed: int = 0
    task_options: dict[str, Any] = field(default_factory=dict)
    strategy_params: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    architecture: str = "shared"
    single_task: str | None = None
    sampling: str = "proportional"
    device: str = "cpu"
    threads: int = 1
    diag_every: int = 0
    select: str = DEFAULT_SELECT
    cuda_graph: bool = False

    def resolved(self) -> RunConfig:
        """Concrete epochs/batch/lr, and options, hyper-parameters and the architecture spec in
        canonical form (only those that differ from the defaults), so equivalent configs share
        one run id."""
        pair_cls = registry.tasks.get(self.task)
        return replace(
            self,
            task_options=canonical_task_options(self.task, self.task_options),
            strategy_params=build_strategy(self.strategy, self.strategy_params)
            .non_default_hparams(),
            epochs=self.epochs if self.epochs is not None else pair_cls.epochs,
            batch_size=self.batch_size if self.batch_size is not None else pair_cls.batch_size,
            lr=self.lr if self.lr is not None else pair_cls.lr,
            architecture=canonical_architecture(self.architecture),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def run_id(self) -> str:
        fields = self.resolved().to_dict()
        if not fields["cuda_graph"]:  # added later: runs stored before it keep their ids
            del fields["cuda_graph"]
        blob = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def strategy_label(self) -> str:
        if self.single_task is not None:
            return "single-task"
        return label(self.strategy, self.resolved().strategy_params)


def _unknown_keys_error(kind: str, name: str, cls: type, given: dict[str, Any],
                        exc: TypeError) -> UserError:
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p, v in list(params.items())[1:]
             if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    unknown = sorted(set(given) - set(valid))
    what = "parameter" if kind == "strategy" else "option"
    if unknown:
        head = f"{kind} '{name}' has no {what} {', '.join(repr(u) for u in unknown)}"
    else:
        head = f"{kind} '{name}' rejected its {what}s ({exc})"
    return UserError(f"{head}; its {what}s are: {', '.join(valid) or '(none)'}")


def build_strategy(name: str, params: dict[str, Any]) -> Strategy:
    cls = registry.strategies.get(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise _unknown_keys_error("strategy", name, cls, params, exc) from None


def build_task_pair(name: str, options: dict[str, Any]) -> TaskPair:
    cls = registry.tasks.get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise _unknown_keys_error("task pair", name, cls, options, exc) from None


def canonical_task_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options of a task pair that differ from its defaults (``{}`` for the default)."""
    full = build_task_pair(name, options).options()
    default = build_task_pair(name, {}).options()
    return {k: v for k, v in full.items() if k not in default or default[k] != v}


def validate(config: RunConfig) -> None:
    """Raise UserError for anything wrong with a config before any training starts."""
    check_rule(config.select)
    canonical_architecture(config.architecture)  # UserError for a bad architecture spec
    if config.sampling not in SAMPLING_POLICIES:
        raise UserError(f"unknown sampling policy '{config.sampling}'; choose from: "
                        + ", ".join(SAMPLING_POLICIES))
    for key in ("epochs", "batch_size", "threads"):
        value = getattr(config, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    if config.lr is not None and not config.lr > 0:
        raise UserError(f"--lr must be positive, got {config.lr!r}")
    pair = build_task_pair(config.task, config.task_options)
    strategy = build_strategy(config.strategy, config.strategy_params)
    names = [t.name for t in pair.tasks()]
    infos = [t.info for t in pair.tasks() if config.single_task in (None, t.name)]
    strategy.setup(infos, seed=config.seed)  # checks that depend on the number of tasks
    if config.single_task is not None and config.single_task not in names:
        raise UserError(f"task pair '{config.task}' has no task '{config.single_task}'; "
                        f"its tasks are: {', '.join(names)}")
    check_gradient_source(config.architecture, strategy)
    check_shared_inputs(config, strategy)
    try:
        device = torch.device(config.device)
    except RuntimeError:
        device = torch.device("meta")  # not a device torch knows: rejected just below
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device '{config.device}'; choose from: cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{config.device}' requested but CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device '{config.device}' requested but this machine has "
                        f"{torch.cuda.device_count()} CUDA device(s)")


def _rep_refusal(strategy: Strategy, task: str) -> str:
    return (f"strategy '{strategy}' takes gradients at the shared representation, which needs "
            f"inputs shared by all tasks; task pair '{task}' gives each task its own dataset")


@lru_cache(maxsize=64)
def _shares_inputs(task: str, options: str) -> bool:
    """Whether every task of the pair reads the same inputs (does not depend on the seed)."""
    return build_task_pair(task, json.loads(options)).load(0).train.shared_inputs


def check_shared_inputs(config: RunConfig, strategy: Strategy) -> None:
    """Raise UserError before any training when ``strategy`` takes gradients at the shared
    representation (source ``rep``) of a pair that gives each task its own dataset. The pair's
    data is loaded once per pair and options, and only for such a strategy."""
    if strategy.grad_source != "rep" or config.single_task is not None:
        return
    options = json.dumps(config.task_options, sort_keys=True, default=str)
    if not _shares_inputs(config.task, options):
        raise UserError(_rep_refusal(strategy, config.task))


# -- provenance --------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


@lru_cache(maxsize=1)
def machine_fingerprint() -> str:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blob = f"{platform.machine()}|{cpu}|{os.cpu_count()}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def source_hash(obj: Any) -> str:
    """Hash of the source of the module that defines ``obj`` and of the private helper modules
    of its package it uses (``strategies/_gradient.py`` for example): comparability of results."""
    module = sys.modules.get(getattr(obj, "__module__", ""))
    if module is None:
        return "unknown"
    package = module.__name__.rpartition(".")[0]
    used = {getattr(v, "__module__", None) for v in vars(module).values()}
    used |= {v.__name__ for v in vars(module).values() if inspect.ismodule(v)}
    helpers = sorted(m for m in used if m and package and m.startswith(package + "._"))
    h = hashlib.sha256()
    for name in [module.__name__, *helpers]:
        try:
            h.update(inspect.getsource(sys.modules[name]).encode())
        except (OSError, TypeError, KeyError):
            return "unknown"
    return h.hexdigest()[:16]


#: Modules whose code decides a run's numbers besides the strategy's and the task pair's own.
HARNESS_MODULES = ("mtl_bench.train", "mtl_bench.step", "mtl_bench.clock",
                   "mtl_bench.selection", "mtl_bench.task", "mtl_bench.architectures",
                   "mtl_bench.architecture_spec",
                   "mtl_bench.strategy", "mtl_bench.metrics")


@lru_cache(maxsize=1)
def harness_hash() -> str:
    h = hashlib.sha256()
    for name in HARNESS_MODULES:
        try:
            h.update(inspect.getsource(sys.modules[name]).encode())
        except (OSError, TypeError, KeyError):
            return "unknown"
    return h.hexdigest()[:16]


def code_identity(strategy: Strategy, pair: TaskPair) -> dict[str, str]:
    """Hashes of the code a run's result depends on: a record whose hashes differ from the
    current code's is stale (``run`` retrains it)."""
    return {"strategy": source_hash(type(strategy)), "task": source_hash(type(pair)),
            "harness": harness_hash()}


def current_code(config: RunConfig) -> dict[str, str]:
    """:func:`code_identity` of the code installed now for ``config`` (nothing is trained)."""
    return _current_code(config.task, json.dumps(config.task_options, sort_keys=True,
                                                 default=str),
                         config.strategy, json.dumps(config.strategy_params, sort_keys=True,
                                                     default=str))


@lru_cache(maxsize=4096)
def _current_code(task: str, options: str, strategy: str, params: str) -> dict[str, str]:
    return code_identity(build_strategy(strategy, json.loads(params)),
                         build_task_pair(task, json.loads(options)))


def provenance(device: torch.device, threads: int) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name or platform.machine(),
        "threads": threads,
        "machine": machine_fingerprint(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: MultiTaskNet, tasks: Sequence[Task], data: TaskData, split: Split,
             chunk: int = 8192) -> dict[tuple[str, str], float]:
    """Loss and every metric of each task on one split, metrics in original target units."""
    was_training = model.training
    model.eval()
    out: dict[tuple[str, str], float] = {}
    for i, task in enumerate(tasks):
        x, y = split.input_for(i), split.targets[i]
        pieces = []
        for start in range(0, len(x), chunk):
            rep = model.trunk(x[start:start + chunk])
            pieces.append(model.heads[i](rep))
        output = torch.cat(pieces)
        out[(task.name, "loss")] = float(task.loss(output, y))
        if task.kind == REGRESSION:
            mean, std = data.target_stats[i] or (0.0, 1.0)
            pred = output.squeeze(-1).double().cpu().numpy() * std + mean
            target = y.double().cpu().numpy() * std + mean
        else:
            pred = task.proba(output).double().cpu().numpy()
            target = y.cpu().numpy()
        for name in task.metrics:
            out[(task.name, name)] = get_metric(name)(pred, target)
    model.train(was_training)
    return out


RELIABILITY_BINS = 10


@torch.no_grad()
def classification_details(model: MultiTaskNet, tasks: Sequence[Task], split: Split
                           ) -> dict[str, Any]:
    """For each classification task on ``split`` at the selected epoch: the confusion matrix
    (rows true, columns predicted) and reliability bins (count, mean confidence, accuracy)."""
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {}
    for i, task in enumerate(tasks):
        if task.kind == REGRESSION:
            continue
        proba = task.proba(model.heads[i](model.trunk(split.input_for(i)))).double().cpu()
        target = split.targets[i].cpu()
        pred = proba.argmax(dim=1)
        c = task.n_outputs
        cm = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        conf = proba.max(dim=1).values
        bins = torch.clamp((conf * RELIABILITY_BINS).ceil().long() - 1, 0, RELIABILITY_BINS - 1)
        correct = (pred == target).double()
        rel = []
        for b in range(RELIABILITY_BINS):
            m = bins == b
            n = int(m.sum())
            rel.append([n, float(conf[m].mean()) if n else None,
                        float(correct[m].mean()) if n else None])
        out[task.name] = {"confusion": cm.tolist(), "reliability": rel}
    model.train(was_training)
    return out


# -- one run -----------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, strategy: Strategy, lr: float,
                   weight_decay: float, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam over the model, plus a group for the strategy's own parameters (its learning rate,
    no weight decay). One optimiser, one step call: cheaper than two on small nets.
    ``capturable``: the form of Adam that a CUDA graph can capture (step counts on the device)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad],
               "lr": lr, "weight_decay": weight_decay}]
    own = [p for p in strategy.parameters() if p.requires_grad]
    if own:
        groups.append({"params": own, "lr": strategy.lr if strategy.lr is not None else lr,
                       "weight_decay": 0.0})
    return torch.optim.Adam(groups, capturable=True) if capturable else torch.optim.Adam(groups)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def failures_since(strategy: Strategy, per_epoch: list[int]) -> int:
    """Inner-solver failures of ``strategy`` (its running ``solver_failures`` counter, which
    gradient methods keep) since the epochs already in ``per_epoch``: a solver that did not
    converge is never silent, the record counts it per epoch and the report shows it."""
    return int(getattr(strategy, "solver_failures", 0)) - sum(per_epoch)


#: XOR-ed into a run's seed to seed its meta-batch stream. Torch's CPU generator keeps only the
#: low 32 bits of a seed (an offset of 2**32 would replay the training order), and a non-zero
#: mask never maps a seed to itself: a run's meta stream is never its own training order.
META_SEED_MASK = 0x9E3779B9


def meta_batches(split: Split, batch_size: int, seed: int, policy: str = "proportional"
                 ) -> Iterator[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]:
    """The meta batches of a bilevel strategy, one per step, without end: epochs of
    :func:`~mtl_bench.task.iterate_batches` over the *training* split (with the run's batch size
    and sampling policy) in an order of their own, drawn from a generator seeded with ``seed ^``
    :data:`META_SEED_MASK`. Never the validation or test split: they select and score the
    model, so they must not steer its training (the official Auto-Lambda code also draws its
    meta batch from a second, reshuffled loader of the training set)."""
    gen = torch.Generator().manual_seed((seed ^ META_SEED_MASK) % 2**32)
    while True:
        yield from iterate_batches(split, batch_size, gen, policy)


def set_up_run(config: RunConfig, device: torch.device
               ) -> tuple[TaskPair, list[Task], TaskData, MultiTaskNet, Strategy, dict[str, Any]]:
    """Everything a run builds before its first step, in a fixed order, so that a seed gives
    the same split, initial weights and strategy state wherever it is trained (``train_run``,
    or one seed of a batch in :mod:`mtl_bench.batched`): the pair, its tasks, the data on
    ``device``, the model, the strategy, and the record's head."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)

    pair = build_task_pair(config.task, config.task_options)
    all_tasks = pair.tasks()
    data = pair.load(config.seed)
    indices = list(range(len(all_tasks)))
    if config.single_task is not None:
        indices = [[t.name for t in all_tasks].index(config.single_task)]
    tasks = [all_tasks[i] for i in indices]
    data = data.select_tasks(indices).to(device)
    torch.manual_seed(config.seed)
    model = pair.build_model(data, indices, config.architecture).to(device)
    strategy = build_strategy(config.strategy, config.strategy_params)
    strategy.setup([t.info for t in tasks], seed=config.seed)
    strategy.to(device)
    if strategy.grad_source == "rep" and not data.train.shared_inputs:
        raise UserError(_rep_refusal(strategy, config.task))

    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "run_id": config.run_id,
        "config": config.to_dict(),
        "task_pair": config.task,
        "strategy": config.strategy_label,
        "strategy_repr": repr(strategy),
        "seed": config.seed,
        "tasks": [{"name": t.name, "kind": t.kind, "metrics": list(t.metrics),
                   "primary": t.primary} for t in tasks],
        "metric_directions": {m: get_metric(m).higher_is_better
                              for t in tasks for m in t.metrics},
        "code": code_identity(strategy, pair),
        "data": data.info,
        "provenance": provenance(device, config.threads),
        "status": "running",
    }
    return pair, tasks, data, model, strategy, record


def train_run(config: RunConfig, progress: Callable[[str], None] | None = None,
              max_seconds: float | None = None, *,
              clock: StepClock | None = None) -> dict[str, Any]:
    """Train one (task pair, strategy, seed) and return its run record. Never raises for a
    run that fails during training: the record says ``status: failed`` with the reason.

    ``clock``: how the loop meets the device (default: :func:`mtl_bench.clock.make_clock` of
    the config's device). A run that diverges is recorded at the first step with a non-finite
    loss, however many steps ran before the next read point found it.
    """
    config = config.resolved()
    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    pair, tasks, data, model, strategy, record = set_up_run(config, device)

    clock = clock if clock is not None else make_clock(device)
    notes: list[str] = []
    no_graphs = graph_obstacle(clock, strategy) if config.cuda_graph else None
    if no_graphs is not None:
        notes.append(f"cuda_graph: not used, {no_graphs}; every step ran eagerly")
    graphs = config.cuda_graph and no_graphs is None
    optimizer = make_optimizer(model, strategy, config.lr, config.weight_decay,
                               capturable=graphs and clock.capturable)
    run_step = (GraphedSteps(model, tasks, strategy, optimizer, clock) if graphs else
                partial(train_step, model, tasks, strategy, optimizer=optimizer, clock=clock))
    timer = PhaseTimer(clock)
    guard = DivergenceGuard(clock)
    gen = torch.Generator().manual_seed(config.seed)
    meta = (meta_batches(data.train, config.batch_size, config.seed, config.sampling)
            if strategy.needs_meta_batch else None)
    n_steps = steps_per_epoch(data.train, config.batch_size)
    diag_every = config.diag_every if config.diag_every > 0 else n_steps

    curves: list[list[Any]] = []
    weights_log = torch.zeros(config.epochs * n_steps, len(tasks), device=device)
    diagnostics: list[dict[str, Any]] = []
    unread_diagnostics: list[dict[str, Any]] = []

    def log_eval(epoch: int) -> dict[str, dict[tuple[str, str], float]]:
        res = {}
        for split_name in ("val", "test"):
            res[split_name] = evaluate(model, tasks, data, getattr(data, split_name))
            for (task_name, metric), value in res[split_name].items():
                curves.append([epoch, split_name, task_name, metric, value])
        return res

    def read_back(epoch: int) -> None:
        """Read what the steps since the last read point left on the device; raise
        RunDiverged for the first of them with a non-finite loss (later ones are dropped)."""
        bad = guard.first_bad()
        stop = None if bad is None else bad[0]
        timer.flush(stop)
        diagnostics.extend(diagnostics_to_host(d, clock.read) for d in unread_diagnostics
                           if stop is None or d["step"] < stop)
        unread_diagnostics.clear()
        if bad is not None:
            raise RunDiverged(epoch, *bad)

    start = time.perf_counter()
    pace = ReadPoints(clock, read_back, max_seconds, start)
    step = 0
    selector = Selector(config.select, tasks)
    solver_failures: list[int] = []
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        selector.begin(log_eval(0)["val"])
        for epoch in range(1, config.epochs + 1):
            loss_sum = torch.zeros(len(tasks), device=device)
            batches = pace.unread = 0
            for inputs, targets in iterate_batches(data.train, config.batch_size, gen,
                                                   config.sampling):
                extra = {} if meta is None else {"meta": next(meta)}
                try:
                    losses, weights, marks, diag = run_step(
                        inputs, targets, want_diag=step % diag_every == 0, **extra)
                except Exception:
                    read_back(epoch)  # a non-finite loss before this error ends the run first
                    raise
                guard.note(step, losses)
                timer.record(step, marks, sum(len(x) for x in inputs))
                weights_log[step] = weights
                if diag is not None:
                    diag.update(step=step, epoch=epoch)
                    unread_diagnostics.append(diag)
                loss_sum += losses
                batches += 1
                step += 1
                pace.step_done(epoch)
            read_back(epoch)
            mean_losses = loss_sum / max(batches, 1)
            for task, value in zip(tasks, clock.read(mean_losses)):
                curves.append([epoch, "train", task.name, "loss", value])
            strategy.on_epoch_end(epoch, mean_losses)
            solver_failures.append(failures_since(strategy, solver_failures))
            res = log_eval(epoch)
            if selector.offer(epoch, res["val"]):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if progress is not None:
                progress(f"epoch {epoch}/{config.epochs}")
        model.load_state_dict(best_state)
        record["details"] = classification_details(model, tasks, data.test)
        record["status"] = "ok"
    except RunDiverged as exc:
        step = exc.step  # the steps after it ran before the check: they are not recorded
        record.update(status="failed", failure="diverged", reason=str(exc),
                      failed_epoch=exc.epoch)
    except RunTimeout as exc:
        record.update(status="failed", failure="timeout", reason=str(exc))
    except UserError:
        raise
    except Exception as exc:  # a crash inside one run must not end the sweep
        record.update(status="failed", failure="error", reason=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=8))

    record["wall_s"] = time.perf_counter() - start
    record["selected_epoch"] = selector.epoch
    record["selection"] = selector.summary()
    record["curves"] = {"columns": ["epoch", "split", "task", "metric", "value"], "rows": curves}
    record["weights"] = {"tasks": [t.name for t in tasks], "steps_per_epoch": n_steps,
                         "values": weights_log[:step].cpu().tolist()}
    record["diagnostics"] = diagnostics
    record["solver_failures"] = solver_failures
    throughput = timer.summary()
    if graphs:
        notes += run_step.notes
        if not (run_step.replays or run_step.notes):
            notes.append("cuda_graph: no step was replayed from a graph (each batch shape "
                         f"runs {run_step.warmup} eager steps first)")
    throughput["peak_memory_mb"] = _peak_memory_mb(device)
    throughput["batch_size"] = config.batch_size
    record["throughput"] = throughput
    record["summary"] = [row for row in curves
                         if row[0] == selector.epoch and row[1] != "train"]
    record["notes"] = notes
    return record
