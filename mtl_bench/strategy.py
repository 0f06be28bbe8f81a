"""The weighting-strategy protocol: what a strategy sees, what it returns, which hooks it gets.

A strategy is an ``nn.Module`` so that learnable task weights live in it and survive
``state_dict``. The harness owns forward, backward and every optimiser step; a strategy only
turns this step's task losses (and, if it asks for them, task gradients) into an :class:`Update`.

The three families of DESIGN.md map onto one method, :meth:`Strategy.combine`:

* loss weighting (fixed, uncertainty, DWA, ...): ``grad_source = None``; return
  ``Update(weights, loss=...)``. The harness back-propagates ``loss``; learnable strategy
  parameters receive their gradients from that same backward.
* gradient-norm balancing (GradNorm): ``grad_source`` names where task gradients are taken; the
  strategy returns a loss as above, which may include an auxiliary term that only reaches its own
  parameters.
* gradient manipulation (PCGrad, MGDA, ...): ``grad_source`` is ``"shared"`` or ``"rep"``;
  return ``Update(weights)`` (the harness applies ``weights @ G``) or ``Update(weights,
  direction=d)`` for a direction outside the span of the task gradients. Task-specific heads are
  always updated with their own task's unweighted gradient, as in Sener & Koltun (2018).

A fourth family, bilevel ("meta-learned weights", Auto-Lambda), learns its weights from a
look-ahead of the model on a second batch. A strategy of this family sets ``needs_meta_batch =
True`` and implements :meth:`Strategy.meta_gradients`. At every step, after the forward pass and
before ``combine``, the harness hands it a :class:`MetaProblem`: the model's parameters, this
step's task losses, and two callables that run the model with any parameter set the strategy
builds (a virtual SGD step, a finite-difference probe) and return the (T,) task losses on this
step's training batch or on the meta batch. The harness draws the meta batch (a second,
independent draw from the *training* split: validation selects the model and test scores it, so
neither may steer training), runs every forward pass, and owns both optimiser steps: the
strategy returns gradients for its own trainable parameters (or ``None`` to skip this step), the
harness steps them with the strategy's learning rate, and then the model is trained with the
updated weights through ``combine`` exactly as for loss weighting. A bilevel strategy never
changes the model's parameters. It is neither ``batchable`` nor ``graph_safe``: seed batching
trains it run by run with a note, and ``--cuda-graph`` steps it eagerly with a note.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtl_bench.errors import check_param

CLASSIFICATION = "classification"
REGRESSION = "regression"

#: Where task gradients can be taken. ``last``: parameters of the last shared layer;
#: ``shared``: all shared (trunk) parameters; ``rep``: the shared representation (trunk output).
GRAD_SOURCES = ("last", "shared", "rep")


@dataclass(frozen=True)
class TaskInfo:
    """What a strategy may know about a task: its name and whether it is a regression."""

    name: str
    kind: str  # CLASSIFICATION or REGRESSION


class TaskGradients:
    """Per-task gradients at one place of the network, flattened to a (T, P) matrix.

    ``matrix[i]`` is the gradient of task ``i``'s *unweighted* loss. For ``source == "rep"`` P is
    batch x representation width. Everything here is detached from the graph. The harness hands
    over per-parameter pieces; the flat matrix is only assembled when a strategy asks for it
    (norm-only strategies never pay for the copy).
    """

    def __init__(self, parts: Sequence[Sequence[Tensor]] | Tensor, source: str):
        self.source = source
        if isinstance(parts, Tensor):
            self._parts: list[list[Tensor]] = [[row] for row in parts]
            self._matrix: Tensor | None = parts
        else:
            self._parts = [list(p) for p in parts]
            self._matrix = None
        self._gram: Tensor | None = None
        self._norms: Tensor | None = None

    def __len__(self) -> int:
        return len(self._parts)

    @property
    def parts_dtype(self) -> torch.dtype:
        return self._parts[0][0].dtype

    @property
    def matrix(self) -> Tensor:
        """(T, P) flattened task gradients."""
        if self._matrix is None:
            self._matrix = torch.stack([torch.cat([g.reshape(-1) for g in row])
                                        for row in self._parts])
        return self._matrix

    @property
    def gram(self) -> Tensor:
        """G G^T, (T, T): most gradient methods need only inner products of task gradients."""
        if self._gram is None:
            self._gram = self.matrix @ self.matrix.T
        return self._gram

    @property
    def norms(self) -> Tensor:
        """Euclidean norm of each task's gradient, (T,)."""
        if self._norms is None:
            if self._gram is not None:
                self._norms = self._gram.diagonal().clamp_min(0).sqrt()
            else:
                self._norms = torch.stack([
                    torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                          for g in row]))
                    for row in self._parts])
        return self._norms

    def combine_parts(self, coef: Tensor) -> list[Tensor]:
        """sum_i coef_i g_i, returned per parameter piece (shapes of the pieces)."""
        if self._matrix is not None and len(self._parts[0]) == 1:
            return [(coef @ self._matrix).view_as(self._parts[0][0])]
        out = [g * coef[0] for g in self._parts[0]]
        for c, row in zip(coef[1:], self._parts[1:]):
            for acc, g in zip(out, row):
                acc.addcmul_(g, c)
        return out


class MetaProblem:
    """What the harness gives a bilevel strategy's :meth:`Strategy.meta_gradients` at one step.

    params: the model's trainable parameters theta, in ``model.named_parameters()`` order (the
    harness's own tensors: read them, never change them).
    losses: (T,) task losses of this step's training batch at theta, attached to the graph of
    this step's forward pass (differentiate with ``retain_graph=True``: the step back-propagates
    the same graph afterwards).
    lr, weight_decay: the model's optimiser settings (a look-ahead step uses them).
    :meth:`train_losses` / :meth:`meta_losses`: (T,) task losses of the model run with another
    parameter set on this step's training batch / on the meta batch; differentiable with respect
    to the tensors passed in.
    """

    def __init__(self, params: Sequence[Tensor], losses: Tensor,
                 train_losses: Callable[[Sequence[Tensor]], Tensor],
                 meta_losses: Callable[[Sequence[Tensor]], Tensor], lr: float,
                 weight_decay: float = 0.0):
        self.params = tuple(params)
        self.losses = losses
        self._train = train_losses
        self._meta = meta_losses
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)

    def train_losses(self, params: Sequence[Tensor]) -> Tensor:
        """(T,) task losses on this step's training batch with the model's parameters ``params``."""
        return self._train(params)

    def meta_losses(self, params: Sequence[Tensor]) -> Tensor:
        """(T,) task losses on the meta batch with the model's parameters ``params``."""
        return self._meta(params)


@dataclass
class Update:
    """What a strategy returns for one step.

    weights: (T,) task weights applied this step, detached; logged as the weight curve.
    loss: scalar to back-propagate (loss-level strategies). Leave ``None`` for gradient-level.
    direction: (P,) combined gradient at the gradient source; defaults to ``weights @ G``.
    """

    weights: Tensor
    loss: Tensor | None = None
    direction: Tensor | None = None


class Strategy(nn.Module):
    """Base class of every weighting strategy.

    Subclasses implement :meth:`combine`. Hyper-parameters are constructor arguments, validated
    there (use :func:`mtl_bench.errors.check_param`) and stored as attributes of the same name so
    that ``repr`` can rebuild the call. Optional hooks default to doing nothing.
    """

    #: Registry name, set by ``@register_strategy``.
    name: ClassVar[str] = ""
    #: One of "loss weighting", "gradient-norm balancing", "gradient manipulation", "bilevel".
    family: ClassVar[str] = "loss weighting"
    #: Short reference shown by ``mtl-bench list``.
    paper: ClassVar[str] = ""
    #: One line saying what the strategy does, shown by ``mtl-bench list``.
    summary: ClassVar[str] = ""
    #: True when permuting the tasks permutes the weights the same way (checked by the suite).
    permutation_invariant: ClassVar[bool] = False
    #: Seed batching may run K instances as one (mtl_bench.batched): combine and after_step
    #: are pure tensor code updating state in place (vmappable), or combine_seeds is defined.
    batchable: ClassVar[bool] = False
    #: ``run --cuda-graph`` may capture the step: combine and after_step are pure tensor code
    #: with static shapes, no host reads, and state updated in place (epoch-end hooks too).
    graph_safe: ClassVar[bool] = False
    #: Bilevel family: the harness draws a meta batch each step and calls meta_gradients.
    needs_meta_batch: ClassVar[bool] = False

    #: Where the harness must take task gradients before calling combine (None: not needed).
    grad_source: str | None = None
    #: Learning rate for the strategy's own parameters (None: the model's learning rate).
    lr: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.n_tasks = 0
        self.tasks: tuple[TaskInfo, ...] = ()
        self.generator = torch.Generator()

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        """Called once before training. Subclasses that create parameters call super first."""
        self.tasks = tuple(tasks)
        self.n_tasks = len(self.tasks)
        self.generator.manual_seed(seed)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        """Turn this step's (T,) task losses into an :class:`Update`."""
        raise NotImplementedError

    def meta_gradients(self, problem: MetaProblem) -> Sequence[Tensor] | None:
        """Bilevel strategies (``needs_meta_batch = True``): gradients for the strategy's own
        trainable parameters (in ``parameters()`` order), which the harness applies with one
        optimiser step before ``combine``; ``None`` leaves them as they are this step."""
        raise NotImplementedError(f"strategy '{self}' sets needs_meta_batch but does not "
                                  "implement meta_gradients")

    def get_extra_state(self) -> Any:
        # the random generator is state too: a restored strategy continues the same draws
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict) and "generator" in state:
            self.generator.set_state(state["generator"])

    def after_step(self) -> None:
        """Called after the optimiser steps (e.g. to renormalise learnable weights)."""

    def on_epoch_end(self, epoch: int, train_losses: Tensor) -> None:
        """Called after each epoch with the (T,) mean training loss of each task."""

    @classmethod
    def variants(cls, params: dict[str, Any], n_tasks: int) -> list[dict[str, Any]]:
        """Expand one parameter set into the runs it stands for (default: itself). A strategy
        with a sweep mode (fixed weights over the simplex) returns one set per grid point."""
        return [params]

    # -- helpers -----------------------------------------------------------------------------
    def weighted_sum(self, weights: Tensor, losses: Tensor) -> Update:
        """The common loss-level update: sum of weights x losses, weights treated as constants."""
        weights = weights.detach()
        return Update(weights=weights, loss=(weights * losses).sum())

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments, read back from the attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        out: dict[str, Any] = {}
        for p in list(sig.parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            value = getattr(self, p.name, p.default)
            if isinstance(value, tuple):
                value = list(value)
            out[p.name] = value
        return out

    def non_default_hparams(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        out = {}
        for key, value in self.hparams().items():
            default = sig.parameters[key].default
            if isinstance(default, tuple):
                default = list(default)
            if value != default:
                out[key] = value
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"

    def __str__(self) -> str:
        return label(self.name or type(self).__name__.lower(), self.non_default_hparams())


def label(name: str, params: dict[str, Any]) -> str:
    """Short key of a configured strategy: ``gradnorm`` or ``gradnorm(alpha=0.5)``."""
    if not params:
        return name
    inner = ",".join(f"{k}={format_value(v)}" for k, v in sorted(params.items()))
    return f"{name}({inner})"


def format_value(value: Any) -> str:
    """A parameter value as it appears in labels: lists joined by '/', floats to 4 digits."""
    if isinstance(value, (list, tuple)):
        return "/".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def check_grad_source(value: object, allowed: Sequence[str] = ("shared", "rep")) -> None:
    """Validate the ``source`` option shared by every gradient-manipulation strategy."""
    check_param(value in allowed, "source", "one of " + ", ".join(map(repr, allowed)), value)


def check_positive(name: str, value: object, allow_zero: bool = False) -> None:
    """A positive (or, with ``allow_zero``, non-negative) finite number; inf and nan fail."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and is_finite(value) \
        and (value >= 0 if allow_zero else value > 0)
    requirement = "a non-negative float" if allow_zero else "a positive float"
    check_param(ok, name, requirement, value)


def is_finite(value: int | float) -> bool:
    """``math.isfinite`` that also answers for ints too large to be a float (10**400)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_optional_lr(value: object) -> None:
    if value is not None:
        check_positive("lr", value)
