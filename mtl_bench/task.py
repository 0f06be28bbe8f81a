"""The task-pair protocol plus the data helpers every task pair shares.

A task pair provides in-memory tensor splits, a trunk and one head per task, one loss per task
and the metrics (with direction) to report. Data stay on the device as whole tensors and are
batched by index slices, never by a per-sample DataLoader.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_bench.errors import UserError
from mtl_bench.metrics import get_metric
from mtl_bench.strategy import CLASSIFICATION, REGRESSION, TaskInfo

ARCHITECTURES = ("shared", "separate")
SAMPLING_POLICIES = ("proportional", "equal", "temperature")


def softmax_proba(output: Tensor) -> Tensor:
    return torch.softmax(output, dim=-1)


def sigmoid_block_proba(output: Tensor) -> Tensor:
    """Class scores of a sigmoid block, renormalised to sum to one (for ECE and argmax)."""
    p = torch.sigmoid(output)
    return p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def mse_loss(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output.squeeze(-1), target)


def ce_loss(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output, target)


@dataclass(frozen=True)
class Task:
    """One task of a pair: its loss, output width and metrics (first metric selects models)."""

    name: str
    kind: str  # CLASSIFICATION or REGRESSION
    n_outputs: int
    metrics: tuple[str, ...]
    loss: Callable[[Tensor, Tensor], Tensor] | None = None
    proba: Callable[[Tensor], Tensor] = softmax_proba

    def __post_init__(self) -> None:
        if self.kind not in (CLASSIFICATION, REGRESSION):
            raise ValueError(f"task '{self.name}': kind must be classification or regression")
        for m in self.metrics:
            if get_metric(m).kind != self.kind:
                raise ValueError(f"task '{self.name}': metric '{m}' is not a {self.kind} metric")
        if self.loss is None:
            object.__setattr__(self, "loss", ce_loss if self.kind == CLASSIFICATION else mse_loss)

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


class MultiTaskNet(nn.Module):
    """A trunk shared by every task plus one head per task.

    ``forward`` returns the representations (one per distinct input) and one output per task.
    With ``detach_rep`` the heads see a detached copy of each representation that requires grad,
    so the harness can take task gradients at the representation and back-propagate a combined
    gradient into the trunk once.
    """

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trunk.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.heads.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the last trunk module that has any (GradNorm's 'last shared layer')."""
        last: list[nn.Parameter] = []
        for module in self.trunk.modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if own:
                last = own
        return last

    def forward(self, inputs: Sequence[Tensor], detach_rep: bool = False):
        reps = [self.trunk(x) for x in inputs]
        head_in = [r.detach().requires_grad_(True) for r in reps] if detach_rep else reps
        shared = len(inputs) == 1
        outputs = [head(head_in[0 if shared else i]) for i, head in enumerate(self.heads)]
        return reps, head_in, outputs


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
        """Hard sharing (one trunk) or separate networks (one trunk per task, nothing shared)."""
        all_tasks = self.tasks()
        indices = list(range(len(all_tasks))) if task_indices is None else list(task_indices)
        width = self.hidden[-1] if self.hidden else data.n_features[0]
        if architecture == "shared":
            trunk = self.build_trunk(data.n_features[0])
            return MultiTaskNet(trunk, [self.build_head(all_tasks[i], width) for i in indices])
        if architecture == "separate":
            heads = [nn.Sequential(self.build_trunk(data.train.input_for(i).shape[1]),
                                   self.build_head(all_tasks[i], width)) for i in indices]
            return MultiTaskNet(nn.Identity(), heads)
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
def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Shared inputs: ceil(N / b). Separate datasets: ceil(largest N / b) (each step draws
    about b samples from the largest set, so one epoch passes over it about once)."""
    n = max(split.sizes()) if not split.shared_inputs else len(split.inputs[0])
    return max(1, -(-n // batch_size))


def task_batch_sizes(sizes: Sequence[int], batch_size: int, policy: str,
                     temperature: float = 2.0) -> list[int]:
    """Per-task samples per step for separate datasets.

    proportional: b_i = b * N_i / max N; equal: b_i = b; temperature: b_i = b * (N_i / max N)^(1/t).
    Every task gets at least one sample per step.
    """
    if policy not in SAMPLING_POLICIES:
        raise UserError(f"unknown sampling policy '{policy}'; choose from: "
                        + ", ".join(SAMPLING_POLICIES))
    n_max = max(sizes)
    if policy == "equal":
        return [min(n, batch_size) for n in sizes]
    power = 1.0 if policy == "proportional" else 1.0 / temperature
    return [min(n, max(1, int(round(batch_size * (n / n_max) ** power)))) for n in sizes]


def iterate_batches(split: Split, batch_size: int, generator: torch.Generator,
                    policy: str = "proportional", temperature: float = 2.0
                    ) -> Iterator[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
    """Shuffled index-slice batches held in memory.

    Shared inputs: one permutation per epoch, consecutive slices. Separate datasets: each task
    walks its own permutation (re-shuffled when exhausted) with its own per-step batch size.
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
    per_task = task_batch_sizes(sizes, batch_size, policy, temperature)
    perms = [torch.randperm(n, generator=generator) for n in sizes]
    cursors = [0] * len(sizes)
    for _ in range(steps_per_epoch(split, batch_size)):
        xs, ys = [], []
        for i, (n, b) in enumerate(zip(sizes, per_task)):
            if cursors[i] + b > n:
                perms[i] = torch.randperm(n, generator=generator)
                cursors[i] = 0
            idx = perms[i][cursors[i]:cursors[i] + b].to(device)
            cursors[i] += b
            xs.append(split.inputs[i][idx])
            ys.append(split.targets[i][idx])
        yield tuple(xs), tuple(ys)
