"""Command line: ``python -m mtl_bench COMMAND``.

Each command is a module in :mod:`mtl_bench.commands` with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> exit code``. User errors print one line on stderr and exit 2; Ctrl-C exits 130
with finished runs kept.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from mtl_bench import registry
from mtl_bench.errors import UserError

EXIT_OK, EXIT_WORSE, EXIT_USER, EXIT_INTERRUPT = 0, 1, 2, 130

#: Sub-commands in the order ``--help`` lists them (stages of DESIGN.md, then tools).
COMMANDS = ("list", "run", "aggregate", "report", "check", "baseline", "speed", "export")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line, exit 2) instead of printing usage."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def _command_modules() -> dict[str, object]:
    mods = {}
    for name in COMMANDS:
        path = f"mtl_bench.commands.{name}"
        if importlib.util.find_spec(path) is not None:
            mods[name] = importlib.import_module(path)
    return mods


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    p = _Parser(prog="mtl-bench", description="Benchmark multi-task loss-weighting strategies.")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="import a Python file that registers strategies or task pairs")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    mods = _command_modules()
    for name, mod in mods.items():
        sp = sub.add_parser(name, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(sp)
    return p, mods


def main(argv: Sequence[str] | None = None) -> int:
    parser, mods = build_parser()
    try:
        args = parser.parse_args(argv)
        for path in args.plugin:
            registry.load_plugin_file(path)
        if args.command is None:
            parser.print_help()
            return EXIT_USER
        return int(mods[args.command].run(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; rerun the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPT
    except BrokenPipeError:
        # output piped into `head` and closed early: not an error of ours
        sys.stderr.close()
        return EXIT_OK
