"""Executors: where the runs of a sweep train. The sweep builds one with :func:`make_executor`
and hands it the runs (:class:`~mtl_bench.executors.base.Executor`); executors never import
the sweep or a command back.

- ``base``: the protocol, the ``Finish`` callback, ``failed_record``, worker death reasons and
  the plug-in files that travel to workers;
- ``local``: runs in this process, or in a pool of worker processes (``--jobs N``);
- ``gpu``: device placement of pool workers and the default ``--jobs`` on cuda;
- ``dask``: a Dask cluster (``--executor dask``, optional extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mtl_bench.errors import UserError
from mtl_bench.executors import gpu
from mtl_bench.executors.base import Executor, Finish, failed_record
from mtl_bench.executors.local import InProcess, LocalPool, free_memory_apart

__all__ = ["EXECUTORS", "Executor", "Finish", "InProcess", "LocalPool", "available_cores",
           "default_jobs", "failed_record", "make_executor"]

EXECUTORS = ("local", "dask")


def make_executor(name: str, jobs: int, device: str = "cpu", max_seconds: float | None = None,
                  plugins: Sequence[tuple[str, str]] = (),
                  scheduler: str | None = None, seed_batch: int = 1) -> Executor:
    """``local`` with ``jobs`` 1: this process; more: a pool of worker processes, each bound
    to a GPU when ``device`` is ``cuda`` (round robin over the visible GPUs) or ``cuda:N``;
    ``dask``: one task per run on a cluster (``scheduler``) or a LocalCluster of ``jobs``.
    ``seed_batch`` K > 1 (local only) trains up to K seeds of one config as one batch."""
    if name == "dask":
        if seed_batch > 1:
            raise UserError("--seed-batch trains seed groups on local workers; with "
                            "--executor dask each run is its own task (drop --seed-batch)")
        # imported here: `python -m mtl_bench.executors.dask` must find the module not yet run
        from mtl_bench.executors.dask import DaskExecutor

        return DaskExecutor(scheduler, jobs, max_seconds, plugins)
    if name != "local":
        raise UserError(f"unknown executor '{name}'; choose from: {', '.join(EXECUTORS)}")
    if jobs <= 1:
        return InProcess(max_seconds, seed_batch)
    n_gpus = gpu.visible_gpus() if device == "cuda" else 0
    return LocalPool(jobs, max_seconds, plugins, gpu.worker_devices(device, jobs, n_gpus),
                     seed_batch=seed_batch)


def available_cores() -> int:
    """The cores this process may use (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_jobs(device: str = "cpu", executor: str = "local") -> int:
    """``--jobs`` when not given: one per core on the CPU; on cuda with local workers,
    :func:`~mtl_bench.executors.gpu.default_gpu_jobs` of the free memory of the GPUs in use
    (asked from a child process); 1 for a Dask LocalCluster on cuda, whose workers are not
    placed on GPUs."""
    cores = available_cores()
    if not device.startswith("cuda"):
        return cores
    if executor != "local":
        return 1
    indices = gpu.gpu_indices(device)
    free = free_memory_apart(indices)
    if not free:  # not measured: one worker per GPU
        free = [0] * (len(indices) if indices is not None else max(gpu.visible_gpus(), 1))
    return gpu.default_gpu_jobs(free, cores)
