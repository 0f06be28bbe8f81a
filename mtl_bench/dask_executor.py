"""Run a sweep on a Dask distributed cluster (``run --executor dask [--scheduler ADDRESS]``).

Each run is one Dask task that calls :func:`mtl_bench.train.train_run` on a worker and returns
the run record; the client writes every record through the store as it arrives, so workers need
no shared file system and no write access to the results folder. Without a scheduler address a
LocalCluster of ``--jobs`` worker processes with one thread each is started and closed again.

Dask is an optional dependency: ``pip install 'mtl-bench[dask]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from mtl_bench.errors import UserError
from mtl_bench.train import RunConfig

#: Environment of LocalCluster worker processes, set through dask's
#: ``distributed.nanny.pre-spawn-environ``. Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` there by
#: default; setting any trim threshold turns off glibc's adaptive mmap threshold, so every
#: tensor above 128 KiB is mmap'ed and unmapped again on each step. On small torch runs that
#: cost about half the throughput (see docs/sweeps.md for the A/B), so the variable is left
#: unset (``None`` removes it) and glibc's defaults apply.
WORKER_ENVIRON: dict[str, Any] = {"MALLOC_TRIM_THRESHOLD_": None}

#: How long the client tries to reach a scheduler given with --scheduler.
CONNECT_TIMEOUT = "20s"

MISSING = ("--executor dask needs the optional 'dask' extra: "
           "pip install 'mtl-bench[dask]'")


def require_dask() -> None:
    """Fail with the one-line message naming the extra when Dask is not installed."""
    _import_dask()


def _import_dask():
    try:
        import dask
        import distributed
    except ImportError:
        raise UserError(MISSING) from None
    return dask, distributed


def dask_task(config: RunConfig, max_seconds: float | None,
              plugins: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """What a Dask worker runs: register the client's plug-in files, train, return the record."""
    from mtl_bench.sweep import ensure_plugins
    from mtl_bench.train import train_run

    ensure_plugins(plugins)
    return train_run(config, max_seconds=max_seconds)


def local_cluster(n_workers: int) -> Any:
    """A LocalCluster of ``n_workers`` processes, one thread each, with WORKER_ENVIRON."""
    dask, distributed = _import_dask()
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v
                          for k, v in WORKER_ENVIRON.items()}):
        return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                        processes=True, dashboard_address=None,
                                        silence_logs=logging.ERROR)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def run_on_dask(configs: Sequence[RunConfig],
                finish: Callable[[RunConfig, dict[str, Any]], None],
                scheduler: str | None, max_seconds: float | None, jobs: int,
                plugins: Sequence[tuple[str, str]] = ()) -> None:
    """Submit every config, hand each record to ``finish`` in completion order.

    A task that raises, or whose worker dies more often than the scheduler allows
    (``KilledWorker``), becomes a failed record; a UserError raised on a worker (a config the
    checks before the sweep could not catch) stops the sweep as it would locally. On any exit
    (Ctrl-C included) the remaining tasks are cancelled and a LocalCluster is closed.
    """
    if not configs:
        return
    dask, distributed = _import_dask()
    from mtl_bench.sweep import failed_record

    cluster = None
    try:
        if scheduler:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        else:
            cluster = local_cluster(max(1, min(jobs, len(configs))))
            client = distributed.Client(cluster)
    except Exception as exc:
        if cluster is not None:
            cluster.close()
        where = f"the Dask scheduler at '{scheduler}'" if scheduler else "a Dask LocalCluster"
        raise UserError(f"cannot start or reach {where}: {_one_line(exc)}") from None
    futures: dict[Any, RunConfig] = {}
    try:
        for c in configs:
            fut = client.submit(dask_task, c, max_seconds, list(plugins), pure=False)
            futures[fut] = c
        for fut in distributed.as_completed(list(futures)):
            config = futures.pop(fut)
            try:
                record = fut.result()
            except UserError:
                raise
            except Exception as exc:
                record = failed_record(config, f"Dask task failed: {_one_line(exc)}")
            finish(config, record)
    finally:
        if futures:
            client.cancel(list(futures))
        client.close()
        if cluster is not None:
            cluster.close()
