"""Two overlapping handwritten digits, one classifier per digit: a small MultiMNIST."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtl_bench.errors import UserError, check_param
from mtl_bench.registry import register_task
from mtl_bench.strategy import CLASSIFICATION
from mtl_bench.task import Split, Task, TaskData, TaskPair, split_indices

DIGIT = 8  # sklearn's digits are 8 x 8 images with 17 grey levels (0..16)
MAX_LEVEL = 16.0
SPLITS = ("train", "val", "test")


def load_digit_images(pair: str = "multi-digits") -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8 x 8 digits that ship inside scikit-learn (no download), and their labels."""
    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
    except Exception as exc:  # pragma: no cover - scikit-learn is a declared dependency
        raise UserError(f"task pair '{pair}': scikit-learn's digits failed to load: "
                        f"{type(exc).__name__}: {exc}") from exc
    return digits.images.astype(np.float64), digits.target.astype(np.int64)


def overlay(left: np.ndarray, right: np.ndarray, overlap: int) -> np.ndarray:
    """Place ``right`` (..., 8, 8) to the right of ``left`` so that ``overlap`` columns coincide;
    where both have ink the brighter pixel wins (max-combine). Result: (..., 8, 16 - overlap)."""
    width = 2 * DIGIT - overlap
    shape = left.shape[:-1] + (width,)
    a = np.zeros(shape, dtype=left.dtype)
    b = np.zeros(shape, dtype=right.dtype)
    a[..., :DIGIT] = left
    b[..., width - DIGIT:] = right
    return np.maximum(a, b)


def partners(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of 0..n-1 without fixed points (no digit image is paired with itself)."""
    if n < 2:
        raise ValueError("pairing needs at least two images")
    perm = rng.permutation(n)
    for i in range(n):
        if perm[i] == i:
            # swapping with the next slot leaves neither slot fixed (perm[j] != i, i != j), and
            # the wrap-around at the end cannot fix slot 0 again (perm[0] becomes n - 1)
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return perm


def pair_indices(pool: np.ndarray, pairs_per_image: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (left, right) of composites built from one pool of images: each image is the
    left digit of ``pairs_per_image`` composites and the right digit of as many."""
    lefts, rights = [], []
    for _ in range(pairs_per_image):
        order = rng.permutation(len(pool))
        lefts.append(pool[order])
        rights.append(pool[order[partners(len(pool), rng)]])
    return np.concatenate(lefts), np.concatenate(rights)


def composite_arrays(pairs_per_image: int = 2, overlap: int = 4, construction_seed: int = 0,
                     fractions: tuple[float, float] = (0.6, 0.2)) -> dict[str, Any]:
    """Flattened composites and both labels for each split, built from ``construction_seed``.

    The 1797 digit images are first split 60 / 20 / 20 (stratified by digit) into disjoint
    pools, and composites are formed only within a pool, so no digit image of the test set
    appears in a training composite. Returns {split: (x (n, 8 * width) in [0, 1], left labels,
    right labels, left image ids, right image ids)} plus "info".
    """
    images, labels = load_digit_images()
    rng = np.random.default_rng(construction_seed)
    pools = split_indices(len(images), construction_seed, fractions, stratify=labels)
    out: dict[str, Any] = {}
    for name, pool in zip(SPLITS, pools):
        left, right = pair_indices(pool, pairs_per_image, rng)
        x = overlay(images[left], images[right], overlap) / MAX_LEVEL
        out[name] = (x.reshape(len(x), -1), labels[left], labels[right], left, right)
    out["info"] = {"pairs_per_image": pairs_per_image, "overlap": overlap,
                   "construction_seed": construction_seed,
                   "canvas": [DIGIT, 2 * DIGIT - overlap],
                   "pool_sizes": [int(len(p)) for p in pools]}
    return out


class LeNetTrunk(nn.Module):
    """Two 3 x 3 conv + ReLU + 2 x 2 max-pool stages and one fully connected ReLU layer.

    Inputs arrive flattened (rows of 8 * width pixels) and are reshaped to one-channel images.
    """

    def __init__(self, width: int, channels: tuple[int, int] = (10, 20), out: int = 50):
        super().__init__()
        self.width = width
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = c2 * (DIGIT // 4) * (width // 4)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, out), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x.view(-1, 1, DIGIT, self.width)))

    def stages(self) -> list[nn.Module]:
        """The trunk cut after each learned layer (conv block, conv block, fully connected),
        for architectures that mix or gate between layers (cross-stitch, PLE)."""
        return [nn.Sequential(nn.Unflatten(1, (1, DIGIT, self.width)), *self.features[:3]),
                self.features[3:], self.fc]


@register_task("multi-digits")
class MultiDigits(TaskPair):
    """Classify the left and the right digit of two overlapping 8 x 8 digits.

    A small version of the MultiMNIST experiment of Sener & Koltun, "Multi-Task Learning as
    Multi-Objective Optimization", NeurIPS 2018 (https://arxiv.org/abs/1810.04650), built from
    scikit-learn's ``load_digits`` so it needs no download. Two digits are placed side by side
    on an 8 x (16 - overlap) canvas, the right one shifted left so that ``overlap`` columns
    coincide; overlapping pixels take the maximum of the two. Pixels are divided by 16 (range
    [0, 1]); inputs are not standardised further.

    Construction is fixed by ``construction_seed`` and never depends on the run seed: the
    digit images are split once into disjoint train / val / test pools (60 / 20 / 20,
    stratified by digit) and composites are paired within a pool, each image being the left
    digit of ``pairs_per_image`` composites and the right digit of as many (never with
    itself). No test digit image is ever seen in training, as in MultiMNIST, whose test
    composites come from MNIST's test images. So every run sees the same splits; the run seed
    changes the initialisation and the batch order only.

    Network: a LeNet-like trunk (conv 3x3 x10, pool, conv 3x3 x20, pool, fully connected 50,
    ReLU) shared by both tasks; each head is a fully connected layer of 50 ReLU units and a
    10-way output (MultiMNIST's heads are likewise small fully connected decoders).

    Options:
        pairs_per_image: composites each digit image starts (as the left digit), >= 1.
        overlap: columns the two digits share, 0..7 (4 gives an 8 x 12 canvas).
        construction_seed: seed of the pool split and of the pairing.
    """

    description = "left / right digit of two overlapping 8x8 digits (small MultiMNIST)"
    epochs = 15
    batch_size = 128
    lr = 3e-3
    hidden = (50,)

    def __init__(self, pairs_per_image: int = 2, overlap: int = 4, construction_seed: int = 0):
        check_param(isinstance(pairs_per_image, int) and not isinstance(pairs_per_image, bool)
                    and 1 <= pairs_per_image <= 50, "pairs_per_image", "an integer from 1 to 50",
                    pairs_per_image)
        check_param(isinstance(overlap, int) and not isinstance(overlap, bool)
                    and 0 <= overlap < DIGIT, "overlap", "an integer from 0 to 7", overlap)
        check_param(isinstance(construction_seed, int) and not isinstance(construction_seed, bool)
                    and construction_seed >= 0, "construction_seed", "a non-negative integer",
                    construction_seed)
        self.pairs_per_image = pairs_per_image
        self.overlap = overlap
        self.construction_seed = construction_seed

    @property
    def canvas_width(self) -> int:
        return 2 * DIGIT - self.overlap

    def options(self) -> dict[str, Any]:
        return {"pairs_per_image": self.pairs_per_image, "overlap": self.overlap,
                "construction_seed": self.construction_seed}

    def tasks(self) -> tuple[Task, ...]:
        return (Task("left", CLASSIFICATION, 10, ("accuracy", "macro_f1")),
                Task("right", CLASSIFICATION, 10, ("accuracy", "macro_f1")))

    def build_trunk(self, n_features: int) -> nn.Module:
        if n_features != DIGIT * self.canvas_width:
            raise UserError(f"task pair '{self.name}': expected {DIGIT * self.canvas_width} "
                            f"input pixels (8 x {self.canvas_width}), got {n_features}")
        return LeNetTrunk(self.canvas_width, out=self.hidden[-1])

    def build_head(self, task: Task, width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(width, 50), nn.ReLU(), nn.Linear(50, task.n_outputs))

    def load(self, seed: int) -> TaskData:
        # ``seed`` (the run seed) is deliberately unused: the composites and their split are
        # fixed by ``construction_seed`` (see the class docstring).
        arrays = composite_arrays(self.pairs_per_image, self.overlap, self.construction_seed)

        def split(name: str) -> Split:
            x, left, right, _, _ = arrays[name]
            return Split((torch.tensor(x, dtype=torch.float32),),
                         (torch.tensor(left), torch.tensor(right)))

        info = dict(arrays["info"])
        info.update({f"n_{name}": int(len(arrays[name][0])) for name in SPLITS})
        return TaskData(split("train"), split("val"), split("test"), (None, None), info)
