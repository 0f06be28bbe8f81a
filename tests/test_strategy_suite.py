"""One property suite, run against every registered strategy: built-in, installed or plug-in.

The names are read from the registry when this module is collected, so a strategy added in
``strategies/`` or through an entry point is covered without editing this file. To run the suite
against a plug-in file (``--plugin FILE`` of the command line), name it in ``MTL_BENCH_PLUGIN``
(several files separated by ``os.pathsep``)::

    MTL_BENCH_PLUGIN=my_strategy.py python -m pytest tests/test_strategy_suite.py -k my_name

The ``check_*`` functions below take a strategy class and raise ``AssertionError`` when a
property fails; the tests at the bottom only parametrise them. A strategy states that it treats
tasks symmetrically with the class attribute ``permutation_invariant = True``: permuting the
tasks (their infos, losses and gradients) then permutes its weights the same way.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn

from mtl_bench import registry
from mtl_bench.strategy import (
    CLASSIFICATION,
    REGRESSION,
    MetaProblem,
    Strategy,
    TaskGradients,
    TaskInfo,
    Update,
)
from mtl_bench.task import MultiTaskNet, Task, mlp
from mtl_bench.train import make_optimizer, train_step

PLUGIN_ENV = "MTL_BENCH_PLUGIN"
GRAD_WIDTH = 16  # columns of the random task-gradient matrices
STRATEGY_LR = 0.01  # stand-in for the harness optimiser on a strategy's own parameters
EPOCH_EVERY = 3  # steps per simulated epoch: on_epoch_end is exercised within a short drive
META_LR = 0.05  # look-ahead learning rate of the bilevel strategies' meta problem


def load_env_plugins() -> None:
    """Import the plug-in files named in ``MTL_BENCH_PLUGIN`` so their strategies register."""
    for path in os.environ.get(PLUGIN_ENV, "").split(os.pathsep):
        if path.strip():
            registry.load_plugin_file(path.strip())


def task_infos(n_tasks: int) -> list[TaskInfo]:
    """Alternating regression and classification tasks (strategies may depend on the kind)."""
    return [TaskInfo(f"t{i}", REGRESSION if i % 2 == 0 else CLASSIFICATION)
            for i in range(n_tasks)]


def build(cls: type[Strategy], tasks: Sequence[TaskInfo], seed: int = 0) -> Strategy:
    """A default-constructed strategy, set up for ``tasks``."""
    strategy = cls()
    strategy.setup(tasks, seed=seed)
    return strategy


def random_inputs(n_tasks: int, steps: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """(losses, task-gradient matrix) per step: positive losses of varied scale, N(0,1) rows."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        scale = torch.logspace(-1, 1, n_tasks)
        losses = (torch.rand(n_tasks, generator=gen) + 0.05) * scale
        out.append((losses, torch.randn(n_tasks, GRAD_WIDTH, generator=gen)))
    return out


def meta_problem(losses: Tensor, matrix: Tensor) -> tuple[MetaProblem, Tensor]:
    """A bilevel strategy's problem for one step, built from the step's inputs: parameters
    theta = 0 (width GRAD_WIDTH), training losses L_i(theta) = l_i + g_i . theta +
    |theta|^2 / 2 (g_i: row i of ``matrix``; at theta = 0 they are the given losses) and meta
    losses of the same form with h_i = (g_i + g_i rolled by one) / 2. Permuting the tasks
    permutes both, so the suite's permutation check applies to the meta update too.
    Returns the problem and its losses at theta (what combine gets)."""
    theta = torch.zeros(GRAD_WIDTH, requires_grad=True)
    meta_rows = (matrix + matrix.roll(1, dims=1)) / 2

    def quadratic(rows: Tensor, params: Sequence[Tensor]) -> Tensor:
        (t,) = params
        return losses + rows @ t + 0.5 * (t * t).sum()

    at_theta = quadratic(matrix, [theta])
    problem = MetaProblem([theta], at_theta, lambda ps: quadratic(matrix, ps),
                          lambda ps: quadratic(meta_rows, ps), lr=META_LR)
    return problem, at_theta


def one_step(strategy: Strategy, losses: Tensor, matrix: Tensor
             ) -> tuple[Update, Tensor | None]:
    """combine, a plain SGD step on the strategy's own parameters, after_step; for a bilevel
    strategy (``needs_meta_batch``) first its meta update on :func:`meta_problem`, applied by
    the same SGD step, as the harness does before combine.

    Returns the update and d loss / d losses (None for a gradient-level update).
    """
    leaf = losses.clone().requires_grad_(True)
    grads = (TaskGradients(matrix.clone(), strategy.grad_source)
             if strategy.grad_source is not None else None)
    combined = leaf
    if strategy.needs_meta_batch:
        problem, combined = meta_problem(leaf, matrix)
        meta_grads = strategy.meta_gradients(problem)
        if meta_grads is not None:
            own = [p for p in strategy.parameters() if p.requires_grad]
            assert len(list(meta_grads)) == len(own), f"{strategy}: one gradient per parameter"
            with torch.no_grad():
                for p, g in zip(own, meta_grads):
                    assert g.shape == p.shape and bool(torch.isfinite(g).all()), strategy
                    p -= STRATEGY_LR * g
    update = strategy.combine(combined, grads)
    d_losses = None
    if update.loss is not None:
        params = [p for p in strategy.parameters() if p.requires_grad]
        got = torch.autograd.grad(update.loss, [leaf, *params], allow_unused=True)
        d_losses = got[0] if got[0] is not None else torch.zeros_like(leaf)
        with torch.no_grad():
            for p, g in zip(params, got[1:]):
                if g is not None:
                    p -= STRATEGY_LR * g
    strategy.after_step()
    return update, d_losses


def drive(strategy: Strategy, inputs: Sequence[tuple[Tensor, Tensor]], start: int = 0
          ) -> list[tuple[Update, Tensor | None]]:
    """Feed ``inputs`` step by step, calling on_epoch_end every EPOCH_EVERY steps with the mean
    loss of that simulated epoch. ``start`` is the index of the first step (for resuming)."""
    out = []
    epoch_losses: list[Tensor] = []
    for i, (losses, matrix) in enumerate(inputs, start=start):
        out.append(one_step(strategy, losses, matrix))
        epoch_losses.append(losses)
        if (i + 1) % EPOCH_EVERY == 0:
            strategy.on_epoch_end((i + 1) // EPOCH_EVERY, torch.stack(epoch_losses).mean(0))
            epoch_losses = []
    return out


def check_update_shapes(cls: type[Strategy], n_tasks: int, steps: int = 7) -> None:
    """Weights finite with shape (T,); a loss is a finite scalar whose gradient with respect to
    the task losses is the reported weights; without a loss, weights @ G (or the direction) is
    a finite vector of the gradients' width."""
    strategy = build(cls, task_infos(n_tasks))
    for step, (update, d_losses) in enumerate(drive(strategy, random_inputs(n_tasks, steps))):
        where = f"{cls.name} step {step} with {n_tasks} tasks"
        w = update.weights
        assert isinstance(w, Tensor) and w.shape == (n_tasks,), f"{where}: weights {w!r}"
        assert w.is_floating_point() and bool(torch.isfinite(w).all()), f"{where}: {w}"
        assert not w.requires_grad, f"{where}: weights must be detached"
        if update.loss is not None:
            assert update.loss.ndim == 0 and bool(torch.isfinite(update.loss)), where
            torch.testing.assert_close(d_losses, w.to(d_losses), rtol=1e-5, atol=1e-6,
                                       msg=f"{where}: reported weights != d loss / d L_i")
        else:
            assert cls.grad_source is not None or strategy.grad_source is not None, (
                f"{where}: no loss returned and no task gradients asked for")
            g = random_inputs(n_tasks, 1)[0][1]
            applied = update.direction if update.direction is not None else w @ g
            assert applied.shape == (GRAD_WIDTH,), f"{where}: direction {applied.shape}"
            assert bool(torch.isfinite(applied).all()), where


def check_state_round_trip(cls: type[Strategy], n_tasks: int, before: int = 5,
                           after: int = 3) -> None:
    """A fresh instance (set up with another seed) that loads the state_dict continues exactly
    like the original: everything the next steps depend on is in the state, including the
    state of a random generator (see ``get_extra_state`` in strategies/rlw.py)."""
    inputs = random_inputs(n_tasks, before + after, seed=1)
    original = build(cls, task_infos(n_tasks), seed=0)
    drive(original, inputs[:before])
    resumed = build(cls, task_infos(n_tasks), seed=1)
    resumed.load_state_dict(original.state_dict())
    a = drive(original, inputs[before:], start=before)
    b = drive(resumed, inputs[before:], start=before)
    for step, ((ua, _), (ub, _)) in enumerate(zip(a, b)):
        where = f"{cls.name}: step {step} after load_state_dict"
        assert torch.equal(ua.weights, ub.weights), f"{where}: {ua.weights} != {ub.weights}"
        if ua.loss is not None:
            assert torch.equal(ua.loss.detach(), ub.loss.detach()), where
        if ua.direction is not None:
            assert torch.equal(ua.direction, ub.direction), where


def check_deterministic(cls: type[Strategy], n_tasks: int, steps: int = 7) -> None:
    """Two instances with the same seed and inputs give bit-identical updates."""
    inputs = random_inputs(n_tasks, steps, seed=2)
    a = drive(build(cls, task_infos(n_tasks), seed=5), inputs)
    b = drive(build(cls, task_infos(n_tasks), seed=5), inputs)
    for (ua, _), (ub, _) in zip(a, b):
        assert torch.equal(ua.weights, ub.weights), f"{cls.name}: not deterministic"
        if ua.loss is not None:
            assert torch.equal(ua.loss.detach(), ub.loss.detach())


def check_permutation_invariant(cls: type[Strategy], n_tasks: int, steps: int = 7) -> None:
    """Permuting the tasks (infos, losses, gradients) permutes the weights the same way and
    leaves the loss unchanged, at every step of a drive."""
    perm = torch.randperm(n_tasks, generator=torch.Generator().manual_seed(n_tasks))
    infos = task_infos(n_tasks)
    inputs = random_inputs(n_tasks, steps, seed=3)
    a = drive(build(cls, infos), inputs)
    b = drive(build(cls, [infos[i] for i in perm.tolist()]),
              [(losses[perm], matrix[perm]) for losses, matrix in inputs])
    for step, ((ua, _), (ub, _)) in enumerate(zip(a, b)):
        where = f"{cls.name} step {step}, tasks permuted by {perm.tolist()}"
        torch.testing.assert_close(ub.weights, ua.weights[perm], rtol=1e-5, atol=1e-6,
                                   msg=where)
        if ua.loss is not None:
            torch.testing.assert_close(ub.loss, ua.loss, rtol=1e-5, atol=1e-6, msg=where)


def check_training_reduces_loss(cls: type[Strategy], steps: int = 50) -> None:
    """~50 harness steps (train_step, the harness optimiser) on a tiny regression +
    classification net lower the summed, unweighted task loss."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=gen)
    y_reg = x @ torch.randn(6, generator=gen)
    y_cls = (x[:, :4] @ torch.randn(4, 3, generator=gen)).argmax(dim=1)
    torch.manual_seed(0)
    model = MultiTaskNet(mlp([6, 24, 24]), [nn.Linear(24, 1), nn.Linear(24, 3)])
    tasks = [Task("reg", REGRESSION, 1, ("mae",)), Task("cls", CLASSIFICATION, 3, ("accuracy",))]
    strategy = build(cls, [t.info for t in tasks])
    optimizer = make_optimizer(model, strategy, lr=0.01, weight_decay=0.0)

    def total() -> float:
        with torch.no_grad():
            _, _, (out_reg, out_cls) = model((x,))
            return float(tasks[0].loss(out_reg, y_reg) + tasks[1].loss(out_cls, y_cls))

    start = total()
    epoch_losses = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=gen)
        extra = {}
        if strategy.needs_meta_batch:  # bilevel: the harness's second draw of training data
            m = torch.randint(0, len(x), (32,), generator=gen)
            extra["meta"] = ((x[m],), (y_reg[m], y_cls[m]))
        losses, weights, _, _ = train_step(model, tasks, strategy, (x[idx],),
                                           (y_reg[idx], y_cls[idx]), optimizer, **extra)
        assert bool(torch.isfinite(losses).all()) and bool(torch.isfinite(weights).all())
        epoch_losses.append(losses)
        if (step + 1) % 10 == 0:
            strategy.on_epoch_end((step + 1) // 10, torch.stack(epoch_losses).mean(0))
            epoch_losses = []
    end = total()
    assert end < 0.5 * start, f"{cls.name}: summed loss {start:.4f} -> {end:.4f}"


def check_repr_rebuilds(cls: type[Strategy]) -> None:
    """``repr`` is the constructor call and rebuilds an equal configuration; ``str`` of the
    default configuration is the registry name."""
    strategy = cls()
    rebuilt = eval(repr(strategy), {cls.__name__: cls})  # noqa: S307 - our own repr
    assert type(rebuilt) is cls and rebuilt.hparams() == strategy.hparams()
    assert str(strategy) == cls.name


def check_documented(cls: type[Strategy]) -> None:
    """A built-in strategy names its paper for ``list`` and links it in its docstring."""
    assert cls.paper, f"{cls.name}: set the `paper` class attribute"
    doc = cls.__doc__ or ""
    assert "http" in doc and "Args:" in doc, (
        f"{cls.name}: the class docstring should link the paper and document each parameter")


# -- the tests -------------------------------------------------------------------------------
load_env_plugins()
NAMES = registry.strategies.names()


@pytest.fixture(params=NAMES, ids=NAMES)
def cls(request) -> type[Strategy]:
    return registry.strategies.get(request.param)


@pytest.mark.parametrize("n_tasks", [2, 5])
def test_update_shapes_and_weights(cls, n_tasks):
    check_update_shapes(cls, n_tasks)


@pytest.mark.parametrize("n_tasks", [2, 5])
def test_state_round_trip(cls, n_tasks):
    check_state_round_trip(cls, n_tasks)


def test_deterministic_for_a_seed(cls):
    check_deterministic(cls, 3)


@pytest.mark.parametrize("n_tasks", [2, 5])
def test_permutation_invariance(cls, n_tasks):
    if not getattr(cls, "permutation_invariant", False):
        pytest.skip(f"{cls.name} does not claim permutation invariance")
    check_permutation_invariant(cls, n_tasks)


def test_training_reduces_summed_loss(cls):
    check_training_reduces_loss(cls)


def test_repr_rebuilds_constructor_call(cls):
    check_repr_rebuilds(cls)


def test_builtin_strategies_are_documented(cls):
    if not cls.__module__.startswith("mtl_bench.strategies."):
        pytest.skip("documentation conventions apply to built-in strategies")
    check_documented(cls)


# -- hyper-parameter domains -----------------------------------------------------------------
#: (strategy, parameter) pairs where an infinite value is meaningful, with the reason; they are
#: only checked with nan. None today: nash_mtl's ``max_norm`` switches clipping off with 0.
INF_MEANINGFUL: dict[tuple[str, str], str] = {}


def float_params(cls: type[Strategy]) -> list[str]:
    """Constructor parameters that take one float: a float default, or annotated ``float``
    (``float | None`` too, as an optional learning rate is)."""
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        annotation = str(p.annotation).replace(" | None", "").replace("Optional[", "")
        if isinstance(p.default, float) or annotation.strip("]") in ("float", "'float'"):
            out.append(p.name)
    return out


def check_rejects_non_finite(cls: type[Strategy], param: str, value: float) -> None:
    """Constructing with a non-finite hyper-parameter raises a ValueError naming it."""
    try:
        cls(**{param: value})
    except ValueError as exc:
        assert f"`{param}`" in str(exc) or f"'{param}'" in str(exc), (
            f"{cls.name}: the error for {param}={value} should name the parameter: {exc}")
    else:
        raise AssertionError(f"{cls.name}({param}={value}) was accepted")


NON_FINITE = [(name, param, value) for name in NAMES
              for param in float_params(registry.strategies.get(name))
              for value in (math.inf, math.nan) if not (
                  math.isinf(value) and (name, param) in INF_MEANINGFUL)]


def test_every_strategy_has_float_parameters_to_check():
    # guards the discovery above: a change in how parameters are annotated must not empty it
    assert {("gradnorm", "alpha"), ("dwa", "temperature"), ("uncertainty", "lr")} <= {
        (n, p) for n, p, _ in NON_FINITE}


@pytest.mark.parametrize("name,param,value", NON_FINITE,
                         ids=[f"{n}-{p}-{v}" for n, p, v in NON_FINITE])
def test_non_finite_hyper_parameters_are_rejected(name, param, value):
    check_rejects_non_finite(registry.strategies.get(name), param, value)
