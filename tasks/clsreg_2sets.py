"""Classification + regression where each task has its own dataset of its own size."""

from __future__ import annotations

from typing import Any

from mtl_bench.errors import UserError, check_param
from mtl_bench.registry import register_task
from mtl_bench.strategy import CLASSIFICATION, REGRESSION
from mtl_bench.task import Task, TaskData, TaskPair, check_labels, make_separate_splits
from mtl_bench.tasks._data import Teacher, check_synthetic_options

#: Fixed seeds of the two samples (the run seed only changes the split).
CLASSIFICATION_DRAW, REGRESSION_DRAW = 1, 2


@register_task("clsreg-2sets")
class ClsRegTwoSets(TaskPair):
    """The "two datasets" scenario: a classification set and a regression set, drawn
    independently from one random teacher (``tasks/_data.py``: z = tanh(2 x A), class =
    argmax(z C), y = target_scale (z b + noise eps)), with the classification set
    ``size_ratio`` times as large as the regression set. Both tasks share the trunk, so the
    large set can teach the features the small regression set needs.

    Each set is split 60/20/20 on its own with the run seed; inputs are standardised with the
    pooled training rows of both sets; the regression target with its own training rows
    (metrics in the target's units). How much of each set one epoch holds is set by
    ``--sampling``: an epoch is one pass over the classification (largest) set, and the
    regression set is passed once (``proportional``), ``size_ratio`` times (``equal``) or
    ``size_ratio^(1 - 1/2)`` times (``temperature``, t = 2); see ``mtl_bench.task.epoch_quotas``.

    Strategies that take gradients at the shared representation (``rep``) need one input for
    all tasks and are rejected here; parameter-level gradient strategies work.

    Args:
        n_samples: rows of the classification set.
        size_ratio: classification rows / regression rows (> 0); the regression set has
            round(n_samples / size_ratio) rows, at least 20.
        n_features: input width.
        n_classes: classes of the classification task.
        target_scale: scale of the regression target (a loss-scale imbalance when large).
        noise: noise of the regression target, relative to its signal.
    """

    description = "class + regression target, each with its own synthetic set (10x size ratio)"
    epochs = 20
    batch_size = 64
    lr = 3e-3
    hidden = (64, 64)

    def __init__(self, n_samples: int = 4000, size_ratio: float = 10.0, n_features: int = 16,
                 n_classes: int = 3, target_scale: float = 1.0, noise: float = 0.1):
        check_synthetic_options(n_samples, n_features, n_classes, target_scale, noise)
        check_param(isinstance(size_ratio, (int, float)) and not isinstance(size_ratio, bool)
                    and size_ratio > 0, "size_ratio", "a positive float", size_ratio)
        self.n_samples, self.size_ratio = n_samples, float(size_ratio)
        self.n_regression = int(round(n_samples / self.size_ratio))
        if self.n_regression < 20:
            raise UserError(f"task pair '{self.name}': n_samples / size_ratio = "
                            f"{n_samples} / {size_ratio:g} leaves {self.n_regression} regression "
                            "rows; at least 20 are needed for train / val / test splits")
        self.n_features, self.n_classes = n_features, n_classes
        self.target_scale, self.noise = float(target_scale), float(noise)

    def options(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "size_ratio": self.size_ratio,
                "n_features": self.n_features, "n_classes": self.n_classes,
                "target_scale": self.target_scale, "noise": self.noise}

    def tasks(self) -> tuple[Task, ...]:
        return (Task("class", CLASSIFICATION, self.n_classes, ("accuracy", "macro_f1", "ece")),
                Task("target", REGRESSION, 1, ("mae", "rmse", "r2")))

    def load(self, seed: int) -> TaskData:
        teacher = Teacher(self.n_features, self.n_classes)
        x_cls, cls, _ = teacher.sample(self.n_samples, CLASSIFICATION_DRAW, self.target_scale,
                                       self.noise)
        x_reg, _, y = teacher.sample(self.n_regression, REGRESSION_DRAW, self.target_scale,
                                     self.noise)
        tasks = self.tasks()
        check_labels(self.name, tasks[0].name, cls, tasks[0].n_outputs)
        data = make_separate_splits([x_cls, x_reg], [cls, y], [t.kind for t in tasks], seed,
                                    stratify=[cls, None], pair=self.name,
                                    task_names=[t.name for t in tasks])
        data.info.update({"teacher_seed": teacher.seed, "n_classification": self.n_samples,
                          "n_regression": self.n_regression, "size_ratio": self.size_ratio})
        return data
