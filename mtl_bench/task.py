"""The task-pair protocol plus the data helpers every task pair shares.

A task pair provides in-memory tensor splits, a trunk and one head per task, one loss per task
and the metrics (with direction) to report. Data stay on the device as whole tensors and are
batched by index slices, never by a per-sample DataLoader.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_bench.architectures import ARCHITECTURES as ARCHITECTURES
from mtl_bench.architectures import PER_TASK, architecture_name, build_per_task
from mtl_bench.architectures import MultiTaskNet as MultiTaskNet
from mtl_bench.errors import UserError
from mtl_bench.metrics import get_metric
from mtl_bench.strategy import CLASSIFICATION, REGRESSION, TaskInfo

#: Primary metric of a task that does not name one (when the task reports it).
DEFAULT_PRIMARY = {CLASSIFICATION: "accuracy", REGRESSION: "mae"}
SAMPLING_POLICIES = ("proportional", "equal", "temperature")


def softmax_proba(output: Tensor) -> Tensor:
    return torch.softmax(output, dim=-1)


def sigmoid_block_proba(output: Tensor) -> Tensor:
    """Class scores of a sigmoid block, renormalised to sum to one (for ECE and argmax)."""
    p = torch.sigmoid(output)
    return p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def sigmoid_proba(output: Tensor) -> Tensor:
    """Raw per-unit sigmoid scores of a block trained with BCE (rows need not sum to one).

    With one-hot targets, the BCE minimiser of unit k is P(label = k | x), so the score of the
    arg-max unit is the model's own probability that its prediction is right: the confidence
    that ECE should test. Renormalising the block would report a number the model never
    trained to produce.
    """
    return torch.sigmoid(output)


def mse_loss(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output.squeeze(-1), target)


def ce_loss(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output, target)


def bce_onehot_loss(output: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy with logits of a block of C sigmoid units against the one-hot code
    of integer labels, averaged over the block's units and the samples (``BCEWithLogitsLoss``
    with its default mean reduction)."""
    onehot = F.one_hot(target, output.shape[-1]).to(output.dtype)
    return F.binary_cross_entropy_with_logits(output, onehot)


@dataclass(frozen=True)
class Task:
    """One task of a pair: its loss, output width and metrics.

    ``primary`` is the metric that speaks for the task in every summary (model selection,
    Delta_m%, ranks, the report's sentences); default: accuracy for classification, MAE for
    regression when the task reports them, else its first metric. The others stay in the tables.
    """

    name: str
    kind: str  # CLASSIFICATION or REGRESSION
    n_outputs: int
    metrics: tuple[str, ...]
    loss: Callable[[Tensor, Tensor], Tensor] | None = None
    proba: Callable[[Tensor], Tensor] = softmax_proba
    primary: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in (CLASSIFICATION, REGRESSION):
            raise ValueError(f"task '{self.name}': kind must be classification or regression")
        for m in self.metrics:
            if get_metric(m).kind != self.kind:
                raise ValueError(f"task '{self.name}': metric '{m}' is not a {self.kind} metric")
        if self.loss is None:
            object.__setattr__(self, "loss", ce_loss if self.kind == CLASSIFICATION else mse_loss)
        if not self.metrics:
            raise ValueError(f"task '{self.name}': needs at least one metric")
        if self.primary is None:
            preferred = DEFAULT_PRIMARY[self.kind]
            object.__setattr__(self, "primary",
                               preferred if preferred in self.metrics else self.metrics[0])
        elif self.primary not in self.metrics:
            raise ValueError(f"task '{self.name}': primary metric '{self.primary}' is not one of "
                             f"its metrics ({', '.join(self.metrics)})")

    @property
    def info(self) -> TaskInfo:
        return TaskInfo(self.name, self.kind)


@dataclass
class Split:
    """One split: either one input tensor shared by all tasks, or one input tensor per task.

    ``targets[i]`` belongs to task i. With per-task inputs, ``inputs[i]`` and ``targets[i]`` have
    the same length and lengths may differ across tasks (the "two datasets" scenario).
    """

    inputs: tuple[Tensor, ...]
    targets: tuple[Tensor, ...]

    @property
    def shared_inputs(self) -> bool:
        return len(self.inputs) == 1

    def sizes(self) -> list[int]:
        return [len(t) for t in self.targets]

    def to(self, device: torch.device | str) -> Split:
        return Split(tuple(x.to(device) for x in self.inputs),
                     tuple(y.to(device) for y in self.targets))

    def select_tasks(self, indices: Sequence[int]) -> Split:
        inputs = self.inputs if self.shared_inputs else tuple(self.inputs[i] for i in indices)
        return Split(inputs, tuple(self.targets[i] for i in indices))

    def input_for(self, task: int) -> Tensor:
        return self.inputs[0] if self.shared_inputs else self.inputs[task]


@dataclass
class TaskData:
    """Train / val / test splits plus what is needed to report metrics in original units.

    ``target_stats[i]`` is (mean, std) used to standardise a regression target on the training
    split, or None; metrics undo it. ``info`` goes into the run record (rows dropped, sizes...).
    """

    train: Split
    val: Split
    test: Split
    target_stats: tuple[tuple[float, float] | None, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def to(self, device: torch.device | str) -> TaskData:
        return TaskData(self.train.to(device), self.val.to(device), self.test.to(device),
                        self.target_stats, self.info)

    def select_tasks(self, indices: Sequence[int]) -> TaskData:
        return TaskData(self.train.select_tasks(indices), self.val.select_tasks(indices),
                        self.test.select_tasks(indices),
                        tuple(self.target_stats[i] for i in indices), self.info)

    @property
    def n_features(self) -> list[int]:
        return [x.shape[1] for x in self.train.inputs]


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, last_activation: bool = True):
    """Fully connected layers ``sizes[0] -> ... -> sizes[-1]`` with an activation after each."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class TaskPair(ABC):
    """Base class of every task pair. Options are constructor keyword arguments.

    Subclasses define :meth:`tasks` and :meth:`load`; the default model is an MLP trunk with
    ``hidden`` units and a linear head per task. Class attributes give training defaults.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    epochs: ClassVar[int] = 30
    batch_size: ClassVar[int] = 64
    lr: ClassVar[float] = 1e-3
    hidden: ClassVar[tuple[int, ...]] = (64, 64)

    def __init__(self, **options: Any) -> None:
        if options:
            raise UserError(
                f"task pair '{self.name}' has no option(s) {', '.join(sorted(options))}"
            )

    def options(self) -> dict[str, Any]:
        """Options this pair was built with (stored in the run config)."""
        return {}

    @abstractmethod
    def tasks(self) -> tuple[Task, ...]:
        """The tasks, in the order of the heads and losses."""

    @abstractmethod
    def load(self, seed: int) -> TaskData:
        """Build the splits for this seed (the split itself depends on the seed)."""

    def build_trunk(self, n_features: int) -> nn.Module:
        return mlp([n_features, *self.hidden])

    def build_head(self, task: Task, width: int) -> nn.Module:
        return nn.Linear(width, task.n_outputs)

    def build_model(self, data: TaskData, task_indices: Sequence[int] | None = None,
                    architecture: str = "shared") -> MultiTaskNet:
        """Hard sharing (one trunk), separate networks (one trunk per task, nothing shared) or
        one of the architectures that give each task its own representation, built from this
        pair's trunk and heads (:mod:`mtl_bench.architectures`)."""
        all_tasks = self.tasks()
        indices = list(range(len(all_tasks))) if task_indices is None else list(task_indices)
        width = self.hidden[-1] if self.hidden else data.n_features[0]
        if architecture == "shared":
            trunk = self.build_trunk(data.n_features[0])
            return MultiTaskNet(trunk, [self.build_head(all_tasks[i], width) for i in indices])
        if architecture == "separate":
            # ``data`` is either the full pair or already reduced to ``indices`` (train_run
            # selects tasks first); the input of the k-th built head is found accordingly.
            selected = len(data.train.targets) == len(indices) != len(all_tasks)
            heads = [nn.Sequential(
                self.build_trunk(data.train.input_for(k if selected else i).shape[1]),
                self.build_head(all_tasks[i], width)) for k, i in enumerate(indices)]
            return MultiTaskNet(nn.Identity(), heads)
        if architecture_name(architecture) in PER_TASK:  # a spec: NAME[:key=value,...]
            n_in = data.n_features[0]
            return build_per_task(architecture, lambda: self.build_trunk(n_in),
                                  [self.build_head(all_tasks[i], width) for i in indices], n_in)
        raise UserError(f"unknown architecture '{architecture}'; choose from: "
                        + ", ".join(ARCHITECTURES))


# -- data helpers ------------------------------------------------------------------------------
def split_indices(n: int, seed: int, fractions: tuple[float, float] = (0.6, 0.2),
                  stratify: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle 0..n-1 with ``seed`` into train / val / test (the rest) index arrays.

    With ``stratify`` (class labels), each class is split in the same proportions.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if stratify is None else [
        np.flatnonzero(stratify == c) for c in np.unique(stratify)]
    parts: list[list[np.ndarray]] = [[], [], []]
    for idx in groups:
        idx = rng.permutation(idx)
        a = int(round(fractions[0] * len(idx)))
        b = a + int(round(fractions[1] * len(idx)))
        for k, piece in enumerate((idx[:a], idx[a:b], idx[b:])):
            parts[k].append(piece)
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def standardiser(train_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training split only (std of a constant column is 1)."""
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def make_splits(x: np.ndarray, ys: Sequence[np.ndarray], kinds: Sequence[str], seed: int,
                standardise_targets: bool = True, stratify: np.ndarray | None = None,
                fractions: tuple[float, float] = (0.6, 0.2), pair: str = "") -> TaskData:
    """Shared-input splits: standardise x (and regression targets) with train statistics."""
    if len(x) == 0:
        raise UserError(f"task pair '{pair}': the dataset is empty")
    tr, va, te = split_indices(len(x), seed, fractions, stratify)
    for name, idx in (("train", tr), ("val", va), ("test", te)):
        if len(idx) == 0:
            raise UserError(f"task pair '{pair}': the {name} split is empty ({len(x)} rows)")
    mean, std = standardiser(x[tr])
    xs = ((x - mean) / std).astype(np.float32)
    targets, stats = [], []
    for y, kind in zip(ys, kinds):
        if kind == REGRESSION:
            y = y.astype(np.float64)
            if standardise_targets:
                m, s = float(y[tr].mean()), float(y[tr].std() or 1.0)
            else:
                m, s = 0.0, 1.0
            targets.append(torch.tensor((y - m) / s, dtype=torch.float32))
            stats.append((m, s))
        else:
            targets.append(torch.tensor(y, dtype=torch.long))
            stats.append(None)
    xt = torch.tensor(xs)

    def split(idx: np.ndarray) -> Split:
        t = torch.as_tensor(idx)
        return Split((xt[t],), tuple(y[t] for y in targets))

    info = {"n_train": len(tr), "n_val": len(va), "n_test": len(te),
            "split_sha": _indices_hash(tr, va, te)}
    return TaskData(split(tr), split(va), split(te), tuple(stats), info)


def make_separate_splits(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], kinds: Sequence[str],
                         seed: int, standardise_targets: bool = True,
                         stratify: Sequence[np.ndarray | None] | None = None,
                         fractions: tuple[float, float] = (0.6, 0.2), pair: str = "",
                         task_names: Sequence[str] | None = None) -> TaskData:
    """One dataset per task (the "two datasets" scenario): ``xs[i]``, ``ys[i]`` belong to task i
    and may differ in length. Each set is split on its own with ``seed``; the inputs are
    standardised with the pooled training rows of every set (one trunk sees them all), each
    regression target with its own set's training rows."""
    names = list(task_names) if task_names is not None else [f"task {i}" for i in range(len(xs))]
    if len({x.shape[1] for x in xs}) != 1:
        raise UserError(f"task pair '{pair}': the per-task inputs differ in width "
                        f"({[x.shape[1] for x in xs]}); a shared trunk needs one width")
    parts = []
    for i, (x, name) in enumerate(zip(xs, names)):
        if len(x) == 0:
            raise UserError(f"task pair '{pair}': the dataset of task '{name}' is empty")
        strat = None if stratify is None else stratify[i]
        idx = split_indices(len(x), seed, fractions, strat)
        for split_name, part in zip(("train", "val", "test"), idx):
            if len(part) == 0:
                raise UserError(f"task pair '{pair}': the {split_name} split of task '{name}' is "
                                f"empty ({len(x)} rows)")
        parts.append(idx)
    mean, std = standardiser(np.concatenate([x[p[0]] for x, p in zip(xs, parts)]))
    inputs, targets, stats = [], [], []
    for x, y, kind, (tr, _, _) in zip(xs, ys, kinds, parts):
        inputs.append(torch.tensor(((x - mean) / std).astype(np.float32)))
        if kind == REGRESSION:
            y = y.astype(np.float64)
            m, s = (float(y[tr].mean()), float(y[tr].std() or 1.0)) if standardise_targets \
                else (0.0, 1.0)
            targets.append(torch.tensor((y - m) / s, dtype=torch.float32))
            stats.append((m, s))
        else:
            targets.append(torch.tensor(y, dtype=torch.long))
            stats.append(None)

    def split(k: int) -> Split:
        idx = [torch.as_tensor(p[k]) for p in parts]
        return Split(tuple(x[i] for x, i in zip(inputs, idx)),
                     tuple(y[i] for y, i in zip(targets, idx)))

    info: dict[str, Any] = {
        "n_train": int(sum(len(p[0]) for p in parts)), "n_val": int(sum(len(p[1]) for p in parts)),
        "n_test": int(sum(len(p[2]) for p in parts)),
        "per_task_sizes": {name: [len(p[0]), len(p[1]), len(p[2])]
                           for name, p in zip(names, parts)},
        "split_sha": _indices_hash(*[q for p in parts for q in p]),
    }
    return TaskData(split(0), split(1), split(2), tuple(stats), info)


def _indices_hash(*parts: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        h.update(np.asarray(p, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def check_labels(pair: str, task: str, y: np.ndarray, n_classes: int) -> None:
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise UserError(f"task pair '{pair}': labels of task '{task}' fall outside "
                        f"0..{n_classes - 1} (found {int(y.min())}..{int(y.max())})")


# -- batching ----------------------------------------------------------------------------------
#: Temperature t of the ``temperature`` sampling policy (t = 1 is proportional, t -> inf equal).
DEFAULT_TEMPERATURE = 2.0


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Optimiser steps in one epoch: S = ceil(N_max / b).

    Shared inputs: N_max is the number of training rows, so an epoch is one pass over them.
    Separate datasets: N_max is the largest task's training set; an epoch is one pass over
    that set, and :func:`epoch_quotas` says how much of each other set it contains.
    """
    n = len(split.inputs[0]) if split.shared_inputs else max(split.sizes())
    return max(1, -(-n // batch_size))


def epoch_quotas(sizes: Sequence[int], batch_size: int, policy: str,
                 temperature: float = DEFAULT_TEMPERATURE) -> list[int]:
    """Samples task i draws in one epoch of S = ceil(N_max / b) steps (separate datasets).

    Q_i = N_max * (N_i / N_max)^(1/t) with t = 1 for ``proportional`` (Q_i = N_i: every set is
    passed exactly once per epoch), t = ``temperature`` for ``temperature`` and t -> inf for
    ``equal`` (Q_i = N_max: a set ten times smaller is passed ten times). The largest set is
    passed once under every policy. Q_i is clipped to [S, S * N_i]: at least one sample of
    every task per step (a task with an empty batch has no loss) and never more samples per
    step than the set holds.
    """
    if policy not in SAMPLING_POLICIES:
        raise UserError(f"unknown sampling policy '{policy}'; choose from: "
                        + ", ".join(SAMPLING_POLICIES))
    if not temperature > 0:
        raise UserError(f"sampling temperature must be positive, got {temperature!r}")
    if not sizes or min(sizes) < 1:
        raise UserError(f"every task needs at least one training sample, got sizes {list(sizes)}")
    n_max = max(sizes)
    steps = max(1, -(-n_max // batch_size))
    power = {"proportional": 1.0, "temperature": 1.0 / temperature, "equal": 0.0}[policy]
    quotas = [int(round(n_max * (n / n_max) ** power)) for n in sizes]
    return [min(max(q, steps), steps * n) for q, n in zip(quotas, sizes)]


def spread(total: int, steps: int) -> list[int]:
    """``total`` samples over ``steps`` steps as evenly as possible (sizes differ by <= 1)."""
    base, extra = divmod(total, steps)
    return [base + (k < extra) for k in range(steps)]


def task_batch_sizes(sizes: Sequence[int], batch_size: int, policy: str,
                     temperature: float = DEFAULT_TEMPERATURE) -> list[int]:
    """Largest per-step batch of each task under a policy (steps differ by at most one sample):
    about b * (N_i / N_max)^(1/t), so b for the largest set under every policy."""
    quotas = epoch_quotas(sizes, batch_size, policy, temperature)
    steps = max(1, -(-max(sizes) // batch_size))
    return [-(-q // steps) for q in quotas]


def iterate_batches(split: Split, batch_size: int, generator: torch.Generator,
                    policy: str = "proportional", temperature: float = DEFAULT_TEMPERATURE
                    ) -> Iterator[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
    """One epoch of shuffled index-slice batches held in memory.

    Shared inputs: one permutation per epoch, consecutive slices of ``batch_size`` (the last
    one smaller). Separate datasets: S = :func:`steps_per_epoch` steps; task i draws its
    :func:`epoch_quotas` Q_i samples spread evenly over the steps, walking its own shuffled
    permutations: a fresh one at the start of the epoch and whenever one runs out (its tail is
    used first, so no sample is skipped). ``policy`` and ``temperature`` matter only here.
    """
    device = split.targets[0].device
    if split.shared_inputs:
        n = len(split.inputs[0])
        perm = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            yield (split.inputs[0][idx],), tuple(y[idx] for y in split.targets)
        return
    sizes = split.sizes()
    steps = steps_per_epoch(split, batch_size)
    plans = [spread(q, steps) for q in epoch_quotas(sizes, batch_size, policy, temperature)]
    perms = [torch.randperm(n, generator=generator) for n in sizes]
    cursors = [0] * len(sizes)
    # the whole epoch's indices are drawn first (in the order of the steps, so the generator
    # gives the same draws) and moved to the device in one copy per task: a copy per step
    # would make the host wait for the device at every step
    takes: list[list[Tensor]] = [[] for _ in sizes]
    for step in range(steps):
        for i, n in enumerate(sizes):
            want = plans[i][step]
            take = perms[i][cursors[i]:cursors[i] + want]
            cursors[i] += len(take)
            if len(take) < want:  # this pass is used up: continue with a fresh permutation
                perms[i] = torch.randperm(n, generator=generator)
                cursors[i] = want - len(take)
                take = torch.cat([take, perms[i][:cursors[i]]])
            takes[i].append(take)
    flat = [torch.cat(t).to(device) for t in takes]
    starts = [[0, *itertools.accumulate(plans[i][:-1])] for i in range(len(sizes))]
    for step in range(steps):
        xs, ys = [], []
        for i in range(len(sizes)):
            idx = flat[i][starts[i][step]:starts[i][step] + plans[i][step]]
            xs.append(split.inputs[i][idx])
            ys.append(split.targets[i][idx])
        yield tuple(xs), tuple(ys)


# -- task pairs read from pandas DataFrames ----------------------------------------------------
#: Fewest rows a per-task table may keep after dropping missing values: 60 / 20 / 20 % of five
#: rows is the smallest split that leaves every part a row.
MIN_TABLE_ROWS = 5


def _as_columns(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _is_numeric(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def _encode_inputs(tables: Sequence[Any], inputs: Sequence[str], owners: Sequence[str],
                   pair: str) -> tuple[list[np.ndarray], list[str]]:
    """The input columns of one or more tables, encoded alike: numeric columns as they are,
    other columns one-hot over the union of their values in every table (sorted), so that
    one trunk reads the same feature in the same place whichever table a row comes from."""
    import pandas as pd

    pieces: list[list[Any]] = [[] for _ in tables]
    for col in inputs:
        numeric = [_is_numeric(t[col]) for t in tables]
        if all(numeric):
            for k, t in enumerate(tables):
                pieces[k].append(t[col].astype(float).to_frame())
            continue
        if any(numeric):
            a, b = owners[numeric.index(True)], owners[numeric.index(False)]
            raise UserError(f"task pair '{pair}': input column '{col}' is numeric in the table "
                            f"of task '{a}' but not in that of task '{b}'")
        values = [t[col].astype(str) for t in tables]
        categories = sorted(set().union(*(v.unique() for v in values)))
        for k, v in enumerate(values):
            coded = pd.Series(pd.Categorical(v, categories=categories), index=v.index)
            pieces[k].append(pd.get_dummies(coded, prefix=col, dtype=float))
    frames = [pd.concat(p, axis=1) for p in pieces]
    return [f.to_numpy(dtype=np.float64) for f in frames], [str(c) for c in frames[0].columns]


def _clean(frame: Any, used: Sequence[str], pair: str, owner: str | None) -> Any:
    """``frame[used]`` without the rows that miss a value; one-line errors for a table that is
    not a DataFrame, lacks a column or keeps no row. ``owner`` names the task of a per-task
    table (None for the one table of a pair)."""
    import pandas as pd

    where = "the data frame" if owner is None else f"the table of task '{owner}'"
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"task pair '{pair}': {where} should be a pandas DataFrame, got "
                        f"{type(frame).__name__}")
    missing = [c for c in used if c not in frame.columns]
    if missing:
        raise UserError(f"task pair '{pair}': column(s) {', '.join(map(repr, missing))} not in "
                        f"{where}; its columns are: {', '.join(map(str, frame.columns))}")
    if owner is not None and len(frame) == 0:
        raise UserError(f"task pair '{pair}': {where} is empty")
    clean = frame[list(used)].dropna()
    if len(clean) == 0:
        raise UserError(f"task pair '{pair}': no row is left in {where} after dropping rows "
                        f"with missing values ({len(frame)} rows before)")
    return clean


def _target(clean: Any, col: str, kind: str, pair: str) -> tuple[np.ndarray, list[str] | None]:
    """A target column: class codes 0..C-1 in sorted order of the labels (and the labels), or
    the numeric values of a regression column."""
    import pandas as pd

    if kind == CLASSIFICATION:
        codes = clean[col].astype("category")
        return codes.cat.codes.to_numpy(dtype=np.int64), [str(c) for c in codes.cat.categories]
    if not pd.api.types.is_numeric_dtype(clean[col]):
        raise UserError(f"task pair '{pair}': regression column '{col}' is not numeric "
                        f"(dtype {clean[col].dtype})")
    return clean[col].to_numpy(dtype=np.float64), None


def _frame_arrays(frame: Any, inputs: Sequence[str], classification: Sequence[str],
                  regression: Sequence[str], pair: str
                  ) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any], Any]:
    """:func:`frame_arrays` plus the index labels of the rows kept."""
    clean = _clean(frame, [*inputs, *classification, *regression], pair, None)
    (x,), features = _encode_inputs([clean], inputs, ["-"], pair)
    targets: list[np.ndarray] = []
    classes: dict[str, list[str]] = {}
    for col in classification:
        y, classes[col] = _target(clean, col, CLASSIFICATION, pair)  # type: ignore[assignment]
        targets.append(y)
    targets += [_target(clean, col, REGRESSION, pair)[0] for col in regression]
    info = {"rows_total": int(len(frame)), "rows_dropped_missing": int(len(frame) - len(clean)),
            "features": features, "classes": classes}
    return x, targets, info, clean.index


def frame_arrays(frame: Any, inputs: Sequence[str], classification: Sequence[str] = (),
                 regression: Sequence[str] = (), pair: str = ""
                 ) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any]]:
    """Columns of a pandas DataFrame -> (inputs, targets, info) ready for :func:`make_splits`.

    Numeric input columns are used as they are; other input columns (strings, categories,
    booleans) are one-hot encoded. A classification column's values are coded 0..C-1 in sorted
    order (``info["classes"][column]``); a regression column must be numeric. Missing values:
    a row with a missing value in any column used is dropped, and ``info`` records how many.
    Targets come back classification columns first, then regression columns.
    """
    x, targets, info, _ = _frame_arrays(frame, inputs, classification, regression, pair)
    return x, targets, info


def _default_metrics(kind: str) -> tuple[str, ...]:
    return (FrameTaskPair.classification_metrics if kind == CLASSIFICATION
            else FrameTaskPair.regression_metrics)


def check_frame_metrics(pair: str, kinds: dict[str, str],
                        metrics: dict[str, str | Sequence[str]] | None,
                        primary: dict[str, str] | None
                        ) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Validate ``metrics=`` and ``primary=`` of a frame pair against its tasks (``kinds``:
    task -> kind) and the metric registry; return them normalised. A task's primary metric
    must be one of the metrics it reports (its chosen ones, or the defaults)."""
    from mtl_bench.metrics import METRICS

    chosen: dict[str, tuple[str, ...]] = {}
    for role, given in (("metrics", metrics), ("primary", primary)):
        unknown = sorted(set(given or {}) - set(kinds))
        if unknown:
            raise UserError(f"task pair '{pair}': {role} names {', '.join(unknown)}, which are "
                            f"not its tasks ({', '.join(kinds)})")
    for task, names in (metrics or {}).items():
        names = _as_columns(names)
        kind = kinds[task]
        allowed = [m for m, spec in METRICS.items() if spec.kind == kind]
        if not names:
            raise UserError(f"task pair '{pair}': metrics of '{task}' is empty; choose from: "
                            + ", ".join(allowed))
        for m in names:
            if m not in allowed:
                what = (f"a {METRICS[m].kind} metric" if m in METRICS else "an unknown metric")
                raise UserError(f"task pair '{pair}': metric '{m}' of '{task}' is {what}; a "
                                f"{kind} task takes: {', '.join(allowed)}")
        if len(set(names)) != len(names):
            raise UserError(f"task pair '{pair}': metrics of '{task}' name a metric twice "
                            f"({', '.join(names)})")
        chosen[task] = names
    for task, metric in (primary or {}).items():
        reported = chosen.get(task, _default_metrics(kinds[task]))
        if metric not in reported:
            raise UserError(f"task pair '{pair}': primary metric '{metric}' of '{task}' is not "
                            f"one of its metrics ({', '.join(reported)})")
    return chosen, dict(primary or {})


def _load_table(pair: str, fn: Callable[[], Any], owner: str | None) -> Any:
    try:
        return fn()
    except UserError:
        raise
    except Exception as exc:
        where = "its data frame" if owner is None else f"the table of task '{owner}'"
        raise UserError(f"task pair '{pair}': loading {where} failed: "
                        f"{type(exc).__name__}: {exc}") from exc


class FrameTaskPair(TaskPair):
    """Tasks read from columns of a pandas DataFrame: one classification task per column of
    ``classification_columns`` and one regression task per column of ``regression_columns``,
    all predicted from ``input_columns`` (see :func:`frame_arrays` for encoding and the
    missing-value rule). Splits are stratified on the first classification column; inputs and
    regression targets are standardised with training statistics; metrics are reported in the
    target's own units. Subclasses implement :meth:`load_frame` (or use
    :func:`frame_task_pair`).
    """

    input_columns: ClassVar[tuple[str, ...]] = ()
    classification_columns: ClassVar[tuple[str, ...]] = ()
    regression_columns: ClassVar[tuple[str, ...]] = ()
    classification_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "ece")
    regression_metrics: ClassVar[tuple[str, ...]] = ("mae", "rmse", "r2")
    #: Column -> the metrics its task reports (others get the two defaults above).
    task_metrics: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Column -> its primary metric (the others default as :class:`Task` says).
    primary_metrics: ClassVar[dict[str, str]] = {}

    def load_frame(self) -> Any:
        """The whole table as a pandas DataFrame (must not need the network)."""
        raise NotImplementedError

    def _arrays(self) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any], Any]:
        cached = getattr(self, "_frame_cache", None)
        if cached is None:
            frame = _load_table(self.name, self.load_frame, None)
            cached = _frame_arrays(frame, self.input_columns, self.classification_columns,
                                   self.regression_columns, pair=self.name)
            self._frame_cache = cached
        return cached

    def tasks(self) -> tuple[Task, ...]:
        _, _, info, _ = self._arrays()
        cls = [Task(c, CLASSIFICATION, max(2, len(info["classes"][c])),
                    self.task_metrics.get(c, self.classification_metrics),
                    primary=self.primary_metrics.get(c)) for c in self.classification_columns]
        reg = [Task(c, REGRESSION, 1, self.task_metrics.get(c, self.regression_metrics),
                    primary=self.primary_metrics.get(c)) for c in self.regression_columns]
        return (*cls, *reg)

    def _stratify(self) -> np.ndarray | None:
        _, ys, _, _ = self._arrays()
        return ys[0] if self.classification_columns else None

    def load(self, seed: int) -> TaskData:
        x, ys, info, _ = self._arrays()
        tasks = self.tasks()
        for task, y in zip(tasks, ys):
            if task.kind == CLASSIFICATION:
                check_labels(self.name, task.name, y, task.n_outputs)
        data = make_splits(x, ys, [t.kind for t in tasks], seed, stratify=self._stratify(),
                           pair=self.name)
        data.info.update(info)
        return data

    def split_rows(self, seed: int) -> list[dict[str, np.ndarray]]:
        """Per task, the data frame's index labels of the rows in each split of ``seed``, in
        the order of the rows of :meth:`load`'s splits (the same draw as :func:`make_splits`)."""
        x, _, _, index = self._arrays()
        parts = split_indices(len(x), seed, stratify=self._stratify())
        rows = {name: np.asarray(index[p]) for name, p in zip(("train", "val", "test"), parts)}
        return [rows for _ in self.tasks()]


class FrameTablesTaskPair(TaskPair):
    """One pandas DataFrame per task (the "two datasets" scenario read from tables): task
    ``name`` is column ``column`` of its own table, of its own size, and every table holds the
    ``input_columns``. Rows missing a value in a column used are dropped per table and counted.
    Text, category and boolean inputs are one-hot encoded over the values of all tables, so a
    feature has one place in the input whichever table a row comes from. Each table is split
    60 / 20 / 20 on its own with the run seed (stratified on the labels of a classification
    task); inputs are standardised with the pooled training rows of every table and a
    regression target with its own table's training rows (:func:`make_separate_splits`). How
    much of each table an epoch holds follows ``--sampling`` (:func:`epoch_quotas`).
    Subclasses set ``task_columns`` and implement :meth:`load_table` (or use
    :func:`frame_task_pair` with ``tasks=``).
    """

    input_columns: ClassVar[tuple[str, ...]] = ()
    #: (task name, target column, kind) per task, in the order of the heads.
    task_columns: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    task_metrics: ClassVar[dict[str, tuple[str, ...]]] = {}
    primary_metrics: ClassVar[dict[str, str]] = {}

    def load_table(self, task: str) -> Any:
        """The table of ``task`` as a pandas DataFrame (must not need the network)."""
        raise NotImplementedError

    def _arrays(self) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any], list[Any]]:
        cached = getattr(self, "_frame_cache", None)
        if cached is not None:
            return cached
        names = [t[0] for t in self.task_columns]
        frames = [_load_table(self.name, lambda n=n: self.load_table(n), n) for n in names]
        for owner, frame in zip(names, frames):
            _clean(frame, [], self.name, owner)  # a DataFrame with rows
        everywhere = [c for c in self.input_columns if all(c in f.columns for f in frames)]
        for col in self.input_columns:
            if col not in everywhere and any(col in f.columns for f in frames):
                has = next(n for n, f in zip(names, frames) if col in f.columns)
                lacks = next(n for n, f in zip(names, frames) if col not in f.columns)
                raise UserError(f"task pair '{self.name}': input column '{col}' is in the table "
                                f"of task '{has}' but not in that of task '{lacks}'; every "
                                "table needs every input column")
        cleans = [_clean(f, [*self.input_columns, col], self.name, n)
                  for f, (n, col, _) in zip(frames, self.task_columns)]
        for n, f, c in zip(names, frames, cleans):
            if len(c) < MIN_TABLE_ROWS:
                raise UserError(f"task pair '{self.name}': the table of task '{n}' has {len(c)} "
                                f"usable row(s) ({len(f) - len(c)} of {len(f)} dropped for "
                                f"missing values); at least {MIN_TABLE_ROWS} are needed for "
                                "train / val / test splits")
        xs, features = _encode_inputs(cleans, self.input_columns, names, self.name)
        ys, classes = [], {}
        for c, (n, col, kind) in zip(cleans, self.task_columns):
            y, labels = _target(c, col, kind, self.name)
            ys.append(y)
            if labels is not None:
                classes[n] = labels
        info = {"rows_total": {n: int(len(f)) for n, f in zip(names, frames)},
                "rows_dropped_missing": {n: int(len(f) - len(c))
                                         for n, f, c in zip(names, frames, cleans)},
                "features": features, "classes": classes}
        self._frame_cache = (xs, ys, info, [c.index for c in cleans])
        return self._frame_cache

    def tasks(self) -> tuple[Task, ...]:
        _, _, info, _ = self._arrays()
        out = []
        for name, _, kind in self.task_columns:
            width = max(2, len(info["classes"][name])) if kind == CLASSIFICATION else 1
            out.append(Task(name, kind, width,
                            self.task_metrics.get(name, _default_metrics(kind)),
                            primary=self.primary_metrics.get(name)))
        return tuple(out)

    def _stratify(self) -> list[np.ndarray | None]:
        _, ys, _, _ = self._arrays()
        return [y if kind == CLASSIFICATION else None
                for y, (_, _, kind) in zip(ys, self.task_columns)]

    def load(self, seed: int) -> TaskData:
        xs, ys, info, _ = self._arrays()
        tasks = self.tasks()
        for task, y in zip(tasks, ys):
            if task.kind == CLASSIFICATION:
                check_labels(self.name, task.name, y, task.n_outputs)
        data = make_separate_splits(xs, ys, [t.kind for t in tasks], seed,
                                    stratify=self._stratify(), pair=self.name,
                                    task_names=[t.name for t in tasks])
        data.info.update(info)
        return data

    def split_rows(self, seed: int) -> list[dict[str, np.ndarray]]:
        """Per task, its table's index labels of the rows in each split of ``seed``, in the
        order of the rows of :meth:`load`'s splits (the draw of :func:`make_separate_splits`)."""
        xs, _, _, indices = self._arrays()
        out = []
        for x, index, strat in zip(xs, indices, self._stratify()):
            parts = split_indices(len(x), seed, stratify=strat)
            out.append({n: np.asarray(index[p]) for n, p in zip(("train", "val", "test"), parts)})
        return out


def _training_defaults(epochs: int | None, batch_size: int | None, lr: float | None,
                       hidden: Sequence[int] | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            attrs[key] = value
    if hidden is not None:
        attrs["hidden"] = tuple(hidden)
    return attrs


def frame_task_pair(name: str, frame_fn: Callable[[], Any] | None = None,
                    inputs: Sequence[str] = (),
                    classification: str | Sequence[str] | None = None,
                    regression: str | Sequence[str] | None = None, *,
                    tasks: dict[str, tuple[Callable[[], Any], str, str]] | None = None,
                    metrics: dict[str, str | Sequence[str]] | None = None,
                    primary: dict[str, str] | None = None, description: str = "",
                    epochs: int | None = None, batch_size: int | None = None,
                    lr: float | None = None, hidden: Sequence[int] | None = None,
                    register: bool = True) -> type[TaskPair]:
    """Make (and by default register under ``name``) a task pair read from pandas DataFrames.

    One table for all tasks: ``frame_fn()`` returns it; ``classification`` and ``regression``
    name the target columns, each a task named after its column (:class:`FrameTaskPair`).
    One table per task: ``tasks={"age": (load_a, "age", "regression"), "sex": (load_b, "sex",
    "classification")}`` maps each task to (a function returning its table, its target column,
    its kind), each table of its own size (:class:`FrameTablesTaskPair`). ``inputs`` are the
    input columns (in every table).

    ``metrics`` lists, per task, the metrics it reports (``{"sex": ["accuracy", "auroc"]}``;
    any registered metric of the task's kind; default accuracy, macro-F1 and ECE for
    classification, MAE, RMSE and R^2 for regression). ``primary`` names a task's primary metric
    (``{"body_mass_g": "rmse"}``), one of its metrics: the metric that drives selection,
    Delta_m% and ranks (default accuracy / MAE). Training defaults not given keep the base's.
    """
    from mtl_bench.registry import register_task

    attrs: dict[str, Any] = {"input_columns": tuple(_as_columns(inputs)),
                             **_training_defaults(epochs, batch_size, lr, hidden)}
    if tasks is not None:
        if frame_fn is not None or classification is not None or regression is not None:
            raise UserError(f"task pair '{name}': give either one table (frame_fn with "
                            "classification / regression columns) or tasks=, not both")
        if not inputs or not tasks:
            raise UserError(f"task pair '{name}': needs input columns and at least one task")
        specs, loaders = [], {}
        for task, spec in tasks.items():
            if (not isinstance(spec, tuple) or len(spec) != 3 or not callable(spec[0])
                    or spec[2] not in (CLASSIFICATION, REGRESSION)):
                raise UserError(f"task pair '{name}': tasks['{task}'] should be (a function "
                                "returning a DataFrame, the target column, 'classification' "
                                f"or 'regression'), got {spec!r}")
            specs.append((str(task), str(spec[1]), spec[2]))
            loaders[str(task)] = spec[0]
        kinds = {t: k for t, _, k in specs}
        base: type[TaskPair] = FrameTablesTaskPair
        first = next(iter(loaders.values()))
        attrs.update(task_columns=tuple(specs),
                     load_table=lambda self, task: loaders[task](),
                     description=description or f"{', '.join(kinds)}, one data frame each")
    else:
        cls_cols, reg_cols = _as_columns(classification), _as_columns(regression)
        if frame_fn is None or not inputs or not (cls_cols or reg_cols):
            raise UserError(f"task pair '{name}': needs input columns and at least one "
                            "classification or regression column of frame_fn's table (or "
                            "tasks=, one table per task)")
        kinds = {**{c: CLASSIFICATION for c in cls_cols}, **{c: REGRESSION for c in reg_cols}}
        base, first = FrameTaskPair, frame_fn
        attrs.update(classification_columns=cls_cols, regression_columns=reg_cols,
                     load_frame=lambda self: frame_fn(),
                     description=description
                     or f"{', '.join(cls_cols + reg_cols)} from a data frame")
    chosen, primaries = check_frame_metrics(name, kinds, metrics, primary)
    attrs.update(task_metrics=chosen, primary_metrics=primaries,
                 __doc__=description or f"Tasks read from data frames ({name}).",
                 # the run record hashes the defining module's source: make that the plug-in's
                 __module__=getattr(first, "__module__", __name__))
    cls = type(f"FramePair_{name.replace('-', '_')}", (base,), attrs)
    if register:
        return register_task(name)(cls)
    cls.name = name
    return cls
