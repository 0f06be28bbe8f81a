"""Harness overhead: steps/s of ``train_run`` against a bare hand-written PyTorch loop.

``python -m mtl_bench.bench_overhead`` trains the reference net (64 -> 256 -> 256 trunk, a
10-class and a regression head, batch 256) on the same in-memory data both ways and prints the
ratio harness / bare (1.0: no overhead; the target is >= 0.9):

- harness: :func:`mtl_bench.train.train_run` with fixed weights, exactly as a sweep runs it:
  batching by index slices, per-phase timing, weight logging, the finiteness check and gradient
  diagnostics once per epoch (on a CUDA device read back once per epoch, see
  :mod:`mtl_bench.clock`). The headline ratio takes the record's ``wall_s`` less the time
  spent evaluating val/test metrics (model selection, which a bare loop does not do); the ratio
  with evaluation included is printed too;
- bare: a loop written directly against torch: shuffle, slice, forward, sum of losses,
  backward, Adam step, nothing else.

Both are timed in interleaved rounds (harness, bare, bare, harness, ...) in one process and the
median of each is kept, so a burst of load on a shared machine hits both alike. ``--device
cuda`` runs both on a GPU (the bare loop waits for the device before its clock stops, and the
harness's evaluation time starts once the device has finished the epoch). A benchmark, not a
test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from mtl_bench import registry, train
from mtl_bench.bench import (
    REFERENCE_BATCH,
    REFERENCE_CLASSES,
    REFERENCE_HIDDEN,
    REFERENCE_IN,
    reference_tasks,
)
from mtl_bench.clock import CpuClock, StepClock, make_clock
from mtl_bench.commands.options import device_arg
from mtl_bench.task import Split, Task, TaskData, TaskPair
from mtl_bench.train import RunConfig

PAIR_NAME = "bench-overhead-reference"
EVAL_SIZE = 256
#: The clock both sides are timed with: wall time, or this process's CPU time, which other
#: jobs on a shared machine disturb far less (set by ``--clock``).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


class _TrainClock:
    """Stands in for the ``time`` module inside mtl_bench.train so that its timings (wall_s,
    the run's start) use the benchmark's clock; everything else is the real module."""

    def __getattr__(self, name: str):
        return _clock if name == "perf_counter" else getattr(time, name)


class _BenchCpuClock(CpuClock):
    """The run's phase marks on the benchmark's clock."""

    def mark(self) -> float:
        return _clock()


def _run_clock(device: torch.device) -> StepClock:
    return _BenchCpuClock() if device.type == "cpu" else make_clock(device)


def _wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ReferencePair(TaskPair):
    """The reference net on random data: ``n_train`` shared inputs, one classification and one
    regression target (standard normal, so metrics need no rescaling)."""

    description = "reference net for the harness-overhead benchmark"
    batch_size = REFERENCE_BATCH
    lr = 1e-3
    hidden = (REFERENCE_HIDDEN, REFERENCE_HIDDEN)

    def __init__(self, n_train: int = 32 * REFERENCE_BATCH):
        self.n_train = n_train

    def tasks(self) -> tuple[Task, ...]:
        return tuple(reference_tasks(2))

    def load(self, seed: int) -> TaskData:
        g = torch.Generator().manual_seed(seed)

        def split(n: int) -> Split:
            x = torch.randn(n, REFERENCE_IN, generator=g)
            return Split((x,), (torch.randint(0, REFERENCE_CLASSES, (n,), generator=g),
                                torch.randn(n, generator=g)))

        return TaskData(split(self.n_train), split(EVAL_SIZE), split(EVAL_SIZE),
                        (None, (0.0, 1.0)))


def _register() -> None:
    if PAIR_NAME not in registry.tasks.names():
        registry.register_task(PAIR_NAME)(ReferencePair)


@contextmanager
def _time_evaluation(spent: list[float], device: torch.device) -> Iterator[None]:
    """Add the seconds train_run spends evaluating (val/test metrics each epoch, confusion
    matrices at the end) to ``spent[0]``; the wrappers are removed again on exit."""
    originals = {name: getattr(train, name) for name in ("evaluate", "classification_details")}

    def timed(fn):
        def wrapper(*args, **kwargs):
            _wait(device)  # the epoch's queued training work is the loop's time, not eval's
            start = _clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += _clock() - start
        return wrapper

    for name, fn in originals.items():
        setattr(train, name, timed(fn))
    train.time = _TrainClock()  # type: ignore[assignment]
    try:
        yield
    finally:
        train.time = time
        for name, fn in originals.items():
            setattr(train, name, fn)


def harness_steps_per_s(epochs: int, seed: int = 0, threads: int = 1,
                        diag_every: int = 0, device: str = "cpu") -> dict[str, float]:
    """steps/s of one train_run: ``loop`` (its wall time less evaluation), ``end_to_end``
    (its whole wall time, evaluation included) and ``timed_phases`` (the record's own figure:
    forward + strategy + backward + optimiser only)."""
    spent = [0.0]
    dev = torch.device(device)
    with _time_evaluation(spent, dev):
        record = train.train_run(RunConfig(task=PAIR_NAME, strategy="fixed", epochs=epochs,
                                           seed=seed, threads=threads, diag_every=diag_every,
                                           device=device), clock=_run_clock(dev))
    if record["status"] != "ok":
        raise RuntimeError(f"harness run failed: {record.get('reason')}")
    steps = len(record["weights"]["values"])
    return {"loop": steps / (record["wall_s"] - spent[0]),
            "end_to_end": steps / record["wall_s"],
            "timed_phases": record["throughput"]["steps_per_s"]}


def bare_steps_per_s(epochs: int, seed: int = 0, device: str = "cpu") -> float:
    """The same model, data, optimiser and batching, written as a plain PyTorch loop."""
    dev = torch.device(device)
    pair = ReferencePair()
    data = pair.load(seed).to(dev)
    torch.manual_seed(seed)
    model = pair.build_model(data).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=pair.lr)
    x, (y_cls, y_reg) = data.train.inputs[0], data.train.targets
    n, b = len(x), pair.batch_size
    gen = torch.Generator().manual_seed(seed)
    steps = 0
    _wait(dev)
    start = _clock()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        for i in range(0, n, b):
            idx = perm[i:i + b]
            rep = model.trunk(x[idx])
            loss = (F.cross_entropy(model.heads[0](rep), y_cls[idx])
                    + F.mse_loss(model.heads[1](rep).squeeze(-1), y_reg[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    _wait(dev)
    return steps / (_clock() - start)


def measure(epochs: int = 5, rounds: int = 7, threads: int = 1,
            clock: str = "wall", device: str = "cpu") -> dict[str, float]:
    """Median steps/s of each side over interleaved rounds, and the ratios to bare."""
    global _clock
    _clock = CLOCKS[clock]
    _register()
    torch.set_num_threads(threads)
    # warm-up: imports, allocator, provenance cache (and CUDA context, kernels)
    harness_steps_per_s(1, threads=threads, device=device)
    bare_steps_per_s(1, device=device)
    samples: dict[str, list[float]] = {"loop": [], "end_to_end": [], "timed_phases": [],
                                       "bare": [], "loop_no_diag": []}
    # diagnostics only at step 0: what the default once-per-epoch gradient diagnostics cost
    no_diag = epochs * steps_per_epoch_reference() + 1
    for r in range(rounds):
        order = ["harness", "bare", "no_diag"]
        for side in order[r % 3:] + order[:r % 3]:
            if side == "harness":
                for key, value in harness_steps_per_s(epochs, seed=r, threads=threads,
                                                      device=device).items():
                    samples[key].append(value)
            elif side == "no_diag":
                samples["loop_no_diag"].append(harness_steps_per_s(
                    epochs, seed=r, threads=threads, diag_every=no_diag, device=device)["loop"])
            else:
                samples["bare"].append(bare_steps_per_s(epochs, seed=r, device=device))
    out = {k: statistics.median(v) for k, v in samples.items()}
    out["ratio"] = out["loop"] / out["bare"]
    out["ratio_end_to_end"] = out["end_to_end"] / out["bare"]
    out["ratio_no_diag"] = out["loop_no_diag"] / out["bare"]
    return out


def steps_per_epoch_reference() -> int:
    return -(-ReferencePair().n_train // REFERENCE_BATCH)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtl_bench.bench_overhead",
                                description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="epochs per round (32 steps each)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall time, or CPU time of this process (steadier on a busy machine; "
                        "cpu devices only)")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (default), cuda or cuda:N")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    if device.type == "cuda" and args.clock == "cpu":
        p.error("--clock cpu counts host time only, not the GPU's; use --clock wall on cuda")
    res = measure(args.epochs, args.rounds, args.threads, args.clock, args.device)
    print(f"reference net {REFERENCE_IN}->{REFERENCE_HIDDEN}->{REFERENCE_HIDDEN}, 2 tasks, batch "
          f"{REFERENCE_BATCH}, {args.threads} thread(s), median of {args.rounds} interleaved "
          f"rounds x {args.epochs} epochs, {args.clock} clock, device {args.device}")
    print(f"  bare PyTorch loop                          {res['bare']:8.1f} steps/s")
    print(f"  harness training loop (train_run less eval) {res['loop']:8.1f} steps/s")
    print(f"  harness end to end (with per-epoch eval)   {res['end_to_end']:8.1f} steps/s")
    print(f"  harness timed phases (record's steps/s)    {res['timed_phases']:8.1f} steps/s")
    print(f"  harness training loop, no gradient diagnostics {res['loop_no_diag']:8.1f} "
          "steps/s")
    print(f"end to end / bare = {res['ratio_end_to_end']:.3f}; without diagnostics / bare = "
          f"{res['ratio_no_diag']:.3f}")
    print(f"harness / bare = {res['ratio']:.3f}  (training loop; target >= 0.9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
