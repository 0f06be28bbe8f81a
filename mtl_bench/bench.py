"""Throughput of each strategy relative to fixed weights, measured in one process run.

``python -m mtl_bench.bench`` prints steps/s and the ratio to ``fixed`` on the reference net
(64 -> 256 -> 256 trunk, one head per task, batch 256) for 2 and 5 tasks. Strategies are timed
in interleaved rounds and the median round is kept, so a burst of machine noise hits every
strategy alike. This is a benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mtl_bench import registry
from mtl_bench.strategy import CLASSIFICATION, REGRESSION
from mtl_bench.task import MultiTaskNet, Task, mlp
from mtl_bench.train import build_strategy, make_optimizer, train_step

REFERENCE_IN, REFERENCE_HIDDEN, REFERENCE_BATCH, REFERENCE_CLASSES = 64, 256, 256, 10


def reference_tasks(n_tasks: int) -> list[Task]:
    """Alternating classification (10 classes) and regression tasks."""
    return [Task(f"t{i}", CLASSIFICATION, REFERENCE_CLASSES, ("accuracy",)) if i % 2 == 0
            else Task(f"t{i}", REGRESSION, 1, ("mae",)) for i in range(n_tasks)]


def reference_setup(strategy: str, params: dict[str, Any] | None = None, n_tasks: int = 2,
                    seed: int = 0, batch: int = REFERENCE_BATCH):
    """Model, strategy, optimisers and one fixed batch on the reference net."""
    torch.manual_seed(seed)
    tasks = reference_tasks(n_tasks)
    model = MultiTaskNet(mlp([REFERENCE_IN, REFERENCE_HIDDEN, REFERENCE_HIDDEN]),
                         [nn.Linear(REFERENCE_HIDDEN, t.n_outputs) for t in tasks])
    strat = build_strategy(strategy, params or {})
    strat.setup([t.info for t in tasks], seed=seed)
    opt = make_optimizer(model, strat, 1e-3, 0.0)
    x = torch.randn(batch, REFERENCE_IN)
    targets = [torch.randint(0, REFERENCE_CLASSES, (batch,)) if t.kind == CLASSIFICATION
               else torch.randn(batch) for t in tasks]
    return model, tasks, strat, (x,), targets, opt


def steps_per_second(setup, steps: int) -> float:
    model, tasks, strat, inputs, targets, opt = setup
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, tasks, strat, inputs, targets, opt)
    return steps / (time.perf_counter() - start)


def measure(variants: Sequence[tuple[str, dict[str, Any]]], n_tasks: int = 2, steps: int = 30,
            rounds: int = 7, warmup: int = 5) -> dict[str, float]:
    """Median steps/s per variant over interleaved rounds; keys are the strategy labels."""
    setups = {}
    for name, params in variants:
        s = reference_setup(name, params, n_tasks)
        steps_per_second(s, warmup)
        setups[str(s[2])] = s
    samples: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(rounds):
        for key, s in setups.items():
            samples[key].append(steps_per_second(s, steps))
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtl_bench.bench", description=__doc__)
    p.add_argument("--strategy", default=None, help="comma-separated (default: all)")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   help="variant NAME.PARAM=V, measured in addition to the defaults")
    p.add_argument("--tasks", default="2,5", help="task counts, comma-separated")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    from mtl_bench.sweep import parse_assignments

    torch.set_num_threads(args.threads)
    names = args.strategy.split(",") if args.strategy else registry.strategies.names()
    variants: list[tuple[str, dict[str, Any]]] = [("fixed", {})]
    variants += [(n, {}) for n in names if n != "fixed"]
    for name, params in parse_assignments(args.assignments).items():
        for key, values in params.items():
            variants += [(name, {key: v}) for v in values]
    print(f"reference net {REFERENCE_IN}->{REFERENCE_HIDDEN}->{REFERENCE_HIDDEN}, batch "
          f"{REFERENCE_BATCH}, {args.threads} thread(s), median of {args.rounds} rounds x "
          f"{args.steps} steps")
    for n_tasks in (int(t) for t in args.tasks.split(",")):
        res = measure(variants, n_tasks, args.steps, args.rounds)
        ref = res["fixed"]
        print(f"\n{n_tasks} tasks")
        print(f"  {'strategy':<34} {'steps/s':>9} {'vs fixed':>9}")
        for key, value in res.items():
            print(f"  {key:<34} {value:9.1f} {value / ref:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
