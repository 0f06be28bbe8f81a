"""Run a sweep on a Dask distributed cluster (``run --executor dask [--scheduler ADDRESS]``).

Each run is one Dask task that calls :func:`mtl_bench.train.train_run` on a worker and returns
the run record; the client writes every record through the store as it arrives, so workers need
no shared file system and no write access to the results folder. Without a scheduler address a
LocalCluster of ``--jobs`` worker processes with one thread each is started and closed again.

Dask is an optional dependency: ``pip install 'mtl-bench[dask]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mtl_bench.errors import UserError
from mtl_bench.executors.base import Finish, Report, ensure_plugins, failed_record
from mtl_bench.train import RunConfig, train_run

#: Environment of LocalCluster worker processes, set through dask's
#: ``distributed.nanny.pre-spawn-environ``. Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` there by
#: default; setting any trim threshold turns off glibc's adaptive mmap threshold, so tensors
#: above 128 KiB are mapped and unmapped again on every step (about 85 page faults per step
#: instead of about 1 on a batch-256 run; ``python -m mtl_bench.executors.dask`` runs the A/B).
#: The runs are small (a few hundred MB per process at most), so returning freed memory to
#: the OS eagerly buys little: the variable is left unset (``None`` removes it) and glibc's
#: defaults apply.
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


@dataclass
class DaskExecutor:
    """Every run as one Dask task: on the cluster at ``scheduler``, or on a LocalCluster of
    ``jobs`` one-thread worker processes started and closed around the sweep. Progress is
    reported per finished run only: ``report`` is accepted and not called (epochs would need
    a channel from every worker back to the client)."""

    scheduler: str | None = None
    jobs: int = 1
    max_seconds: float | None = None
    plugins: Sequence[tuple[str, str]] = ()

    def run(self, configs: Sequence[RunConfig], finish: Finish,
            report: Report | None = None) -> None:
        run_on_dask(configs, finish, self.scheduler, self.max_seconds, self.jobs, self.plugins)


def run_on_dask(configs: Sequence[RunConfig], finish: Finish,
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


# -- A/B of the worker environment: ``python -m mtl_bench.executors.dask`` --------------------
def _measured_run(config: RunConfig) -> tuple[float, float, str | None]:
    """Train on a worker; CPU ms and minor page faults per step, and the worker's setting.
    CPU time and faults, unlike wall time, barely move when other jobs share the machine."""
    import os
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF)
    record = train_run(config)
    after = resource.getrusage(resource.RUSAGE_SELF)
    steps = max(len(record["weights"]["values"]), 1)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (1000 * cpu / steps, (after.ru_minflt - before.ru_minflt) / steps,
            os.environ.get("MALLOC_TRIM_THRESHOLD_"))


def main(argv: Sequence[str] | None = None) -> int:
    """Interleaved A/B of WORKER_ENVIRON against Dask's default worker environment."""
    import argparse
    import os
    import statistics

    p = argparse.ArgumentParser(prog="python -m mtl_bench.executors.dask",
                                description="A/B of MALLOC_TRIM_THRESHOLD_ on Dask workers")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args(argv)
    dask, distributed = _import_dask()
    default = dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_",
                              65536)
    arms = {"unset (mtl-bench)": local_cluster(1)}
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
                          default}):
        arms[f"dask default ({default})"] = distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR)
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # the nanny also sets it in this process
    configs = {
        "clsreg penguins, batch 32": RunConfig(strategy="fixed", epochs=args.epochs),
        "clsreg synthetic 4000, batch 256": RunConfig(
            strategy="gradnorm", epochs=args.epochs, batch_size=256,
            task_options={"dataset": "synthetic", "n_samples": 4000}),
    }
    clients = {name: distributed.Client(c) for name, c in arms.items()}
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for r in range(args.rounds + 1):
            for cname, config in configs.items():
                for arm, client in clients.items():
                    cpu, faults, env = client.submit(_measured_run, config, pure=False).result()
                    if r == 0:  # warm-up round: imports and first allocations
                        continue
                    samples.setdefault((cname, arm), []).append((cpu, faults))
                    print(f"  {arm:<22} {cname:<34} {cpu:6.2f} CPU ms/step {faults:6.1f} "
                          f"faults/step (worker MALLOC_TRIM_THRESHOLD_={env})", flush=True)
        print(f"median of {args.rounds} interleaved rounds after one warm-up round")
        for cname in configs:
            for arm in clients:
                v = samples[(cname, arm)]
                print(f"{cname:<34} {arm:<22} "
                      f"{statistics.median(c for c, _ in v):6.2f} CPU ms/step "
                      f"{statistics.median(f for _, f in v):6.1f} page faults/step")
    finally:
        for client in clients.values():
            client.close()
        for cluster in arms.values():
            cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
