"""``mtl-bench list``: registered strategies and task pairs with one-line descriptions."""

from __future__ import annotations

import argparse

from mtl_bench import registry

HELP = "show registered strategies and task pairs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("Strategies:")
    for name, cls in registry.strategies.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else ""
        print(f"  {name:<14} {cls.family:<24} {cls.paper or summary}")
    print("\nTask pairs:")
    for name, cls in registry.tasks.items():
        print(f"  {name:<22} {cls.description}")
    return 0


