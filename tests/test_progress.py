"""The sweep's progress: the ETA from measured run times, plain lines without a terminal, the
live view in a pseudo-terminal, epoch reports from the executors and Ctrl-C."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from mtl_bench import progress as progress_mod
from mtl_bench.cli import main
from mtl_bench.executors.base import epoch_reporter, parse_epoch
from mtl_bench.executors.local import InProcess, run_local
from mtl_bench.progress import EtaEstimator, Running, format_seconds
from mtl_bench.sweep import Progress
from mtl_bench.train import RunConfig

ESC = "\x1b"
A, B = ("clsreg", "fixed"), ("clsreg", "dwa")


# -- the ETA estimator on planted run times ----------------------------------------------------
def test_eta_places_runs_left_on_the_workers_by_strategy_mean():
    eta = EtaEstimator(parallel=2)
    eta.finished(A, 2.0)
    eta.finished(B, 6.0)
    # two workers, queue a a b b: each worker takes one a (2 s) then one b (6 s) -> 8 s
    assert eta.eta([A, A, B, B]) == pytest.approx(8.0)
    # one worker does them all: 2 + 2 + 6 + 6
    eta.parallel = 1
    assert eta.eta([A, A, B, B]) == pytest.approx(16.0)
    # three runs, two workers, queue b b a: 6 | 6 then a on the first free (at 6) -> 8
    eta.parallel = 2
    assert eta.eta([B, B, A]) == pytest.approx(8.0)
    # a queue too long to place run by run is spread evenly: (3000 x 2 + 3000 x 6) / 4
    eta.parallel = 4
    assert eta.eta([A, B] * 3000) == pytest.approx(6000.0)


def test_eta_is_not_the_first_run_over_the_elapsed_time():
    eta = EtaEstimator(parallel=1)
    eta.finished(A, 30.0)  # a slow strategy finished first
    # nothing of b measured yet: the task pair's mean stands in for it
    assert eta.eta([B] * 10) == pytest.approx(300.0)
    eta.finished(B, 1.0)
    # b's own time from now on: 9 runs of 1 s (elapsed / done x left would say 31 / 2 x 9)
    assert eta.eta([B] * 9) == pytest.approx(9.0)
    # another task pair, nothing measured there: the mean of all finished runs (15.5)
    assert eta.eta([("mnist", "dwa")]) == pytest.approx(15.5)


def test_set_up_time_is_the_smallest_seen_on_warm_workers():
    eta = EtaEstimator()
    eta.finished(A, 2.0)  # a fresh worker's run: no client-side time, warm-up not counted
    assert eta.expected(A) == pytest.approx(2.0)
    eta.finished(A, 2.0, client_s=2.5)
    eta.finished(A, 2.0, client_s=4.0)
    assert eta.expected(A) == pytest.approx(2.5)  # mean 2 s + smallest set-up 0.5 s


def test_eta_of_runs_in_progress():
    eta = EtaEstimator(parallel=1)
    # nothing finished, no epoch reported: unknown
    assert eta.eta([A], [Running(A, 3.0)]) is None
    assert eta.eta([], []) == 0.0
    # 2 epochs done, 2 s since the first ended: 2 s per epoch, 8 epochs left -> 16 s; the run
    # queued behind it takes what this one projects in all (2 s x 10 epochs)
    running = Running(A, 4.0, epoch=2, epochs=10, since_first_epoch=2.0)
    assert eta.eta([], [running]) == pytest.approx(16.0)
    assert eta.eta([A], [running]) == pytest.approx(16.0 + 20.0)
    eta.finished(A, 10.0)
    assert eta.eta([A], [running]) == pytest.approx(16.0 + 10.0)
    # one epoch only: the expected time's share of the epochs left (10 s x 9/10)
    assert eta.eta([], [Running(A, 9.0, epoch=1, epochs=10)]) == pytest.approx(9.0)
    # started, no epoch yet: expected time less what it has run
    assert eta.eta([], [Running(A, 3.0)]) == pytest.approx(7.0)
    # two workers, one busy for 7 s more: the queued runs go to the free one first (10, then
    # the next to the busy one at 7) -> 17
    eta.parallel = 2
    assert eta.eta([A, A], [Running(A, 3.0)]) == pytest.approx(17.0)


def test_format_seconds():
    assert [format_seconds(s) for s in (None, 0.4, 59, 61, 3599, 3725)] == [
        "?", "0s", "59s", "1m01s", "59m59s", "1h02m"]


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _configs(n: int, strategy: str = "fixed", epochs: int = 4) -> list[RunConfig]:
    return [RunConfig(strategy=strategy, seed=s, epochs=epochs) for s in range(n)]


def test_progress_lines_give_the_eta_of_measured_runs(monkeypatch):
    """One worker, six runs of 2 s training plus 0.5 s set-up; the first also pays a 10 s
    warm-up. Elapsed / done x left would say 12.5 x 5 = 62 s after the first run."""
    clock = _Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", clock)
    stream = io.StringIO()
    configs = _configs(6)
    p = Progress(len(configs), stream=stream, live=False)
    p.begin(configs, parallel=1)
    for i, c in enumerate(configs):
        p.report(c, 0, c.epochs)
        clock.now += (12.5 if i == 0 else 2.5)
        p.finished(c, {"status": "ok", "wall_s": 2.0})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6 and ESC not in stream.getvalue()
    assert lines[0].startswith("[1/6] clsreg fixed seed 0: ok (2.0s, elapsed 12s, ETA 10s)")
    # from the second run on the set-up is measured: 4 runs x 2.5 s
    assert lines[1].endswith("ETA 10s)") and lines[2].endswith("ETA 8s)")
    assert lines[5].endswith("ETA 0s)")


def test_plain_output_names_running_runs_at_most_once_a_minute(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", clock)
    stream = io.StringIO()
    c = RunConfig(strategy="dwa", epochs=100)
    p = Progress(1, stream=stream, live=False)
    p.begin([c])
    p.report(c, 0, 100)
    for epoch in range(1, 31):
        clock.now += 5.0
        p.report(c, epoch, 100)
    lines = stream.getvalue().splitlines()
    # 150 s of epochs: a line after 60 s and after 120 s; 5 s per epoch, 88 epochs left
    assert len(lines) == 2 and ESC not in stream.getvalue()
    assert lines[0] == ("[0/1] running: clsreg dwa seed 0 epoch 12/100 "
                        "(elapsed 60s, ETA 7m20s)")
    assert lines[1].startswith("[0/1] running: clsreg dwa seed 0 epoch 24/100")


def test_quiet_prints_nothing_and_still_counts():
    stream = io.StringIO()
    p = Progress(2, quiet=True, stream=stream)
    c = RunConfig()
    p.begin([c])
    p.report(c, 0, 2)
    p.finished(c, {"status": "failed", "reason": "boom", "wall_s": 0.1})
    p.close()
    assert stream.getvalue() == "" and p.failed == 1 and p.done == 1


def test_no_terminal_keeps_the_plain_lines(capsys, runs_dir):
    code = main(["run", "--task", "clsreg", "--strategy", "fixed", "--seeds", "1",
                 "--epochs", "1", "--jobs", "1", "--runs-dir", str(runs_dir)])
    err = capsys.readouterr().err
    assert code == 0
    assert ESC not in err
    assert re.search(r"^\[1/1\] clsreg fixed seed 0: ok \(\d+\.\ds, elapsed \d+s, ETA 0s\)$",
                     err, re.M)


# -- epoch reports -----------------------------------------------------------------------------
def test_parse_epoch_and_reporter():
    assert parse_epoch("epoch 3/10") == (3, 10)
    assert parse_epoch("epoch x/10") is None and parse_epoch("done") is None
    seen = []
    group = _configs(2)
    cb = epoch_reporter(group, lambda c, e, n: seen.append((c.seed, e, n)))
    cb("epoch 2/4")
    cb("something else")
    assert seen == [(0, 2, 4), (1, 2, 4)]
    assert epoch_reporter(group, None) is None


def _events(executor_run, configs):
    events, records = [], []
    executor_run(configs, lambda c, r: records.append((c.run_id, r["status"])),
                 report=lambda c, e, n: events.append((c.run_id, e, n)))
    return events, records


def test_in_process_runs_report_start_and_every_epoch():
    configs = [RunConfig(strategy="fixed", epochs=3), RunConfig(strategy="dwa", epochs=2)]
    events, records = _events(InProcess().run, configs)
    a, b = (c.run_id for c in configs)
    assert events == [(a, 0, 3), (a, 1, 3), (a, 2, 3), (a, 3, 3), (b, 0, 2), (b, 1, 2),
                      (b, 2, 2)]
    assert records == [(a, "ok"), (b, "ok")]


@pytest.mark.slow
def test_worker_processes_report_every_epoch_to_the_parent():
    configs = [RunConfig(strategy="fixed", epochs=3)]
    events, records = _events(
        lambda cs, finish, report: run_local(cs, finish, jobs=1, report=report), configs)
    a = configs[0].run_id
    assert events == [(a, 0, 3), (a, 1, 3), (a, 2, 3), (a, 3, 3)]
    assert records == [(a, "ok")]


# -- the live view in a pseudo-terminal --------------------------------------------------------
def _read_until(fd: int, proc: subprocess.Popen, out: bytearray, pattern: bytes,
                timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                return pattern in out
            if not chunk:
                return pattern in out
            out += chunk
            if pattern in out:
                return True
        elif proc.poll() is not None:
            return pattern in out
    return pattern in out


@pytest.mark.slow
def test_terminal_shows_the_bar_and_run_epochs_and_ctrl_c_keeps_finished_runs(tmp_path):
    """In a terminal: the overall bar with its ETA, one line per active run with its epoch,
    the finished-run lines; Ctrl-C exits 130, keeps the finished run and restores the
    cursor."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CI", "TERM")}
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="40")
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtl_bench", "run", "--task", "clsreg", "--strategy",
         "fixed,dwa,rlw", "--seeds", "1", "--epochs", "15", "--jobs", "1",
         "--runs-dir", str(runs)],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env,
        cwd=Path(__file__).resolve().parents[1])
    os.close(slave)
    out = bytearray()
    try:
        assert _read_until(master, proc, out, b"[1/3] clsreg fixed seed 0: ok", 120), \
            out.decode(errors="replace")[-2000:]
        proc.send_signal(signal.SIGINT)
        _read_until(master, proc, out, b"\x00never", 30)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert code == 130, plain[-2000:]
    assert ESC in text  # a live view, not plain lines
    assert re.search(r"0/3 runs .* elapsed \d+s, ETA", plain)
    assert re.search(r"clsreg fixed seed 0 .* epoch \d+/15", plain)
    assert "interrupted: finished runs are kept" in plain and "Traceback" not in plain
    assert "\x1b[?25h" in text  # the cursor is shown again
    assert len(list((runs / "clsreg").glob("*.json"))) == 1
