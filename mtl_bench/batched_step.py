"""The stacked model and strategy of a seed batch, and one training step for all its seeds.

:func:`batched_step` is :func:`mtl_bench.step.train_step` for K seeds at once, with the same
phases, marks and order of operations (so that each seed's numbers follow the unbatched run's
up to rounding): forward of the stacked model under vmap, task gradients where the strategy
asks for them (one autograd call per task serves all seeds), the strategy's combine, backward
of the sum over seeds, one optimiser step, ``after_step``. See :mod:`mtl_bench.batched`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from mtl_bench.clock import StepClock
from mtl_bench.step import (
    _cosines,  # the record's layout of a step's diagnostics
    set_gradients,
)
from mtl_bench.strategy import Strategy, TaskGradients
from mtl_bench.task import MultiTaskNet, Task


# -- the stacked strategy ----------------------------------------------------------------------
class _Bound(nn.Module):
    """Calls one method of a strategy: ``functional_call`` runs a module's forward only."""

    def __init__(self, strategy: Strategy):
        super().__init__()
        self.strategy = strategy

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.strategy, method)(*args)


def _overrides(strategy: Strategy, hook: str) -> bool:
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


class StackedStrategy:
    """K instances of one strategy run as one.

    Pure tensor code (the default): the instances' parameters and buffers are stacked along a
    new first dimension and ``combine``/``after_step`` run once for all K under vmap, updating
    the stacked buffers in place. Written batched: a strategy that defines
    ``combine_seeds(members, losses, grads)`` (losses (K, T), grads a list of K TaskGradients or
    None; it returns an Update with (K, T) weights and a (K,) loss) keeps its state in its
    instances, and its other hooks run per instance. ``on_epoch_end`` always runs per seed in
    Python, so it may branch on its state.
    """

    def __init__(self, members: Sequence[Strategy]):
        self.members = list(members)
        first = members[0]
        if getattr(first, "needs_meta_batch", False):
            raise ValueError(f"strategy '{first}' is bilevel (needs_meta_batch): seed batching "
                             "does not run its meta update; train its seeds one by one")
        self.n_tasks = first.n_tasks
        self.grad_source = first.grad_source
        self.lr = first.lr
        self.written = callable(getattr(first, "combine_seeds", None))
        self.has_after_step = _overrides(first, "after_step")
        self.has_epoch_end = _overrides(first, "on_epoch_end")
        self.params: dict[str, Tensor] = {}
        self.buffers: dict[str, Tensor] = {}
        if not self.written:
            # functional_call swaps the stacked slices in and restores the instance's tensors
            self.bound = _Bound(first)
            params, buffers = stack_module_state(self.members)
            self.params = {f"strategy.{k}": v for k, v in params.items()}
            self.buffers = {f"strategy.{k}": v for k, v in buffers.items()}

    def parameters(self) -> list[Tensor]:
        if self.written:
            return [p for m in self.members for p in m.parameters()]
        return list(self.params.values())

    def combine(self, losses: Tensor, parts: list[list[Tensor]] | None) -> dict[str, Tensor]:
        """weights (K, T), and a loss (K,) and/or a direction (K, P)."""
        if self.written:
            grads = None if parts is None else [
                _seed_gradients(parts, k, self.grad_source) for k in range(len(self.members))]
            return _update_dict(self.members[0].combine_seeds(self.members, losses, grads))
        width = len(parts[0]) if parts else 0
        flat = [g for row in parts for g in row] if parts else []

        def one(params, buffers, losses, flat):
            grads = None
            if flat:
                rows = [flat[i * width:(i + 1) * width] for i in range(self.n_tasks)]
                grads = TaskGradients(rows, self.grad_source)
            return _update_dict(functional_call(self.bound, (params, buffers),
                                                ("combine", losses, grads)))

        return vmap(one)(self.params, self.buffers, losses, flat)

    def after_step(self) -> None:
        if not self.has_after_step:
            return
        if self.written:
            for member in self.members:
                member.after_step()
            return

        def one(params, buffers):
            functional_call(self.bound, (params, buffers), ("after_step",))
            return torch.zeros(())

        vmap(one)(self.params, self.buffers)

    @torch.no_grad()
    def on_epoch_end(self, k: int, epoch: int, train_losses: Tensor) -> None:
        """Seed k's hook: copy the stacked slice into the instance, call the hook, copy the
        (possibly reassigned) tensors back."""
        if not self.has_epoch_end:
            return
        member = self.members[k]
        named = {**self.params, **self.buffers}
        for name, stacked in named.items():
            _tensor_of(member, name).copy_(stacked[k])
        member.on_epoch_end(epoch, train_losses)
        for name, stacked in named.items():
            stacked[k].copy_(_tensor_of(member, name))


def _update_dict(update: Any) -> dict[str, Tensor]:
    """An Update as a dict of its tensors (vmap returns tensors, not None)."""
    out = {"weights": update.weights}
    if update.loss is not None:
        out["loss"] = update.loss
    if update.direction is not None:
        out["direction"] = update.direction
    return out


def _tensor_of(strategy: Strategy, name: str) -> Tensor:
    name = name.removeprefix("strategy.")
    try:
        return strategy.get_parameter(name)
    except AttributeError:
        return strategy.get_buffer(name)


# -- the stacked model -------------------------------------------------------------------------
def _sub_state(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class StackedModel:
    """K MultiTaskNets with their parameters stacked; forward under vmap."""

    def __init__(self, models: Sequence[MultiTaskNet], tasks: Sequence[Task]):
        self.models = list(models)
        self.tasks = list(tasks)
        self.template = copy.deepcopy(models[0]).to("meta")
        self.params, self.buffers = stack_module_state(self.models)
        first = models[0]
        name_of = {id(p): n for n, p in first.named_parameters()}
        self.shared = [name_of[id(p)] for p in first.shared_parameters()]
        self.last = [name_of[id(p)] for p in first.last_shared_parameters()]
        self.heads = [name_of[id(p)] for p in first.head_parameters()]
        self.owner = {name_of[id(p)]: i for i, head in enumerate(first.heads)
                      for p in head.parameters()}

    def stacked(self, names: Sequence[str]) -> list[Tensor]:
        return [self.params[n] for n in names]

    def trainable(self) -> list[Tensor]:
        return [p for p in self.params.values() if p.requires_grad]

    def losses(self, inputs: tuple[Tensor, ...], targets: tuple[Tensor, ...]) -> Tensor:
        """(K, T) task losses of one step."""
        def one(params, buffers, inputs, targets):
            _, _, outputs = functional_call(self.template, (params, buffers), (inputs,))
            return torch.stack([t.loss(o, y) for t, o, y in zip(self.tasks, outputs, targets)])

        return vmap(one)(self.params, self.buffers, inputs, targets)

    def losses_at_rep(self, x: Tensor, targets: tuple[Tensor, ...]
                      ) -> tuple[Tensor, list[Tensor], Tensor]:
        """Like MultiTaskNet's ``detach_rep``: each head reads its own detached leaf of the
        (K, B, H) representation. Returns the representation, the leaves and the losses."""
        trunk = _sub_state(self.params, "trunk."), _sub_state(self.buffers, "trunk.")
        rep = vmap(lambda p, b, x: functional_call(self.template.trunk, (p, b), (x,)))(
            *trunk, x)
        leaves = [rep.detach().requires_grad_(True) for _ in self.tasks]
        heads = [(_sub_state(self.params, f"heads.{i}."), _sub_state(self.buffers, f"heads.{i}."))
                 for i in range(len(self.tasks))]

        def one(heads, leaves, targets):
            return torch.stack([
                t.loss(functional_call(self.template.heads[i], state, (h,)), y)
                for i, (t, state, h, y) in enumerate(zip(self.tasks, heads, leaves, targets))])

        return rep, leaves, vmap(one)(heads, leaves, targets)

    @torch.no_grad()
    def copy_to(self, k: int) -> MultiTaskNet:
        """Seed k's model with its current parameters (for evaluation and selection)."""
        model = self.models[k]
        for name, p in model.named_parameters():
            p.copy_(self.params[name][k])
        for name, b in model.named_buffers():
            b.copy_(self.buffers[name][k])
        return model


def _task_gradients(losses: Tensor, at: Sequence[Tensor], extra: Sequence[Tensor] = ()
                    ) -> tuple[list[list[Tensor]], list[list[Tensor | None]]]:
    """Each task's gradient at the stacked tensors ``at`` (K, ...) for every seed at once: seeds
    share nothing, so the gradient of sum_k L_k,i at seed k's slice is dL_k,i / d theta_k."""
    parts, extras = [], []
    n = len(at)
    for i in range(losses.shape[1]):
        g = torch.autograd.grad(losses[:, i].sum(), [*at, *extra], retain_graph=True,
                                allow_unused=True)
        parts.append([gi if gi is not None else torch.zeros_like(p) for gi, p in zip(g[:n], at)])
        extras.append(list(g[n:]))
    return parts, extras


def _per_seed(coef: Tensor, i: int, like: Tensor) -> Tensor:
    """Column i of (K, T) coefficients, shaped to broadcast against a (K, ...) tensor."""
    return coef[:, i].reshape(-1, *([1] * (like.dim() - 1)))


def _combine_parts(coef: Tensor, parts: list[list[Tensor]]) -> list[Tensor]:
    """sum_i coef_k,i g_k,i per piece, in TaskGradients.combine_parts's order of operations."""
    out = [g * _per_seed(coef, 0, g) for g in parts[0]]
    for i, row in enumerate(parts[1:], start=1):
        for acc, g in zip(out, row):
            acc.addcmul_(g, _per_seed(coef, i, g))
    return out


def _sum_pieces(coef: Tensor | None, pieces: list[list[Tensor | None]]) -> list[Tensor | None]:
    out: list[Tensor | None] = [None] * len(pieces[0])
    for i, row in enumerate(pieces):
        for k, g in enumerate(row):
            if g is None:
                continue
            term = g if coef is None else g * _per_seed(coef, i, g)
            out[k] = term if out[k] is None else out[k].add_(term)
    return out


def _seed_gradients(parts: list[list[Tensor]], k: int, source: str) -> TaskGradients:
    return TaskGradients([[g[k] for g in row] for row in parts], source)


def batched_step(model: StackedModel, strategy: StackedStrategy, inputs: tuple[Tensor, ...],
                 targets: tuple[Tensor, ...], optimizer: torch.optim.Optimizer,
                 clock: StepClock, want_diag: bool):
    """train_step for K seeds at once. Returns (losses (K, T), weights (K, T), the clock's
    marks, per-seed diagnostics or None)."""
    source = strategy.grad_source
    mark = clock.mark
    t0 = mark()
    reps = None
    at: list[Tensor] = []
    heads: list[Tensor] = []
    parts = None
    head_grads: list[list[Tensor | None]] = []
    if source == "rep":
        reps, leaves, losses = model.losses_at_rep(inputs[0], targets)
        t1 = mark()
        heads = model.stacked(model.heads)
        g = torch.autograd.grad(losses.sum(), [*leaves, *heads], retain_graph=True,
                                allow_unused=True)
        n = len(leaves)
        parts = [[gi if gi is not None else torch.zeros_like(x)] for gi, x in zip(g[:n], leaves)]
        head_grads = [[None] * len(heads) for _ in range(n)]
        for j, (name, gp) in enumerate(zip(model.heads, g[n:])):
            if gp is not None:
                head_grads[model.owner[name]][j] = gp
    else:
        losses = model.losses(inputs, targets)
        t1 = mark()
        if source is not None:
            at = model.stacked({"last": model.last, "shared": model.shared}[source])
            if source == "shared":
                heads = model.stacked(model.heads)
            parts, head_grads = _task_gradients(losses, at, heads)
    update = strategy.combine(losses, parts)
    weights = update["weights"]
    t2 = mark()

    diags = None
    if want_diag:  # untimed, as in train_step
        diag_parts, diag_source = parts, source
        if diag_parts is None and model.last:
            diag_parts, _ = _task_gradients(losses, model.stacked(model.last))
            diag_source = "last"
        if diag_parts is not None:
            diags = []
            for k in range(len(weights)):
                grads = _seed_gradients(diag_parts, k, diag_source)
                applied = None
                if "loss" not in update and diag_parts is parts and "direction" in update:
                    applied = update["direction"][k]
                if applied is None:
                    applied = weights[k].to(grads.matrix.dtype) @ grads.matrix
                diag = _cosines(grads.matrix, applied)
                diag["source"] = grads.source
                diags.append(diag)
    t2b = mark() if want_diag else t2

    optimizer.zero_grad(set_to_none=True)
    if parts is None:
        if "loss" not in update:
            raise RuntimeError("the strategy returned no loss and asked for no gradients")
        update["loss"].sum().backward()
    else:
        coef = None
        if "loss" in update:
            held = {id(p) for p in (*at, *heads)}
            rest = [] if source == "rep" else [p for p in model.trainable() if id(p) not in held]
            rest += [p for p in strategy.parameters() if p.requires_grad]
            losses.retain_grad()
            torch.autograd.backward(update["loss"].sum(), inputs=[*rest, losses])
            coef = losses.grad.to(parts[0][0].dtype)
            pieces = _combine_parts(coef, parts)
        else:
            applied = update.get("direction")
            if applied is None:
                matrix = torch.stack([torch.cat([g.reshape(len(g), -1) for g in row], dim=1)
                                      for row in parts], dim=1)
                applied = torch.einsum("kt,ktp->kp", weights.to(matrix.dtype), matrix)
            pieces = _split_like(applied, at) if source != "rep" else [applied]
        set_gradients(heads, _sum_pieces(coef, head_grads) if heads else [], source, reps, at,
                      pieces)
    t3 = mark()
    optimizer.step()
    t4 = mark()
    strategy.after_step()
    t5 = mark()
    return losses.detach(), weights.detach(), (t0, t1, t2, t2b, t3, t4, t5), diags


def _split_like(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Cut (K, P) rows into (K, ...) pieces shaped like the stacked ``params``."""
    out, offset = [], 0
    for p in params:
        size = p[0].numel()
        out.append(flat[:, offset:offset + size].reshape(p.shape))
        offset += size
    return out
