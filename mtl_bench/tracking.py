"""Run records to TensorBoard and MLflow (``mtl-bench export tensorboard|mlflow``)."""

from __future__ import annotations

import argparse

from mtl_bench.errors import UserError


def add_tensorboard_arguments(p: argparse.ArgumentParser) -> None:
    pass


def add_mlflow_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run_tensorboard(args: argparse.Namespace) -> int:
    raise UserError("export tensorboard is not built yet")


def run_mlflow(args: argparse.Namespace) -> int:
    raise UserError("export mlflow is not built yet")
