"""The training loop, the registry and the three strategy families' code paths."""

import json
import os
import stat

import pandas as pd
import pytest
import torch
from torch import nn

from mtl_bench import registry
from mtl_bench.errors import UserError
from mtl_bench.store import RunStore, atomic_write_text, load_curves, load_runs
from mtl_bench.strategy import REGRESSION, Strategy, Update
from mtl_bench.task import MultiTaskNet, Task
from mtl_bench.train import RunConfig, build_strategy, train_run, train_step


class _EqualByGradients(Strategy):
    """Gradient-level strategy that asks for task gradients and returns equal weights."""

    def __init__(self, source: str = "shared"):
        super().__init__()
        self.source = source
        self.grad_source = source

    def combine(self, losses, grads=None):
        assert grads is not None and grads.matrix.shape[0] == len(losses)
        return Update(weights=torch.ones(len(losses)))


def _net(seed=0):
    torch.manual_seed(seed)
    model = MultiTaskNet(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU()),
                         [nn.Linear(4, 1), nn.Linear(4, 1)])
    tasks = [Task("a", REGRESSION, 1, ("mae",)), Task("b", REGRESSION, 1, ("mae",))]
    x = torch.randn(8, 3)
    ys = [torch.randn(8), torch.randn(8)]
    return model, tasks, x, ys


@pytest.mark.parametrize("source", ["shared", "rep"])
def test_gradient_level_path_with_equal_weights_matches_fixed(source):
    """weights @ G applied at the shared parameters (or back-propagated from the representation)
    plus unweighted head gradients must equal a plain backward of L_a + L_b."""
    grads = {}
    pairs = (("fixed", build_strategy("fixed", {})), ("grad", _EqualByGradients(source)))
    for name, strat in pairs:
        model, tasks, x, ys = _net()
        strat.setup([t.info for t in tasks])
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        train_step(model, tasks, strat, (x,), ys, opt)
        grads[name] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["fixed"], grads["grad"]):
        torch.testing.assert_close(a, b)


def test_same_config_and_seed_give_identical_metrics():
    cfg = RunConfig(strategy="gradnorm", epochs=3, seed=4)
    a, b = train_run(cfg), train_run(cfg)
    assert a["status"] == "ok"
    assert a["curves"]["rows"] == b["curves"]["rows"]
    assert a["weights"]["values"] == b["weights"]["values"]


def test_different_seeds_differ_and_run_id_hashes_config():
    a, b = RunConfig(seed=0), RunConfig(seed=1)
    assert a.run_id != b.run_id
    assert RunConfig(epochs=None).run_id == RunConfig(epochs=30).run_id  # resolved default


def test_record_contents():
    rec = train_run(RunConfig(strategy="uncertainty", epochs=2))
    assert rec["status"] == "ok" and rec["schema"] == 2
    assert {"git_commit", "torch", "device", "threads"} <= rec["provenance"].keys()
    tp = rec["throughput"]
    for key in ("samples_per_s", "forward_ms", "backward_ms", "strategy_ms", "peak_memory_mb"):
        assert tp[key] > 0
    curves = pd.DataFrame(rec["curves"]["rows"], columns=rec["curves"]["columns"])
    assert set(curves["split"]) == {"train", "val", "test"}
    assert set(curves["epoch"]) == {0, 1, 2}
    assert len(rec["weights"]["values"]) == 2 * rec["weights"]["steps_per_epoch"]
    assert 1 <= rec["selected_epoch"] <= 2
    assert rec["details"]["species"]["confusion"]
    assert rec["data"]["rows_dropped_missing"] == 11


class _Explodes(Strategy):
    """Weights become infinite in epoch 2."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def on_epoch_end(self, epoch, train_losses):
        self.calls = epoch

    def combine(self, losses, grads=None):
        w = torch.ones(len(losses)) * (float("inf") if self.calls >= 1 else 1.0)
        return Update(weights=w, loss=(w * losses).sum())


@pytest.fixture
def exploding_strategy():
    registry.strategies.register("test-explodes")(_Explodes)
    yield "test-explodes"
    registry.strategies.unregister("test-explodes")


def test_divergence_is_recorded_as_failed_with_epoch(exploding_strategy):
    rec = train_run(RunConfig(strategy=exploding_strategy, epochs=4))
    assert rec["status"] == "failed"
    assert rec["failed_epoch"] == 2 and "non-finite" in rec["reason"]


def test_registry_collision_is_an_error():
    class Other(Strategy):
        pass

    with pytest.raises(UserError, match="already taken"):
        registry.register_strategy("fixed")(Other)


def test_unknown_names_list_valid_choices():
    with pytest.raises(UserError, match="unknown strategy 'nope'; choose from: .*gradnorm"):
        registry.strategies.get("nope")
    with pytest.raises(UserError, match="unknown task pair 'nope'; choose from: .*clsreg"):
        registry.tasks.get("nope")


def test_store_is_atomic_and_loads_with_pandas(tmp_path):
    store = RunStore(tmp_path)
    rec = train_run(RunConfig(epochs=1))
    path = store.write(rec)
    assert json.loads(path.read_text())["run_id"] == rec["run_id"]
    assert not list(path.parent.glob(".*tmp"))
    assert store.status("clsreg", rec["run_id"]) == "ok"
    path.write_text(path.read_text()[:100])  # truncated by a crash
    assert store.status("clsreg", rec["run_id"]) == "corrupt"
    store.write(rec)
    curves = load_curves(tmp_path)
    assert {"run_id", "strategy", "seed", "epoch", "split", "task", "metric", "value"} <= set(
        curves.columns)
    assert len(load_runs(tmp_path)) == 1


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_records_and_tables_get_the_mode_of_the_umask(tmp_path, umask, mode):
    # the temporary file of an atomic write is private (0600); the final file must not be
    old = os.umask(umask)
    try:
        record = RunStore(tmp_path).write({"task_pair": "clsreg", "run_id": "r1"})
        table = tmp_path / "tables" / "summary.csv"
        atomic_write_text(table, "a,b\n1,2\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(record.stat().st_mode) == mode
    assert stat.S_IMODE(table.stat().st_mode) == mode


def test_separate_architecture_has_no_shared_parameters():
    rec = train_run(RunConfig(strategy="fixed", architecture="separate", epochs=1))
    assert rec["status"] == "ok"
    from mtl_bench.train import validate

    with pytest.raises(UserError, match="shares none"):
        validate(RunConfig(strategy="gradnorm", architecture="separate"))
