"""``mtl-bench run``: train task pairs under strategies, store one record per run, print a table."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Any

from mtl_bench import registry
from mtl_bench.commands.options import device_arg
from mtl_bench.errors import OutputError, UserError
from mtl_bench.profiles import PROFILES
from mtl_bench.selection import SELECT_RULES

HELP = "train task pairs under strategies and store run records"

#: Run settings with their built-in defaults; each comes from the command line, else the
#: --config file, else the --profile, else this table (None: the task pair's own default).
DEFAULTS: dict[str, Any] = {
    "tasks": ["clsreg"], "strategies": None, "seeds": "1", "epochs": None, "batch_size": None,
    "lr": None, "weight_decay": 0.0, "architecture": "shared", "sampling": "proportional",
    "single_task": False, "diag_every": 0, "tune": None, "select": "primary",
}
#: executors.local.PRELOAD, spelled out because importing mtl_bench.executors imports torch (a
#: test checks).
WORKER_PRELOAD = ["mtl_bench.train", "mtl_bench.executors.local"]


def _csv(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:  # '' or ',' would otherwise run nothing, or (--strategy) every strategy
        raise argparse.ArgumentTypeError(f"expects at least one name, got '{text}'")
    return names


def _setting(key: str):
    """argparse type of a numeric run setting, with the range ``--config`` files get too."""
    from mtl_bench.config_file import SETTING_RANGES

    ok, requirement = SETTING_RANGES[key]
    cast = float if key == "weight_decay" else int

    def parse(text: str) -> int | float:
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got '{text}'")
        return value

    parse.__name__ = key
    return parse


#: task.SAMPLING_POLICIES, spelled out because importing mtl_bench.task imports torch (a test
#: checks that the two agree).
SAMPLING_CHOICES = ("proportional", "equal", "temperature")
#: Run settings that take a comma-separated list; each value is a setting of its own
#: (sweep.SETTING_GRID_FIELDS; the learning rate is a grid to select over instead).
LIST_SETTINGS = ("architecture", "sampling", "epochs", "batch_size", "weight_decay")


def _items(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expects a value or a comma-separated list of values, "
                                         f"got '{text}'")
    return items


def _list_of(parse_item: Any, name: str):
    """argparse type of a list-valued option: ``2,4`` -> [parse(2), parse(4)]; an invalid item
    is named in the one-line error."""

    def parse(text: str) -> list[Any]:
        return [parse_item(item) for item in _items(text)]

    parse.__name__ = name
    return parse


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects whole numbers such as 2 or 2,4; got '{text}'"
                                         ) from None


def _sampling(text: str) -> str:
    if text not in SAMPLING_CHOICES:
        raise argparse.ArgumentTypeError(f"unknown sampling policy '{text}'; choose from: "
                                         + ", ".join(SAMPLING_CHOICES))
    return text


def split_architectures(text: str) -> list[str]:
    """``shared,separate`` -> ['shared', 'separate']. An item holding ``=`` is a parameter of
    the architecture before it, so ``dselect-k:experts=8,k=2,shared`` is two architectures:
    ``dselect-k:experts=8,k=2`` and ``shared``."""
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            raise UserError(f"--architecture expects NAME[:key=value,...] or a comma-separated "
                            f"list of them, got '{text}'")
        if "=" in item and ":" not in item and out:
            out[-1] += "," + item
        else:
            out.append(item)
    return out


def _as_list(key: str, value: Any) -> list[Any]:
    """A run setting as the list of its values (a --config file or profile gives one)."""
    if isinstance(value, list):
        return value
    if key == "architecture" and isinstance(value, str):
        return split_architectures(value)
    return [value]


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


def _seed_batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SEED_BATCH:
        raise argparse.ArgumentTypeError(
            f"expects a whole number of seeds from 1 to {MAX_SEED_BATCH}, got '{text}'")
    return value


_seed_batch.__name__ = "seed batch"
#: Larger groups gain nothing on one device and keep K copies of the data's index tensors.
MAX_SEED_BATCH = 256


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", dest="tasks", type=_csv, default=None, metavar="PAIR[,PAIR...]",
                   help="task pair(s), comma-separated (default: clsreg; names: `mtl-bench "
                        "list`)")
    p.add_argument("--strategy", dest="strategies", type=_csv, default=None,
                   metavar="NAME[,NAME...]",
                   help="strategy(ies), comma-separated (default: every registered strategy "
                        "that can run on the architecture; names: `mtl-bench list`)")
    p.add_argument("--seeds", default=None, metavar="N|S,S...",
                   help="number of seeds (3: seeds 0, 1, 2) or a list (0,5,7); default 1")
    p.add_argument("--profile", default=None, choices=tuple(PROFILES),
                   help="preset of tasks/strategies/seeds/epochs: "
                        + " or ".join(PROFILES) + " (explicit options override it)")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="sweep settings from a TOML file (schema in docs/sweeps.md); options "
                        "on the command line override it")
    p.add_argument("--epochs", type=_list_of(_whole_number, "epochs"), default=None,
                   metavar="E[,E...]",
                   help="epochs (default: the pair's); several values form a grid, each a "
                        "setting of its own")
    p.add_argument("--batch-size", type=_list_of(_whole_number, "batch size"), default=None,
                   metavar="B[,B...]",
                   help="mini-batch size (default: the pair's); several values form a grid, "
                        "each a setting of its own")
    p.add_argument("--lr", default=None, metavar="LR[,LR...]",
                   help="model learning rate (default: the pair's); several values form a grid "
                        "of points to compare, or to select from with --tune lr")
    p.add_argument("--tune", default=None, metavar="lr[,NAME.PARAM...]",
                   help="grid fields to select on validation instead of reporting side by "
                        "side: lr (grid from --lr, else 1/3, 1 and 3 times the default) and "
                        "strategy hyper-parameters given a --set grid (gradnorm.alpha); per "
                        "setting and strategy the point with the best mean validation score "
                        "is reported (recorded in tuning.json; docs/sweeps.md)")
    p.add_argument("--select", default=None, choices=SELECT_RULES,
                   help="model selection rule, the same for every run: primary (default: mean "
                        "over tasks of the fraction of the gap to the ideal primary metric "
                        "closed on validation), loss (validation losses relative to epoch 0) "
                        "or last (the last epoch); docs/report.md")
    p.add_argument("--weight-decay", type=_list_of(_setting("weight_decay"), "weight_decay"),
                   default=None, metavar="WD[,WD...]",
                   help="L2 weight decay of the model optimiser (default 0); several values "
                        "form a grid, each a setting of its own")
    p.add_argument("--weights", type=_weights, default=None, metavar="W,W[,W...]",
                   help="weights for the fixed strategy, e.g. 1,0.5 (same as --set "
                        "fixed.weights=1/0.5)")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   metavar="NAME.PARAM=V[,V...]",
                   help="strategy hyper-parameter or task-pair option; several values form a "
                        "grid; list values use '/' (fixed.weights=1/0.5)")
    from mtl_bench.architecture_spec import architectures_help
    p.add_argument("--architecture", default=None, metavar="NAME[:KEY=VALUE,...][,...]",
                   help="architecture(s), each with its keys and their defaults (default: "
                        "shared, hard sharing): " + architectures_help() + "; several form a "
                        "grid (docs/tasks.md#architectures)")
    p.add_argument("--sampling", type=_list_of(_sampling, "sampling"), default=None,
                   metavar="POLICY[,POLICY...]",
                   help="batch sampling for pairs with one dataset per task: "
                        + ", ".join(SAMPLING_CHOICES) + " (default proportional); several "
                        "values form a grid, each a setting of its own")
    p.add_argument("--single-task", action="store_true", default=None,
                   help="also train each task alone (baselines for Delta_m)")
    p.add_argument("--diag-every", type=_setting("diag_every"), default=None,
                   help="gradient diagnostics every k steps (0: once per epoch)")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="on cuda, replay each training step from a captured CUDA graph where "
                        "the strategy allows it (same results, less launch overhead); other "
                        "runs step eagerly, with a note in their record")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs in parallel: worker processes (on cuda sharing the GPUs, "
                        "spread over them with --device cuda), or Dask workers of a local "
                        "cluster (default: the number of cores; on cuda from free GPU memory "
                        "and cores, docs/sweeps.md)")
    p.add_argument("--seed-batch", type=_seed_batch, default=1, metavar="K",
                   help="train up to K seeds of one config as one vectorised model (records "
                        "equal to separate runs within float tolerance; strategies that cannot "
                        "be batched run one by one with a note; docs/sweeps.md)")
    p.add_argument("--executor", default=None, choices=("local", "dask"),
                   help="local processes (default) or a Dask cluster (needs mtl-bench[dask])")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (implies --executor "
                        "dask; without it a LocalCluster is started)")
    p.add_argument("--max-run-seconds", type=float, default=None,
                   help="record a run as failed when it takes longer than this")
    p.add_argument("--runs-dir", default="runs", help="where run records go (default: runs/)")
    p.add_argument("--keep-stale", action="store_true",
                   help="keep stored runs trained with other strategy, task-pair or harness "
                        "code instead of retraining them (they are left out of the table)")
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
    # A file's [set.NAME] for a strategy or task pair that this sweep leaves out (a narrower
    # --strategy/--task on the command line) is ignored; a --set for one is an error (expand).
    chosen = set(out["tasks"]) | set(out["strategies"] or registry.strategies.names())
    registered = {*registry.tasks.names(), *registry.strategies.names()}
    out["assignments"] = {name: params for name, params in config.get("set", {}).items()
                          if name in chosen or name not in registered}
    for key in LIST_SETTINGS:
        out[key] = list(dict.fromkeys(_as_list(key, out[key])))
    out["weight_decay"] = [float(v) for v in out["weight_decay"]]
    return out


def _merge_assignments(*layers: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list[Any]]] = {}
    for layer in layers:
        for name, params in layer.items():
            out.setdefault(name, {}).update(params)
    return out


def _plan_counts(planned: list[Any]) -> str:
    """``3 new, 2 stale, 4 done`` from the states of a plan."""
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.state] = counts.get(p.state, 0) + 1
    order = ("new", "stale", "retry", "corrupt", "failed", "done")
    return ", ".join(f"{counts[k]} {'failed, kept' if k == 'failed' else k}" for k in order
                     if counts.get(k))


def _start_worker_server(args: argparse.Namespace) -> None:
    """Start the fork server of the local worker processes now, so that its imports (torch)
    overlap with this process's own instead of following them (seconds on a small machine)."""
    import multiprocessing as mp

    if (args.executor or ("dask" if args.scheduler else "local")) != "local" or args.dry_run \
            or args.jobs == 1 or "forkserver" not in mp.get_all_start_methods():
        return
    from multiprocessing import forkserver

    mp.get_context("forkserver").set_forkserver_preload(WORKER_PRELOAD)
    forkserver.ensure_running()


def run(args: argparse.Namespace) -> int:
    _start_worker_server(args)
    from mtl_bench.display import terminal_table
    from mtl_bench.executors import default_jobs
    from mtl_bench.executors.base import plugin_sources
    from mtl_bench.store import RunStore
    from mtl_bench.sweep import (
        TUNE_LR_FACTORS,
        Progress,
        SweepSpec,
        check_writable,
        execute,
        expand,
        method_text,
        parse_assignments,
        parse_seeds,
        plan,
        setting_text,
        validate_all,
    )
    from mtl_bench.train import RunConfig
    from mtl_bench.tuning import LR, parse_tuned, read_spec, write_spec

    s = _settings(args)
    tasks = s["tasks"]
    strategies = s["strategies"] or registry.strategies.names()
    for t in tasks:
        registry.tasks.get(t)
    for name in strategies:
        registry.strategies.get(name)
    assignments = _merge_assignments(s["assignments"], parse_assignments(args.assignments))
    if args.weights is not None:
        if "fixed" not in strategies:
            raise UserError("--weights sets the weights of strategy 'fixed', which is not in "
                            f"this sweep (--strategy {','.join(strategies)})")
        assignments.setdefault("fixed", {})["weights"] = [args.weights]
    tuned = parse_tuned(str(s["tune"]).split(",")) if s["tune"] is not None else []
    for item in tuned:
        if item == LR:
            continue
        name, param = item.split(".", 1)
        if name not in strategies:
            raise UserError(f"--tune {item}: strategy '{name}' is not in this sweep "
                            f"(--strategy {','.join(strategies)})")
        if len(assignments.get(name, {}).get(param, [])) < 2:
            raise UserError(f"--tune {item} needs a grid to choose from, e.g. "
                            f"--set {name}.{param}=V1,V2")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {args.jobs}")
    if args.max_run_seconds is not None and not args.max_run_seconds > 0:
        raise UserError(f"--max-run-seconds must be positive, got {args.max_run_seconds:g}")
    executor = args.executor or ("dask" if args.scheduler else "local")
    if args.scheduler and executor != "dask":
        raise UserError("--scheduler needs --executor dask")

    lrs: list[float] | None = s["lr"]
    lr_factors = None
    if LR in tuned and (lrs is None or len(lrs) == 1):
        lr_factors = TUNE_LR_FACTORS  # around the one lr given, else the pair's default
    base = RunConfig(epochs=s["epochs"][0], batch_size=s["batch_size"][0],
                     lr=lrs[0] if lrs and len(lrs) == 1 else None,
                     weight_decay=s["weight_decay"][0], architecture=s["architecture"][0],
                     sampling=s["sampling"][0], device=args.device, threads=args.threads,
                     diag_every=s["diag_every"], select=s["select"],
                     cuda_graph=args.cuda_graph)
    # options given as lists form a grid of settings (run --sampling equal,temperature)
    setting_grid = {k: s[k] for k in LIST_SETTINGS if len(s[k]) > 1}
    spec = SweepSpec(tasks, strategies, parse_seeds(s["seeds"]), assignments, base,
                     single_task=bool(s["single_task"]),
                     lrs=lrs if lrs and len(lrs) > 1 else None, lr_factors=lr_factors,
                     settings=setting_grid)
    configs = expand(spec)
    if s["strategies"] is None:  # "every strategy": only those that can run on the setting
        configs = _runnable(configs)
    validate_all(configs)
    with_lr = spec.lrs is not None or spec.lr_factors is not None  # an lr grid: show the lr
    store = RunStore(args.runs_dir)
    planned = plan(configs, store, args.retry_failed, args.keep_stale)
    todo = [p.config for p in planned if p.todo]
    counts = _plan_counts(planned)

    if args.dry_run:
        width = max((len(setting_text(c, setting_grid)) for c in configs), default=0)
        for p in planned:
            c = p.config
            lr = f" lr {c.resolved().lr:<8g}" if with_lr else ""
            setting = f" {setting_text(c, setting_grid):<{width}}" if setting_grid else ""
            print(f"{c.run_id}  {c.task:<22}{setting} {method_text(c):<28}{lr} "
                  f"seed {c.seed:<3} {p.describe()}")
        print(f"{len(todo)} to run ({counts}); records in {store.root}/")
        return 0
    jobs = args.jobs or (default_jobs(args.device, executor) if todo else 1)

    if todo and executor == "dask":
        from mtl_bench.executors.dask import require_dask

        require_dask()
    if todo:
        check_writable(store)
        if args.report is not None:
            _check_report_folder(Path(args.report))
    for p in planned:
        if p.state == "corrupt":
            print(f"note: record {store.path_for(p.config.task, p.config.run_id)} is corrupt; "
                  "rerunning it", file=sys.stderr)
    stale = [p for p in planned if p.state == "stale"]
    if stale:
        why = sorted({p.reason for p in stale})
        print(f"note: {len(stale)} stored record(s) were trained with other code ("
              f"{'; '.join(why)}): " + ("kept (--keep-stale); they are left out of the table "
                                        "below" if args.keep_stale else
                                        "retraining them (--keep-stale keeps them)"),
              file=sys.stderr)
    kept_failed = [p for p in planned if p.state == "failed" and not p.todo]
    if kept_failed:
        print(f"note: {len(kept_failed)} run(s) failed before for a reason that would repeat "
              "(divergence or an error); kept as failed (--retry-failed reruns them)",
              file=sys.stderr)
    if tuned and todo:
        check_writable(store)
    if tuned:
        write_spec(store.root, tuned)  # aggregate and report read the tuned fields from here
    if not args.quiet:
        where = (f"Dask scheduler {args.scheduler}" if args.scheduler else
                 f"a local Dask cluster of {jobs} worker(s)" if executor == "dask" else
                 f"{min(jobs, max(len(todo), 1))} process(es)")
        print(f"{len(todo)} run(s) to do ({counts})"
              + (f"; running on {where}" if todo else ""), file=sys.stderr)
    progress = Progress(len(todo), args.quiet, with_lr=with_lr)
    execute(todo, store, jobs=jobs, max_seconds=args.max_run_seconds, executor=executor,
            scheduler=args.scheduler, plugins=plugin_sources(getattr(args, "plugin", [])),
            progress=progress, seed_batch=args.seed_batch)

    records = []
    for c in configs:
        try:
            records.append(store.read(store.path_for(c.task, c.run_id)))
        except ValueError as exc:
            print(f"note: record of {c.task} {c.strategy_label} seed {c.seed} not readable: "
                  f"{exc}", file=sys.stderr)
    # the table never mixes code versions: records kept stale (--keep-stale) are not shown
    kept_stale = {p.config.run_id for p in planned if p.state == "stale" and not p.todo}
    shown = [r for r in records if r["run_id"] not in kept_stale]
    if shown:
        print(terminal_table(shown, list(dict.fromkeys([*read_spec(store.root), *tuned]))))
    print("\n" + _end_line(store, records, len(todo), progress.failed))
    if args.report is not None:
        _report(store.root, Path(args.report), args.quiet, records, args.device, args.threads,
                plugin_sources(getattr(args, "plugin", [])))
    return 0


def _runnable(configs: list[Any]) -> list[Any]:
    """Without --strategy a sweep runs every registered strategy that can run on each setting:
    one that needs task gradients is left out where the architecture has none to give (e.g.
    ``separate``), and one that needs the shared representation where the pair gives each
    task its own dataset (e.g. ``clsreg-2sets``), with a note, instead of failing the sweep."""
    from mtl_bench.architectures import check_gradient_source
    from mtl_bench.train import build_strategy, check_shared_inputs

    verdicts: dict[str, str | None] = {}
    left_out: dict[str, set[str]] = {}
    keep = []
    for c in configs:
        key = repr((c.strategy, sorted(c.strategy_params.items()), c.architecture, c.task,
                    sorted(c.task_options.items())))
        if key not in verdicts:
            strategy = build_strategy(c.strategy, c.strategy_params)  # bad parameters: an error
            verdicts[key] = None
            try:
                check_gradient_source(c.architecture, strategy)
            except UserError:
                verdicts[key] = (f"task gradients that the '{c.architecture}' architecture "
                                 "cannot give")
            else:
                try:
                    check_shared_inputs(c, strategy)
                except UserError:
                    verdicts[key] = (f"the shared representation, which '{c.task}' lacks (each "
                                     "task has its own dataset)")
        if verdicts[key] is None or c.single_task is not None:
            keep.append(c)
        else:
            left_out.setdefault(verdicts[key], set()).add(c.strategy_label)
    for why, labels in left_out.items():
        who = "1 strategy needs" if len(labels) == 1 else f"{len(labels)} strategies need"
        print(f"note: {who} {why}, left out there: {', '.join(sorted(labels))} (name them with "
              "--strategy to see why)", file=sys.stderr)
    return keep


def _end_line(store: Any, records: list[dict[str, Any]], n_todo: int, n_failed_now: int) -> str:
    """What this sweep did, then what the whole runs folder holds (every task pair's records,
    not only this sweep's): ``3 run(s) done here (0 failed); this sweep's 3 record(s): 3 ok, 0
    failed; runs/ holds 12 record(s) of 2 task pair(s)``."""
    n_failed = sum(r.get("status") != "ok" for r in records)
    here = (f"{n_todo} run(s) done here ({n_failed_now} failed)" if n_todo else
            "no run to do here")
    paths = list(store.paths())  # counted, not read: a large folder stays quick
    pairs = {path.parent.name for path in paths}
    return (f"{here}; this sweep's {len(records)} record(s): {len(records) - n_failed} ok, "
            f"{n_failed} failed; {store.root}/ holds {len(paths)} record(s) of {len(pairs)} "
            "task pair(s)")


def _check_report_folder(out: Path) -> None:
    """Fail before any training when ``--report`` names a folder that cannot be made (a file in
    the way, no permission); nothing is created here. A disk that fills up later is reported
    after the sweep, with the records kept."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
                raise OutputError("the report", out, PermissionError(
                    errno.EACCES, os.strerror(errno.EACCES), str(folder)))
            return


#: Speed stage inside `run --report`: shorter than `mtl-bench speed`'s default, to stay quick.
REPORT_SPEED_ROUNDS, REPORT_SPEED_STEPS = 5, 10


def _speed_child(conn: Any, configs: list[Any], device: str, threads: int,
                 plugins: list[tuple[str, str]]) -> None:
    from mtl_bench import registry, speed
    from mtl_bench.executors.base import ensure_plugins

    try:
        registry.load_builtins()
        ensure_plugins(plugins)
        conn.send(("ok", speed.measure(configs, device, threads, REPORT_SPEED_ROUNDS,
                                       REPORT_SPEED_STEPS)))
    except UserError as exc:
        conn.send(("error", str(exc)))
    except Exception as exc:  # reported as a note by the parent; the sweep is done already
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _measure_apart(configs: list[Any], device: str, threads: int,
                   plugins: list[tuple[str, str]]) -> tuple[list[dict], list[str]]:
    """The speed stage in a process of its own: a strategy that crashes or kills its process
    (as one killed its workers during the sweep) costs the speed table, not the report."""
    from mtl_bench.executors.base import death_reason
    from mtl_bench.executors.local import worker_context

    ctx = worker_context()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_speed_child, args=(child, configs, device, threads, plugins),
                       daemon=True, name="mtl-bench-speed")
    proc.start()
    child.close()
    try:
        kind, payload = parent.recv()
    except (EOFError, OSError):
        proc.join(timeout=5)
        raise UserError(f"the speed stage's {death_reason(proc.exitcode)}") from None
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
        parent.close()
    if kind != "ok":
        raise UserError(payload)
    return payload


def _report(runs_dir: Path, out: Path, quiet: bool, records: list[dict[str, Any]],
            device: str, threads: int, plugins: list[tuple[str, str]]) -> None:
    """The speed, aggregate and report stages over the whole runs folder; a problem there (e.g.
    records that are not comparable) is reported but does not undo the finished sweep. Speed is
    measured for the settings and strategies of this sweep's records, in interleaved rounds
    (the per-run timers of a concurrent sweep are noise), and merged into speed.json."""
    from dataclasses import fields

    from mtl_bench import speed
    from mtl_bench.commands.aggregate import aggregate_to
    from mtl_bench.report import write_report
    from mtl_bench.train import RunConfig

    names = {f.name for f in fields(RunConfig)}
    configs = [RunConfig(**{k: v for k, v in (r.get("config") or {}).items() if k in names})
               for r in records if r.get("config")]
    try:
        entries, notes = _measure_apart(configs, device, threads, plugins)
        if entries:
            path, _ = speed.write_speed(runs_dir, entries)
            print(f"speed: {len(entries)} strategy x setting entries measured "
                  f"({REPORT_SPEED_ROUNDS} interleaved rounds x {REPORT_SPEED_STEPS} steps) "
                  f"in {path}")
        for note in notes if not quiet else []:
            print(f"note: speed: {note}", file=sys.stderr)
    except UserError as exc:
        print(f"note: no speed measured: {exc}", file=sys.stderr)
    except OSError as exc:  # speed.json could not be written: the report goes on without it
        print(f"note: speed not saved in {runs_dir}/: {exc.strerror or exc}", file=sys.stderr)
    try:
        tables = aggregate_to(runs_dir, out / "tables", "t", 0.95, 0.05, quiet)
        files = write_report(tables, out)
    except (OutputError, OSError) as exc:
        # the records are safe; only the report is missing, and a script must notice that
        error = exc if isinstance(exc, OutputError) else OutputError("the report", out, exc)
        raise UserError(f"no report written: {error}; the run records are kept in "
                        f"{runs_dir}/") from None
    except UserError as exc:
        print(f"note: no report written: {exc}", file=sys.stderr)
        return
    print(f"report: {files.html} ({files.markdown})")
