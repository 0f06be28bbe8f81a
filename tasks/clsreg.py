"""Classification + regression from one shared input: Palmer penguins, vega cars or synthetic."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mtl_bench.errors import UserError, check_param
from mtl_bench.registry import register_task
from mtl_bench.strategy import CLASSIFICATION, REGRESSION
from mtl_bench.task import Task, TaskData, TaskPair, check_labels, frame_arrays, make_splits
from mtl_bench.tasks._data import CARS_INPUTS, cars_frame, check_synthetic_options

PENGUIN_FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm"]
DATASETS = ("penguins", "cars", "synthetic")

#: (classification task, regression task) names per real dataset
TASK_NAMES = {"penguins": ("species", "body_mass"), "cars": ("origin", "mpg"),
              "synthetic": ("class", "target")}


def load_penguins_frame() -> pd.DataFrame:
    """The Palmer penguins table shipped inside the ``palmerpenguins`` package (no network)."""
    try:
        from palmerpenguins import load_penguins
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise UserError("task pair 'clsreg': the 'palmerpenguins' package is not installed "
                        "(pip install palmerpenguins)") from exc
    return load_penguins()


def penguins_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Inputs: bill length/depth, flipper length, island and sex (one-hot).
    Targets: species (3 classes) and body mass in grams.

    Missing values: rows with any missing value in the columns used are dropped; the count is
    returned in the info dict (11 of 344 rows in the shipped table).
    """
    df = load_penguins_frame()
    cols = PENGUIN_FEATURES + ["island", "sex", "species", "body_mass_g"]
    clean = df[cols].dropna()
    x = pd.concat([
        clean[PENGUIN_FEATURES].astype(float),
        pd.get_dummies(clean["island"], prefix="island", dtype=float),
        pd.get_dummies(clean["sex"], prefix="sex", dtype=float),
    ], axis=1)
    species = clean["species"].astype("category")
    info = {"rows_total": int(len(df)), "rows_dropped_missing": int(len(df) - len(clean)),
            "classes": list(species.cat.categories), "features": list(x.columns)}
    return (x.to_numpy(dtype=np.float64), species.cat.codes.to_numpy(dtype=np.int64),
            clean["body_mass_g"].to_numpy(dtype=np.float64), info)


def cars_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Inputs: cylinders, displacement, horsepower, weight, acceleration, model year.
    Targets: origin (Europe / Japan / USA) and fuel economy in miles per gallon.

    Missing values: rows with any missing value in the columns used are dropped; the count is
    returned in the info dict (14 of 406 rows in the shipped table: 8 without miles per gallon,
    6 without horsepower).
    """
    x, (origin, mpg), info = frame_arrays(cars_frame("clsreg"), CARS_INPUTS, ["Origin"],
                                          ["Miles_per_Gallon"], pair="clsreg")
    info["classes"] = info["classes"]["Origin"]
    return x, origin, mpg, info


def synthetic_arrays(n_samples: int, n_features: int, n_classes: int, target_scale: float,
                     noise: float, seed: int = 1234):
    """Known ground truth: a random two-layer teacher shared by both tasks.

    z = tanh(x A); class = argmax(z C); y = target_scale * (z b + noise * eps). The teacher is
    fixed by ``seed`` (not by the run seed), so every run sees the same problem.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, n_features))
    a = rng.standard_normal((n_features, 16)) / np.sqrt(n_features)
    z = np.tanh(x @ a * 2.0)
    c = rng.standard_normal((16, n_classes))
    b = rng.standard_normal(16)
    cls = (z @ c).argmax(axis=1)
    y = target_scale * (z @ b / np.sqrt(16) + noise * rng.standard_normal(n_samples))
    info = {"target_scale": target_scale, "noise": noise, "teacher_seed": seed}
    return x, cls.astype(np.int64), y, info


@register_task("clsreg")
class ClsReg(TaskPair):
    """Classification + regression on one input.

    ``dataset=penguins`` (default): species (3) + body mass in grams from bill, flipper, island
    and sex (palmerpenguins). ``dataset=cars``: origin (3) + miles per gallon from the other
    numeric columns of the vega ``cars`` table (vega_datasets, offline). ``dataset=synthetic``:
    a random teacher; ``target_scale`` dials a loss-scale imbalance. Rows with a missing value
    in a used column are dropped and counted in the run record's data info.
    """

    description = "class + regression target on one input: penguins, vega cars or synthetic"
    epochs = 30
    batch_size = 32
    lr = 3e-3
    hidden = (64, 64)

    def __init__(self, dataset: str = "penguins", n_samples: int = 2000, n_features: int = 16,
                 n_classes: int = 3, target_scale: float = 1.0, noise: float = 0.1):
        check_param(dataset in DATASETS, "dataset", "one of " + ", ".join(DATASETS), dataset)
        check_synthetic_options(n_samples, n_features, n_classes, target_scale, noise)
        self.dataset = dataset
        self.n_samples, self.n_features, self.n_classes = n_samples, n_features, n_classes
        self.target_scale, self.noise = float(target_scale), float(noise)

    def options(self) -> dict[str, Any]:
        if self.dataset != "synthetic":
            return {"dataset": self.dataset}
        return {"dataset": self.dataset, "n_samples": self.n_samples,
                "n_features": self.n_features, "n_classes": self.n_classes,
                "target_scale": self.target_scale, "noise": self.noise}

    def tasks(self) -> tuple[Task, ...]:
        n_cls = self.n_classes if self.dataset == "synthetic" else 3
        cls_name, reg_name = TASK_NAMES[self.dataset]
        return (
            Task(cls_name, CLASSIFICATION, n_cls, ("accuracy", "macro_f1")),
            Task(reg_name, REGRESSION, 1, ("mae", "rmse", "r2")),
        )

    def load(self, seed: int) -> TaskData:
        if self.dataset == "penguins":
            x, cls, y, info = penguins_arrays()
            standardise = True
        elif self.dataset == "cars":
            x, cls, y, info = cars_arrays()
            standardise = True
        else:
            x, cls, y, info = synthetic_arrays(self.n_samples, self.n_features, self.n_classes,
                                               self.target_scale, self.noise)
            # the target keeps its scale on purpose: target_scale dials a loss-scale imbalance
            standardise = False
        tasks = self.tasks()
        check_labels(self.name, tasks[0].name, cls, tasks[0].n_outputs)
        data = make_splits(x, [cls, y], [t.kind for t in tasks], seed,
                           standardise_targets=standardise, stratify=cls, pair=self.name)
        data.info.update(info)
        return data
