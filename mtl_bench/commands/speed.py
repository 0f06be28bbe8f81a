"""``mtl-bench speed``: time every strategy's training step on each task pair's own model.

Strategies are timed in interleaved rounds in one process on the pair's real model and a real
training batch; each strategy's step time is compared with fixed weights in the same round. The
table gives per strategy the median step time, samples/s with a 95% interval, the step-time
ratio to fixed weights (geometric mean of the per-round ratios, 95% interval on the log scale)
and a verdict: "faster" or "slower" only when the interval excludes 1. Entries are merged into
``speed.json`` in the runs folder, which `check --speed` and `baseline save` read.
"""

from __future__ import annotations

import argparse
import sys

from mtl_bench import registry
from mtl_bench.commands.options import device_arg
from mtl_bench.errors import UserError

HELP = "time each strategy's step against fixed weights, in interleaved rounds"


def _csv(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expects at least one name, got '{text}'")
    return names


#: speed.DEFAULT_ROUNDS and DEFAULT_STEPS, spelled out because importing mtl_bench.speed
#: imports torch (slow for --help); a test checks that they agree.
DEFAULT_ROUNDS, DEFAULT_STEPS = 9, 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mtl_bench.architecture_spec import architectures_help

    p.add_argument("--task", dest="tasks", type=_csv, default=["clsreg"],
                   help="task pair(s), comma-separated (default: clsreg)")
    p.add_argument("--strategy", dest="strategies", type=_csv, default=None,
                   help="strategy(ies), comma-separated (default: every registered strategy); "
                        "fixed weights are always timed as the reference")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   metavar="NAME.PARAM=V[,V...]",
                   help="strategy hyper-parameter or task-pair option, as for `run`; several "
                        "values form a grid")
    p.add_argument("--architecture", default="shared", metavar="NAME[:KEY=VALUE,...]",
                   help="architecture and its keys with their defaults (default: shared): "
                        + architectures_help())
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"interleaved rounds, at least 2 (default {DEFAULT_ROUNDS})")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"training steps per strategy and round (default {DEFAULT_STEPS})")
    p.add_argument("--runs-dir", default="runs",
                   help="folder of speed.json (default: runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def print_tables(entries: list[dict]) -> None:
    from mtl_bench.speed import format_interval

    settings: dict[str, list[dict]] = {}
    for e in entries:
        settings.setdefault(e["setting"], []).append(e)
    for label, rows in settings.items():
        first = rows[0]
        print(f"\n{label}: batch of {first['samples_per_step']} samples, {first['device']}, "
              f"{first['threads']} thread(s), {first['n_rounds']} rounds x {first['steps']} steps")
        table = [("strategy", "step ms", "samples/s [95% interval]",
                  "ratio to fixed [95% interval]", "verdict")]
        for e in rows:
            table.append((e["strategy"], "-" if e["step_ms"] is None else f"{e['step_ms']:.3f}",
                          format_interval(e["samples_per_s"], e["samples_per_s_low"],
                                          e["samples_per_s_high"], ",.0f"),
                          format_interval(e["ratio"], e["ratio_low"], e["ratio_high"], ".2f"),
                          e["verdict"]))
        widths = [max(len(row[i]) for row in table) for i in range(5)]
        for row in table:
            print("  " + "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))).rstrip())


def run(args: argparse.Namespace) -> int:
    from mtl_bench import speed
    from mtl_bench.architectures import canonical_architecture
    from mtl_bench.sweep import SweepSpec, expand, parse_assignments
    from mtl_bench.train import RunConfig

    if args.rounds < 2:
        raise UserError(f"--rounds must be at least 2 (an interval needs two rounds), "
                        f"got {args.rounds}")
    if args.steps < 1:
        raise UserError(f"--steps must be a positive integer, got {args.steps}")
    if args.threads < 1:
        raise UserError(f"--threads must be a positive integer, got {args.threads}")
    args.architecture = canonical_architecture(args.architecture)  # UserError if bad
    strategies = args.strategies or registry.strategies.names()
    for name in args.tasks:
        registry.tasks.get(name)
    for name in strategies:
        registry.strategies.get(name)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"device '{args.device}' requested but CUDA is not available here")
    speed.read_speed(args.runs_dir)  # a corrupt speed.json stops here, before any timing
    spec = SweepSpec(args.tasks, strategies, [0], parse_assignments(args.assignments),
                     RunConfig(architecture=args.architecture, device=args.device,
                               threads=args.threads))
    configs = expand(spec)

    def progress(line: str) -> None:
        print(f"timing {line}", file=sys.stderr, flush=True)

    entries, notes = speed.measure(configs, args.device, args.threads, args.rounds, args.steps,
                                   progress=None if args.quiet else progress)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not entries:
        raise UserError("no strategy could be timed: " + "; ".join(notes[:3]))
    print_tables(entries)
    path, kept = speed.write_speed(args.runs_dir, entries)
    print(f"\n{len(entries)} entries written to {path}"
          + (f" ({kept} from earlier measurements kept)" if kept else ""))
    print("ratio: step time / fixed's step time in the same round (2.00: twice as slow); "
          "faster/slower only when the interval excludes 1")
    return 0
