"""What a sweep shows while it runs: one line per finished run, and in a terminal a live view.

Plain output (a pipe, a CI log, a file) is one line per finished run,
``[done/total] what: status (run time, elapsed, ETA)``, with no control codes; when runs are
long, a line naming the runs in progress follows at most every :data:`HEARTBEAT_S` seconds.
In a terminal the same finished-run lines scroll above a live view (``rich``): an overall bar
of runs done, failures so far, elapsed time and ETA, and one line per active run with its
epoch. Executors report epochs through the ``report`` callback
(:data:`mtl_bench.executors.base.Report`): in this process and from local worker processes per
epoch; Dask only reports finished runs, so its view shows the overall bar alone.

The ETA (:class:`EtaEstimator`) comes from measured run times, not from the elapsed time over
the runs done (which counts worker start-up and, early on, whichever run happened to finish
first): each run still to do is expected to take the mean time of the finished runs of its
task pair and strategy (else of its task pair, else of all), a run in progress the rest of that
(or of what its own epoch pace projects), and the runs left are placed on the workers in queue
order as the executor places them; the ETA is when the last worker finishes.
"""

from __future__ import annotations

import heapq
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from mtl_bench.train import RunConfig

#: Plain output: at most one "still running" line this often (seconds) between finished runs.
HEARTBEAT_S = 60.0
#: Live view: most run lines shown below the bar (the rest are counted on one line).
MAX_RUN_LINES = 12
#: Live view: most redraws per second caused by epoch reports (a timer redraws 4 times a second).
MAX_REDRAWS_PER_S = 20.0
#: Longest queue the ETA places run by run on the workers; a longer one is spread evenly.
MAX_PLACED = 2000


def short_label(c: RunConfig) -> str:
    """``clsreg dwa seed 0``: the label when the sweep gives none."""
    return f"{c.task} {c.strategy_label} seed {c.seed}"


def run_key(c: RunConfig) -> tuple[str, str]:
    """What the ETA groups run times by: the task pair and the strategy with its parameters."""
    return (c.task, c.strategy_label)


def format_seconds(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


Key = tuple[str, str]


@dataclass
class Running:
    """A run in progress as the ETA sees it: seconds since it started, its last epoch, and
    seconds since its first epoch ended (None before; the epochs after the first measure its
    pace without the set-up and warm-up that precede it)."""

    key: Key | None
    elapsed: float
    epoch: int = 0
    epochs: int = 0
    since_first_epoch: float | None = None

    def pace(self) -> float | None:
        """Seconds per epoch, from the epochs after the first (the first also holds the run's
        set-up and, on a fresh worker, its warm-up); None before two epochs ended."""
        if self.epoch >= 2 and self.since_first_epoch is not None:
            return self.since_first_epoch / (self.epoch - 1)
        return None


class EtaEstimator:
    """Seconds left in a sweep, from the measured times of its finished runs.

    A finished run counts its training time (the record's ``wall_s``) plus the smallest
    set-up time seen so far (client-side run time less ``wall_s``: building data and model),
    measured only on runs that did not start a fresh worker (whose first run also pays the
    worker's imports and warm-up once, by far the largest part of a short run). A run to do
    is expected to take the mean of the finished runs of its task pair and strategy, else of
    its task pair, else of all. A run in progress needs the rest of its epochs at its own
    pace once it reported two epochs, else the share of the expected time its epochs left
    make. :meth:`eta` then places the runs left in queue order, each on the worker that frees
    first (as the executors hand them out), and answers when the last worker is done.
    """

    def __init__(self, parallel: int = 1):
        self.parallel = max(int(parallel), 1)
        self._times: dict[Key, list[float]] = {}
        self._setup: float | None = None

    def finished(self, key: Key, wall_s: float, client_s: float | None = None) -> None:
        """Note one finished run: its training time ``wall_s`` and, for a run on a warm
        worker, the seconds from its start to its record as the client saw them ``client_s``."""
        if client_s is not None and client_s >= wall_s >= 0:
            setup = client_s - wall_s
            self._setup = setup if self._setup is None else min(self._setup, setup)
        if wall_s >= 0:
            self._times.setdefault(key, []).append(float(wall_s))

    def expected(self, key: Key | None) -> float | None:
        """Expected seconds of one run with this key; None before any run finished."""
        def mean(values: list[float]) -> float | None:
            return sum(values) / len(values) if values else None

        typical = None
        if key is not None:
            typical = mean(self._times.get(key, []))
            if typical is None:
                typical = mean([t for k, ts in self._times.items() if k[0] == key[0]
                                for t in ts])
        if typical is None:
            typical = mean([t for ts in self._times.values() for t in ts])
        return None if typical is None else typical + (self._setup or 0.0)

    def remaining(self, run: Running) -> float | None:
        """Seconds a run in progress still needs; None when nothing tells yet."""
        left_epochs = max(run.epochs - run.epoch, 0)
        if run.epoch >= 2 and run.since_first_epoch is not None:
            pace = run.pace()
            return None if pace is None else pace * left_epochs
        typical = self.expected(run.key)
        if typical is not None:
            if run.epoch >= 1 and run.epochs > 0:
                return typical * left_epochs / run.epochs
            return max(typical - run.elapsed, 0.0)
        return None

    def eta(self, pending: Sequence[Key | None], active: Sequence[Running] = ()) -> float | None:
        """Seconds until the last run ends. ``pending``: keys of the runs not started, in queue
        order; ``active``: the runs in progress. None when some run has no estimate yet
        (nothing finished and no epoch reported)."""
        if not pending and not active:
            return 0.0
        free = []
        for run in active:
            left = self.remaining(run)
            if left is None:
                whole = self._projected(active)
                if whole is None:
                    return None
                left = max(whole - run.elapsed, 0.0)
            free.append(left)
        free.sort()
        # more runs in progress than workers (a seed group trains as one): the last ones count
        slots = free[-self.parallel:] if len(free) > self.parallel else free
        slots = slots + [0.0] * (self.parallel - len(slots))
        needs: dict[Key | None, float | None] = {}
        for key in set(pending):
            needs[key] = self.expected(key)
            if needs[key] is None:
                needs[key] = self._projected(active)
                if needs[key] is None:
                    return None
        if len(pending) > MAX_PLACED:
            # a long queue: the work spread evenly over the workers (off by one run at most)
            work = sum(slots) + sum(needs[key] or 0.0 for key in pending)
            return max(max(slots), work / self.parallel)
        heapq.heapify(slots)
        end = max(slots)
        for key in pending:
            start = heapq.heappop(slots)
            heapq.heappush(slots, start + (needs[key] or 0.0))
            end = max(end, start + (needs[key] or 0.0))
        return end

    @staticmethod
    def _projected(active: Sequence[Running]) -> float | None:
        """Before any run finished: the mean whole-run time the active runs' paces project
        (seconds per epoch x epochs); None when no run reported two epochs yet."""
        totals = [pace * run.epochs for run in active
                  if run.epochs > 0 and (pace := run.pace()) is not None]
        return sum(totals) / len(totals) if totals else None


@dataclass
class Active:
    """A run in progress as the client sees it: when it started, its last reported epoch and
    when its first epoch ended."""

    config: RunConfig
    started: float
    epoch: int = 0
    epochs: int = 0
    first_epoch_at: float | None = None
    #: started on a worker that had already trained a run (its set-up time is representative)
    warm: bool = False


def _live_capable(stream: TextIO) -> bool:
    """A live view only on a terminal that can move the cursor, and with ``rich`` installed."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    if os.environ.get("TERM", "") == "dumb":
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    """The sweep's progress: counts, failures, finished-run lines and (in a terminal) the live
    view. ``execute`` calls :meth:`begin` with the queue, :meth:`report` as the executor
    reports epochs, :meth:`finished` per record and :meth:`close` on any exit.

    ``label`` names a run in the lines (default :func:`short_label`). ``live``: None decides
    from ``stream`` (a terminal with ``rich``: live view); False keeps plain lines. ``quiet``
    prints nothing but still counts.
    """

    def __init__(self, total: int, quiet: bool = False, stream: TextIO | None = None,
                 label: Callable[[RunConfig], str] | None = None, live: bool | None = None):
        self.total = total
        self.done = 0
        self.failed = 0
        self.failures: list[tuple[RunConfig, str]] = []
        self.quiet = quiet
        self.label = label or short_label
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.estimator = EtaEstimator()
        self.active: dict[str, Active] = {}
        #: the runs not started: run id -> ETA key, in queue order (None: queue not known)
        self.pending: dict[str, Key] | None = None
        self.live = (not quiet) and (_live_capable(self.stream) if live is None else live)
        self._lock = threading.RLock()
        self._view: Any = None
        self._started = 0
        self._last_line = self.start
        self._last_redraw = 0.0

    # -- what execute calls ---------------------------------------------------------------------
    def begin(self, configs: Sequence[RunConfig], parallel: int = 1) -> None:
        """The runs in the order the executor takes them and how many train at once; starts
        the live view in a terminal."""
        with self._lock:
            self.pending = {c.run_id: run_key(c) for c in configs}
            self.estimator.parallel = max(int(parallel), 1)
        if self.live and self._view is None and self.total > 0:
            self._start_view()

    def report(self, config: RunConfig, epoch: int, epochs: int) -> None:
        """An executor's report: ``config`` started (epoch 0) or ended epoch ``epoch`` of
        ``epochs``."""
        now = time.perf_counter()
        with self._lock:
            run = self.active.get(config.run_id)
            if run is None:
                self._started += 1
                run = self.active[config.run_id] = Active(
                    config, now, warm=self._started > self.estimator.parallel)
                self._drop_pending(config)
            # a run that starts may not know its epochs yet (the pair's default): 0 = unknown
            run.epoch, run.epochs = int(epoch or 0), int(epochs or 0)
            if epoch >= 1 and run.first_epoch_at is None:
                run.first_epoch_at = now
        if self.quiet:
            return
        if self._view is not None:
            if now - self._last_redraw >= 1.0 / MAX_REDRAWS_PER_S:
                self._last_redraw = now
                self._view.refresh()
        elif now - self._last_line >= HEARTBEAT_S:
            self._print(self._running_line(now))

    def finished(self, config: RunConfig, record: dict[str, Any]) -> None:
        now = time.perf_counter()
        with self._lock:
            self.done += 1
            ok = record.get("status") == "ok"
            if not ok:
                self.failed += 1
                self.failures.append((config, str(record.get("reason", ""))))
            run = self.active.pop(config.run_id, None)
            self._drop_pending(config)
            wall_s = float(record.get("wall_s") or 0.0)
            self.estimator.finished(run_key(config), wall_s,
                                    now - run.started if run is not None and ok and run.warm
                                    else None)
            eta = self.eta(now)
        if self.quiet:
            return
        elapsed = now - self.start
        status = "ok" if ok else f"FAILED: {record.get('reason', '')}"
        eta_text = "?" if eta is None else f"{eta:.0f}s"
        self._print(f"[{self.done}/{self.total}] {self.label(config)}: {status} "
                    f"({record.get('wall_s', 0):.1f}s, elapsed {elapsed:.0f}s, ETA {eta_text})",
                    failed=not ok)

    def close(self) -> None:
        """Stop the live view (on every exit, Ctrl-C included), leaving the printed lines."""
        view, self._view = self._view, None
        if view is not None:
            view.stop()

    # -- estimates ------------------------------------------------------------------------------
    def eta(self, now: float | None = None) -> float | None:
        """Seconds left (:class:`EtaEstimator`); None before anything can be estimated."""
        now = time.perf_counter() if now is None else now
        with self._lock:
            active = [Running(run_key(r.config), now - r.started, r.epoch, r.epochs,
                              None if r.first_epoch_at is None else now - r.first_epoch_at)
                      for r in self.active.values()]
            if self.pending is not None:
                pending: list[Key | None] = list(self.pending.values())
            else:  # the queue is not known: runs left of unknown kind
                pending = [None] * max(self.total - self.done - len(active), 0)
        return self.estimator.eta(pending, active)

    def _drop_pending(self, config: RunConfig) -> None:
        if self.pending is not None:
            self.pending.pop(config.run_id, None)

    # -- output ---------------------------------------------------------------------------------
    def _print(self, line: str, failed: bool = False) -> None:
        self._last_line = time.perf_counter()
        if self._view is not None:
            from rich.text import Text

            self._view.console.print(Text(line, style="red" if failed else ""), soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def _running_line(self, now: float) -> str:
        with self._lock:
            runs = [f"{self.label(r.config)} epoch {r.epoch}/{r.epochs}"
                    for r in self.active.values()]
        return (f"[{self.done}/{self.total}] running: {'; '.join(runs)} "
                f"(elapsed {now - self.start:.0f}s, ETA {format_seconds(self.eta(now))})")

    def _start_view(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream, highlight=False)
        self._view = Live(console=console, get_renderable=self._render, refresh_per_second=4,
                          transient=True, redirect_stdout=False, redirect_stderr=False)
        self._view.start()

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        now = time.perf_counter()
        with self._lock:
            runs = sorted(self.active.values(), key=lambda r: r.started)
            done, failed, total = self.done, self.failed, self.total
        eta = self.eta(now)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(width=30)
        grid.add_column(no_wrap=True)
        failures = f", [red]{failed} failed[/red]" if failed else ""
        grid.add_row(f"[bold]{done}/{total} runs[/bold]",
                     ProgressBar(total=max(total, 1), completed=done, width=30),
                     f"elapsed {format_seconds(now - self.start)}, "
                     f"ETA {format_seconds(eta)}{failures}")
        for run in runs[:MAX_RUN_LINES]:
            label = Text(f"  {self.label(run.config)}")  # labels may hold [...]
            if run.epochs > 0 and run.epoch > 0:
                grid.add_row(label, ProgressBar(total=run.epochs, completed=run.epoch, width=30),
                             f"epoch {run.epoch}/{run.epochs}, "
                             f"{format_seconds(now - run.started)}")
            else:
                grid.add_row(label, "", f"starting, {format_seconds(now - run.started)}")
        if len(runs) > MAX_RUN_LINES:
            grid.add_row(f"  and {len(runs) - MAX_RUN_LINES} more run(s)", "", "")
        return grid
