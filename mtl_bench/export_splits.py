"""Exact splits of a task pair for outside baselines (``mtl-bench export splits``).

Writes every row of the pair's data for one seed: its split (train / val / test), its task
(for a pair with one dataset per task), the row's label in the user's table where the pair
knows it (pairs read from DataFrames), the inputs exactly as the model sees them (standardised
with training statistics, text columns one-hot encoded) and the targets in original units
(regression targets de-standardised, as the benchmark's metrics see them; class labels as the
integer codes the model is trained on, plus the original label where the pair knows it). An
outside model fitted on the ``train`` rows and scored on the ``test`` rows with the same metric
is compared on exactly the rows the benchmark uses. CSV or Parquet by the file's extension
(Parquet needs pyarrow). In Python, :func:`split_frame` returns the same table and
:func:`split_frames` one table per task.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from mtl_bench.errors import UserError

SPLITS = ("train", "val", "test")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Columns the table reserves; an input feature of the same name is written as ``input_NAME``.
RESERVED = ("split", "task", "row")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, metavar="NAME", help="the task pair")
    p.add_argument("--seed", type=int, default=0, help="the run seed whose split to write "
                   "(default 0)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="where to write: FILE.csv, or FILE.parquet (needs pyarrow)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the pair, as in run's --set PAIR.KEY=VALUE (repeatable)")


def _options(items: list[str]) -> dict[str, Any]:
    from mtl_bench.sweep import parse_value

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise UserError(f"--option expects KEY=VALUE, got '{item}'")
        out[key.strip()] = parse_value(value.strip())
    return out


def has_pyarrow() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot tell the format of '{path}' from its extension; use "
                        f"{', '.join(list(FORMATS)[:-1])} or {list(FORMATS)[-1]}")
    if fmt == "parquet" and not has_pyarrow():
        raise UserError("writing Parquet needs pyarrow (pip install pyarrow); or write a .csv")
    return fmt


def _check_seed(seed: Any) -> int:
    from mtl_bench.sweep import MAX_SEED

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)


def _pair(task: Any, options: dict[str, Any]) -> Any:
    from mtl_bench.task import TaskPair
    from mtl_bench.train import build_task_pair

    if isinstance(task, TaskPair):
        if options:
            raise UserError("give options to the pair's constructor, not to split_frames")
        return task
    return build_task_pair(str(task), options)


def _columns(pair: Any, data: Any, n_inputs: int) -> tuple[list[str], dict[str, str], dict]:
    """Input column names and, per task, its target column name and label column name."""
    names = [t.name for t in pair.tasks()]
    features = data.info.get("features")
    if not (isinstance(features, list) and len(features) == n_inputs):
        features = [f"x{k}" for k in range(n_inputs)]
    taken = set(RESERVED) | set(names) | {f"{n}_label" for n in names}
    inputs = [f"input_{f}" if f in taken else str(f) for f in features]
    if len(set(inputs)) != len(inputs):
        inputs = [f"x{k}" for k in range(n_inputs)]
    classes = data.info.get("classes") or {}
    labels = {t.name: f"{t.name}_label" for t in pair.tasks()
              if t.name in classes and len(classes[t.name]) >= 1}
    return inputs, labels, classes


def _task_columns(task: Any, i: int, y: Any, stats: Any, labels: dict, classes: dict
                  ) -> dict[str, np.ndarray]:
    """Target columns of task ``i``: integer class codes (and labels), or values in the
    target's units (one column per output of a multi-output regression)."""
    from mtl_bench.strategy import REGRESSION

    if task.kind == REGRESSION:
        mean, std = stats or (0.0, 1.0)
        # exactly what the benchmark scores against (mtl_bench.train.evaluate)
        values = y.double().cpu().numpy() * std + mean
        if values.ndim == 1:
            return {task.name: values}
        return {f"{task.name}[{k}]": values[:, k] for k in range(values.shape[1])}
    codes = y.cpu().numpy().astype(np.int64)
    out = {task.name: codes}
    if task.name in labels:
        names = np.asarray(classes[task.name], dtype=object)
        out[labels[task.name]] = names[codes] if len(names) > codes.max(initial=0) else codes
    return out


def _frames(pair: Any, seed: int) -> tuple[dict[str, Any], bool]:
    """:func:`split_frames` of a built pair, and whether its tasks share one input."""
    import pandas as pd

    data = pair.load(seed)
    tasks = pair.tasks()
    n_inputs = int(np.prod(data.train.input_for(0).shape[1:]))
    inputs, labels, classes = _columns(pair, data, n_inputs)
    rows = pair.split_rows(seed) if hasattr(pair, "split_rows") else None
    out = {}
    for i, t in enumerate(tasks):
        parts = []
        for name in SPLITS:
            split = data.splits()[name]
            x = split.input_for(i).detach().cpu().reshape(len(split.targets[i]), -1).numpy()
            cols: dict[str, Any] = {"split": np.full(len(x), name, dtype=object)}
            if rows is not None and len(rows[i][name]) == len(x):
                cols["row"] = rows[i][name]
            cols.update(zip(inputs, x.T))
            cols.update(_task_columns(t, i, split.targets[i], data.target_stats[i], labels,
                                      classes))
            parts.append(pd.DataFrame(cols))
        frame = pd.concat(parts, ignore_index=True)
        frame.attrs = {"task_pair": pair.name, "seed": seed, "inputs": list(inputs),
                       "target": t.name, "kind": t.kind, "metrics": list(t.metrics),
                       "primary": t.primary}
        out[t.name] = frame
    return out, data.train.shared_inputs


def split_frames(task: Any, seed: int = 0, **options: Any) -> dict[str, Any]:
    """One pandas DataFrame per task of the pair ``task`` (a registered name or a
    :class:`~mtl_bench.task.TaskPair`) for run seed ``seed``: columns ``split``, ``row`` (the
    row's index label in the user's table, for pairs read from DataFrames), the inputs as the
    model sees them, the task's target in original units (class codes for classification) and
    ``NAME_label`` (the original class label, where known). ``options`` are the pair's options.
    Each frame's ``attrs`` holds ``inputs`` (the input column names), ``target``, ``kind``,
    ``metrics`` and ``primary`` (what the benchmark reports for the task).
    """
    return _frames(_pair(task, options), _check_seed(seed))[0]


def split_frame(task: Any, seed: int = 0, **options: Any) -> Any:
    """The table ``export splits`` writes, as one pandas DataFrame: with one input shared by
    all tasks, one row per sample with every task's target columns; with one dataset per task,
    the tasks' tables (:func:`split_frames`) one below the other with a ``task`` column, a
    target column being empty on the rows of other tasks. ``attrs`` holds ``inputs`` and, per
    task, its ``kind``, ``metrics`` and ``primary`` metric."""
    import pandas as pd

    seed = _check_seed(seed)
    pair = _pair(task, options)
    frames, shared = _frames(pair, seed)
    first = next(iter(frames.values()))
    inputs = first.attrs["inputs"]
    if shared:
        keys = {"split", "row", *inputs}
        table = pd.concat([first, *(f[[c for c in f.columns if c not in keys]]
                                    for f in list(frames.values())[1:])], axis=1)
    else:
        parts = []
        for name, frame in frames.items():
            frame = frame.copy()
            frame.insert(1, "task", name)
            parts.append(frame)
        table = pd.concat(parts, ignore_index=True)
        for frame in frames.values():  # class codes stay integers beside other tasks' gaps
            for c in frame.columns:
                if c not in ("split", "row", *inputs) \
                        and pd.api.types.is_integer_dtype(frame[c]):
                    table[c] = table[c].astype("Int64")
    table.attrs = {"task_pair": pair.name, "seed": seed, "inputs": list(inputs),
                   "tasks": {n: {k: f.attrs[k] for k in ("kind", "metrics", "primary")}
                             for n, f in frames.items()}}
    return table


def write(table: Any, path: Path) -> None:
    """Write ``table`` as CSV or Parquet by ``path``'s extension (atomically: temp + rename)."""
    fmt = _format(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == "csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write splits to '{path}': {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    path = Path(args.out)
    _format(path)  # before any data are loaded
    if not path.parent.is_dir():
        why = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise UserError(f"cannot write splits to '{path}': '{path.parent}' {why}")
    table = split_frame(args.task, _check_seed(args.seed), **_options(args.option))
    write(table, path)
    counts = table["split"].value_counts()
    print(f"wrote {len(table)} rows of '{args.task}' (seed {args.seed}: "
          + ", ".join(f"{counts.get(s, 0)} {s}" for s in SPLITS) + f") to {path}")
    return 0
