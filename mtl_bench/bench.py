"""Throughput of each strategy relative to fixed weights, measured in one process run.

``python -m mtl_bench.bench`` prints steps/s and the ratio to ``fixed`` on the reference net
(64 -> 256 -> 256 trunk, one head per task, batch 256) for 2 and 5 tasks. Strategies are timed
in interleaved rounds and the median round is kept, so a burst of machine noise hits every
strategy alike. A bilevel strategy steps with a second fixed batch as its meta batch
(:func:`reference_meta_batch`), so its time includes the meta update.

``python -m mtl_bench.bench --seed-batch K [--device DEV]`` prints instead, from interleaved
rounds in one process: (a) steps/s of the harness's ``train_step`` against a bare hand-written
loop (forward, sum of losses, backward, Adam step) on the reference net, and (b) runs/s of K
seeds trained as one batch (:func:`mtl_bench.batched.train_batched`) against the same K runs
trained one after the other (``train_run``), for ``fixed`` and ``uncertainty`` on ``clsreg``
(``--epochs`` each). This is a benchmark, not a test: nothing here asserts a speed.
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
from mtl_bench.commands.options import device_arg
from mtl_bench.strategy import CLASSIFICATION, REGRESSION
from mtl_bench.task import MultiTaskNet, Task, mlp
from mtl_bench.train import build_strategy, make_optimizer, train_step

REFERENCE_IN, REFERENCE_HIDDEN, REFERENCE_BATCH, REFERENCE_CLASSES = 64, 256, 256, 10


def reference_tasks(n_tasks: int) -> list[Task]:
    """Alternating classification (10 classes) and regression tasks."""
    return [Task(f"t{i}", CLASSIFICATION, REFERENCE_CLASSES, ("accuracy",)) if i % 2 == 0
            else Task(f"t{i}", REGRESSION, 1, ("mae",)) for i in range(n_tasks)]


def reference_setup(strategy: str, params: dict[str, Any] | None = None, n_tasks: int = 2,
                    seed: int = 0, batch: int = REFERENCE_BATCH, device: str = "cpu"):
    """Model, strategy, optimisers and one fixed batch on the reference net."""
    torch.manual_seed(seed)
    tasks = reference_tasks(n_tasks)
    model = MultiTaskNet(mlp([REFERENCE_IN, REFERENCE_HIDDEN, REFERENCE_HIDDEN]),
                         [nn.Linear(REFERENCE_HIDDEN, t.n_outputs) for t in tasks]).to(device)
    strat = build_strategy(strategy, params or {})
    strat.setup([t.info for t in tasks], seed=seed)
    strat.to(device)
    opt = make_optimizer(model, strat, 1e-3, 0.0)
    x = torch.randn(batch, REFERENCE_IN).to(device)
    targets = [(torch.randint(0, REFERENCE_CLASSES, (batch,)) if t.kind == CLASSIFICATION
                else torch.randn(batch)).to(device) for t in tasks]
    return model, tasks, strat, (x,), targets, opt


def reference_meta_batch(tasks: Sequence[Task], seed: int = 0, batch: int = REFERENCE_BATCH,
                         device: str = "cpu") -> tuple[tuple[torch.Tensor], list[torch.Tensor]]:
    """A second fixed batch on the reference net, for strategies that need a meta batch
    (bilevel); drawn from its own generator, so the other setups' draws do not change."""
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, REFERENCE_IN, generator=gen).to(device)
    targets = [(torch.randint(0, REFERENCE_CLASSES, (batch,), generator=gen)
                if t.kind == CLASSIFICATION else torch.randn(batch, generator=gen)).to(device)
               for t in tasks]
    return (x,), targets


def _wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(setup, steps: int, meta=None) -> float:
    """``meta``: the meta batch of a bilevel strategy (:func:`reference_meta_batch`)."""
    model, tasks, strat, inputs, targets, opt = setup
    extra = {} if meta is None else {"meta": meta}
    device = inputs[0].device
    _wait(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, tasks, strat, inputs, targets, opt, **extra)
    _wait(device)
    return steps / (time.perf_counter() - start)


def bare_steps_per_second(setup, steps: int) -> float:
    """The same model, batch and optimiser in a plain PyTorch loop: what the harness's
    train_step is measured against (its overhead is 1 - harness / bare)."""
    model, tasks, _, inputs, targets, opt = setup
    device = inputs[0].device
    _wait(device)
    start = time.perf_counter()
    for _ in range(steps):
        rep = model.trunk(inputs[0])
        loss = sum(task.loss(head(rep), y) for task, head, y in zip(tasks, model.heads, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _wait(device)
    return steps / (time.perf_counter() - start)


def measure(variants: Sequence[tuple[str, dict[str, Any]]], n_tasks: int = 2, steps: int = 30,
            rounds: int = 7, warmup: int = 5, device: str = "cpu") -> dict[str, float]:
    """Median steps/s per variant over interleaved rounds; keys are the strategy labels."""
    setups, metas = {}, {}
    for name, params in variants:
        s = reference_setup(name, params, n_tasks, device=device)
        key = str(s[2])
        metas[key] = reference_meta_batch(s[1], device=device) if s[2].needs_meta_batch else None
        steps_per_second(s, warmup, metas[key])
        setups[key] = s
    samples: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(rounds):
        for key, s in setups.items():
            samples[key].append(steps_per_second(s, steps, metas[key]))
    return {k: statistics.median(v) for k, v in samples.items()}


#: Strategies and task pair of the seed-batching comparison.
SEED_BATCH_STRATEGIES = ("fixed", "uncertainty")
SEED_BATCH_TASK = "clsreg"


def harness_vs_bare(steps: int = 30, rounds: int = 7, device: str = "cpu",
                    warmup: int = 5) -> dict[str, float]:
    """Median steps/s of train_step (fixed weights) and of the bare loop on the reference net,
    timed in interleaved rounds (the order alternates each round)."""
    harness = reference_setup("fixed", device=device)
    bare = reference_setup("fixed", device=device)
    steps_per_second(harness, warmup)
    bare_steps_per_second(bare, warmup)
    samples: dict[str, list[float]] = {"harness": [], "bare": []}
    for r in range(rounds):
        for side in ("harness", "bare") if r % 2 == 0 else ("bare", "harness"):
            if side == "harness":
                samples[side].append(steps_per_second(harness, steps))
            else:
                samples[side].append(bare_steps_per_second(bare, steps))
    out = {k: statistics.median(v) for k, v in samples.items()}
    out["ratio"] = out["harness"] / out["bare"]
    return out


def _time_batched(configs: Sequence[Any]) -> tuple[float, int]:
    """Seconds to train ``configs`` as one seed batch, and the steps of one run."""
    from mtl_bench.batched import train_batched

    start = time.perf_counter()
    records = train_batched(configs)
    elapsed = time.perf_counter() - start
    if any(r["status"] != "ok" for r in records):
        raise RuntimeError(f"a batched run failed: {records[0].get('reason')}")
    return elapsed, len(records[0]["weights"]["values"])


def _time_sequential(configs: Sequence[Any]) -> tuple[float, int]:
    """Seconds to train ``configs`` one after the other, and the steps of one run."""
    from mtl_bench.train import train_run

    start = time.perf_counter()
    records = [train_run(c) for c in configs]
    elapsed = time.perf_counter() - start
    if any(r["status"] != "ok" for r in records):
        raise RuntimeError(f"a run failed: {records[0].get('reason')}")
    return elapsed, len(records[0]["weights"]["values"])


def seed_batch_vs_sequential(k: int, strategies: Sequence[str] = SEED_BATCH_STRATEGIES,
                             epochs: int = 5, rounds: int = 5, device: str = "cpu",
                             threads: int = 1) -> dict[str, dict[str, float]]:
    """Per strategy: median runs/s of K seeds trained by train_batched and of the same K
    configs trained by train_run one after the other (interleaved rounds, alternating order),
    the training steps/s of all K models each way, and the ratio batched / sequential."""
    from mtl_bench.train import RunConfig

    timers = {"batched": _time_batched, "sequential": _time_sequential}
    out = {}
    for name in strategies:
        configs = [RunConfig(task=SEED_BATCH_TASK, strategy=name, seed=s, epochs=epochs,
                             device=device, threads=threads) for s in range(k)]
        for timer in timers.values():  # warm-up: imports, allocator, lazy initialisation
            timer(configs)
        samples: dict[str, list[float]] = {side: [] for side in timers}
        steps = 0
        for r in range(rounds):
            for side in ("batched", "sequential") if r % 2 == 0 else ("sequential", "batched"):
                seconds, steps = timers[side](configs)
                samples[side].append(seconds)
        median = {side: statistics.median(v) for side, v in samples.items()}
        out[name] = {f"{side}_runs_per_s": k / s for side, s in median.items()}
        out[name].update({f"{side}_steps_per_s": k * steps / s for side, s in median.items()})
        out[name]["ratio"] = median["sequential"] / median["batched"]
    return out


def _seed_batch_report(k: int, args: argparse.Namespace) -> None:
    print(f"device {args.device}, {args.threads} thread(s), medians of {args.rounds} "
          "interleaved rounds")
    res = harness_vs_bare(args.steps, args.rounds, args.device)
    print(f"\n(a) reference net {REFERENCE_IN}->{REFERENCE_HIDDEN}->{REFERENCE_HIDDEN}, 2 tasks, "
          f"batch {REFERENCE_BATCH}, {args.steps} steps a round")
    print(f"  bare PyTorch loop        {res['bare']:9.1f} steps/s")
    print(f"  harness train_step       {res['harness']:9.1f} steps/s")
    print(f"  harness / bare           {res['ratio']:9.2f}")
    print(f"\n(b) {SEED_BATCH_TASK}, {args.epochs} epochs a run, K = {k} seeds: one batch "
          "(train_batched) vs K runs one after the other (train_run)")
    print(f"  {'strategy':<14} {'batched runs/s':>15} {'sequential runs/s':>18} "
          f"{'batched steps/s':>16} {'sequential steps/s':>19} {'ratio':>7}")
    for name, r in seed_batch_vs_sequential(k, epochs=args.epochs, rounds=args.rounds,
                                            device=args.device, threads=args.threads).items():
        print(f"  {name:<14} {r['batched_runs_per_s']:15.2f} {r['sequential_runs_per_s']:18.2f} "
              f"{r['batched_steps_per_s']:16.1f} {r['sequential_steps_per_s']:19.1f} "
              f"{r['ratio']:7.2f}")
    print("  (steps/s: training steps of all K models per second, evaluation included; "
          "ratio: batched runs/s / sequential runs/s)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtl_bench.bench", description=__doc__)
    p.add_argument("--strategy", default=None, help="comma-separated (default: all)")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   help="variant NAME.PARAM=V, measured in addition to the defaults")
    p.add_argument("--tasks", default="2,5", help="task counts, comma-separated")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (default), cuda or cuda:N")
    p.add_argument("--seed-batch", type=int, default=None, metavar="K",
                   help="compare K seeds trained as one batch with K runs one after the other "
                        "(and the harness's train_step with a bare loop) instead")
    p.add_argument("--epochs", type=int, default=5,
                   help="epochs of each run in the --seed-batch comparison")
    args = p.parse_args(argv)
    from mtl_bench.sweep import parse_assignments

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    if args.seed_batch is not None and args.seed_batch < 1:
        p.error(f"--seed-batch must be a positive integer, got {args.seed_batch}")
    torch.set_num_threads(args.threads)
    if args.seed_batch is not None:
        _seed_batch_report(args.seed_batch, args)
        return 0
    names = args.strategy.split(",") if args.strategy else registry.strategies.names()
    variants: list[tuple[str, dict[str, Any]]] = [("fixed", {})]
    variants += [(n, {}) for n in names if n != "fixed"]
    for name, params in parse_assignments(args.assignments).items():
        for key, values in params.items():
            variants += [(name, {key: v}) for v in values]
    print(f"reference net {REFERENCE_IN}->{REFERENCE_HIDDEN}->{REFERENCE_HIDDEN}, batch "
          f"{REFERENCE_BATCH}, {args.threads} thread(s), median of {args.rounds} rounds x "
          f"{args.steps} steps, device {args.device}")
    for n_tasks in (int(t) for t in args.tasks.split(",")):
        res = measure(variants, n_tasks, args.steps, args.rounds, device=args.device)
        ref = res["fixed"]
        print(f"\n{n_tasks} tasks")
        print(f"  {'strategy':<34} {'steps/s':>9} {'vs fixed':>9}")
        for key, value in res.items():
            print(f"  {key:<34} {value:9.1f} {value / ref:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
