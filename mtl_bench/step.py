"""One training step for every strategy family, run eagerly or replayed from a CUDA graph.

The step owns forward, backward, the optimiser step and the phase marks of all strategy
families; it never looks at a strategy's name, only at the protocol attributes (``grad_source``,
``graph_safe``, ``needs_meta_batch``) and at what ``combine`` returns. For a bilevel strategy
it also runs the meta update (:func:`meta_step`) on the meta batch the run loop hands it. It
never reads the device back: the marks and the returned tensors are read at the run loop's
read points (:mod:`mtl_bench.clock`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mtl_bench.clock import CpuClock, StepClock, UntimedClock
from mtl_bench.strategy import MetaProblem, Strategy, TaskGradients
from mtl_bench.task import MultiTaskNet, Task

#: What a step returns: task losses, weights, the clock's marks, diagnostics (device tensors).
StepResult = tuple[Tensor, Tensor, Sequence[Any], dict[str, Any] | None]
_CPU_CLOCK = CpuClock()
_UNTIMED = UntimedClock()


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


def set_gradients(heads: Sequence[Tensor], head_pieces: Sequence[Tensor | None], source: str,
                  rep: Tensor | None, at: Sequence[Tensor], pieces: Sequence[Tensor]) -> None:
    """Hand the combined update to the optimiser: each head its own gradient; at source
    ``rep`` back-propagate the representation's update into the trunk once, else the update
    pieces are the gradients of the parameters ``at``."""
    for p, g in zip(heads, head_pieces):
        p.grad = g
    if source == "rep":
        torch.autograd.backward(rep, pieces[0].view_as(rep))
    else:
        for p, g in zip(at, pieces):
            p.grad = g


def _split_like(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Cut a flat vector into views shaped like ``params``."""
    out, offset = [], 0
    for p in params:
        out.append(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


def _device_cosines(matrix: Tensor, update: Tensor | None) -> dict[str, Any]:
    """Norms and pairwise cosines of the task gradients (and of the update), still on the
    device: :func:`diagnostics_to_host` reads them at the loop's next read point."""
    norms = matrix.norm(dim=1)
    unit = matrix / norms.clamp_min(1e-12)[:, None]
    out: dict[str, Any] = {"norms": norms, "cos": unit @ unit.T}
    if update is not None:
        u = update / update.norm().clamp_min(1e-12)
        out["update_cos"] = unit @ u
        out["update_norm"] = update.norm()
    return out


def diagnostics_to_host(diag: dict[str, Any], read: Callable[[Tensor], Any]) -> dict[str, Any]:
    """The record's form of a step's diagnostics: norms, [i, j, cos] per task pair, and the
    update's cosines and norm when there is one."""
    norms = read(diag["norms"])
    cos = read(diag["cos"])
    t = len(norms)
    out: dict[str, Any] = {"norms": norms,
                           "cos": [[i, j, cos[i][j]] for i in range(t) for j in range(i + 1, t)]}
    if "update_cos" in diag:
        out["update_cos"] = read(diag["update_cos"])
        out["update_norm"] = read(diag["update_norm"])
    out.update({k: v for k, v in diag.items() if k not in ("norms", "cos", "update_cos",
                                                             "update_norm")})
    return out


def _cosines(matrix: Tensor, update: Tensor | None) -> dict[str, Any]:
    """The record's form of :func:`_device_cosines`, read at once."""
    return diagnostics_to_host(_device_cosines(matrix, update), Tensor.tolist)


def _model_group(model: MultiTaskNet, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's parameter group that holds the model's parameters."""
    first = next(p for p in model.parameters() if p.requires_grad)
    return next(g for g in optimizer.param_groups if any(p is first for p in g["params"]))


def meta_step(model: MultiTaskNet, tasks: Sequence[Task], strategy: Strategy,
              inputs: Sequence[Tensor], targets: Sequence[Tensor], losses: Tensor,
              meta: tuple[Sequence[Tensor], Sequence[Tensor]],
              optimizer: torch.optim.Optimizer) -> None:
    """The meta update of a bilevel strategy (``needs_meta_batch``): hand it a
    :class:`~mtl_bench.strategy.MetaProblem` whose callables run the model functionally with
    the parameter sets it builds, on this step's batch or on ``meta`` (inputs, targets), then
    step the strategy's own parameters with the gradients it returns. Only those parameters
    hold a gradient at that optimiser step, so the model does not move (Adam skips parameters
    without one) and the strategy's parameters keep their own learning rate and state."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]

    def losses_at(batch_in: Sequence[Tensor], batch_tg: Sequence[Tensor],
                  params: Sequence[Tensor]) -> Tensor:
        _, _, outs = torch.func.functional_call(model, dict(zip(names, params)), (batch_in,))
        return torch.stack([task.loss(o, y) for task, o, y in zip(tasks, outs, batch_tg)])

    group = _model_group(model, optimizer)
    problem = MetaProblem([p for _, p in named], losses, partial(losses_at, inputs, targets),
                          partial(losses_at, *meta), group["lr"], group.get("weight_decay", 0.0))
    grads = strategy.meta_gradients(problem)
    own = [p for p in strategy.parameters() if p.requires_grad]
    if grads is None or not own:
        return
    grads = list(grads)
    if len(grads) != len(own):
        raise RuntimeError(f"strategy '{strategy}' returned {len(grads)} meta gradient(s) for "
                           f"{len(own)} trainable parameter(s)")
    optimizer.zero_grad(set_to_none=True)
    for p, g in zip(own, grads):
        p.grad = g.detach().to(p.dtype).reshape(p.shape)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_step(model: MultiTaskNet, tasks: Sequence[Task], strategy: Strategy,
               inputs: Sequence[Tensor], targets: Sequence[Tensor],
               optimizer: torch.optim.Optimizer, clock: StepClock = _CPU_CLOCK,
               want_diag: bool = False,
               meta: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None) -> StepResult:
    """One step for any strategy family.

    Returns (losses, weights, marks, diagnostics). The marks are the clock's at the boundaries
    of forward, strategy (task gradients + combine, and after_step), backward and the
    optimiser step (one optimiser holds the model's and the strategy's parameters, see
    :func:`mtl_bench.train.make_optimizer`); :class:`mtl_bench.clock.PhaseTimer` turns them
    into seconds. Diagnostics, when asked for, are taken outside the timed phases and stay on
    the device (:func:`diagnostics_to_host`). Nothing here waits for the device.

    ``meta``: the meta batch (inputs, targets) that a bilevel strategy (``needs_meta_batch``)
    needs at every step; its meta update (:func:`meta_step`) runs in the strategy phase, after
    the forward pass and before ``combine``, so this step's model update uses the new weights.
    """
    source = strategy.grad_source
    mark = clock.mark
    t0 = mark()
    reps, head_in, outputs = model(inputs, detach_rep=source == "rep")
    losses = torch.stack([task.loss(o, y) for task, o, y in zip(tasks, outputs, targets)])
    t1 = mark()
    if strategy.needs_meta_batch:
        if meta is None:
            raise ValueError(f"strategy '{strategy}' needs a meta batch at every step "
                             "(needs_meta_batch); pass meta=(inputs, targets)")
        meta_step(model, tasks, strategy, inputs, targets, losses, meta, optimizer)

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
    t2 = mark()

    diag_grads = None
    if want_diag:  # untimed; reuse the strategy's task gradients, else take them at the last
        # shared layer (the cheapest place that is still a shared parameter)
        if grads is not None:
            diag_grads = grads
        elif model.last_shared_parameters():
            diag_grads = task_gradients(losses, model.last_shared_parameters(), "last")[0]
    t2b = mark() if want_diag else t2

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
        set_gradients(heads, _sum_pieces(coef, head_grads) if heads else [], source,
                      reps[0] if source == "rep" else None, at, pieces)
    t3 = mark()

    optimizer.step()
    t4 = mark()
    strategy.after_step()
    t5 = mark()

    diag = None
    if diag_grads is not None:
        if applied is None or diag_grads is not grads:
            applied = update.weights.to(diag_grads.matrix.dtype) @ diag_grads.matrix
        diag = _device_cosines(diag_grads.matrix, applied)
        diag["source"] = diag_grads.source
    return losses.detach(), update.weights.detach(), (t0, t1, t2, t2b, t3, t4, t5), diag



# -- CUDA graphs -------------------------------------------------------------------------------
def graph_obstacle(clock: StepClock, strategy: Strategy) -> str | None:
    """Why this run's steps cannot be replayed from CUDA graphs (None: they can).

    A strategy allows it with the class attribute ``graph_safe = True``: its ``combine`` and
    ``after_step`` are tensor code on the run's device with shapes fixed by the batch (no
    reads of the device, no Python state that changes from step to step, no CPU generator), and
    ``on_epoch_end`` updates the tensors that ``combine`` reads in place.
    """
    if clock.no_graphs is not None:
        return clock.no_graphs
    if getattr(type(strategy), "needs_meta_batch", False):
        return (f"strategy '{strategy}' is bilevel (it draws a meta batch and runs a look-ahead "
                "of the model at every step), which a captured graph cannot replay")
    if not getattr(type(strategy), "graph_safe", False):
        return f"strategy '{strategy}' does not declare graph_safe"
    return None


class _Captured:
    """One captured step: its static inputs, the graph's replay and its output tensors."""

    def __init__(self, static: tuple[Tensor, ...], replay: Callable[[], None], losses: Tensor,
                 weights: Tensor):
        self.static = static
        self.replay = replay
        self.losses = losses
        self.weights = weights

    def __call__(self, batch: Sequence[Tensor], clock: StepClock) -> StepResult:
        start = clock.mark()
        for s, x in zip(self.static, batch):
            s.copy_(x)
        self.replay()
        end = clock.mark()
        # the next replay overwrites the graph's outputs: hand out copies
        return self.losses.clone(), self.weights.clone(), (start, end), None


class GraphedSteps:
    """Training steps replayed from CUDA graphs, one graph per batch shape.

    The first ``warmup`` steps of each batch shape run eagerly (in the clock's eager context:
    capture needs the optimiser state and workspaces to exist); the next one is captured
    (forward, strategy, backward, optimiser step, after_step, recorded from static copies of
    its batch, not run) and replayed, and so is every later batch of that shape. Steps that
    take gradient diagnostics run eagerly. The first capture that raises ends capturing for the
    run: later steps run eagerly and :attr:`notes` says why. Results are those of eager steps
    (the optimiser runs in its capturable form: the same update, rounded on the device).
    """

    def __init__(self, model: MultiTaskNet, tasks: Sequence[Task], strategy: Strategy,
                 optimizer: torch.optim.Optimizer, clock: StepClock, warmup: int = 3,
                 max_graphs: int = 8):
        self.eager = partial(train_step, model, tasks, strategy, optimizer=optimizer,
                             clock=clock)
        self.model, self.tasks, self.strategy, self.optimizer = model, tasks, strategy, optimizer
        self.clock = clock
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, _Captured] = {}
        self.replays = 0
        self.notes: list[str] = []
        self._seen: dict[tuple, int] = {}
        self._steps = 0
        self._failed = False

    def __call__(self, inputs: Sequence[Tensor], targets: Sequence[Tensor],
                 want_diag: bool = False) -> StepResult:
        self._steps += 1
        batch = (*inputs, *targets)
        if not (want_diag or self._failed):
            key = tuple((tuple(x.shape), x.dtype) for x in batch)
            graph = self.graphs.get(key)
            if graph is None:
                self._seen[key] = seen = self._seen.get(key, 0) + 1
                if seen > self.warmup:
                    graph = self._capture(batch, len(inputs))
                    if graph is not None:
                        self.graphs[key] = graph
            if graph is not None:
                self.replays += 1
                return graph(batch, self.clock)
        with self.clock.eager():
            return self.eager(inputs, targets, want_diag=want_diag)

    def _capture(self, batch: tuple[Tensor, ...], n_inputs: int) -> _Captured | None:
        if len(self.graphs) >= self.max_graphs:
            note = (f"cuda_graph: more than {self.max_graphs} batch shapes; the steps of the "
                    "others ran eagerly")
            if note not in self.notes:
                self.notes.append(note)
            return None
        static = tuple(x.clone() for x in batch)
        step = partial(train_step, self.model, self.tasks, self.strategy, static[:n_inputs],
                       static[n_inputs:], self.optimizer, _UNTIMED)
        try:
            # backward inside the graph then writes fresh gradients into the graph's own memory
            self.optimizer.zero_grad(set_to_none=True)
            replay, (losses, weights, _, _) = self.clock.capture(step)
        except Exception as exc:  # any failure: this run goes on with eager steps
            self._failed = True
            self.notes.append(f"cuda_graph: capture failed at step {self._steps - 1} "
                              f"({type(exc).__name__}: {exc}); this and later steps ran "
                              "eagerly")
            return None
        return _Captured(static, replay, losses, weights)
