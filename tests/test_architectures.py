"""Architectures: cross-stitch, MMoE, CGC, PLE, DSelect-k on the pairs' own trunks."""

import pytest
import torch

from mtl_bench.architectures import (
    ARCHITECTURES,
    PER_TASK,
    DSelectKGate,
    check_gradient_source,
    smooth_step,
)
from mtl_bench.errors import UserError
from mtl_bench.task import TaskPair
from mtl_bench.train import RunConfig, build_strategy, build_task_pair, train_run, train_step

DIGITS = {"pairs_per_image": 1}
STRATEGIES = [("fixed", {}), ("uncertainty", {}), ("gradnorm", {}), ("pcgrad", {}),
              ("mgda", {}), ("pcgrad", {"source": "rep"}), ("gradnorm", {"layer": "rep"})]

#: Trunk parameters of task 0 only (the rest of the trunk is shared), as documented.
TASK_SPECIFIC = {
    "cross-stitch": set(),
    "mmoe": {"gates.0."},
    "dselect-k": {"gates.0."},
    "cgc": {"own.0.", "gates.0."},
    # PLE on a two-stage MLP: the last level's own experts and the task gates of both levels
    # (the first level's task experts also feed the shared gate, so they are shared)
    "ple": {"own.1.0.", "task_gates.0.0.", "task_gates.1.0."},
}


def build(task: str, architecture: str, options: dict | None = None):
    pair: TaskPair = build_task_pair(task, options or {})
    data = pair.load(0)
    torch.manual_seed(0)
    return pair, data, pair.build_model(data, None, architecture)


def test_names_registered():
    assert set(PER_TASK) <= set(ARCHITECTURES)
    assert {"shared", "separate"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("task,options", [("clsreg", {}), ("multi-digits", DIGITS)])
@pytest.mark.parametrize("architecture", PER_TASK)
def test_forward_shapes_and_parameter_split(task, options, architecture):
    pair, data, model = build(task, architecture, options)
    x = data.train.inputs[0][:5]
    reps, head_in, outputs = model((x,))
    width = pair.hidden[-1]
    assert reps[0].shape == (5, len(pair.tasks()), width)
    assert [o.shape for o in outputs] == [(5, t.n_outputs) for t in pair.tasks()]
    # what the evaluation reads: heads[i](trunk(x)) is task i's output
    for i, out in enumerate(outputs):
        assert torch.equal(model.heads[i](model.trunk(x)), out)
    assert not model.has_shared_representation
    shared = {id(p) for p in model.shared_parameters()}
    own = {id(p) for p in model.head_parameters()}
    assert not shared & own
    assert shared | own == {id(p) for p in model.parameters()}
    assert shared and {id(p) for p in model.last_shared_parameters()} <= shared


@pytest.mark.parametrize("architecture", PER_TASK)
def test_task_specific_parameters_as_documented(architecture):
    _, _, model = build("clsreg", architecture)
    names = {id(p): n for n, p in model.trunk.named_parameters()}
    task0 = {names[id(p)] for p in model.task_parameters(0) if id(p) in names}
    expected = TASK_SPECIFIC[architecture]
    assert all(any(n.startswith(e) for e in expected) for n in task0)
    assert all(any(n.startswith(e) for n in task0) for e in expected)
    assert not {id(p) for p in model.task_parameters(0)} & {
        id(p) for p in model.task_parameters(1)}


@pytest.mark.parametrize("architecture", PER_TASK)
def test_every_parameter_and_gate_gets_a_gradient(architecture):
    pair, data, model = build("clsreg", architecture)
    tasks = pair.tasks()
    strategy = build_strategy("pcgrad", {})
    strategy.setup([t.info for t in tasks], seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, ys = data.train.inputs, tuple(y[:32] for y in data.train.targets)
    train_step(model, tasks, strategy, (x[0][:32],), ys, optimizer)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    gates = [p for n, p in model.named_parameters() if "gate" in n or "units" in n]
    assert gates and all(p.grad.abs().sum() > 0 for p in gates)


@pytest.mark.parametrize("architecture", PER_TASK)
@pytest.mark.parametrize("strategy,params", STRATEGIES)
def test_short_runs(architecture, strategy, params):
    config = RunConfig(task="clsreg", strategy=strategy, strategy_params=params,
                       architecture=architecture, epochs=2)
    if build_strategy(strategy, params).grad_source == "rep":
        with pytest.raises(UserError, match="gives each task its own representation"):
            check_gradient_source(architecture, build_strategy(strategy, params))
        with pytest.raises(UserError, match="gives each task its own representation"):
            train_run(config)
        return
    assert train_run(config)["status"] == "ok"


@pytest.mark.parametrize("architecture", PER_TASK)
def test_multi_digits_runs(architecture):
    config = RunConfig(task="multi-digits", task_options=DIGITS, strategy="mgda",
                       architecture=architecture, epochs=1)
    assert train_run(config)["status"] == "ok"


def test_separate_refusal_unchanged():
    with pytest.raises(UserError, match="shares none"):
        check_gradient_source("separate", build_strategy("pcgrad", {}))
    check_gradient_source("shared", build_strategy("pcgrad", {"source": "rep"}))


def test_smooth_step():
    t = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    assert smooth_step(t, 1.0).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_dselect_k_weights():
    torch.manual_seed(0)
    gate = DSelectKGate(6, 5, k=2)
    x = torch.randn(8, 6)
    w = gate(x)
    assert w.shape == (8, 5) and torch.allclose(w.sum(-1), torch.ones(8))
    assert (w > 0).all()  # every bit starts undecided
    with torch.no_grad():  # saturate every bit: at most k experts are chosen
        gate.selectors.weight.zero_()
        gate.selectors.bias.copy_(torch.tensor([5.0, -5.0, -5.0, -5.0, 5.0, -5.0]))
    w = gate(x)
    assert ((w > 0).sum(-1) <= 2).all() and torch.allclose(w.sum(-1), torch.ones(8))


@pytest.mark.parametrize("architecture", ["mmoe", "ple"])
def test_single_task_baseline_counts_the_trunk_as_shared(architecture):
    pair, data, _ = build("clsreg", architecture)
    model = pair.build_model(data.select_tasks([0]), [0], architecture)
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in model.trunk.parameters()}
    config = RunConfig(task="clsreg", strategy="pcgrad", architecture=architecture, epochs=1,
                       single_task="species")
    assert train_run(config)["status"] == "ok"
