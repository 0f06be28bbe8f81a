"""GPU workers: which device each worker of the local pool uses, and how many workers share
the GPUs when ``--jobs`` is not given.

Placement. With ``--device cuda`` and k visible GPUs, worker i of the pool is bound to
``cuda:(i % k)`` (round robin, one device per worker, several workers per device when
``--jobs`` exceeds k); with ``--device cuda:N`` every worker is bound to ``cuda:N``. A worker
that dies is replaced on the same device.

Identity. A run trains on its worker's concrete device, but its record keeps the config the
sweep gave it (``device: "cuda"``), so its run id, its stored config and its metrics are
those the sequential path (``--jobs 1``) stores for the same config, and a sweep resumes
whatever ``--jobs`` it ran with. The concrete device goes to ``provenance.device`` only, like
the machine and the thread count: placement, not identity.

Default ``--jobs`` on cuda (:func:`default_gpu_jobs`): per GPU,
``max(1, min(MAX_WORKERS_PER_GPU, free_bytes // RUN_MEMORY_BYTES))`` workers, summed over the
GPUs in use and capped by the cores this process may use (every worker needs a core to launch
its kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from mtl_bench.errors import UserError
from mtl_bench.train import RunConfig, train_run

#: GPU memory budgeted per worker for the default ``--jobs`` on cuda: a CUDA context with its
#: cuBLAS workspace takes about 0.5 GiB per process, and the suite's task pairs keep their data
#: and model on the device (a few hundred MB at most); the rest is room for the allocator cache.
RUN_MEMORY_BYTES = 2 * 2**30
#: Most workers per GPU by default: the suite's small models launch many small kernels, and
#: beyond a few processes the GPU time-slices between them without gaining throughput.
MAX_WORKERS_PER_GPU = 4


def default_gpu_jobs(free_bytes: Sequence[int], cores: int,
                     run_bytes: int = RUN_MEMORY_BYTES,
                     per_gpu: int = MAX_WORKERS_PER_GPU) -> int:
    """Workers for a sweep on ``len(free_bytes)`` GPUs with that much free memory each (bytes)
    and ``cores`` cores: ``min(cores, sum over GPUs of max(1, min(per_gpu, free // run_bytes)))``,
    at least 1. A GPU whose free memory is unknown (0) gets one worker."""
    workers = sum(max(1, min(per_gpu, int(free) // run_bytes)) for free in free_bytes)
    return max(1, min(cores, workers))


def worker_devices(device: str, jobs: int, n_gpus: int) -> list[str] | None:
    """The device each of ``jobs`` workers is bound to: ``cuda:(i % n_gpus)`` for ``cuda``,
    ``cuda:N`` for every worker for ``cuda:N``; None for runs on the CPU."""
    if device == "cuda":
        return [f"cuda:{i % max(n_gpus, 1)}" for i in range(jobs)]
    if device.startswith("cuda:"):
        return [device] * jobs
    return None


def gpu_indices(device: str) -> list[int] | None:
    """The GPUs a sweep on ``device`` uses: None (every visible one) for ``cuda``."""
    return [int(device.partition(":")[2])] if device.startswith("cuda:") else None


def visible_gpus() -> int:
    """GPUs this process may use (``CUDA_VISIBLE_DEVICES`` applies); creates no CUDA context."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def free_memory(indices: Sequence[int] | None = None) -> list[int]:
    """Free bytes on each GPU of ``indices`` (default: every visible one), as the driver
    reports them; [] without CUDA. Creates a CUDA context on each GPU it asks, which holds
    memory for the life of the process: the pool asks from a short-lived child process."""
    if not torch.cuda.is_available():
        return []
    chosen = range(torch.cuda.device_count()) if indices is None else indices
    return [int(torch.cuda.mem_get_info(i)[0]) for i in chosen]


def placed_device(config_device: str, assigned: str | None) -> str:
    """The device a run whose config names ``config_device`` uses in a worker bound to
    ``assigned``: the worker's device for ``cuda``, the config's own device otherwise."""
    return assigned if assigned is not None and config_device == "cuda" else config_device


def bind(device: str) -> None:
    """Make ``device`` this worker's current CUDA device, so that nothing the run does without
    naming a device (a context, a synchronize, memory statistics) lands on ``cuda:0``."""
    if torch.device(device).type != "cuda":
        return
    try:
        torch.cuda.set_device(torch.device(device))
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"a worker cannot use device '{device}': {exc}") from None


def run_placed(group: Sequence[RunConfig], assigned: str | None, max_seconds: float | None,
               resolve_device: Callable[[str], str] | None = None,
               progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train one job on its placed device: a single run, or a group of seeds of one config
    trained as one batch (:func:`mtl_bench.batched.train_seed_batch`, ``--seed-batch``). The
    records keep the configs' identity and come back in the group's order.

    ``resolve_device`` maps the placed device to the one torch is given (default: itself);
    tests map every ``cuda:i`` to ``cpu`` to run the pool's placement on a machine without GPUs.
    ``progress`` gets the run's (or batch's) ``epoch E/N`` after each epoch.
    """
    target = placed_device(group[0].device, assigned)
    actual = resolve_device(target) if resolve_device is not None else target
    placed = [c if actual == c.device else replace(c, device=actual) for c in group]
    if len(placed) == 1:
        records = [train_run(placed[0], progress, max_seconds=max_seconds)]
    else:
        from mtl_bench.batched import train_seed_batch  # torch.func: only when batching

        records = train_seed_batch(placed, progress, max_seconds=max_seconds)
    for config, record in zip(group, records):
        if actual == config.device:
            continue
        # the device is hashed into the run id: restore what the sequential path stores
        record["run_id"] = config.run_id
        record["config"] = {**record["config"], "device": config.device}
        if isinstance(record.get("provenance"), dict):
            record["provenance"] = {**record["provenance"], "device": target}
    return records
