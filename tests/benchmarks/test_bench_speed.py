"""Speed benchmarks (pytest-benchmark), skipped by the default test run.

``pyproject.toml`` passes ``--benchmark-skip``, so ``python -m pytest`` collects these and skips
them; ``python -m pytest tests/benchmarks --benchmark-only`` runs them. Save a run with
``--benchmark-autosave`` and compare a later one with ``--benchmark-compare
--benchmark-compare-fail=median:10%`` (docs/check.md). Nothing here asserts a speed: the
comparison against a saved run is the speed gate.
"""

import math
import time

import pytest
import torch

from mtl_bench import registry
from mtl_bench.bench import REFERENCE_BATCH, reference_meta_batch, reference_setup
from mtl_bench.task import iterate_batches
from mtl_bench.train import build_strategy, build_task_pair, evaluate, make_optimizer, train_step

STRATEGIES = registry.strategies.names()
TASK_PAIRS = registry.tasks.names()
#: wall-clock budget for training a pair's model before its evaluation pass is timed
TRAIN_BUDGET_S = 20.0


@pytest.mark.parametrize("n_tasks", [2, 5])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_train_step(benchmark, strategy, n_tasks):
    """One training step (forward, strategy, backward, optimiser) on the reference net."""
    model, tasks, strat, inputs, targets, opt = reference_setup(strategy, n_tasks=n_tasks)
    # bilevel strategies need the harness's second batch (the meta batch)
    extra = {"meta": reference_meta_batch(tasks)} if strat.needs_meta_batch else {}
    for _ in range(3):  # lazy initialisation and allocator warm-up stay out of the timing
        train_step(model, tasks, strat, inputs, targets, opt, **extra)
    benchmark.group = f"train_step, {n_tasks} tasks"
    benchmark.extra_info.update(strategy=str(strat), family=type(strat).family,
                                grad_source=strat.grad_source, n_tasks=n_tasks,
                                batch=REFERENCE_BATCH, threads=torch.get_num_threads())
    losses, weights, _, _ = benchmark(train_step, model, tasks, strat, inputs, targets, opt,
                                      **extra)
    benchmark.extra_info["last_losses"] = [round(v, 6) for v in losses.tolist()]
    assert torch.isfinite(losses).all() and torch.isfinite(weights).all()


def _train(pair_name):
    """A model of the pair trained with equal weights for its default epochs (or until the
    budget runs out), so the evaluation pass scores a model worth scoring."""
    cls = registry.tasks.get(pair_name)
    pair = build_task_pair(pair_name, {})
    tasks = pair.tasks()
    data = pair.load(0)
    torch.manual_seed(0)
    model = pair.build_model(data)
    strategy = build_strategy("fixed", {})
    strategy.setup([t.info for t in tasks], seed=0)
    opt = make_optimizer(model, strategy, cls.lr, 0.0)
    gen = torch.Generator().manual_seed(0)
    start, epochs = time.perf_counter(), 0
    while epochs < cls.epochs and time.perf_counter() - start < TRAIN_BUDGET_S:
        for inputs, targets in iterate_batches(data.train, cls.batch_size, gen, "proportional"):
            train_step(model, tasks, strategy, inputs, targets, opt)
        epochs += 1
    return model, tasks, data, epochs


@pytest.mark.parametrize("pair_name", TASK_PAIRS)
def test_evaluate(benchmark, pair_name):
    """One evaluation pass (loss and every metric of each task) over the test split."""
    model, tasks, data, epochs = _train(pair_name)
    benchmark.group = "evaluate"
    result = benchmark(evaluate, model, tasks, data, data.test)
    benchmark.extra_info.update(pair=pair_name, trained_epochs=epochs,
                                test_size=data.test.sizes(),
                                **{f"{t}.{m}": v for (t, m), v in result.items()})
    assert all(math.isfinite(v) for (_, m), v in result.items() if m == "loss")
