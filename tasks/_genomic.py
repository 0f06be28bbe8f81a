"""A synthetic "genomic" cohort: samples x genes with known sex and age signal.

Each sample has an age (years), an age class (equal-width bins over 0..max_age), a sex and a
processing batch. Its expression vector (standardised log-expression, in units of the noise
standard deviation when ``noise = 1``) is

    x_g = mu_g + sex-linked term + age-trend term + batch offset + noise

* ``n_sex_genes`` sex-linked genes: + sex_effect * s_g * (sex - 1/2), s_g = +-1, so the two
  sexes' means differ by ``sex_effect`` on each of them;
* ``n_age_genes`` age-trend genes: + age_effect * s_g * tanh((age - c_g) / (max_age / 6)), a
  smooth switch centred at an age c_g drawn uniformly over 0..max_age, so every age range has
  genes that change there;
* the remaining genes are noise genes (mu_g + batch + noise only);
* batch offsets ~ N(0, batch_effect^2) per (batch, gene), shared by the batch's samples;
* class imbalance: age class k (0 = youngest) is drawn with probability proportional to
  age_imbalance^(-k / (K - 1)), so the most frequent class is ``age_imbalance`` times as
  frequent as the least; sex is female (0) with probability ``female_fraction``.

Everything is drawn from ``cohort_seed`` (fixed, not the run seed): every run sees the same cohort
and only the train / val / test split changes with the run seed. The leading underscore keeps the
registry from importing this module as a task pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from mtl_bench.errors import UserError, check_param


@dataclass(frozen=True)
class GenomicSpec:
    """Generator knobs; each is also a task-pair option (``--set PAIR.n_sex_genes=10``)."""

    n_samples: int = 3000
    n_genes: int = 100
    n_sex_genes: int = 5
    n_age_genes: int = 40
    n_age_classes: int = 18
    max_age: float = 90.0
    sex_effect: float = 1.0
    age_effect: float = 2.0
    noise: float = 1.0
    n_batches: int = 3
    batch_effect: float = 0.5
    age_imbalance: float = 1.0
    female_fraction: float = 0.5
    cohort_seed: int = 1234

    def __post_init__(self) -> None:
        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

        check_param(integer(self.n_samples) and self.n_samples >= 20, "n_samples",
                    "an integer >= 20", self.n_samples)
        check_param(integer(self.n_genes) and self.n_genes >= 1, "n_genes",
                    "a positive integer", self.n_genes)
        for name in ("n_sex_genes", "n_age_genes"):
            value = getattr(self, name)
            check_param(integer(value) and 0 <= value <= self.n_genes, name,
                        f"an integer in 0..n_genes ({self.n_genes})", value)
        check_param(self.n_sex_genes + self.n_age_genes <= self.n_genes, "n_age_genes",
                    f"at most n_genes - n_sex_genes ({self.n_genes - self.n_sex_genes})",
                    self.n_age_genes)
        check_param(integer(self.n_age_classes) and self.n_age_classes >= 2, "n_age_classes",
                    "an integer >= 2", self.n_age_classes)
        check_param(number(self.max_age) and self.max_age > 0, "max_age", "a positive float",
                    self.max_age)
        for name in ("sex_effect", "age_effect", "noise", "batch_effect"):
            value = getattr(self, name)
            check_param(number(value) and value >= 0, name, "a non-negative float", value)
        check_param(integer(self.n_batches) and self.n_batches >= 1, "n_batches",
                    "a positive integer", self.n_batches)
        check_param(number(self.age_imbalance) and self.age_imbalance >= 1, "age_imbalance",
                    "a float >= 1 (1: balanced classes)", self.age_imbalance)
        check_param(number(self.female_fraction) and 0 < self.female_fraction < 1,
                    "female_fraction", "a float strictly between 0 and 1", self.female_fraction)
        check_param(integer(self.cohort_seed) and self.cohort_seed >= 0, "cohort_seed",
                    "a non-negative integer", self.cohort_seed)

    def options(self) -> dict[str, Any]:
        return asdict(self)


OPTION_NAMES = tuple(f.name for f in fields(GenomicSpec))


def genomic_spec(pair: str, dataset: str, options: dict[str, Any],
                 own_options: tuple[str, ...]) -> GenomicSpec | None:
    """Generator options of a pair -> spec (``dataset == "genomic"``) or None (real data).

    ``own_options`` are the pair's other option names, listed when an option is unknown.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        valid = ", ".join(sorted((*own_options, *OPTION_NAMES)))
        raise UserError(f"task pair '{pair}' has no option(s) {', '.join(unknown)}; its options "
                        f"are: {valid}")
    if dataset != "genomic":
        if options:
            raise UserError(f"task pair '{pair}': option(s) {', '.join(sorted(options))} apply "
                            f"to dataset=genomic only, not dataset={dataset}")
        return None
    return GenomicSpec(**options)


@dataclass
class GenomicCohort:
    x: np.ndarray          # (n_samples, n_genes) expression
    age: np.ndarray        # (n_samples,) years
    age_class: np.ndarray  # (n_samples,) 0..n_age_classes-1
    sex: np.ndarray        # (n_samples,) 0 female, 1 male
    batch: np.ndarray      # (n_samples,) 0..n_batches-1
    info: dict[str, Any]


def generate(spec: GenomicSpec) -> GenomicCohort:
    """Draw the cohort described in the module docstring."""
    rng = np.random.default_rng(spec.cohort_seed)
    n, g, k = spec.n_samples, spec.n_genes, spec.n_age_classes
    freq = spec.age_imbalance ** (-np.arange(k) / (k - 1))
    age_class = rng.choice(k, size=n, p=freq / freq.sum())
    width = spec.max_age / k
    age = (age_class + rng.uniform(size=n)) * width
    sex = (rng.uniform(size=n) >= spec.female_fraction).astype(np.int64)
    batch = rng.integers(spec.n_batches, size=n)

    x = np.tile(rng.standard_normal(g), (n, 1))
    sex_genes = np.arange(spec.n_sex_genes)
    age_genes = spec.n_sex_genes + np.arange(spec.n_age_genes)
    signs = rng.choice([-1.0, 1.0], size=g)
    x[:, sex_genes] += spec.sex_effect * signs[sex_genes] * (sex[:, None] - 0.5)
    centres = rng.uniform(0.0, spec.max_age, size=spec.n_age_genes)
    switch = np.tanh((age[:, None] - centres[None, :]) / (spec.max_age / 6))
    x[:, age_genes] += spec.age_effect * signs[age_genes] * switch
    x += (spec.batch_effect * rng.standard_normal((spec.n_batches, g)))[batch]
    x += spec.noise * rng.standard_normal((n, g))

    info = {
        "generator": "genomic", **spec.options(),
        "age_class_counts": np.bincount(age_class, minlength=k).tolist(),
        "sex_counts": np.bincount(sex, minlength=2).tolist(),
        "sex_genes": [int(sex_genes[0]), int(sex_genes[-1]) + 1] if len(sex_genes) else [],
        "age_genes": [int(age_genes[0]), int(age_genes[-1]) + 1] if len(age_genes) else [],
    }
    return GenomicCohort(x, age, age_class.astype(np.int64), sex, batch, info)


def age_class_names(spec: GenomicSpec) -> list[str]:
    width = spec.max_age / spec.n_age_classes
    return [f"{i * width:g}-{(i + 1) * width:g}" for i in range(spec.n_age_classes)]
