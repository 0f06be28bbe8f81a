"""Age class + sex from one network, as one sigmoid/BCE block or as two softmax heads."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtl_bench.errors import check_param
from mtl_bench.registry import register_task
from mtl_bench.strategy import CLASSIFICATION
from mtl_bench.task import (
    Task,
    TaskData,
    TaskPair,
    bce_onehot_loss,
    ce_loss,
    check_labels,
    make_splits,
    sigmoid_proba,
    softmax_proba,
)
from mtl_bench.tasks._data import DIABETES_AGE_CLASSES, diabetes_age_class, diabetes_arrays
from mtl_bench.tasks._genomic import age_class_names, generate, genomic_spec

FORMULATIONS = ("bce", "softmax")
DATASETS = ("genomic", "diabetes")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "precision", "recall", "ece")


def age_sex_inputs(pair: str, dataset: str, spec: Any
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(inputs, age in years, age class, sex) of either dataset, plus the record's info."""
    if dataset == "genomic":
        cohort = generate(spec)
        info = dict(cohort.info, dataset="genomic", age_classes=age_class_names(spec))
        return cohort.x, cohort.age, cohort.age_class, cohort.sex, info
    x, age, sex, info = diabetes_arrays(pair)
    info.update(dataset="diabetes", age_classes=list(DIABETES_AGE_CLASSES))
    return x, age, diabetes_age_class(age), sex, info


@register_task("multilabel-vs-softmax")
class MultilabelVsSoftmax(TaskPair):
    """Age class and sex predicted by one network under two output formulations.

    ``formulation=bce``: the output layer is one block of n_age + 2 sigmoid units trained with
    binary cross-entropy against the multi-hot target (one-hot age | one-hot sex). It is built
    as two linear heads of n_age and 2 units: each output unit has its own weight row, so two
    heads on the same trunk are exactly one (n_age + 2)-unit layer, and splitting the BCE into
    its age block and its sex block is what lets a strategy see (and weight) two losses. Each
    block's BCE is averaged over the block's units and samples (PyTorch's
    ``BCEWithLogitsLoss``); the one-layer loss averaged over all n_age + 2 units is therefore
    the fixed-weight run with weights (n_age, 2) / (n_age + 2). Predictions: arg-max within each
    block. Probabilities for the metrics: the raw sigmoid scores (not renormalised), so ECE
    tests the arg-max unit's sigmoid, the model's own estimate that the predicted class is the
    true one (the BCE minimiser of unit k is P(class = k | x)).

    ``formulation=softmax``: two heads of the same widths, softmax + cross-entropy each.

    Both formulations share data, split, trunk, initialisation seed and budget, so a run with
    ``--set multilabel-vs-softmax.formulation=bce,softmax`` compares them directly.

    Data: ``dataset=genomic`` (default) is the synthetic cohort of ``tasks/_genomic.py`` (18
    age classes of 5 years + 2 sexes = 20 labels); its knobs are options of this pair.
    ``dataset=diabetes`` is scikit-learn's diabetes table: the 8 measurement columns predict
    the age class (<30, 30s, 40s, 50s, 60+) and sex (age is only weakly predictable there).

    Args:
        formulation: ``bce`` or ``softmax``.
        dataset: ``genomic`` or ``diabetes``.
        **generator: options of the genomic generator (``n_sex_genes``, ``age_imbalance``...).
    """

    description = "age class + sex: one sigmoid/BCE block vs two softmax heads (genomic/diabetes)"
    epochs = 20
    batch_size = 64
    lr = 1e-3
    hidden = (64, 64)

    def __init__(self, formulation: str = "bce", dataset: str = "genomic", **generator: Any):
        check_param(formulation in FORMULATIONS, "formulation",
                    "one of " + ", ".join(FORMULATIONS), formulation)
        check_param(dataset in DATASETS, "dataset", "one of " + ", ".join(DATASETS), dataset)
        self.formulation, self.dataset = formulation, dataset
        self.spec = genomic_spec(self.name, dataset, generator, ("formulation", "dataset"))

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"formulation": self.formulation, "dataset": self.dataset}
        if self.spec is not None:
            out.update(self.spec.options())
        return out

    def tasks(self) -> tuple[Task, ...]:
        n_age = self.spec.n_age_classes if self.spec is not None else len(DIABETES_AGE_CLASSES)
        if self.formulation == "bce":
            loss, proba = bce_onehot_loss, sigmoid_proba
        else:
            loss, proba = ce_loss, softmax_proba
        return (Task("age", CLASSIFICATION, n_age, CLASSIFICATION_METRICS, loss, proba),
                Task("sex", CLASSIFICATION, 2, CLASSIFICATION_METRICS, loss, proba))

    def load(self, seed: int) -> TaskData:
        x, _, age_class, sex, info = age_sex_inputs(self.name, self.dataset, self.spec)
        age_task, sex_task = self.tasks()
        check_labels(self.name, age_task.name, age_class, age_task.n_outputs)
        check_labels(self.name, sex_task.name, sex, sex_task.n_outputs)
        # stratify on age class x sex so every split holds the same mix of the 20 labels
        strata = age_class * 2 + sex
        data = make_splits(x, [age_class, sex], [CLASSIFICATION, CLASSIFICATION], seed,
                           stratify=strata, pair=self.name)
        data.info.update(info, formulation=self.formulation)
        return data
