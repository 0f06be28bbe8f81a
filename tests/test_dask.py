"""The Dask executor on a LocalCluster: same records as local runs, failures become records.

Skipped when the optional extra is not installed (``pip install -e '.[test,dask]'``).
"""

import os
import textwrap

import pytest

pytest.importorskip("distributed")

import dask  # noqa: E402

from mtl_bench import registry  # noqa: E402
from mtl_bench.cli import main  # noqa: E402
from mtl_bench.executors import base  # noqa: E402
from mtl_bench.executors import dask as dask_executor  # noqa: E402
from mtl_bench.store import RunStore  # noqa: E402
from mtl_bench.sweep import SweepSpec, execute, expand  # noqa: E402
from mtl_bench.train import RunConfig  # noqa: E402

CONFIGS = expand(SweepSpec(["clsreg"], ["fixed", "dwa"], [0, 1], {}, RunConfig(epochs=2)))

SIGKILL_PLUGIN = textwrap.dedent("""
    import os, signal
    from mtl_bench.registry import register_strategy
    from mtl_bench.strategy import Strategy

    @register_strategy("test-dask-sigkill")
    class SigKill(Strategy):
        def combine(self, losses, grads=None):
            os.kill(os.getpid(), signal.SIGKILL)
""")


def _env(name):
    return os.environ.get(name)


@pytest.fixture(scope="module")
def cluster():
    # a worker that dies once fails its task at once (the default retries it 3 times)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        c = dask_executor.local_cluster(1)
    yield c
    c.close()


def _rows(store):
    return {r["run_id"]: (r["curves"]["rows"], r["weights"]["values"])
            for r in store.load().records}


def test_local_cluster_gives_the_records_of_local_processes(tmp_path):
    local, on_dask = RunStore(tmp_path / "local"), RunStore(tmp_path / "dask")
    execute(CONFIGS, local, jobs=1, quiet=True)
    progress = execute(CONFIGS, on_dask, jobs=2, quiet=True, executor="dask")
    assert progress.done == 4 and progress.failed == 0
    assert _rows(local) == _rows(on_dask)  # bit-identical floats


def test_scheduler_address_and_worker_environment(cluster, tmp_path):
    from distributed import Client

    store = RunStore(tmp_path / "runs")
    progress = execute(CONFIGS[:2], store, jobs=1, quiet=True, executor="dask",
                       scheduler=cluster.scheduler_address)
    assert progress.done == 2 and progress.failed == 0
    assert len(store.load().records) == 2
    with Client(cluster) as client:
        # MALLOC_TRIM_THRESHOLD_ removed (see WORKER_ENVIRON), dask's one-thread BLAS kept
        assert client.submit(_env, "MALLOC_TRIM_THRESHOLD_", pure=False).result() is None
        assert client.submit(_env, "OMP_NUM_THREADS", pure=False).result() == "1"


def test_dead_worker_becomes_a_failed_record(cluster, tmp_path):
    path = tmp_path / "sigkill.py"
    path.write_text(SIGKILL_PLUGIN)
    registry.load_plugin_file(path)
    store = RunStore(tmp_path / "runs")
    try:
        # alone: with one worker, Dask also fails the tasks queued on the worker that died
        progress = execute([RunConfig(strategy="test-dask-sigkill", epochs=1)], store,
                           quiet=True, executor="dask", scheduler=cluster.scheduler_address,
                           plugins=base.plugin_sources([path]))
    finally:
        registry.strategies.unregister("test-dask-sigkill")
    assert progress.done == 1 and progress.failed == 1
    record = store.load().records[0]
    assert record["status"] == "failed" and record["strategy"] == "test-dask-sigkill"
    assert "KilledWorker" in record["reason"]
    # the nanny restarted the worker: the cluster takes the next sweep
    progress = execute(CONFIGS[:1], store, quiet=True, executor="dask",
                       scheduler=cluster.scheduler_address)
    assert progress.done == 1 and progress.failed == 0


def test_unreachable_scheduler_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dask_executor, "CONNECT_TIMEOUT", "1s")
    code = main(["run", "--strategy", "fixed", "--epochs", "1", "--quiet", "--runs-dir",
                 str(tmp_path / "runs"), "--executor", "dask", "--scheduler",
                 "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: cannot start or reach the Dask scheduler at 'tcp://127.0.0.1:9'")
    assert len(err.strip().splitlines()) == 1
