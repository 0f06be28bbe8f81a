"""What every executor shares: the protocol the sweep hands runs to, the record of a run that
produced none itself, why a worker died, and the plug-in files that travel to workers.

An executor takes a list of configs and hands each finished run record to ``finish``, in the
client process, in completion order; it never writes a record itself, so the sweep decides
where records go and every write stays atomic. Executors import the layers below them (train,
registry, store formats) and never the sweep or a command.
"""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mtl_bench import registry
from mtl_bench.errors import UserError
from mtl_bench.metrics import get_metric
from mtl_bench.train import SCHEMA_VERSION, RunConfig, build_task_pair, current_code

#: What an executor calls once per run, in the client, with the run's record.
Finish = Callable[[RunConfig, dict[str, Any]], None]
#: What an executor may call, in the client, as a run progresses: (config, epoch, epochs), epoch
#: 0 when the run starts, then after each epoch. Optional: the sweep's live view uses it.
Report = Callable[[RunConfig, int, int], None]


@runtime_checkable
class Executor(Protocol):
    """Runs configs somewhere and hands each record to ``finish`` as it arrives.

    A run that fails (diverges, raises, or whose worker dies) is a failed record, never an
    exception; a :class:`~mtl_bench.errors.UserError` (a config the checks before the sweep
    could not catch) stops the sweep. On any exit, Ctrl-C included, the executor stops what
    it started before the exception propagates.

    ``report`` (optional, :data:`Report`): called in the client when a run starts and after
    each of its epochs, where the executor can tell; an executor may ignore it (Dask does).
    """

    def run(self, configs: Sequence[RunConfig], finish: Finish,
            report: Report | None = None) -> None: ...


def epoch_reporter(group: Sequence[RunConfig],
                   report: Report | None) -> Callable[[str], None] | None:
    """The ``progress`` callback of ``train_run`` (which says ``epoch E/N`` after each epoch)
    turned into :data:`Report` calls for every run of ``group``; None without ``report``."""
    if report is None:
        return None

    def progress(text: str) -> None:
        parsed = parse_epoch(text)
        if parsed is not None:
            for c in group:
                report(c, *parsed)

    return progress


def parse_epoch(text: str) -> tuple[int, int] | None:
    """``epoch 3/10`` -> (3, 10); None for any other progress text."""
    words = text.split()
    if len(words) != 2 or words[0] != "epoch" or "/" not in words[1]:
        return None
    done, _, total = words[1].partition("/")
    try:
        return int(done), int(total)
    except ValueError:
        return None


def failed_record(config: RunConfig, reason: str, wall_s: float = 0.0,
                  failure: str = "worker") -> dict[str, Any]:
    """The record of a run that produced none itself (its worker died or was killed).

    It carries the same keys and the same identity (config, code hashes, tasks) as a failed
    record from ``train_run``, so every later stage reads it like any other failure and a dead
    worker is one failed cell, never a blocked report.
    """
    resolved = config.resolved()
    try:
        pair = build_task_pair(resolved.task, resolved.task_options)
        tasks = [t for t in pair.tasks() if resolved.single_task in (None, t.name)]
    except UserError:
        tasks = []
    return {
        "schema": SCHEMA_VERSION,
        "run_id": resolved.run_id,
        "config": resolved.to_dict(),
        "task_pair": resolved.task,
        "strategy": resolved.strategy_label,
        "seed": resolved.seed,
        "tasks": [{"name": t.name, "kind": t.kind, "metrics": list(t.metrics),
                   "primary": t.primary} for t in tasks],
        "metric_directions": {m: get_metric(m).higher_is_better for t in tasks
                              for m in t.metrics},
        "code": current_code(resolved),
        "status": "failed",
        "failure": failure,
        "reason": reason,
        "wall_s": wall_s,
        "selected_epoch": 0,
        "curves": {"columns": ["epoch", "split", "task", "metric", "value"], "rows": []},
        "weights": {"tasks": [], "steps_per_epoch": 0, "values": []},
        "diagnostics": [],
        "throughput": {},
        "summary": [],
    }


def death_reason(exitcode: int | None) -> str:
    """The failed record's reason for a worker process that ended without an answer; planning
    reads ``worker process ...`` as a worker failure, retried on the next run."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"worker process died from {name}{hint}"
    return f"worker process exited with code {exitcode}"


# -- plug-ins in worker processes --------------------------------------------------------------
def plugin_sources(paths: Sequence[str | Path]) -> list[tuple[str, str]]:
    """(file name, source) of each ``--plugin`` file, to load again inside every worker."""
    return [(Path(p).name, Path(p).read_text()) for p in paths]


_loaded_plugins: set[str] = set()


def ensure_plugins(plugins: Sequence[tuple[str, str]]) -> None:
    """Register plug-in files in this (worker) process once; a Dask worker may have no copy of
    the client's files, so the source travels with the task."""
    for name, source in plugins:
        key = f"{name}:{hash(source)}"
        if key in _loaded_plugins:
            continue
        folder = Path(tempfile.mkdtemp(prefix="mtl-bench-plugin-"))
        path = folder / name
        path.write_text(source)
        registry.load_plugin_file(path)
        _loaded_plugins.add(key)
