"""One training run: config in, run record (a JSON-able dict) out.

The loop owns forward, backward, every optimiser step and the timing of each phase for all
strategy families; it never looks at a strategy's or task pair's name, only at the protocol
attributes (``grad_source``) and at what ``combine`` returns.
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtl_bench import registry
from mtl_bench.errors import RunDiverged, UserError
from mtl_bench.metrics import get_metric
from mtl_bench.selection import DEFAULT_SELECT, Selector, check_rule
from mtl_bench.strategy import REGRESSION, Strategy, TaskGradients, label
from mtl_bench.task import (
    ARCHITECTURES,
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

    def resolved(self) -> RunConfig:
        """Concrete epochs/batch/lr, and options and hyper-parameters in canonical form (only
        those that differ from the defaults), so equivalent configs share one run id."""
        pair_cls = registry.tasks.get(self.task)
        return replace(
            self,
            task_options=canonical_task_options(self.task, self.task_options),
            strategy_params=build_strategy(self.strategy, self.strategy_params)
            .non_default_hparams(),
            epochs=self.epochs if self.epochs is not None else pair_cls.epochs,
            batch_size=self.batch_size if self.batch_size is not None else pair_cls.batch_size,
            lr=self.lr if self.lr is not None else pair_cls.lr,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.resolved().to_dict(), sort_keys=True, default=str)
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
    if config.architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture '{config.architecture}'; choose from: "
                        + ", ".join(ARCHITECTURES))
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
    if strategy.grad_source is not None and config.architecture == "separate":
        raise UserError(f"strategy '{strategy}' needs gradients of shared parameters, but the "
                        "'separate' architecture shares none; use --architecture shared")
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
HARNESS_MODULES = ("mtl_bench.train", "mtl_bench.selection", "mtl_bench.task",
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


# -- the training step -------------------------------------------------------------------------
def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def task_gradients(losses: Tensor, at: Sequence[Tensor], source: str,
                   extra: Sequence[Tensor] = ()) -> tuple[TaskGradients, list[list[Tensor | None]]]:
    """Each unweighted task loss's gradient at ``at`` (one autograd call per task; graph kept).

    The same call also returns each task's gradient at ``extra`` (None where a tensor does not
    depend on that task), so head gradients come without another backward pass.
    """
    parts, extras = [], []
    n = len(at)
    for i in range(len(losses)):
        g = torch.autograd.grad(losses[i], [*at, *extra], retain_graph=True, allow_unused=True)
        parts.append([gi if gi is not None else torch.zeros_like(p) for gi, p in zip(g[:n], at)])
        extras.append(list(g[n:]))
    return TaskGradients(parts, source), extras


def representation_gradients(losses: Tensor, head_in: Sequence[Tensor], model: MultiTaskNet
                             ) -> tuple[TaskGradients, list[list[Tensor | None]]]:
    """Every task's gradient at the shared representation, and each head's own gradient, from
    ONE backward pass: head i reads its own detached leaf ``head_in[i]``, so the gradient of
    sum_j L_j at that leaf is dL_i/d rep, and head i's parameters only receive dL_i."""
    heads = model.head_parameters()
    n = len(head_in)
    g = torch.autograd.grad(losses.sum(), [*head_in, *heads], retain_graph=True,
                            allow_unused=True)
    parts = [[gi if gi is not None else torch.zeros_like(x)] for gi, x in zip(g[:n], head_in)]
    owner = {id(p): i for i, head in enumerate(model.heads) for p in head.parameters()}
    extras: list[list[Tensor | None]] = [[None] * len(heads) for _ in range(n)]
    for k, (p, gp) in enumerate(zip(heads, g[n:])):
        if gp is not None:
            extras[owner[id(p)]][k] = gp
    return TaskGradients(parts, "rep"), extras


def _sum_pieces(coef: Tensor | None, pieces: list[list[Tensor | None]]) -> list[Tensor | None]:
    """sum_i coef_i pieces[i][k] for every k, skipping pieces that are None."""
    out: list[Tensor | None] = [None] * len(pieces[0])
    for i, row in enumerate(pieces):
        for k, g in enumerate(row):
            if g is None:
                continue
            term = g if coef is None else g * coef[i]
            out[k] = term if out[k] is None else out[k].add_(term)
    return out


def _split_like(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Cut a flat vector into views shaped like ``params``."""
    out, offset = [], 0
    for p in params:
        out.append(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


def _cosines(matrix: Tensor, update: Tensor | None) -> dict[str, Any]:
    norms = matrix.norm(dim=1)
    unit = matrix / norms.clamp_min(1e-12)[:, None]
    cos = unit @ unit.T
    t = len(matrix)
    out: dict[str, Any] = {
        "norms": norms.tolist(),
        "cos": [[i, j, float(cos[i, j])] for i in range(t) for j in range(i + 1, t)],
    }
    if update is not None:
        u = update / update.norm().clamp_min(1e-12)
        out["update_cos"] = (unit @ u).tolist()
        out["update_norm"] = float(update.norm())
    return out


class _Timer:
    PHASES = ("forward", "strategy", "backward", "optimizer")

    def __init__(self, sync: Callable[[], None], skip: int = 3):
        self.sync = sync
        self.skip = skip
        self.totals = dict.fromkeys(self.PHASES, 0.0)
        self.steps = 0
        self.samples = 0
        self._seen = 0

    def record(self, durations: Sequence[float], samples: int) -> None:
        self._seen += 1
        if self._seen <= self.skip:  # warm-up steps (allocator, lazy init) are not timed
            return
        for name, d in zip(self.PHASES, durations):
            self.totals[name] += d
        self.steps += 1
        self.samples += samples

    def summary(self) -> dict[str, float]:
        if not self.steps:
            return {}
        total = sum(self.totals.values())
        out = {f"{k}_ms": 1000 * v / self.steps for k, v in self.totals.items()}
        out["step_ms"] = 1000 * total / self.steps
        out["steps_per_s"] = self.steps / total if total else float("nan")
        out["samples_per_s"] = self.samples / total if total else float("nan")
        out["timed_steps"] = self.steps
        return out


def train_step(model: MultiTaskNet, tasks: Sequence[Task], strategy: Strategy,
               inputs: Sequence[Tensor], targets: Sequence[Tensor],
               optimizer: torch.optim.Optimizer, sync: Callable[[], None] = lambda: None,
               want_diag: bool = False):
    """One step for any strategy family.

    Returns (losses, weights, durations, diagnostics); durations are seconds spent in forward,
    strategy (task gradients + combine + after_step), backward and the optimiser step (one
    optimiser holds the model's and the strategy's parameters, see :func:`make_optimizer`).
    Diagnostics, when asked for, are taken outside the timed phases.
    """
    source = strategy.grad_source
    t0 = time.perf_counter()
    reps, head_in, outputs = model(inputs, detach_rep=source == "rep")
    losses = torch.stack([task.loss(o, y) for task, o, y in zip(tasks, outputs, targets)])
    sync()
    t1 = time.perf_counter()

    grads = None
    at: list[Tensor] = []
    heads: list[Tensor] = []
    head_grads: list[list[Tensor | None]] = []
    if source == "rep":
        at = head_in
        heads = model.head_parameters()
        grads, head_grads = representation_gradients(losses, head_in, model)
    elif source is not None:
        at = {"last": model.last_shared_parameters, "shared": model.shared_parameters}[source]()
        # with the shared source the heads' gradients come out of the same per-task calls
        heads = model.head_parameters() if source == "shared" else []
        grads, head_grads = task_gradients(losses, at, source, heads)
    update = strategy.combine(losses, grads)
    sync()
    t2 = time.perf_counter()

    diag_grads = None
    if want_diag:  # untimed; reuse the strategy's task gradients, else take them at the last
        # shared layer (the cheapest place that is still a shared parameter)
        if grads is not None:
            diag_grads = grads
        elif model.last_shared_parameters():
            diag_grads = task_gradients(losses, model.last_shared_parameters(), "last")[0]
    t2b = time.perf_counter()

    optimizer.zero_grad(set_to_none=True)
    applied = None
    if grads is None:
        if update.loss is None:
            raise RuntimeError(f"strategy '{strategy}' returned no loss and asked for no gradients")
        update.loss.backward()
    else:
        coef = None
        if update.loss is not None:
            # The loss reaches the model only through `losses`, so by the chain rule the gradient
            # at the source is c @ G with c = d loss / d losses: the task gradients are reused
            # instead of being computed a second time by a full backward pass.
            held = {id(p) for p in (*at, *heads)}
            rest = [] if source == "rep" else [
                p for p in model.parameters() if p.requires_grad and id(p) not in held]
            rest += [p for p in strategy.parameters() if p.requires_grad]
            losses.retain_grad()
            torch.autograd.backward(update.loss, inputs=[*rest, losses])
            coef = losses.grad.to(grads.parts_dtype)
            pieces = grads.combine_parts(coef)
        else:
            # gradient manipulation: heads get their own task's unweighted gradient
            # (Sener & Koltun 2018); the shared update is `direction` or weights @ G
            applied = update.direction
            if applied is None:
                applied = update.weights.to(grads.parts_dtype) @ grads.matrix
            pieces = _split_like(applied, at) if source != "rep" else [applied]
        for p, g in zip(heads, _sum_pieces(coef, head_grads) if heads else []):
            p.grad = g
        if source == "rep":
            torch.autograd.backward(reps[0], pieces[0].view_as(reps[0]))
        else:
            for p, g in zip(at, pieces):
                p.grad = g
    sync()
    t3 = time.perf_counter()

    optimizer.step()
    sync()
    t4 = time.perf_counter()
    strategy.after_step()
    sync()
    t5 = time.perf_counter()

    diag = None
    if diag_grads is not None:
        if applied is None or diag_grads is not grads:
            applied = update.weights.to(diag_grads.matrix.dtype) @ diag_grads.matrix
        diag = _cosines(diag_grads.matrix, applied)
        diag["source"] = diag_grads.source
    durations = (t1 - t0, (t2 - t1) + (t5 - t4), t3 - t2b, t4 - t3)
    return losses.detach(), update.weights.detach(), durations, diag


# -- one run -----------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, strategy: Strategy, lr: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """Adam over the model, plus a group for the strategy's own parameters (its learning rate,
    no weight decay). One optimiser, one step call: cheaper than two on small nets."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad],
               "lr": lr, "weight_decay": weight_decay}]
    own = [p for p in strategy.parameters() if p.requires_grad]
    if own:
        groups.append({"params": own, "lr": strategy.lr if strategy.lr is not None else lr,
                       "weight_decay": 0.0})
    return torch.optim.Adam(groups)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def train_run(config: RunConfig, progress: Callable[[str], None] | None = None,
              max_seconds: float | None = None) -> dict[str, Any]:
    """Train one (task pair, strategy, seed) and return its run record. Never raises for a
    run that fails during training: the record says ``status: failed`` with the reason."""
    config = config.resolved()
    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
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
        raise UserError(f"strategy '{strategy}' takes gradients at the shared representation, "
                        f"which needs inputs shared by all tasks; task pair '{config.task}' gives "
                        "each task its own dataset")

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

    optimizer = make_optimizer(model, strategy, config.lr, config.weight_decay)
    sync = _sync(device)
    timer = _Timer(sync)
    gen = torch.Generator().manual_seed(config.seed)
    n_steps = steps_per_epoch(data.train, config.batch_size)
    diag_every = config.diag_every if config.diag_every > 0 else n_steps

    curves: list[list[Any]] = []
    weights_log = torch.zeros(config.epochs * n_steps, len(tasks), device=device)
    diagnostics: list[dict[str, Any]] = []

    def log_eval(epoch: int) -> dict[str, dict[tuple[str, str], float]]:
        res = {}
        for split_name in ("val", "test"):
            res[split_name] = evaluate(model, tasks, data, getattr(data, split_name))
            for (task_name, metric), value in res[split_name].items():
                curves.append([epoch, split_name, task_name, metric, value])
        return res

    start = time.perf_counter()
    step = 0
    selector = Selector(config.select, tasks)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        selector.begin(log_eval(0)["val"])
        for epoch in range(1, config.epochs + 1):
            loss_sum = torch.zeros(len(tasks), device=device)
            batches = 0
            for inputs, targets in iterate_batches(data.train, config.batch_size, gen,
                                                   config.sampling):
                losses, weights, durations, diag = train_step(
                    model, tasks, strategy, inputs, targets, optimizer, sync,
                    want_diag=step % diag_every == 0)
                if not bool(torch.isfinite(losses).all()):
                    raise RunDiverged(epoch, step, losses.tolist())
                timer.record(durations, sum(len(x) for x in inputs))
                weights_log[step] = weights
                if diag is not None:
                    diag.update(step=step, epoch=epoch)
                    diagnostics.append(diag)
                loss_sum += losses
                batches += 1
                step += 1
                if max_seconds is not None and time.perf_counter() - start > max_seconds:
                    raise RunTimeout(f"exceeded --max-run-seconds {max_seconds:g} "
                                     f"at epoch {epoch}")
            mean_losses = loss_sum / max(batches, 1)
            for task, value in zip(tasks, mean_losses.tolist()):
                curves.append([epoch, "train", task.name, "loss", value])
            strategy.on_epoch_end(epoch, mean_losses)
            res = log_eval(epoch)
            if selector.offer(epoch, res["val"]):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if progress is not None:
                progress(f"epoch {epoch}/{config.epochs}")
        model.load_state_dict(best_state)
        record["details"] = classification_details(model, tasks, data.test)
        record["status"] = "ok"
    except RunDiverged as exc:
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
    throughput = timer.summary()
    throughput["peak_memory_mb"] = _peak_memory_mb(device)
    throughput["batch_size"] = config.batch_size
    record["throughput"] = throughput
    record["summary"] = [row for row in curves
                         if row[0] == selector.epoch and row[1] != "train"]
    return record
