"""How a run's training loop times its device and when the host reads results back.

A run picks one :class:`StepClock` for its device (:func:`make_clock`); the training step only
calls :meth:`StepClock.mark` at its phase boundaries and never waits for the device. What the
host needs back from the device (phase times, the finiteness of the step losses, gradient
diagnostics) is read at the loop's *read points*: after every ``read_every`` steps and at each
epoch end.

- :class:`CpuClock`: marks are ``time.perf_counter()`` values and every step is a read point,
  so a non-finite loss stops the run at the step that produced it (CPU work is done when the
  call returns: reading it back costs nothing).
- :class:`CudaClock`: marks are CUDA events recorded on the device's stream, so timing a phase
  does not stop the host from queueing the next one; the events and the losses are read every
  ``read_every`` steps and at each epoch end, one host synchronisation for all of them, instead
  of one per phase and one per step.

:class:`PhaseTimer` turns marks into phase times and :class:`DivergenceGuard` finds the first
step with a non-finite loss among the steps since the last read point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

PHASES = ("forward", "strategy", "backward", "optimizer")
#: Steps between read points on a CUDA device: the host runs ahead of the device this far at
#: most, and a run that diverges stops at most this many steps (or the epoch's end) later.
CUDA_READ_EVERY = 64



class StepClock:
    """The device side of a training run, chosen once per run.

    A mark is a point in the device's queue of work. :meth:`seconds` may only be asked of marks
    made before the last :meth:`wait`; :meth:`read` copies a tensor to Python values (a host
    synchronisation on an accelerator).
    """

    #: Steps between the loop's read points (an epoch end always is one).
    read_every: int = 1
    #: Why this device cannot replay steps from CUDA graphs (None: it can, see :meth:`capture`).
    no_graphs: str | None = "CUDA graphs need a CUDA device"
    #: Whether the optimiser must be built in its capturable form to be captured in a graph.
    capturable: bool = False

    def mark(self) -> Any:
        raise NotImplementedError

    def wait(self) -> None:
        """Block the host until the device has reached every mark made so far."""

    def seconds(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def release(self, marks: Sequence[Any]) -> None:
        """Marks that will not be read again (a clock may reuse them)."""

    def read(self, tensor: Tensor) -> Any:
        return tensor.tolist()

    @contextmanager
    def eager(self) -> Iterator[None]:
        """Context of the eager steps of a run that also replays captured steps."""
        yield

    def capture(self, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        """Record ``fn``'s device work without running it: returns (replay, what ``fn``
        returned); each ``replay()`` runs the recorded work again, writing the same tensors."""
        raise NotImplementedError(self.no_graphs)


class CpuClock(StepClock):
    """Wall-clock marks; the host reads every step (it has nothing to wait for)."""

    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start


class UntimedClock(StepClock):
    """Marks nothing: for a step that is recorded into a graph rather than run."""

    def mark(self) -> None:
        return None


class CudaClock(StepClock):
    """CUDA events on the device's current stream, reused once read; the eager steps of a run
    that replays graphs go to a side stream, and all of its graphs share one memory pool."""

    no_graphs = None
    capturable = True

    def __init__(self, device: torch.device, read_every: int = CUDA_READ_EVERY):
        self.device = device
        self.read_every = read_every
        self._free: list[Any] = []
        self._side: Any = None
        self._pool: Any = None

    def mark(self) -> Any:
        event = self._free.pop() if self._free else torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def wait(self) -> None:
        torch.cuda.synchronize(self.device)

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0

    def release(self, marks: Sequence[Any]) -> None:
        self._free.extend({id(m): m for m in marks}.values())  # a mark may repeat

    @contextmanager
    def eager(self) -> Iterator[None]:
        # capture needs the steps before it (lazy initialisation of the optimiser state,
        # cuBLAS workspaces) on a side stream; each eager step waits for the work queued before
        # it and the main stream for the step, so tensors cross the streams safely
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        self._side.wait_stream(main)
        try:
            with torch.cuda.stream(self._side):
                yield
        finally:
            main.wait_stream(self._side)

    def capture(self, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        # One pool for all graphs of a run: what a graph reads from one replay to the next
        # (parameters, optimiser state, static inputs and outputs) lives outside the pool or
        # stays referenced, so a later capture only reuses memory that each replay rewrites.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), torch.cuda.graph(graph, pool=self._pool):
            out = fn()
        if self._pool is None:
            self._pool = graph.pool()

        def replay() -> None:
            with torch.cuda.device(self.device):  # replay goes to the current device's stream
                graph.replay()

        return replay, out


def make_clock(device: torch.device) -> StepClock:
    return CudaClock(device) if device.type == "cuda" else CpuClock()


class PhaseTimer:
    """Per-phase step times of a run. Steps hand in their marks; the marks become seconds at
    the read points (:meth:`flush`), after one wait of the clock. The first ``skip`` steps are
    not timed (allocator, lazy initialisation).

    A step's marks are (start, after forward, after strategy, after diagnostics, after
    backward, after optimiser step, after ``after_step``), or (start, end) for a step replayed
    from a graph, whose phases cannot be told apart.
    """

    def __init__(self, clock: StepClock, skip: int = 3):
        self.clock = clock
        self.skip = skip
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.replayed = 0
        self.replayed_s = 0.0
        self.samples = 0
        self._seen = 0
        self._pending: list[tuple[int, Sequence[Any], int]] = []

    def record(self, step: int, marks: Sequence[Any], samples: int) -> None:
        self._pending.append((step, marks, samples))

    def flush(self, stop: int | None = None) -> None:
        """Time the pending steps, leaving out those from step ``stop`` on (a diverged run)."""
        if not self._pending:
            return
        clock = self.clock
        clock.wait()
        for step, marks, samples in self._pending:
            if stop is not None and step >= stop:
                continue
            self._seen += 1
            if self._seen <= self.skip:
                continue
            if len(marks) == 2:
                self.replayed += 1
                self.replayed_s += clock.seconds(marks[0], marks[1])
            else:
                t0, t1, t2, t2b, t3, t4, t5 = marks
                self.totals["forward"] += clock.seconds(t0, t1)
                self.totals["strategy"] += clock.seconds(t1, t2) + clock.seconds(t4, t5)
                self.totals["backward"] += clock.seconds(t2b, t3)
                self.totals["optimizer"] += clock.seconds(t3, t4)
                self.steps += 1
            self.samples += samples
        for _, marks, _ in self._pending:
            clock.release(marks)
        self._pending.clear()

    def summary(self) -> dict[str, float]:
        timed = self.steps + self.replayed
        if not timed:
            return {}
        total = sum(self.totals.values()) + self.replayed_s
        out: dict[str, float] = {}
        if not self.replayed:  # with replays, the few eager steps would misstate the phases
            out = {f"{k}_ms": 1000 * v / self.steps for k, v in self.totals.items()}
        out["step_ms"] = 1000 * total / timed
        out["steps_per_s"] = timed / total if total else math.nan
        out["samples_per_s"] = self.samples / total if total else math.nan
        out["timed_steps"] = timed
        if self.replayed:
            out["replayed_steps"] = self.replayed
        return out


class DivergenceGuard:
    """The losses of the steps since the last read point; :meth:`first_bad` finds the first of
    them with a non-finite task loss, in one read of the device."""

    def __init__(self, clock: StepClock):
        self.clock = clock
        self._steps: list[int] = []
        self._losses: list[Tensor] = []

    def note(self, step: int, losses: Tensor) -> None:
        self._steps.append(step)
        self._losses.append(losses)

    def first_bad(self) -> tuple[int, list[float]] | None:
        """(step, task losses) of the first pending step with a non-finite loss, else None;
        either way nothing is pending afterwards."""
        if not self._losses:
            return None
        steps, losses = self._steps, self._losses
        self._steps, self._losses = [], []
        if len(losses) == 1:  # a read point every step (CPU): one flag, no stacking
            finite = [self.clock.read(torch.isfinite(losses[0]).all())]
        else:
            finite = self.clock.read(torch.isfinite(torch.stack(losses)).all(dim=1))
        for k, ok in enumerate(finite):
            if not ok:
                return steps[k], self.clock.read(losses[k])
        return None
