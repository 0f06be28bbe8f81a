"""``mtl-bench export``: hand the benchmark's data and runs to other tools.

* ``export splits`` writes a task pair's exact splits for one seed (every row with its split,
  inputs as the model sees them, targets in original units) so that an outside model can be
  trained and scored on the same rows (:mod:`mtl_bench.export_splits`).
* ``export tensorboard`` writes one TensorBoard run per run record; ``export mlflow`` logs the
  same to MLflow (:mod:`mtl_bench.tracking`). Both need an optional extra
  (``mtl-bench[tensorboard]``, ``mtl-bench[mlflow]``).
"""

from __future__ import annotations

import argparse

HELP = "export splits for outside baselines, or runs to TensorBoard / MLflow"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mtl_bench import export_splits, tracking

    sub = p.add_subparsers(dest="what", metavar="{splits,tensorboard,mlflow}",
                           parser_class=type(p))
    sub.required = True
    export_splits.add_arguments(sub.add_parser(
        "splits", help="a task pair's exact splits for one seed, as CSV or Parquet",
        description=export_splits.__doc__))
    tracking.add_tensorboard_arguments(sub.add_parser(
        "tensorboard", help="one TensorBoard run per run record",
        description=tracking.__doc__))
    tracking.add_mlflow_arguments(sub.add_parser(
        "mlflow", help="log every run record to MLflow (local file store by default)",
        description=tracking.__doc__))


def run(args: argparse.Namespace) -> int:
    from mtl_bench import export_splits, tracking

    if args.what == "splits":
        return export_splits.run(args)
    if args.what == "tensorboard":
        return tracking.run_tensorboard(args)
    return tracking.run_mlflow(args)
