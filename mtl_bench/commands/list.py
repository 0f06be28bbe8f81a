"""``mtl-bench list``: registered strategies and task pairs with one-line descriptions."""

from __future__ import annotations

import argparse

from mtl_bench import registry

HELP = "show registered strategies and task pairs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("Strategies (name, family, what it does, paper):")
    for name, cls in registry.strategies.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = cls.summary or (doc[0] if doc else "")
        print(f"  {name:<12} {cls.family:<24} {summary}")
        if cls.paper:
            print(f"  {'':<12} {'':<24} [{cls.paper}]")
    print("\nTask pairs:")
    for name, cls in registry.tasks.items():
        print(f"  {name:<22} {cls.description}")
    return 0
