"""Seed batching: K seeds trained as one vectorised model give the records of K separate runs.

Every strategy that declares ``batchable`` is trained on clsreg with 4 seeds for 3 epochs both
ways; each batched record must equal ``train_run``'s within the tolerance stated in
:mod:`mtl_bench.batched` (curves, weights, diagnostics) and select the same epoch.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from mtl_bench import registry
from mtl_bench.batched import (
    ATOL,
    DIAGNOSTICS_ATOL,
    DIAGNOSTICS_RTOL,
    RTOL,
    can_batch,
    seed_batches,
    train_batched,
    train_seed_batch,
)
from mtl_bench.batched_step import StackedStrategy
from mtl_bench.strategy import REGRESSION, Strategy, TaskGradients, TaskInfo, Update
from mtl_bench.train import RunConfig, build_strategy, train_run

BATCHABLE = [name for name, cls in registry.strategies.items()
             if getattr(cls, "batchable", False)]
SEEDS = 4
EPOCHS = 3
#: Keys that say what a run is: they must be identical, batched or not.
IDENTITY = ("schema", "run_id", "config", "task_pair", "strategy", "strategy_repr", "seed",
            "tasks", "metric_directions", "code", "data", "status", "selected_epoch")


def _close(a: Any, b: Any, rtol: float, atol: float, where: str) -> None:
    """Same structure; numbers within atol + rtol * |b| (NaN equals NaN); the rest equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _close(a[key], b[key], rtol, atol, f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, rtol, atol, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if not (math.isnan(a) and math.isnan(b)):
            assert math.isclose(a, b, rel_tol=rtol, abs_tol=atol), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_record(batched: dict[str, Any], alone: dict[str, Any], k: int) -> None:
    """A batched record equals the record of the same config trained alone."""
    where = f"seed {alone['seed']} ({alone['strategy']})"
    assert batched.keys() == alone.keys(), f"{where}: {batched.keys() ^ alone.keys()}"
    for key in IDENTITY:
        assert batched[key] == alone[key], f"{where}: {key}"
    for key in ("failure", "reason", "failed_epoch"):
        assert batched.get(key) == alone.get(key), f"{where}: {key}"
    _close(batched["curves"], alone["curves"], RTOL, ATOL, f"{where} curves")
    _close(batched["summary"], alone["summary"], RTOL, ATOL, f"{where} summary")
    _close(batched["weights"], alone["weights"], RTOL, ATOL, f"{where} weights")
    _close(batched["selection"], alone["selection"], RTOL, ATOL, f"{where} selection")
    _close(batched["diagnostics"], alone["diagnostics"], DIAGNOSTICS_RTOL, DIAGNOSTICS_ATOL,
           f"{where} diagnostics")
    if "details" in alone:
        _close(batched["details"], alone["details"], RTOL, ATOL, f"{where} details")
    assert batched["provenance"]["seed_batch"] == k
    assert batched["throughput"]["seed_batch"] == k
    assert set(alone["throughput"]) <= set(batched["throughput"])


def check_batched_equals_alone(configs: list[RunConfig]) -> list[dict[str, Any]]:
    records = train_batched(configs)
    assert len(records) == len(configs)
    for record, config in zip(records, configs):
        assert_same_record(record, train_run(config), len(configs))
    return records


@pytest.mark.parametrize("strategy", BATCHABLE)
def test_batched_records_equal_separate_runs(strategy):
    configs = [RunConfig(strategy=strategy, seed=s, epochs=EPOCHS) for s in range(SEEDS)]
    records = check_batched_equals_alone(configs)
    assert all(r["status"] == "ok" for r in records)


@pytest.mark.parametrize("strategy,options", [
    ("gradnorm", {"strategy_params": {"layer": "all"}}),
    ("gradnorm", {"strategy_params": {"layer": "rep", "initial": "first_epoch"}}),
    ("pcgrad", {"strategy_params": {"source": "rep"}}),
    ("famo", {"strategy_params": {"update": "sgd"}}),
    ("dtp", {"strategy_params": {"kpi": "relative"}}),
    ("uncertainty", {"strategy_params": {"lr": 0.02}, "weight_decay": 1e-3}),
    ("fixed", {"single_task": "body_mass"}),
    ("uncertainty", {"architecture": "separate"}),
    ("dwa", {"diag_every": 2, "select": "loss"}),
])
def test_batched_variants_equal_separate_runs(strategy, options):
    configs = [RunConfig(strategy=strategy, seed=s, epochs=EPOCHS, **options)
               for s in (3, 7, 11)]
    check_batched_equals_alone(configs)


# -- test-only strategies ----------------------------------------------------------------------
class _Direction(Strategy):
    """Gradient level, pure tensor code: the mean task gradient as an explicit direction."""

    batchable = True

    def __init__(self, source: str = "shared"):
        super().__init__()
        self.source = source
        self.grad_source = source

    def combine(self, losses, grads=None):
        weights = torch.full_like(losses, 1.0 / len(losses)).detach()
        return Update(weights=weights, direction=grads.matrix.mean(dim=0))


class _ExplodesForSeedOne(Strategy):
    """Infinite weights for the run with seed 1, equal weights for the others."""

    batchable = True

    def setup(self, tasks, seed=0):
        super().setup(tasks, seed)
        self.register_buffer("w", torch.full((self.n_tasks,), math.inf if seed == 1 else 1.0))

    def combine(self, losses, grads=None):
        return self.weighted_sum(self.w, losses)


class _Loop(Strategy):
    """Not batchable: Python control flow on a value read from the losses."""

    def combine(self, losses, grads=None):
        w = torch.ones_like(losses) * (2.0 if float(losses[0].detach()) > 1 else 1.0)
        return self.weighted_sum(w, losses)


@pytest.fixture
def test_strategies():
    names = {"test-direction": _Direction, "test-explodes-seed-1": _ExplodesForSeedOne,
             "test-loop": _Loop}
    for name, cls in names.items():
        registry.strategies.register(name)(cls)
    yield names
    for name in names:
        registry.strategies.unregister(name)


@pytest.mark.parametrize("source", ["shared", "rep"])
def test_gradient_level_direction_equals_separate_runs(test_strategies, source):
    configs = [RunConfig(strategy="test-direction", strategy_params={"source": source},
                         seed=s, epochs=2) for s in range(3)]
    check_batched_equals_alone(configs)


def test_diverged_seed_is_recorded_as_its_separate_run_while_the_others_go_on(test_strategies):
    configs = [RunConfig(strategy="test-explodes-seed-1", seed=s, epochs=EPOCHS)
               for s in range(3)]
    records = check_batched_equals_alone(configs)
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert records[1]["failure"] == "diverged" and records[1]["failed_epoch"] == 1
    assert "non-finite loss at epoch 1 (step 1)" in records[1]["reason"]


# -- the vmapped strategy, without training ----------------------------------------------------
def _infos(n: int) -> list[TaskInfo]:
    return [TaskInfo(f"t{i}", REGRESSION if i % 2 else "classification") for i in range(n)]


@pytest.mark.parametrize("strategy", BATCHABLE)
def test_stacked_strategy_matches_each_instance(strategy):
    """K instances run as one (vmap, or combine_seeds) give each instance's own updates, step
    after step, with on_epoch_end in between: what a plug-in that declares batchable (state
    updated in place, no branch on its values) must satisfy."""
    k, n_tasks, width = 3, 3, 8
    gen = torch.Generator().manual_seed(0)
    alone = [build_strategy(strategy, {}) for _ in range(k)]
    batch = [build_strategy(strategy, {}) for _ in range(k)]
    for seed, (a, b) in enumerate(zip(alone, batch)):
        a.setup(_infos(n_tasks), seed=seed)
        b.setup(_infos(n_tasks), seed=seed)
    stacked = StackedStrategy(batch)
    for step in range(8):
        losses = (torch.rand(k, n_tasks, generator=gen) + 0.05) * torch.logspace(-1, 1, n_tasks)
        matrix = torch.randn(k, n_tasks, width, generator=gen)
        source = alone[0].grad_source
        parts = None if source is None else [[matrix[:, i]] for i in range(n_tasks)]
        got = stacked.combine(losses, parts)
        stacked.after_step()
        for i, s in enumerate(alone):
            grads = None if source is None else TaskGradients([[row] for row in matrix[i]],
                                                              source)
            want = s.combine(losses[i], grads)
            s.after_step()
            where = f"{strategy} step {step} seed {i}"
            torch.testing.assert_close(got["weights"][i], want.weights, msg=where)
            if want.loss is not None:
                torch.testing.assert_close(got["loss"][i], want.loss, msg=where)
            if step % 3 == 2:
                s.on_epoch_end(step // 3 + 1, losses[i])
                stacked.on_epoch_end(i, step // 3 + 1, losses[i])


# -- what can be batched, and how a sweep calls it ---------------------------------------------
def test_can_batch_says_why_not(test_strategies):
    assert can_batch(RunConfig(strategy="fixed")) is None
    assert "not batchable" in can_batch(RunConfig(strategy="test-loop"))
    reason = can_batch(RunConfig(task="clsreg-2sets", strategy="fixed"))
    assert reason is not None and "own dataset" in reason


def test_train_batched_refuses_what_it_cannot_batch(test_strategies):
    with pytest.raises(ValueError, match="differ only in their seed"):
        train_batched([RunConfig(seed=0, epochs=1), RunConfig(seed=1, epochs=1, lr=0.01)])
    with pytest.raises(ValueError, match="distinct seeds"):
        train_batched([RunConfig(seed=0, epochs=1), RunConfig(seed=0, epochs=1)])
    with pytest.raises(ValueError, match="not batchable"):
        train_batched([RunConfig(strategy="test-loop", seed=s, epochs=1) for s in range(2)])


def test_seed_batches_groups_configs_that_differ_only_in_seed():
    configs = [RunConfig(strategy=name, seed=s, epochs=1) for name in ("fixed", "dwa")
               for s in range(5)] + [RunConfig(seed=0, epochs=1, lr=0.01)]
    groups = seed_batches(configs, 4)
    assert [[(c.strategy, c.seed) for c in g] for g in groups] == [
        [("fixed", 0), ("fixed", 1), ("fixed", 2), ("fixed", 3)], [("fixed", 4)],
        [("dwa", 0), ("dwa", 1), ("dwa", 2), ("dwa", 3)], [("dwa", 4)], [("fixed", 0)]]


def test_train_seed_batch_runs_what_cannot_be_batched_alone_with_a_note(test_strategies):
    configs = [RunConfig(strategy="test-loop", seed=s, epochs=1) for s in range(2)]
    records = train_seed_batch(configs)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all("seed_batch" not in r["provenance"] for r in records)
    assert all(any(n.startswith("seed_batch: not used, strategy 'test-loop' is not batchable")
                   for n in r["notes"]) for r in records)
    batched = train_seed_batch([RunConfig(seed=s, epochs=1) for s in range(2)])
    assert [r["provenance"]["seed_batch"] for r in batched] == [2, 2]


def test_throughput_is_each_runs_share_of_the_batch():
    records = train_batched([RunConfig(seed=s, epochs=2) for s in range(SEEDS)])
    tp = records[0]["throughput"]
    assert tp["seed_batch"] == SEEDS
    assert tp["step_ms"] == pytest.approx(tp["batch_step_ms"] / SEEDS)
    assert tp["step_ms"] == pytest.approx(sum(tp[f"{p}_ms"] for p in
                                              ("forward", "strategy", "backward", "optimizer")))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_run_seed_batch_gives_the_records_of_separate_runs(tmp_path, jobs, capsys):
    from mtl_bench.cli import main
    from mtl_bench.store import RunStore

    common = ["run", "--strategy", "fixed,uncertainty", "--seeds", "4", "--epochs", "3",
              "--quiet", "--jobs", jobs]
    assert main([*common, "--seed-batch", "4", "--runs-dir", str(tmp_path / "b")]) == 0
    assert main([*common, "--runs-dir", str(tmp_path / "s")]) == 0
    batched = {r["run_id"]: r for r in RunStore(tmp_path / "b").load().records}
    alone = {r["run_id"]: r for r in RunStore(tmp_path / "s").load().records}
    assert batched.keys() == alone.keys() and len(batched) == 8  # the same runs, same ids
    for run_id, rec in batched.items():
        assert_same_record(rec, alone[run_id], 4)
    capsys.readouterr()
    # the stored batched runs count as done for a plain rerun
    assert main([*common, "--runs-dir", str(tmp_path / "b"), "--dry-run"]) == 0
    assert "0 to run (8 done)" in capsys.readouterr().out


def test_seed_batch_bad_values_and_dask_are_one_clear_line(tmp_path, capsys):
    from mtl_bench.cli import main

    assert main(["run", "--strategy", "fixed", "--seed-batch", "0"]) == 2
    assert "--seed-batch" in capsys.readouterr().err
    assert main(["run", "--strategy", "fixed", "--seeds", "2", "--seed-batch", "2",
                 "--executor", "dask", "--jobs", "1", "--runs-dir", str(tmp_path)]) == 2
    assert "each run is its own task" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/*.json"))  # refused before any training
