"""Exact splits of a task pair for outside baselines (``mtl-bench export splits``)."""

from __future__ import annotations

import argparse

from mtl_bench.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise UserError("export splits is not built yet")
