"""The training loop on an accelerator, checked on CPU: host reads only at read points, the
divergence check batched without losing the first bad step, CUDA-graph replay and its fallbacks.

A counting clock stands in for the device: its marks, waits and reads are logged next to the
steps, and so is every conversion of a tensor to Python values made by mtl_bench's own code.
"""

import hashlib
import json
import sys
import time

import pytest
import torch

from mtl_bench import bench_overhead, registry
from mtl_bench.clock import CpuClock, CudaClock, StepClock
from mtl_bench.strategies.fixed import Fixed
from mtl_bench.train import RunConfig, train_run

EVENTS: list[tuple] = []
STEPS_PER_EPOCH = 7  # clsreg at its default batch size
#: What a record must keep, bit for bit, whatever the clock or the step's form.
RESULT_KEYS = ("status", "failure", "reason", "failed_epoch", "selected_epoch", "curves",
               "weights", "diagnostics", "summary", "details")


class _Logged(Fixed):
    """Fixed weights; logs each step, and from step ``nan_after`` on returns a NaN loss, so the
    task losses are non-finite from the step after it; raises at step ``crash_at``."""

    nan_after: int | None = None
    crash_at: int | None = None
    graph_safe = False  # Python state per step: never captured

    def __init__(self, weights=None):
        super().__init__(weights)
        self.calls = 0

    def combine(self, losses, grads=None):
        step = self.calls
        self.calls += 1
        EVENTS.append(("step", step))
        if step == self.crash_at:
            raise RuntimeError("solver failed on a non-finite input")
        update = super().combine(losses, grads)
        if self.nan_after is not None and step >= self.nan_after:
            update.loss = update.loss * float("nan")
        return update


class _GraphSafe(Fixed):
    graph_safe = True


@pytest.fixture
def logged():
    EVENTS.clear()
    registry.strategies.register("test-logged")(_Logged)
    registry.strategies.register("test-graph-safe")(_GraphSafe)
    yield _Logged
    registry.strategies.unregister("test-logged")
    registry.strategies.unregister("test-graph-safe")


@pytest.fixture
def host_reads(monkeypatch):
    """Log every tensor-to-Python conversion that mtl_bench code makes (torch's own, such as
    Adam's step counter on CPU, are not reads of an accelerator)."""

    def counted(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("mtl_bench"):
                EVENTS.append(("host", name, caller))
            return original(self, *args, **kwargs)
        return wrapper

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))


class CountingClock(StepClock):
    """A fake accelerator: marks are (index, time); ``seconds`` refuses marks made after the
    last wait, as CUDA events that the device has not reached yet would."""

    def __init__(self, read_every: int = 10**9):
        self.read_every = read_every
        self.marks = 0
        self.reached = 0

    def mark(self):
        self.marks += 1
        return self.marks, time.perf_counter()

    def wait(self):
        EVENTS.append(("wait",))
        self.reached = self.marks

    def seconds(self, start, end):
        assert end[0] <= self.reached, "a mark was read before the clock waited for it"
        return end[1] - start[1]

    def read(self, tensor):
        EVENTS.append(("read",))
        return tensor.tolist()


def _progress(text):
    EVENTS.append(("epoch", text))


def _results(record):
    return {k: record.get(k) for k in RESULT_KEYS}


def _epoch_segments():
    """EVENTS split at each epoch's end (the progress line), without the evaluation of epoch 0
    that precedes the first step."""
    segments, current = [], []
    for event in EVENTS:
        if event[0] == "epoch":
            segments.append(current)
            current = []
        else:
            current.append(event)
    first = next(i for i, e in enumerate(segments[0]) if e[0] == "step")
    segments[0] = segments[0][first:]
    return segments


@pytest.mark.parametrize("read_every", [10**9, 3])
def test_no_host_read_inside_a_step_and_reads_only_at_read_points(logged, host_reads,
                                                                 read_every):
    epochs = 3
    rec = train_run(RunConfig(strategy="test-logged", epochs=epochs), _progress,
                    clock=CountingClock(read_every))
    assert rec["status"] == "ok"
    segments = _epoch_segments()
    assert len(segments) == epochs
    for segment in segments:
        steps = [i for i, e in enumerate(segment) if e[0] == "step"]
        assert len(steps) == STEPS_PER_EPOCH
        # the host touches the device only between steps n * read_every and the next one
        for n, (here, there) in enumerate(zip(steps, steps[1:]), start=1):
            between = [e[0] for e in segment[here:there] if e[0] != "step"]
            if n % read_every:
                assert between == [], f"host read after step {n} of an epoch: {between}"
            else:
                assert between.count("wait") == 1 and "read" in between
        # and once at the epoch's end, where the timer waits once
        after = [e[0] for e in segment[steps[-1]:]]
        assert after.count("wait") == 1 and "read" in after and "host" in after
    tp = rec["throughput"]
    assert tp["timed_steps"] == epochs * STEPS_PER_EPOCH - 3 and tp["forward_ms"] > 0


def test_counting_clock_and_cpu_clock_give_the_same_record(logged):
    cpu = train_run(RunConfig(strategy="test-logged", epochs=3, diag_every=2))
    fake = train_run(RunConfig(strategy="test-logged", epochs=3, diag_every=2),
                     clock=CountingClock())
    assert cpu["diagnostics"] and _results(fake) == _results(cpu)


@pytest.mark.parametrize("bad_step", [1, 10, 13])  # 10, 13: mid-epoch and last step of epoch 2
def test_batched_check_reports_the_first_non_finite_step(logged, monkeypatch, bad_step):
    monkeypatch.setattr(_Logged, "nan_after", bad_step - 1)
    config = RunConfig(strategy="test-logged", epochs=4, diag_every=3)
    per_step = train_run(config)
    ran_per_step = len([e for e in EVENTS if e[0] == "step"])
    EVENTS.clear()
    batched = train_run(config, clock=CountingClock())
    ran_batched = len([e for e in EVENTS if e[0] == "step"])

    epoch = bad_step // STEPS_PER_EPOCH + 1
    assert batched["status"] == "failed" and batched["failure"] == "diverged"
    assert batched["failed_epoch"] == epoch
    assert f"non-finite loss at epoch {epoch} (step {bad_step})" in batched["reason"]
    assert _results(batched) == _results(per_step)
    assert len(batched["weights"]["values"]) == bad_step
    assert all(d["step"] < bad_step for d in batched["diagnostics"])
    timed = batched["throughput"].get("timed_steps")
    assert timed == per_step["throughput"].get("timed_steps") == (None if bad_step <= 3 else
                                                                 bad_step - 3)
    # CPU stops at the bad step; the batched check lets the epoch finish, no further
    assert ran_per_step == bad_step + 1
    assert ran_batched == epoch * STEPS_PER_EPOCH


def test_a_crash_after_an_unchecked_non_finite_loss_is_a_divergence(logged, monkeypatch):
    monkeypatch.setattr(_Logged, "nan_after", 8)
    monkeypatch.setattr(_Logged, "crash_at", 11)
    rec = train_run(RunConfig(strategy="test-logged", epochs=3), clock=CountingClock())
    assert rec["failure"] == "diverged" and rec["failed_epoch"] == 2
    assert "(step 9)" in rec["reason"]


# -- the CUDA clock, with the CUDA calls faked -----------------------------------------------
class _FakeEvent:
    created = 0
    synced = 0  # how many torch.cuda.synchronize calls so far

    def __init__(self, enable_timing=False):
        assert enable_timing
        type(self).created += 1
        self.at = None

    def record(self, stream=None):
        assert stream == "stream"
        self.at, self.sync_count = time.perf_counter(), _FakeEvent.synced

    def elapsed_time(self, end):
        # both events must be reached: a synchronize came after they were recorded
        assert _FakeEvent.synced > max(self.sync_count, end.sync_count)
        return (end.at - self.at) * 1000.0


def test_cuda_clock_synchronises_once_per_epoch_and_reuses_its_events(logged, monkeypatch):
    def synchronize(device=None):
        _FakeEvent.synced += 1

    monkeypatch.setattr(_FakeEvent, "created", 0)
    monkeypatch.setattr(_FakeEvent, "synced", 0)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "stream")
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    epochs = 3
    config = RunConfig(strategy="test-logged", epochs=epochs)
    rec = train_run(config, clock=CudaClock(torch.device("cpu")))
    assert rec["status"] == "ok"
    assert _FakeEvent.synced == epochs  # one per read point, none per phase or step
    # seven marks per diagnostics step, six per other step; reused from epoch to epoch
    assert _FakeEvent.created == 7 + 6 * (STEPS_PER_EPOCH - 1)
    assert rec["throughput"]["step_ms"] > 0 and rec["throughput"]["backward_ms"] > 0
    assert _results(rec) == _results(train_run(config))


# -- CUDA graphs -------------------------------------------------------------------------------
class GraphClock(CpuClock):
    """CPU clock that 'captures' like CUDA: recording a step leaves the model, optimiser and
    strategy as they were; each replay runs it again and writes the captured outputs."""

    no_graphs = None

    def __init__(self, fail: str | None = None):
        self.fail = fail
        self.captures = 0

    def capture(self, fn):
        if self.fail:
            raise RuntimeError(self.fail)
        model, _, strategy, _, _, optimizer, _ = fn.args
        state = [*model.parameters(), *model.buffers(), *strategy.parameters(),
                 *strategy.buffers(), *(v for s in optimizer.state.values() for v in s.values()
                                        if isinstance(v, torch.Tensor))]
        saved = [t.detach().clone() for t in state]
        out = fn()
        with torch.no_grad():
            for t, v in zip(state, saved):
                t.copy_(v)

        def replay():
            new = fn()
            out[0].copy_(new[0])
            out[1].copy_(new[1])

        self.captures += 1
        return replay, out


def test_cuda_graph_on_cpu_falls_back_with_a_note_and_the_same_results(logged):
    plain = train_run(RunConfig(strategy="fixed", epochs=2))
    graphed = train_run(RunConfig(strategy="fixed", epochs=2, cuda_graph=True))
    assert graphed["status"] == "ok" and _results(graphed) == _results(plain)
    assert graphed["notes"] == ["cuda_graph: not used, CUDA graphs need a CUDA device; every "
                                "step ran eagerly"]
    assert plain["notes"] == [] and graphed["config"]["cuda_graph"] is True
    assert graphed["run_id"] != plain["run_id"]


def test_run_ids_of_configs_without_cuda_graph_are_unchanged():
    fields = RunConfig(strategy="gradnorm", seed=3).resolved().to_dict()
    del fields["cuda_graph"]
    blob = json.dumps(fields, sort_keys=True, default=str)
    assert RunConfig(strategy="gradnorm", seed=3).run_id == \
        hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_replayed_steps_give_the_eager_results(logged):
    config = RunConfig(strategy="test-graph-safe", epochs=5, diag_every=5)
    eager = train_run(config)
    clock = GraphClock()
    graphed = train_run(RunConfig(strategy="test-graph-safe", epochs=5, diag_every=5,
                                  cuda_graph=True), clock=clock)
    assert graphed["status"] == "ok" and graphed["notes"] == []
    assert _results(graphed) == _results(eager)
    assert clock.captures == 2  # the full batch and the epoch's last, smaller one
    tp = graphed["throughput"]
    assert 0 < tp["replayed_steps"] < tp["timed_steps"] and "forward_ms" not in tp


def test_strategy_without_graph_safe_and_failed_capture_step_eagerly(logged):
    eager = train_run(RunConfig(strategy="test-logged", epochs=2))
    rec = train_run(RunConfig(strategy="test-logged", epochs=2, cuda_graph=True),
                    clock=GraphClock())
    assert rec["notes"] == ["cuda_graph: not used, strategy 'test-logged' does not declare "
                            "graph_safe; every step ran eagerly"]
    assert _results(rec) == _results(eager)

    eager = train_run(RunConfig(strategy="test-graph-safe", epochs=2))
    rec = train_run(RunConfig(strategy="test-graph-safe", epochs=2, cuda_graph=True),
                    clock=GraphClock(fail="operation not permitted when stream is capturing"))
    assert rec["status"] == "ok" and _results(rec) == _results(eager)
    # step 0 takes gradient diagnostics (eagerly), steps 1 to 3 warm up, step 4 is captured
    assert rec["notes"] == ["cuda_graph: capture failed at step 4 (RuntimeError: operation not "
                            "permitted when stream is capturing); this and later steps ran "
                            "eagerly"]
    assert "replayed_steps" not in rec["throughput"]


def test_bench_overhead_runs_on_cpu_and_refuses_a_missing_gpu(capsys):
    try:
        assert bench_overhead.main(["--epochs", "1", "--rounds", "1", "--device", "cpu"]) == 0
    finally:
        registry.tasks.unregister(bench_overhead.PAIR_NAME)
    assert "harness / bare" in capsys.readouterr().out
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exc:
            bench_overhead.main(["--device", "cuda"])
        assert exc.value.code == 2
        assert "CUDA is not available" in capsys.readouterr().err
