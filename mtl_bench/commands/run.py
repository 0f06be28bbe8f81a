"""``mtl-bench run``: train task pairs under strategies, store one record per run, print a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mtl_bench import registry
from mtl_bench.errors import UserError

HELP = "train task pairs under strategies and store run records"

#: Run settings with their built-in defaults; each comes from the command line, else the
#: --config file, else the --profile, else this table (None: the task pair's own default).
DEFAULTS: dict[str, Any] = {
    "tasks": ["clsreg"], "strategies": None, "seeds": "1", "epochs": None, "batch_size": None,
    "lr": None, "weight_decay": 0.0, "architecture": "shared", "sampling": "proportional",
    "single_task": False, "diag_every": 0, "tune": None,
}
TUNABLE = ("lr",)
#: sweep.PRELOAD, spelled out because importing mtl_bench.sweep imports torch (a test checks).
WORKER_PRELOAD = ["mtl_bench.train", "mtl_bench.sweep"]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _weights(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expects comma-separated numbers such as 1,0.5; got '{text}'") from None
    if not values or any(v < 0 or v != v or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"must be non-negative finite numbers; got '{text}'")
    if not any(values):
        raise argparse.ArgumentTypeError(f"must not all be zero; got '{text}'")
    return values


_weights.__name__ = "weights"  # argparse names the type in its message


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", dest="tasks", type=_csv, default=None,
                   help="task pair(s), comma-separated (default: clsreg)")
    p.add_argument("--strategy", dest="strategies", type=_csv, default=None,
                   help="strategy(ies), comma-separated (default: every registered strategy)")
    p.add_argument("--seeds", default=None,
                   help="number of seeds (3) or a list (0,5,7); default 1")
    p.add_argument("--profile", default=None,
                   help="preset of tasks/strategies/seeds/epochs: quick or default "
                        "(explicit options override it)")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="sweep settings from a TOML file (schema in docs/sweeps.md); options "
                        "on the command line override it")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the pair's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", default=None, metavar="LR[,LR...]",
                   help="model learning rate; several values form a grid")
    p.add_argument("--tune", default=None, choices=TUNABLE,
                   help="tune the learning rate on validation: run every strategy over an lr "
                        "grid (--lr, or 1/3, 1 and 3 times the default), pick per task pair "
                        "and strategy the lr with the best mean validation score over seeds, "
                        "write tuning.json beside the records")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--weights", type=_weights, default=None,
                   help="weights for the fixed strategy, e.g. 1,0.5 (same as --set "
                        "fixed.weights=1/0.5)")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   metavar="NAME.PARAM=V[,V...]",
                   help="strategy hyper-parameter or task-pair option; several values form a "
                        "grid; list values use '/' (fixed.weights=1/0.5)")
    p.add_argument("--architecture", default=None, help="shared (hard sharing) or separate")
    p.add_argument("--sampling", default=None,
                   help="batch sampling for pairs with one dataset per task: proportional, "
                        "equal or temperature")
    p.add_argument("--single-task", action="store_true", default=None,
                   help="also train each task alone (baselines for Delta_m)")
    p.add_argument("--diag-every", type=int, default=None,
                   help="gradient diagnostics every k steps (0: once per epoch)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs in parallel: worker processes, or Dask workers of a local "
                        "cluster (default: the number of cores; 1 on cuda)")
    p.add_argument("--executor", default=None, choices=("local", "dask"),
                   help="local processes (default) or a Dask cluster (needs mtl-bench[dask])")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (implies --executor "
                        "dask; without it a LocalCluster is started)")
    p.add_argument("--max-run-seconds", type=float, default=None,
                   help="record a run as failed when it takes longer than this")
    p.add_argument("--runs-dir", default="runs", help="where run records go (default: runs/)")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs stored as failed")
    p.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    p.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    p.add_argument("--report", nargs="?", const="reports", default=None, metavar="DIR",
                   help="after the sweep, aggregate the runs folder and write the report to DIR "
                        "(default reports/), as `aggregate` then `report` would")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Command line over --config over --profile over DEFAULTS."""
    from mtl_bench.config_file import load_config
    from mtl_bench.profiles import get_profile
    from mtl_bench.sweep import parse_lrs

    profile = get_profile(args.profile) if args.profile else {}
    config = load_config(args.config) if args.config else {}
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    if "lr" in given:
        given["lr"] = parse_lrs(given["lr"])
    out = dict(DEFAULTS)
    for layer in (profile, config, given):
        out.update({k: v for k, v in layer.items() if k in DEFAULTS and v is not None})
    out["assignments"] = config.get("set", {})
    return out


def _merge_assignments(*layers: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list[Any]]] = {}
    for layer in layers:
        for name, params in layer.items():
            out.setdefault(name, {}).update(params)
    return out


def _display(records: list[dict[str, Any]], with_lr: bool) -> list[dict[str, Any]]:
    """Copies whose strategy label names the lr, so an lr grid shows one row per lr."""
    if not with_lr:
        return records
    return [{**r, "strategy": f"{r['strategy']} lr={r['config']['lr']:g}"} for r in records]


def _start_worker_server(args: argparse.Namespace) -> None:
    """Start the fork server of the local worker processes now, so that its imports (torch)
    overlap with this process's own instead of following them (seconds on a small machine)."""
    import multiprocessing as mp

    if (args.executor or ("dask" if args.scheduler else "local")) != "local" or args.dry_run \
            or args.jobs == 1 or args.device.startswith("cuda") \
            or "forkserver" not in mp.get_all_start_methods():
        return
    from multiprocessing import forkserver

    mp.get_context("forkserver").set_forkserver_preload(WORKER_PRELOAD)
    forkserver.ensure_running()


def run(args: argparse.Namespace) -> int:
    _start_worker_server(args)
    from mtl_bench.display import terminal_table
    from mtl_bench.store import RunStore
    from mtl_bench.sweep import (
        TUNE_LR_FACTORS,
        Progress,
        SweepSpec,
        check_writable,
        default_jobs,
        execute,
        expand,
        needs_run,
        parse_assignments,
        parse_seeds,
        plan,
        plugin_sources,
        tune,
        validate_all,
        write_tuning,
    )
    from mtl_bench.train import RunConfig

    s = _settings(args)
    tasks = s["tasks"]
    strategies = s["strategies"] or registry.strategies.names()
    for t in tasks:
        registry.tasks.get(t)
    for name in strategies:
        registry.strategies.get(name)
    assignments = _merge_assignments(s["assignments"], parse_assignments(args.assignments))
    if args.weights is not None:
        assignments.setdefault("fixed", {})["weights"] = [args.weights]
    if s["tune"] is not None and s["tune"] not in TUNABLE:
        raise UserError(f"--tune: cannot tune '{s['tune']}'; choose from: {', '.join(TUNABLE)}")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {args.jobs}")
    if args.max_run_seconds is not None and not args.max_run_seconds > 0:
        raise UserError(f"--max-run-seconds must be positive, got {args.max_run_seconds:g}")
    executor = args.executor or ("dask" if args.scheduler else "local")
    if args.scheduler and executor != "dask":
        raise UserError("--scheduler needs --executor dask")
    jobs = args.jobs or (1 if args.device.startswith("cuda") else default_jobs())

    lrs: list[float] | None = s["lr"]
    lr_factors = None
    if s["tune"] == "lr" and (lrs is None or len(lrs) == 1):
        lr_factors = TUNE_LR_FACTORS  # around the one lr given, else the pair's default
    base = RunConfig(epochs=s["epochs"], batch_size=s["batch_size"],
                     lr=lrs[0] if lrs and len(lrs) == 1 else None,
                     weight_decay=float(s["weight_decay"]), architecture=s["architecture"],
                     sampling=s["sampling"], device=args.device, threads=args.threads,
                     diag_every=s["diag_every"])
    spec = SweepSpec(tasks, strategies, parse_seeds(s["seeds"]), assignments, base,
                     single_task=bool(s["single_task"]),
                     lrs=lrs if lrs and len(lrs) > 1 else None, lr_factors=lr_factors)
    configs = expand(spec)
    validate_all(configs)
    with_lr = spec.lrs is not None or spec.lr_factors is not None  # an lr grid: show the lr
    store = RunStore(args.runs_dir)
    planned = plan(configs, store)
    todo = [c for c, st in planned if needs_run(st, args.retry_failed)]

    if args.dry_run:
        for c, st in planned:
            state = "done" if st == "ok" else (st or "to run")
            if st == "failed" and args.retry_failed:
                state = "failed, will rerun"
            lr = f" lr {c.resolved().lr:<8g}" if with_lr else ""
            print(f"{c.run_id}  {c.task:<22} {c.strategy_label:<28}{lr} seed {c.seed:<3} {state}")
        print(f"{len(todo)} to run, {len(planned) - len(todo)} already done "
              f"(records in {store.root}/)")
        return 0

    if todo and executor == "dask":
        from mtl_bench.dask_executor import require_dask

        require_dask()
    if todo:
        check_writable(store)
    for c, st in planned:
        if st == "corrupt":
            print(f"note: record {store.path_for(c.task, c.run_id)} is corrupt; rerunning it",
                  file=sys.stderr)
    if not args.quiet:
        where = (f"Dask scheduler {args.scheduler}" if args.scheduler else
                 f"a local Dask cluster of {jobs} worker(s)" if executor == "dask" else
                 f"{min(jobs, max(len(todo), 1))} process(es)")
        print(f"{len(todo)} run(s) to do, {len(planned) - len(todo)} already done"
              + (f"; running on {where}" if todo else ""), file=sys.stderr)
    progress = Progress(len(todo), args.quiet, with_lr=with_lr)
    execute(todo, store, jobs=jobs, max_seconds=args.max_run_seconds, executor=executor,
            scheduler=args.scheduler, plugins=plugin_sources(getattr(args, "plugin", [])),
            progress=progress)

    records = []
    for c in configs:
        try:
            records.append(store.read(store.path_for(c.task, c.run_id)))
        except ValueError as exc:
            print(f"note: record of {c.task} {c.strategy_label} seed {c.seed} not readable: "
                  f"{exc}", file=sys.stderr)
    shown = records
    if s["tune"] is not None:
        tuning = tune(records)
        path = write_tuning(store, tuning)
        chosen = set(tuning["chosen_run_ids"])
        shown = [r for r in records if r["run_id"] in chosen]
        print(f"learning rate chosen on validation (mean over {len(spec.seeds)} seed(s)); "
              f"details in {path}")
        for g in tuning["groups"]:
            grid_text = ", ".join(
                f"{c['lr']:g}: " + ("failed" if c["score"] is None else f"{c['score']:.4f}")
                for c in g["candidates"])
            name = g["strategy"] + (f"[{g['single_task']}]" if g["single_task"] else "")
            chosen_lr = "none (every lr failed)" if g["chosen_lr"] is None else \
                f"{g['chosen_lr']:g}"
            edge = "  [edge of the grid]" if g["at_edge"] else ""
            print(f"  {g['task_pair']:<22} {name:<28} lr {chosen_lr}   (score {grid_text})"
                  + edge)
        with_lr = False
    print(terminal_table(_display(shown, with_lr)))
    n_failed = sum(r.get("status") != "ok" for r in records)
    print(f"\n{len(records)} run records in {store.root}/: {len(records) - n_failed} ok, "
          f"{n_failed} failed ({progress.failed} of {len(todo)} run(s) failed in this sweep)")
    if args.report is not None:
        _report(store.root, Path(args.report), args.quiet)
    return 0


def _report(runs_dir: Path, out: Path, quiet: bool) -> None:
    """The aggregate and report stages over the whole runs folder; a problem there (e.g. records
    that are not comparable) is reported but does not undo the finished sweep."""
    from mtl_bench.commands.aggregate import aggregate_to
    from mtl_bench.report import write_report

    try:
        tables = aggregate_to(runs_dir, out / "tables", "t", 0.95, 0.05, quiet)
        files = write_report(tables, out)
    except UserError as exc:
        print(f"note: no report written: {exc}", file=sys.stderr)
        return
    print(f"report: {files.html} ({files.markdown})")
