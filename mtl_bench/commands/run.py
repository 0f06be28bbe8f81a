"""``mtl-bench run``: train task pairs under strategies, store one record per run, print a table."""

from __future__ import annotations

import argparse
import sys

from mtl_bench import registry
from mtl_bench.errors import UserError

HELP = "train task pairs under strategies and store run records"


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
    p.add_argument("--task", type=_csv, default=None,
                   help="task pair(s), comma-separated (default: clsreg)")
    p.add_argument("--strategy", type=_csv, default=None,
                   help="strategy(ies), comma-separated (default: every registered strategy)")
    p.add_argument("--seeds", default=None,
                   help="number of seeds (3) or a list (0,5,7); default 1")
    p.add_argument("--profile", default=None,
                   help="preset of tasks/strategies/seeds/epochs: quick or default "
                        "(explicit options override it)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the pair's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="model learning rate")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--weights", type=_weights, default=None,
                   help="weights for the fixed strategy, e.g. 1,0.5 (same as --set "
                        "fixed.weights=1/0.5)")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   metavar="NAME.PARAM=V[,V...]",
                   help="strategy hyper-parameter or task-pair option; several values form a "
                        "grid; list values use '/' (fixed.weights=1/0.5)")
    p.add_argument("--architecture", default="shared", help="shared (hard sharing) or separate")
    p.add_argument("--sampling", default="proportional",
                   help="batch sampling for pairs with one dataset per task: proportional, "
                        "equal or temperature")
    p.add_argument("--single-task", action="store_true",
                   help="also train each task alone (baselines for Delta_m)")
    p.add_argument("--diag-every", type=int, default=0,
                   help="gradient diagnostics every k steps (0: once per epoch)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    p.add_argument("--max-run-seconds", type=float, default=None,
                   help="record a run as failed when it takes longer than this")
    p.add_argument("--runs-dir", default="runs", help="where run records go (default: runs/)")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs stored as failed")
    p.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    p.add_argument("--quiet", action="store_true", help="no per-run progress lines")


def run(args: argparse.Namespace) -> int:
    from mtl_bench.aggregate import terminal_table
    from mtl_bench.profiles import get_profile
    from mtl_bench.store import RunStore
    from mtl_bench.sweep import (
        SweepSpec,
        execute,
        expand,
        needs_run,
        parse_assignments,
        parse_seeds,
        plan,
        validate_all,
    )
    from mtl_bench.train import RunConfig

    profile = get_profile(args.profile) if args.profile else {}
    tasks = args.task or profile.get("tasks") or ["clsreg"]
    strategies = args.strategy or profile.get("strategies") or registry.strategies.names()
    seeds = args.seeds or profile.get("seeds") or "1"
    epochs = args.epochs if args.epochs is not None else profile.get("epochs")
    for t in tasks:
        registry.tasks.get(t)
    for s in strategies:
        registry.strategies.get(s)
    assignments = parse_assignments(args.assignments)
    if args.weights is not None:
        assignments.setdefault("fixed", {})["weights"] = [args.weights]
    if args.jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {args.jobs}")
    base = RunConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay, architecture=args.architecture,
                     sampling=args.sampling, device=args.device, threads=args.threads,
                     diag_every=args.diag_every)
    spec = SweepSpec(tasks, strategies, parse_seeds(seeds), assignments, base,
                     single_task=args.single_task)
    configs = expand(spec)
    validate_all(configs)
    store = RunStore(args.runs_dir)
    planned = plan(configs, store)
    todo = [c for c, st in planned if needs_run(st, args.retry_failed)]

    if args.dry_run:
        for c, st in planned:
            state = "done" if st == "ok" else (st or "to run")
            if st == "failed" and args.retry_failed:
                state = "failed, will rerun"
            print(f"{c.run_id}  {c.task:<22} {c.strategy_label:<28} seed {c.seed:<3} {state}")
        print(f"{len(todo)} to run, {len(planned) - len(todo)} already done "
              f"(records in {store.root}/)")
        return 0

    corrupt = [c for c, st in planned if st == "corrupt"]
    for c in corrupt:
        print(f"note: record {store.path_for(c.task, c.run_id)} is corrupt; rerunning it",
              file=sys.stderr)
    if not args.quiet:
        print(f"{len(todo)} run(s) to do, {len(planned) - len(todo)} already done",
              file=sys.stderr)
    progress = execute(todo, store, jobs=args.jobs, max_seconds=args.max_run_seconds,
                       quiet=args.quiet)
    records = [store.read(store.path_for(c.task, c.run_id)) for c in configs]
    print(terminal_table(records))
    print(f"\n{len(records)} run records in {store.root}/ ({progress.failed} failed this time)")
    return 0


