"""Executors on this machine: runs in this process one after another, or in a pool of worker
processes (``--jobs N``), on the CPU or sharing GPUs.

The pool keeps N long-lived worker processes, each running one run at a time, so the parent
always knows which run a worker holds: a worker that dies (segfault, out of memory, killed)
turns that run into a failed record and a fresh worker takes its place. Workers send each
record back to the parent; a worker never writes a file. With ``--device cuda`` each worker is
bound to one GPU (:mod:`mtl_bench.executors.gpu`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_ready
from typing import Any

from mtl_bench import registry
from mtl_bench.errors import UserError
from mtl_bench.executors import gpu
from mtl_bench.executors.base import (
    Finish,
    Report,
    death_reason,
    ensure_plugins,
    epoch_reporter,
    failed_record,
    parse_epoch,
)
from mtl_bench.train import RunConfig

#: Modules the fork server imports once, so that each worker starts in a fraction of a second
#: instead of importing torch again.
PRELOAD = ["mtl_bench.train", "mtl_bench.executors.local"]


def jobs_of(configs: Sequence[RunConfig], seed_batch: int) -> list[list[RunConfig]]:
    """The units of work: one run each, or with ``seed_batch`` K > 1 groups of up to K runs
    that differ only in seed (:func:`mtl_bench.batched.seed_batches`), trained as one batch."""
    if seed_batch <= 1:
        return [[c] for c in configs]
    from mtl_bench.batched import seed_batches

    return seed_batches(configs, seed_batch)


@dataclass
class InProcess:
    """Every run in this process, one after another (``--jobs 1``: the easiest to debug)."""

    max_seconds: float | None = None
    seed_batch: int = 1

    def run(self, configs: Sequence[RunConfig], finish: Finish,
            report: Report | None = None) -> None:
        for group in jobs_of(configs, self.seed_batch):
            if report is not None:
                for c in group:
                    report(c, 0, c.epochs)
            records = gpu.run_placed(group, None, self.max_seconds,
                                     progress=epoch_reporter(group, report))
            for c, record in zip(group, records):
                finish(c, record)


@dataclass
class LocalPool:
    """``jobs`` worker processes; ``devices`` (one per worker, see
    :func:`~mtl_bench.executors.gpu.worker_devices`) binds each to a GPU. ``resolve_device``
    maps a worker's device to the one torch is given (tests: ``cuda:i`` -> ``cpu``); it must
    be a module-level function, as it travels to the workers."""

    jobs: int
    max_seconds: float | None = None
    plugins: Sequence[tuple[str, str]] = ()
    devices: Sequence[str] | None = None
    resolve_device: Callable[[str], str] | None = None
    seed_batch: int = 1

    def run(self, configs: Sequence[RunConfig], finish: Finish,
            report: Report | None = None) -> None:
        run_local(configs, finish, self.jobs, self.max_seconds, self.plugins,
                  devices=self.devices, resolve_device=self.resolve_device,
                  seed_batch=self.seed_batch, report=report)


def _exit_with_parent(parent_pid: int) -> None:
    # A worker whose sweep was killed (kill -9) would otherwise finish its run for nobody. Its
    # OS parent is the fork server (which exits with the sweep) or the sweep itself.
    ppid = os.getppid()
    while True:
        time.sleep(0.5)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # the pid now belongs to another user's process
            os._exit(1)
        if os.getppid() != ppid:
            os._exit(1)


def _worker_main(conn: Any, parent_pid: int, plugins: list[tuple[str, str]],
                 device: str | None = None,
                 resolve_device: Callable[[str], str] | None = None) -> None:
    """Loop of one worker process: receive a job (one config, or a seed group), send
    ("started", None), ("epoch", "epoch E/N") after each epoch, and ("records", [record, ...])
    in the job's order. An epoch message is a few dozen bytes on the pipe the job came on."""
    # Ctrl-C in a terminal reaches the whole process group; the parent alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    try:
        registry.load_builtins()  # once per worker, so it does not count against a run's time
        ensure_plugins(plugins)
        if device is not None:
            gpu.bind(resolve_device(device) if resolve_device is not None else device)
    except UserError as exc:
        conn.send(("user_error", str(exc)))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        group, max_seconds = msg
        conn.send(("started", None))  # the run's clock starts now, not at process start-up

        def progress(text: str) -> None:
            conn.send(("epoch", text))

        try:
            conn.send(("records", gpu.run_placed(group, device, max_seconds, resolve_device,
                                                 progress)))
        except UserError as exc:
            conn.send(("user_error", str(exc)))
        except Exception as exc:  # train_run records its own failures; this is a last resort
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class _Worker:
    process: Any
    conn: Any
    slot: int
    group: list[RunConfig] | None = None
    started: float = 0.0
    running: bool = False


def hard_deadline(max_seconds: float | None) -> float | None:
    """Seconds after which a worker still busy with one run is killed: ``train_run`` checks
    ``--max-run-seconds`` between steps, so this only catches a run stuck inside one step or
    in data loading (grace: as long again, at least 30 s)."""
    if max_seconds is None:
        return None
    return max_seconds + max(30.0, max_seconds)


def worker_context() -> Any:
    """Never a plain fork of this process (torch may already run threads here): a fork server
    that imported torch before any thread started, or spawn where there is none (Windows)."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def free_memory_apart(indices: Sequence[int] | None = None) -> list[int]:
    """:func:`~mtl_bench.executors.gpu.free_memory` asked from a child process, so that this
    process (which only hands out runs) holds no CUDA context on any GPU; [] when it fails."""
    try:
        with ProcessPoolExecutor(1, mp_context=worker_context()) as pool:
            return pool.submit(gpu.free_memory, indices).result(timeout=120)
    except Exception:  # the default --jobs then assumes one worker per GPU
        return []


def run_local(configs: Sequence[RunConfig], finish: Finish, jobs: int,
              max_seconds: float | None = None,
              plugins: Sequence[tuple[str, str]] = (), *,
              devices: Sequence[str] | None = None,
              resolve_device: Callable[[str], str] | None = None, seed_batch: int = 1,
              report: Report | None = None) -> None:
    """Run ``configs`` in ``jobs`` worker processes; ``finish`` gets each record in the parent,
    ``report`` (optional) each run's start and epochs as its worker announces them.

    Worker i is bound to ``devices[i]`` when given. With ``seed_batch`` K > 1 a worker trains
    a group of up to K seeds of one config at once (:func:`jobs_of`). A worker that dies
    becomes a failed record for every run it held and is replaced on the same device;
    KeyboardInterrupt (or any error in ``finish``) stops every worker before it propagates.
    """
    ctx = worker_context()
    queue = deque(jobs_of(configs, seed_batch))
    workers: list[_Worker] = []
    deadline = hard_deadline(max_seconds)

    def start(slot: int) -> _Worker:
        device = devices[slot % len(devices)] if devices else None
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_worker_main,
                           args=(child_conn, os.getpid(), list(plugins), device, resolve_device),
                           daemon=True, name="mtl-bench-worker")
        proc.start()
        child_conn.close()
        return _Worker(proc, parent_conn, slot)

    def replace_worker(w: _Worker) -> None:
        _stop(w, force=True)
        if queue:
            workers[workers.index(w)] = start(w.slot)
        else:  # nothing left for a new worker to do
            workers.remove(w)

    try:
        for slot in range(min(jobs, len(queue))):
            workers.append(start(slot))
        while True:
            for w in workers:
                if w.group is None and queue:
                    w.group, w.started, w.running = queue.popleft(), time.monotonic(), False
                    w.conn.send((w.group, max_seconds))
            busy = [w for w in workers if w.group is not None]
            if not busy:
                break
            ready = set(wait_ready([w.conn for w in busy] + [w.process.sentinel for w in busy],
                                   timeout=1.0))
            for w in busy:
                group = w.group
                assert group is not None
                if w.conn in ready or w.process.sentinel in ready:
                    try:
                        kind, payload = w.conn.recv() if w.conn.poll() else (None, None)
                    except (EOFError, OSError):
                        kind, payload = None, None
                    if kind == "started":
                        w.started, w.running = time.monotonic(), True
                        if report is not None:
                            for c in group:
                                report(c, 0, c.epochs)
                        continue
                    if kind == "epoch":
                        parsed = parse_epoch(payload)
                        if report is not None and parsed is not None:
                            for c in group:
                                report(c, *parsed)
                        continue
                    if kind is None:  # the process is gone without an answer
                        w.process.join(timeout=5)
                        reason = death_reason(w.process.exitcode)
                        replace_worker(w)
                        for c in group:
                            finish(c, failed_record(c, reason, time.monotonic() - w.started))
                        continue
                    w.group = None
                    if kind == "user_error":
                        raise UserError(payload)
                    if kind == "error":
                        payload = [failed_record(c, payload, time.monotonic() - w.started,
                                                 failure="error") for c in group]
                    for c, record in zip(group, payload):
                        finish(c, record)
                elif (deadline is not None and w.running
                      and time.monotonic() - w.started > deadline * len(group)):
                    replace_worker(w)
                    for c in group:
                        finish(c, failed_record(
                            c, f"exceeded --max-run-seconds {max_seconds:g}; worker killed "
                               f"after {deadline * len(group):.0f}s",
                            time.monotonic() - w.started, failure="timeout"))
    finally:
        for w in workers:
            _stop(w, force=w.group is not None)


def _stop(w: _Worker, force: bool) -> None:
    """End one worker: politely when idle, SIGTERM (then SIGKILL) when it holds a run."""
    try:
        if not force and w.process.is_alive():
            try:
                w.conn.send(None)
            except OSError:
                force = True
        if force and w.process.is_alive():
            w.process.terminate()
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5)
    finally:
        w.conn.close()
