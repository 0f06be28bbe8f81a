"""Architectures: cross-stitch, MMoE, CGC, PLE, DSelect-k on the pairs' own trunks."""

import json

import pytest
import torch

from mtl_bench.architectures import (
    ARCHITECTURE_PARAMS,
    ARCHITECTURES,
    PER_TASK,
    DSelectKGate,
    architectures_help,
    canonical_architecture,
    check_gradient_source,
    parse_architecture,
    smooth_step,
)
from mtl_bench.cli import main
from mtl_bench.errors import UserError
from mtl_bench.task import TaskPair
from mtl_bench.train import (
    RunConfig,
    build_strategy,
    build_task_pair,
    train_run,
    train_step,
    validate,
)

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


# -- architecture specs: NAME[:key=value,...] --------------------------------------------------
@pytest.mark.parametrize("spec,canonical", [
    ("mmoe", "mmoe"),
    ("mmoe:experts=3", "mmoe"),  # the default dropped: the same setting as plain mmoe
    (" mmoe : experts = 6 ", "mmoe:experts=6"),
    ("dselect-k:k=1,experts=8", "dselect-k:experts=8,k=1"),  # keys sorted
    ("dselect-k:gamma=2.0,k=2", "dselect-k:gamma=2"),  # printed again, k at its default
    ("dselect-k:gamma=0.50", "dselect-k:gamma=0.5"),
    ("cross-stitch:self=0.90", "cross-stitch"),
    ("cross-stitch:self=1e-3", "cross-stitch:self=0.001"),
    ("cgc:task_experts=0,shared_experts=2", "cgc:shared_experts=2,task_experts=0"),
    ("ple:shared_experts=1", "ple"),
    ("shared", "shared"),
    ("separate", "separate"),
])
def test_spec_canonical_form(spec, canonical):
    assert canonical_architecture(spec) == canonical
    assert canonical_architecture(canonical) == canonical
    name, values = parse_architecture(spec)
    assert name == canonical.split(":")[0]
    assert set(values) == set(ARCHITECTURE_PARAMS[name])


def test_spec_defaults_are_the_documented_constants():
    assert parse_architecture("mmoe")[1] == {"experts": 3}
    assert parse_architecture("cgc")[1] == {"shared_experts": 1, "task_experts": 1}
    assert parse_architecture("ple")[1] == {"shared_experts": 1, "task_experts": 1}
    assert parse_architecture("dselect-k")[1] == {"experts": 4, "k": 2, "gamma": 1.0}
    assert parse_architecture("cross-stitch")[1] == {"self": 0.9}
    assert parse_architecture("shared")[1] == {}
    help_text = architectures_help()
    for piece in ("mmoe[:experts=3]", "dselect-k[:experts=4,gamma=1,k=2]",
                  "cgc[:shared_experts=1,task_experts=1]", "cross-stitch[:self=0.9]", "separate"):
        assert piece in help_text


@pytest.mark.parametrize("spec,match", [
    ("moe", r"unknown architecture 'moe'; choose from: shared, separate, .*mmoe\[:experts=3\]"),
    ("mmoe:expert=2", r"'mmoe' has no key 'expert'; keys of 'mmoe' \(defaults\): experts=3"),
    ("mmoe:experts=0", r"`experts` should be an integer >= 1, got '0'; .*experts=3"),
    ("mmoe:experts=2.5", r"`experts` should be an integer >= 1, got '2.5'"),
    ("mmoe:experts", r"expected key=value, got 'experts'"),
    ("mmoe:", r"expected key=value"),
    ("mmoe:experts=2,experts=4", r"sets 'experts' twice"),
    ("shared:experts=2", r"'shared' has no key 'experts'; 'shared' takes no parameters"),
    ("dselect-k:experts=1", r"`experts` should be an integer >= 2"),
    ("dselect-k:experts=3,k=4", r"`k` should be at most `experts` \(3\), got 4; "
                                r"keys of 'dselect-k' \(defaults\): experts=4, gamma=1, k=2"),
    ("dselect-k:gamma=0", r"`gamma` should be a positive float"),
    ("dselect-k:gamma=inf", r"`gamma` should be a positive float"),
    ("cross-stitch:self=1.5", r"`self` should be a float in \[0, 1\]"),
    ("cgc:shared_experts=0", r"`shared_experts` should be an integer >= 1"),
])
def test_spec_errors_are_one_line_with_the_valid_keys(spec, match):
    with pytest.raises(UserError, match=match) as info:
        canonical_architecture(spec)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=match):
        validate(RunConfig(architecture=spec))


def test_spec_builds_the_requested_experts_and_k():
    _, _, model = build("clsreg", "mmoe:experts=2")
    assert len(model.trunk.shared) == 2 and model.trunk.gates[0].linear.out_features == 2
    _, _, model = build("clsreg", "dselect-k:experts=5,k=3,gamma=0.5")
    gate = model.trunk.gates[0]
    assert len(model.trunk.shared) == 5 and (gate.n, gate.k, gate.gamma) == (5, 3, 0.5)
    assert gate.mixer.out_features == 3 and gate.selectors.out_features == 3 * 3  # 3 bits
    _, _, model = build("clsreg", "cgc:shared_experts=2,task_experts=3")
    assert len(model.trunk.shared) == 2 and [len(o) for o in model.trunk.own] == [3, 3]
    _, _, model = build("clsreg", "ple:shared_experts=3,task_experts=2")
    assert all(len(level) == 3 for level in model.trunk.shared)
    assert all(len(own) == 2 for level in model.trunk.own for own in level)
    assert model.trunk.task_gates[0][0].linear.out_features == 3 + 2
    assert model.trunk.shared_gates[0].linear.out_features == 3 + 2 * 2
    _, _, model = build("clsreg", "cross-stitch:self=0.6")
    torch.testing.assert_close(model.trunk.units[0].detach(),
                               torch.tensor([[0.6, 0.4], [0.4, 0.6]]))
    # the defaults build what the plain names build
    assert len(build("clsreg", "mmoe")[2].trunk.shared) == 3
    assert build("clsreg", "dselect-k")[2].trunk.gates[0].k == 2


def test_spec_refusals_and_run_ids_use_the_canonical_form():
    with pytest.raises(UserError, match="the 'mmoe' architecture gives each task its own"):
        check_gradient_source("mmoe:experts=2", build_strategy("pcgrad", {"source": "rep"}))
    check_gradient_source("mmoe:experts=2", build_strategy("pcgrad", {}))
    assert RunConfig(architecture="mmoe:experts=3").run_id == RunConfig(architecture="mmoe").run_id
    assert RunConfig(architecture="mmoe:experts=2").run_id != RunConfig(architecture="mmoe").run_id
    assert RunConfig(architecture=" mmoe:experts=2").resolved().architecture == "mmoe:experts=2"


@pytest.mark.slow
def test_two_specs_are_two_settings_end_to_end(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    common = ["--task", "clsreg", "--strategy", "fixed", "--seeds", "1", "--epochs", "1",
              "--runs-dir", runs, "--quiet"]
    assert main(["run", "--architecture", "mmoe:experts=2", *common]) == 0
    assert main(["run", "--architecture", "dselect-k:k=1,experts=8", *common]) == 0
    # another spelling of the first spec is the same setting: nothing new to run
    assert main(["run", "--architecture", "mmoe: experts=02", *common, "--dry-run"]) == 0
    assert "0 to run" in capsys.readouterr().out
    assert main(["aggregate", "--runs-dir", runs, "--out", str(tmp_path / "tables")]) == 0
    assert "2 run records (2 ok, 0 failed) in 2 setting(s)" in capsys.readouterr().out
    meta = json.loads((tmp_path / "tables" / "meta.json").read_text())
    assert sorted(s["architecture"] for s in meta["settings"]) == [
        "dselect-k:experts=8,k=1", "mmoe:experts=2"]
    assert main(["run", "--architecture", "mmoe:experts=0", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keys of 'mmoe' (defaults): experts=3" in err
