"""The bilevel family (``needs_meta_batch``) and Auto-Lambda, its built-in member.

Golden values come from a reference written here: a float64 linear two-task model whose
virtual step, meta gradient, finite difference and exact (unrolled) hypergradient the test
computes with its own closed-form tensor code, never with the code under test.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import mtl_bench.train as train_module
from mtl_bench import batched, bench, speed, step
from mtl_bench.architectures import PER_TASK
from mtl_bench.batched import can_batch, train_batched
from mtl_bench.batched_step import StackedStrategy
from mtl_bench.cli import main
from mtl_bench.clock import CpuClock
from mtl_bench.step import graph_obstacle
from mtl_bench.strategies.auto_lambda import AutoLambda
from mtl_bench.strategy import REGRESSION, MetaProblem, Strategy, TaskInfo, Update
from mtl_bench.task import MultiTaskNet, Task
from mtl_bench.train import (
    RunConfig,
    build_task_pair,
    make_optimizer,
    meta_batches,
    train_run,
    train_step,
)

ALPHA = 0.05  # the model's learning rate: the look-ahead step size
TASKS = [Task("a", REGRESSION, 1, ("mae",)), Task("b", REGRESSION, 1, ("mae",))]


# -- the reference: a linear trunk and linear heads, by hand ---------------------------------
def linear_net() -> MultiTaskNet:
    torch.manual_seed(3)
    return MultiTaskNet(nn.Linear(4, 3), [nn.Linear(3, 1), nn.Linear(3, 1)]).double()


def batch(seed: int, n: int = 16) -> tuple[tuple[Tensor], tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return (x,), (torch.randn(n, generator=gen, dtype=torch.float64),
                  torch.randn(n, generator=gen, dtype=torch.float64))


def hand_losses(theta: list[Tensor], data) -> Tensor:
    """Mean squared errors of rep = x W^T + b, out_i = rep v_i^T + c_i, written out."""
    (x,), ys = data
    w, b, v1, c1, v2, c2 = theta
    rep = x @ w.T + b
    return torch.stack([((rep @ v.T + c).squeeze(-1) - y).pow(2).mean()
                        for v, c, y in ((v1, c1, ys[0]), (v2, c2, ys[1]))])


def grad(f: Tensor, at: list[Tensor], **kw) -> list[Tensor]:
    return list(torch.autograd.grad(f, at, **kw))


def reference(theta: list[Tensor], lam: Tensor, train, meta, radius: float = 0.01
              ) -> tuple[Tensor, Tensor]:
    """(finite-difference hypergradient with eps = radius / |d|, exact hypergradient of the
    unrolled step)."""
    theta = [t.detach().requires_grad_() for t in theta]
    g = grad((lam * hand_losses(theta, train)).sum(), theta)
    ahead = [(t - ALPHA * gi).detach().requires_grad_() for t, gi in zip(theta, g)]
    d = grad(hand_losses(ahead, meta).sum(), ahead)
    eps = radius / torch.sqrt(sum((di * di).sum() for di in d))
    with torch.no_grad():
        plus = hand_losses([t + eps * di for t, di in zip(theta, d)], train)
        minus = hand_losses([t - eps * di for t, di in zip(theta, d)], train)
    fd = -ALPHA * (plus - minus) / (2 * eps)
    # exact: d/d lambda of sum_i L_meta_i(theta - alpha grad_theta sum_j lambda_j L_j(theta))
    lam_leaf = lam.clone().requires_grad_()
    g = grad((lam_leaf * hand_losses(theta, train)).sum(), theta, create_graph=True)
    unrolled = [t - ALPHA * gi for t, gi in zip(theta, g)]
    exact = grad(hand_losses(unrolled, meta).sum(), [lam_leaf])[0]
    return fd, exact


def params_of(model: MultiTaskNet) -> list[Tensor]:
    return [model.trunk.weight, model.trunk.bias, model.heads[0].weight, model.heads[0].bias,
            model.heads[1].weight, model.heads[1].bias]


def auto_lambda(**kw) -> AutoLambda:
    s = AutoLambda(**kw)
    s.setup([t.info for t in TASKS])
    return s.double()


def test_meta_update_matches_the_hand_reference():
    model = linear_net()
    strategy = auto_lambda(init=0.25)  # a float32 parameter made float64: exact for 0.25
    lam = torch.tensor([0.25, 0.25], dtype=torch.float64)
    train, meta = batch(0), batch(1)
    fd, exact = reference(params_of(model), lam, train, meta)

    captured = []
    original = strategy.meta_gradients
    strategy.meta_gradients = lambda problem: captured.append(original(problem)) or captured[-1]
    opt = make_optimizer(model, strategy, lr=ALPHA, weight_decay=0.0)
    opt.param_groups[0]["lr"] = ALPHA
    _, weights, _, _ = train_step(model, TASKS, strategy, *train, opt, meta=meta)

    (hyper,) = captured[0]
    torch.testing.assert_close(hyper, fd, rtol=1e-10, atol=1e-12)  # the same formula
    # the finite difference approximates the exact hypergradient to O(eps^2)
    torch.testing.assert_close(fd, exact, rtol=3e-4, atol=1e-9)
    assert not torch.allclose(fd, exact, rtol=1e-13, atol=0)  # an approximation, not a copy
    # Adam's first step on lambda moves it by lr * g / (|g| + 1e-8); combine then uses it
    expected = lam - strategy.lr * fd / (fd.abs() + 1e-8)
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=1e-15)
    # the model stepped once (the meta step only moved lambda)
    assert all(int(opt.state[p]["step"]) == 1 for p in model.parameters())


def test_the_finite_difference_error_is_second_order_in_eps():
    """Halving the radius quarters the error against the exact hypergradient (central
    differences): the reference's own formula is the one the strategy is checked against."""
    model = linear_net()
    lam = torch.tensor([0.7, 0.2], dtype=torch.float64)
    errors = []
    for radius in (0.04, 0.02, 0.01):
        fd, exact = reference(params_of(model), lam, batch(4), batch(5), radius)
        errors.append((fd - exact).abs())
    assert bool((errors[-1] > 0).all()) and exact.abs().min() > 1e-3
    for coarse, fine in zip(errors, errors[1:]):
        ratio = coarse / fine
        assert bool(((ratio > 3.8) & (ratio < 4.2)).all()), ratio


# -- the harness owns the meta batch, by protocol alone ----------------------------------------
class Probe(Strategy):
    """A bilevel strategy unknown to the harness: its meta gradient is the meta losses at the
    model's current parameters, so the test sees which batch and parameters the harness used."""

    needs_meta_batch = True
    family = "bilevel"

    def setup(self, tasks, seed=0):
        super().setup(tasks, seed)
        self.w = nn.Parameter(torch.ones(self.n_tasks, dtype=torch.float64))
        self.seen: list[Tensor] = []

    def meta_gradients(self, problem: MetaProblem):
        values = problem.meta_losses(problem.params).detach()
        self.seen.append(values)
        return [values]

    def combine(self, losses, grads=None) -> Update:
        return self.weighted_sum(self.w.detach().clone(), losses)


def test_a_plug_in_bilevel_strategy_is_run_by_protocol():
    model = linear_net()
    strategy = Probe()
    strategy.setup([t.info for t in TASKS])
    opt = make_optimizer(model, strategy, lr=ALPHA, weight_decay=0.0)
    train, meta = batch(0), batch(1)
    expected = hand_losses([p.detach() for p in params_of(model)], meta)
    _, weights, _, _ = train_step(model, TASKS, strategy, *train, opt, meta=meta)
    assert len(strategy.seen) == 1
    torch.testing.assert_close(strategy.seen[0], expected, rtol=1e-12, atol=0)
    # one Adam step of w (the model's learning rate: the strategy sets none) before combine
    v = strategy.seen[0]
    torch.testing.assert_close(weights, 1 - ALPHA * v / (v + 1e-8), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="needs a meta batch"):
        train_step(model, TASKS, strategy, *train, opt)


def test_the_harness_never_names_a_strategy():
    for module in (step, train_module, batched, speed, bench):
        source = inspect.getsource(module)
        assert "auto_lambda" not in source and "AutoLambda" not in source, module.__name__


def test_the_run_loop_draws_one_meta_batch_per_step_from_the_training_split(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    original = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", spy)
    for task in ("clsreg", "clsreg-2sets"):
        calls.clear()
        rec = train_run(RunConfig(task=task, strategy="auto_lambda", epochs=2))
        assert rec["status"] == "ok"
        n_steps = len(rec["weights"]["values"])
        assert len(calls) == n_steps and all("meta" in kw for _, kw in calls)
        data = build_task_pair(task, {}).load(0)
        for (args, kw) in calls[:5]:
            (meta_in, meta_tg), train_in = kw["meta"], args[3]
            for i, x in enumerate(meta_in):  # rows of this task's training inputs only
                rows = data.train.inputs[i]
                found = [int((rows == r).all(dim=1).nonzero()[0]) for r in x]  # raises if not
                for k in ([0, 1] if len(meta_in) == 1 else [i]):  # with their own targets
                    assert torch.equal(meta_tg[k], data.train.targets[k][found]), task
                held_out = torch.cat([data.val.inputs[i], data.test.inputs[i]])
                assert not any(bool((held_out == r).all(dim=1).any()) for r in x), task
            assert any(not torch.equal(a, b) for a, b in zip(meta_in, train_in)), task
        w = torch.tensor(rec["weights"]["values"])
        assert w.shape == (n_steps, 2) and bool(torch.isfinite(w).all())
        assert not torch.equal(w[0], w[-1])  # the weights were learned
    # the stream is the run's own and reproducible
    a, b = (meta_batches(data.train, 64, 7) for _ in range(2))
    assert all(torch.equal(next(a)[0][0], next(b)[0][0]) for _ in range(3))


@pytest.mark.parametrize("architecture", ["shared", *PER_TASK])
def test_every_architecture_takes_the_meta_step(architecture):
    pair = build_task_pair("clsreg", {})
    tasks = list(pair.tasks())
    data = pair.load(0)
    torch.manual_seed(0)
    model = pair.build_model(data, None, architecture)
    strategy = AutoLambda(init=0.5, lr=0.01)
    strategy.setup([t.info for t in tasks])
    opt = make_optimizer(model, strategy, 1e-3, 0.0)
    stream = meta_batches(data.train, 32, 0)
    before = strategy.meta_weights.detach().clone()
    for idx in range(3):
        x, y = data.train.inputs[0][idx * 32:(idx + 1) * 32], [
            t[idx * 32:(idx + 1) * 32] for t in data.train.targets]
        losses, _, _, _ = train_step(model, tasks, strategy, (x,), y, opt, meta=next(stream))
        assert bool(torch.isfinite(losses).all())
    assert not torch.equal(strategy.meta_weights.detach(), before)


# -- refusals ------------------------------------------------------------------------------------
def test_seed_batching_refuses_and_the_sweep_falls_back(runs_dir, capsys):
    config = RunConfig(strategy="auto_lambda", epochs=1)
    assert "bilevel" in can_batch(config)
    with pytest.raises(ValueError, match="bilevel"):
        train_batched([config, RunConfig(strategy="auto_lambda", epochs=1, seed=1)])
    with pytest.raises(ValueError, match="bilevel"):
        StackedStrategy([auto_lambda(), auto_lambda()])
    assert main(["run", "--strategy", "auto_lambda", "--seeds", "2", "--epochs", "1",
                 "--seed-batch", "2", "--jobs", "1", "--runs-dir", str(runs_dir)]) == 0
    records = [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob("*/*.json"))]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert all(any("seed_batch: not used" in n and "bilevel" in n for n in r["notes"])
               for r in records)


class GraphCapableClock(CpuClock):
    no_graphs = None


def test_cuda_graphs_refuse_bilevel_strategies_and_the_run_steps_eagerly():
    strategy = AutoLambda()
    assert "bilevel" in graph_obstacle(GraphCapableClock(), strategy)
    rec = train_run(RunConfig(strategy="auto_lambda", epochs=1, cuda_graph=True),
                    clock=GraphCapableClock())
    assert rec["status"] == "ok"
    assert any("cuda_graph: not used" in n and "bilevel" in n for n in rec["notes"])


# -- state and resume ----------------------------------------------------------------------------
def _drive(model, strategy, opt, steps):
    return [train_step(model, TASKS, strategy, *batch(10 + s), opt, meta=batch(50 + s))[1]
            for s in steps]


def test_a_checkpointed_run_continues_bit_for_bit():
    model, strategy = linear_net(), auto_lambda(init=0.5, lr=0.01, update_every=2)
    opt = make_optimizer(model, strategy, ALPHA, 0.0)
    _drive(model, strategy, opt, range(3))
    saved = [{k: v.clone() for k, v in model.state_dict().items()},
             {k: v.clone() if isinstance(v, Tensor) else v
              for k, v in strategy.state_dict().items()},
             copy.deepcopy(opt.state_dict())]
    after = _drive(model, strategy, opt, range(3, 7))

    model2 = linear_net()
    strategy2 = AutoLambda(init=0.5, lr=0.01, update_every=2)
    strategy2.setup([TaskInfo("a", REGRESSION), TaskInfo("b", REGRESSION)], seed=9)
    strategy2.double()
    model2.load_state_dict(saved[0])
    strategy2.load_state_dict(saved[1])
    opt2 = make_optimizer(model2, strategy2, ALPHA, 0.0)
    opt2.load_state_dict(saved[2])
    assert strategy2.steps == 3
    resumed = _drive(model2, strategy2, opt2, range(3, 7))
    for a, b in zip(after, resumed):
        assert torch.equal(a, b)
    assert not torch.equal(after[0], after[-1])


def test_a_killed_sweep_redoes_the_lost_run_identically(runs_dir, capsys):
    args = ["run", "--strategy", "auto_lambda", "--task", "clsreg-2sets", "--seeds", "2",
            "--epochs", "1", "--jobs", "1", "--runs-dir", str(runs_dir)]
    assert main(args) == 0
    paths = sorted(Path(runs_dir).glob("*/*.json"))
    victim = paths[0]
    before = json.loads(victim.read_text())
    victim.write_bytes(victim.read_bytes()[:100])  # what a crash mid-write leaves
    capsys.readouterr()
    assert main(args) == 0
    assert "1 run(s) to do (1 corrupt, 1 done)" in capsys.readouterr().err
    after = json.loads(victim.read_text())
    assert after["status"] == "ok"
    assert after["weights"]["values"] == before["weights"]["values"]
    assert after["curves"]["rows"] == before["curves"]["rows"]


def test_hyper_parameters_are_validated():
    for kw in ({"init": 0.0}, {"lr": -1.0}, {"update_every": 0}, {"update_every": 1.5}):
        with pytest.raises(ValueError):
            AutoLambda(**kw)
    assert str(AutoLambda(update_every=3)) == "auto_lambda(update_every=3)"
