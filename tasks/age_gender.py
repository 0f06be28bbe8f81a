"""Age (regression or classes) + sex classification from one shared input."""

from __future__ import annotations

from typing import Any

from mtl_bench.errors import check_param
from mtl_bench.registry import register_task
from mtl_bench.strategy import CLASSIFICATION, REGRESSION
from mtl_bench.task import Task, TaskData, TaskPair, check_labels, make_splits
from mtl_bench.tasks._data import DIABETES_AGE_CLASSES
from mtl_bench.tasks._genomic import genomic_spec
from mtl_bench.tasks.multilabel_vs_softmax import CLASSIFICATION_METRICS, age_sex_inputs

AGE_MODES = ("regression", "bins")
DATASETS = ("genomic", "diabetes")
REGRESSION_METRICS = ("mae", "rmse", "r2")


@register_task("age-gender")
class AgeGender(TaskPair):
    """Age and sex predicted by one network: a regression + classification pair.

    ``age=regression`` (default): age in years, MSE on the target standardised with training
    statistics; MAE / RMSE / R^2 are reported in years. ``age=bins``: the age class, softmax +
    cross-entropy. Sex: two classes, softmax + cross-entropy.

    Data: ``dataset=genomic`` (default) is the synthetic cohort of ``tasks/_genomic.py``, whose
    knobs are options of this pair (ages 0..90, 18 classes of 5 years in ``bins`` mode).
    ``dataset=diabetes`` is scikit-learn's diabetes table (442 patients, ages 19..79): inputs
    are the 8 measurement columns (bmi, bp, s1..s6); the disease-progression target is left
    out (an outcome a year later, and no help for age or sex). Age is only weakly predictable
    there (linear R^2 about 0.1), sex moderately (about 0.69 accuracy).

    Args:
        age: ``regression`` or ``bins``.
        dataset: ``genomic`` or ``diabetes``.
        **generator: options of the genomic generator (``n_age_genes``, ``age_effect``...).
    """

    description = "age regression (or classes) + sex classification (genomic or diabetes)"
    epochs = 20
    batch_size = 64
    lr = 1e-3
    hidden = (64, 64)

    def __init__(self, age: str = "regression", dataset: str = "genomic", **generator: Any):
        check_param(age in AGE_MODES, "age", "one of " + ", ".join(AGE_MODES), age)
        check_param(dataset in DATASETS, "dataset", "one of " + ", ".join(DATASETS), dataset)
        self.age, self.dataset = age, dataset
        self.spec = genomic_spec(self.name, dataset, generator, ("age", "dataset"))

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"age": self.age, "dataset": self.dataset}
        if self.spec is not None:
            out.update(self.spec.options())
        return out

    def tasks(self) -> tuple[Task, ...]:
        sex = Task("sex", CLASSIFICATION, 2, CLASSIFICATION_METRICS)
        if self.age == "regression":
            return Task("age", REGRESSION, 1, REGRESSION_METRICS), sex
        n_age = self.spec.n_age_classes if self.spec is not None else len(DIABETES_AGE_CLASSES)
        return Task("age", CLASSIFICATION, n_age, CLASSIFICATION_METRICS), sex

    def load(self, seed: int) -> TaskData:
        x, age_years, age_class, sex, info = age_sex_inputs(self.name, self.dataset, self.spec)
        age_task, sex_task = self.tasks()
        check_labels(self.name, sex_task.name, sex, sex_task.n_outputs)
        if self.age == "bins":
            check_labels(self.name, age_task.name, age_class, age_task.n_outputs)
            age_target = age_class
        else:
            age_target = age_years
        data = make_splits(x, [age_target, sex], [age_task.kind, sex_task.kind], seed,
                           stratify=age_class * 2 + sex, pair=self.name)
        data.info.update(info, age=self.age)
        return data
