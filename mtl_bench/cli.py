"""Command line: ``python -m mtl_bench COMMAND``.

Each command is a module in :mod:`mtl_bench.commands` with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> exit code``; the module's docstring is the command's ``--help`` description,
shown as plain text (:func:`plain_text` drops the reST markup, keeps paragraphs and bullets).
``--plugin FILE`` is accepted before the command and after it (and after a sub-command), any
number of times. User errors print one line on stderr and exit 2; Ctrl-C exits 130 with finished
runs kept.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
from collections.abc import Iterator, Sequence

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


#: reST roles (:mod:`x`, :func:`~a.b`) and inline literals (``x``) in docstrings.
_ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|obj|exc|ref|doc):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_BULLET = re.compile(r"^([*-]|\d+\.) ")
#: Width of the wrapped description paragraphs.
HELP_WIDTH = 92


def plain_inline(text: str) -> str:
    """One line of reST as plain text: ``:func:`~a.b``` -> ``b``, a double-backquoted literal
    -> its text in single backquotes (as the README writes commands)."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~")
                     else m.group(1), text)
    return _LITERAL.sub(r"`\1`", text)


def plain_text(doc: str | None, width: int = HELP_WIDTH) -> str | None:
    """A module docstring as a ``--help`` description: markup dropped, each paragraph and each
    bullet item re-wrapped on its own (bullets keep a hanging indent), blank lines between
    paragraphs kept; an indented block (after ``::``) is kept as it is."""
    if doc is None:
        return None
    out: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            text = plain_inline(" ".join(line.strip() for line in para))
            bullet = _BULLET.match(text)
            indent = " " * (len(bullet.group(0)) if bullet else 0)
            out.extend(textwrap.wrap(text, width, subsequent_indent=indent,
                                     break_on_hyphens=False))
            para.clear()

    literal = False
    for line in inspect.cleandoc(doc).splitlines():
        if literal and (line.startswith(" ") or not line.strip()):
            out.append(plain_inline(line.rstrip()))
            continue
        literal = False
        if not line.strip():
            flush()
            if out and out[-1]:
                out.append("")
        elif _BULLET.match(line.strip()) and not line.startswith(" "):
            flush()
            para.append(line)
        else:
            para.append(line)
        if line.rstrip().endswith("::"):
            flush()
            out[-1] = out[-1][:-1]  # "Schema::" reads "Schema:"
            literal = True
    flush()
    return "\n".join(out).rstrip()


def walk_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every (sub-)sub-command parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from walk_parsers(child)


#: dest of the ``--plugin`` options after a command; their files are loaded with the others.
_PLUGIN_AFTER = "plugin_after_"


def _add_plugin_option(parser: argparse.ArgumentParser, dest: str, default: object) -> None:
    parser.add_argument("--plugin", action="append", default=default, metavar="FILE", dest=dest,
                        help="import a Python file that registers strategies or task pairs "
                             "(repeatable; before or after the command)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    p = _Parser(prog="mtl-bench", description="Benchmark multi-task loss-weighting strategies.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_plugin_option(p, "plugin", [])
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND",
                           title="commands")
    mods = _command_modules()
    for name, mod in mods.items():
        sp = sub.add_parser(name, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(sp)
    for i, parser in enumerate(walk_parsers(p)):
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.description = plain_text(parser.description)
        if i:  # each level its own dest: a sub-command's parse would overwrite its parent's
            _add_plugin_option(parser, f"{_PLUGIN_AFTER}{i}", argparse.SUPPRESS)
        for action in parser._actions:
            if isinstance(action.help, str) and action.help is not argparse.SUPPRESS:
                action.help = plain_inline(action.help)
    return p, mods


def _plugins(args: argparse.Namespace) -> list[str]:
    """Every ``--plugin`` file in command-line order of the levels (before the command, after
    it, after its sub-command); ``args.plugin`` becomes that list."""
    after = sorted((k for k in vars(args) if k.startswith(_PLUGIN_AFTER)),
                   key=lambda k: int(k[len(_PLUGIN_AFTER):]))
    paths = list(args.plugin)
    for key in after:
        paths += getattr(args, key)
        delattr(args, key)
    args.plugin = list(dict.fromkeys(paths))
    return args.plugin


def main(argv: Sequence[str] | None = None) -> int:
    parser, mods = build_parser()
    try:
        args = parser.parse_args(argv)
        for path in _plugins(args):
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
