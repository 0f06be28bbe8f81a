"""Executors: one-way imports, GPU placement and the default --jobs on cuda.

No GPU is needed: the device queries are mocked (``torch.cuda``), and the pool's GPU workers run
on the CPU through ``resolve_device``, which maps every ``cuda:i`` a worker is bound to onto
``cpu`` while the placement, the records' identity and provenance go through the real code.
"""

import ast
import importlib
import pkgutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mtl_bench import executors, registry
from mtl_bench.errors import UserError
from mtl_bench.executors import base, gpu, local
from mtl_bench.executors.dask import DaskExecutor
from mtl_bench.store import RunStore
from mtl_bench.sweep import SweepSpec, execute, expand
from mtl_bench.train import RunConfig

GiB = 2**30
PACKAGE = Path(executors.__file__).parent

SIGKILL = textwrap.dedent("""
    import os, signal
    from mtl_bench.registry import register_strategy
    from mtl_bench.strategy import Strategy

    @register_strategy("test-gpu-sigkill")
    class SigKill(Strategy):
        def combine(self, losses, grads=None):
            os.kill(os.getpid(), signal.SIGKILL)
""")


def _on_cpu(device: str) -> str:
    """The stand-in GPU: every device a worker is bound to is this machine's CPU."""
    return "cpu"


def _fake_gpus(monkeypatch, free: list[int]) -> list[torch.device]:
    """``torch.cuda`` of a machine with ``len(free)`` GPUs; returns the set_device calls."""
    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (free[i], 80 * GiB))
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    return calls


# -- one-way imports ---------------------------------------------------------------------------
def _imported(path: Path) -> set[str]:
    """Every module a file of mtl_bench/executors imports, at any depth (lazy imports too)."""
    package = ["mtl_bench", "executors"]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . (this package), from .. (mtl_bench)
                parts = package[: len(package) - node.level + 1]
                module = ".".join([*parts, node.module] if node.module else parts)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def test_executors_never_import_the_sweep_or_a_command():
    modules = [m.name for m in pkgutil.iter_modules([str(PACKAGE)])]
    assert {"base", "local", "gpu", "dask"} <= set(modules)
    for name in ["mtl_bench.executors", *(f"mtl_bench.executors.{m}" for m in modules)]:
        importlib.import_module(name)
    for path in sorted(PACKAGE.glob("*.py")):
        for module in _imported(path):
            assert not module.startswith(("mtl_bench.sweep", "mtl_bench.commands",
                                          "mtl_bench.cli")), f"{path.name} imports {module}"


def test_dask_module_runs_as_a_script_without_running_twice():
    # docs/sweeps.md: `python -m mtl_bench.executors.dask` runs the worker-environment A/B; a
    # package that imported the module first would make runpy warn and run it twice
    out = subprocess.run([sys.executable, "-W", "error", "-m", "mtl_bench.executors.dask",
                          "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m mtl_bench.executors.dask")


# -- the default --jobs on cuda ----------------------------------------------------------------
@pytest.mark.parametrize(("free", "cores", "jobs"), [
    ([80 * GiB], 16, 4),              # plenty of memory: at most 4 workers per GPU
    ([5 * GiB], 16, 2),               # 5 GiB // 2 GiB per worker
    ([1 * GiB], 16, 1),               # less than one worker's budget: still one
    ([0], 16, 1),                     # free memory unknown: one worker
    ([80 * GiB, 80 * GiB], 16, 8),    # summed over the GPUs
    ([80 * GiB, 5 * GiB], 16, 6),
    ([80 * GiB, 80 * GiB], 6, 6),     # never more workers than cores
    ([], 16, 1),
])
def test_default_gpu_jobs_from_free_memory_and_cores(free, cores, jobs):
    assert gpu.default_gpu_jobs(free, cores) == jobs


def test_default_jobs_reads_free_memory_of_the_gpus_in_use(monkeypatch):
    _fake_gpus(monkeypatch, [80 * GiB, 5 * GiB])
    monkeypatch.setattr(executors, "available_cores", lambda: 16)
    assert gpu.free_memory() == [80 * GiB, 5 * GiB]
    # the real probe asks a child process, where this mock does not reach
    monkeypatch.setattr(executors, "free_memory_apart", gpu.free_memory)
    assert executors.default_jobs("cpu") == 16
    assert executors.default_jobs("cuda") == 4 + 2
    assert executors.default_jobs("cuda:1") == 2  # that GPU only
    assert executors.default_jobs("cuda", "dask") == 1  # Dask workers are not placed
    monkeypatch.setattr(executors, "free_memory_apart", lambda indices=None: [])
    assert executors.default_jobs("cuda") == 2  # not measured: one worker per GPU


def test_free_memory_probe_runs_apart_and_finds_no_gpu_here():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert local.free_memory_apart() == []


# -- placement ---------------------------------------------------------------------------------
def test_workers_are_spread_over_the_gpus_round_robin():
    assert gpu.worker_devices("cuda", 3, 2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert gpu.worker_devices("cuda", 2, 1) == ["cuda:0", "cuda:0"]
    assert gpu.worker_devices("cuda:1", 2, 4) == ["cuda:1", "cuda:1"]
    assert gpu.worker_devices("cpu", 2, 2) is None
    assert gpu.placed_device("cuda", "cuda:1") == "cuda:1"
    assert gpu.placed_device("cuda:0", "cuda:1") == "cuda:0"  # a named device is kept
    assert gpu.placed_device("cpu", "cuda:1") == "cpu"
    assert gpu.placed_device("cuda", None) == "cuda"


def test_make_executor_chooses_process_pool_gpu_workers_or_dask(monkeypatch):
    _fake_gpus(monkeypatch, [80 * GiB, 80 * GiB])
    pool = executors.make_executor("local", 3, "cuda", max_seconds=5.0)
    assert isinstance(pool, local.LocalPool) and isinstance(pool, base.Executor)
    assert list(pool.devices) == ["cuda:0", "cuda:1", "cuda:0"] and pool.max_seconds == 5.0
    assert list(executors.make_executor("local", 2, "cuda:1").devices) == ["cuda:1"] * 2
    assert executors.make_executor("local", 4, "cpu").devices is None
    assert isinstance(executors.make_executor("local", 1, "cuda"), local.InProcess)
    on_dask = executors.make_executor("dask", 2, "cpu", scheduler="tcp://h:8786")
    assert isinstance(on_dask, DaskExecutor) and isinstance(on_dask, base.Executor)
    assert on_dask.scheduler == "tcp://h:8786" and on_dask.jobs == 2
    with pytest.raises(UserError, match="unknown executor 'ray'; choose from: local, dask"):
        executors.make_executor("ray", 2)


def test_bind_sets_the_workers_current_gpu(monkeypatch):
    calls = _fake_gpus(monkeypatch, [80 * GiB, 80 * GiB])
    gpu.bind("cpu")
    gpu.bind("cuda:1")
    assert calls == [torch.device("cuda:1")]

    def broken(device):
        raise RuntimeError("CUDA error: invalid device ordinal")

    monkeypatch.setattr(torch.cuda, "set_device", broken)
    with pytest.raises(UserError, match="a worker cannot use device 'cuda:3': CUDA error"):
        gpu.bind("cuda:3")


# -- GPU workers store what the sequential path stores -----------------------------------------
#: Fields that describe where and how fast a run trained, not what it computed.
PLACEMENT = {"run_id", "config", "provenance", "wall_s", "throughput"}


def test_gpu_workers_store_the_sequential_records(tmp_path, monkeypatch):
    plugin = tmp_path / "sigkill.py"
    plugin.write_text(SIGKILL)
    registry.load_plugin_file(plugin)
    _fake_gpus(monkeypatch, [80 * GiB, 80 * GiB])
    configs = expand(SweepSpec(["clsreg"], ["fixed", "dwa"], [0, 1], {},
                               RunConfig(epochs=2, device="cuda")))
    dying = RunConfig(strategy="test-gpu-sigkill", epochs=1, device="cuda")
    try:
        pool = executors.make_executor("local", 3, "cuda",
                                       plugins=base.plugin_sources([plugin]))
        pool = replace(pool, resolve_device=_on_cpu)
        store = RunStore(tmp_path / "gpu")
        progress = execute([dying, *configs], store, executor=pool, quiet=True)
        died = store.read(store.path_for(dying.task, dying.run_id))
    finally:
        registry.strategies.unregister("test-gpu-sigkill")
    assert progress.done == 5 and progress.failed == 1
    # a worker that dies on its GPU is one failed record with the run's own identity
    assert died["status"] == "failed" and died["failure"] == "worker"
    assert "worker process died from SIGKILL" in died["reason"]
    assert died["config"]["device"] == "cuda"

    # what the sequential path computes for the same runs (on this machine's CPU)
    reference = RunStore(tmp_path / "sequential")
    execute([replace(c, device="cpu") for c in configs], reference, jobs=1, quiet=True)
    devices = []
    for c in configs:
        record = store.read(store.path_for(c.task, c.run_id))
        expected = reference.read(reference.path_for(c.task, replace(c, device="cpu").run_id))
        assert record["status"] == "ok"
        assert record["run_id"] == c.run_id  # the id of device "cuda", as --jobs 1 stores it
        assert record["config"] == c.resolved().to_dict()
        assert record.keys() == expected.keys()
        for key in record.keys() - PLACEMENT:  # exact equality of every metric and weight
            assert record[key] == expected[key], key
        devices.append(record["provenance"]["device"])
    # each of the 3 workers took a run at once: both GPUs were used, nothing else
    assert set(devices) == {"cuda:0", "cuda:1"}
