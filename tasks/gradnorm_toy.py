"""The synthetic regression tasks of GradNorm's toy experiment (Chen et al., ICML 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from mtl_bench.errors import check_param
from mtl_bench.registry import register_task
from mtl_bench.strategy import REGRESSION
from mtl_bench.task import Task, TaskData, TaskPair, make_splits, mlp

INPUT_DIM = 250
OUTPUT_DIM = 100
#: Variances of the entries of B and of each eps_i (the paper's N(0, 10) and N(0, 3.5)).
B_VARIANCE = 10.0
EPS_VARIANCE = 3.5
#: The paper's scales for T = 2.
SIGMAS_2 = (1.0, 100.0)
N_TASKS = (2, 10)


def default_sigmas(n_tasks: int) -> tuple[float, ...]:
    """(1, 100) for two tasks; for ten, 1 to 100 in equal ratios (1, 1.67, 2.78, ..., 100)."""
    if n_tasks == 2:
        return SIGMAS_2
    return tuple(float(v) for v in np.geomspace(1.0, 100.0, n_tasks))


def teacher(n_tasks: int, data_seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """The constant matrices: B (100, 250) with N(0, 10) entries and one eps_i (100, 250) with
    N(0, 3.5) entries per task (variances). B and the eps come from independent streams of
    ``data_seed``, so B does not depend on the number of tasks and eps_i of task i is the same
    for two and for ten tasks."""
    teacher_seq, eps_seq, _ = np.random.SeedSequence(data_seed).spawn(3)
    b = np.random.default_rng(teacher_seq).normal(0.0, np.sqrt(B_VARIANCE),
                                                  (OUTPUT_DIM, INPUT_DIM))
    eps_rng = np.random.default_rng(eps_seq)
    eps = [eps_rng.normal(0.0, np.sqrt(EPS_VARIANCE), (OUTPUT_DIM, INPUT_DIM))
           for _ in range(n_tasks)]
    return b, eps


def toy_arrays(n_samples: int, sigmas: Sequence[float], data_seed: int = 0
               ) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any]]:
    """Inputs x (n, 250) and one (n, 100) target per task: y_i = sigma_i tanh((B + eps_i) x).

    Everything comes from ``data_seed`` (see :func:`teacher`); the inputs from a third stream,
    so they do not change with the number of tasks. x ~ N(0, I / 250), i.e. E||x||^2 = 1 (see
    :class:`GradNormToy` for why).
    """
    b, eps = teacher(len(sigmas), data_seed)
    x_seq = np.random.SeedSequence(data_seed).spawn(3)[2]
    x = np.random.default_rng(x_seq).normal(0.0, 1.0 / np.sqrt(INPUT_DIM), (n_samples, INPUT_DIM))
    ys = [s * np.tanh(x @ (b + e).T) for s, e in zip(sigmas, eps)]
    info = {"sigmas": [float(s) for s in sigmas], "data_seed": data_seed,
            "b_variance": B_VARIANCE, "eps_variance": EPS_VARIANCE,
            "target_rms": [float(np.sqrt((y ** 2).mean())) for y in ys]}
    return x, ys, info


@register_task("gradnorm-toy")
class GradNormToy(TaskPair):
    """T regression tasks f_i(x) = sigma_i tanh((B + eps_i) x) that differ only in output scale.

    Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive
    Loss Balancing in Deep Multitask Networks", ICML 2018, section 5.1.
    https://arxiv.org/abs/1711.02257

    Inputs have 250 dimensions, each target 100. B is shared by every task, eps_i is task i's
    own perturbation; both are constant matrices drawn once. The network is the paper's: a
    trunk of 4 fully connected ReLU layers of 100 units and one affine head per task, trained
    with the squared loss. Targets are deliberately *not* standardised: task i's loss scales
    with sigma_i^2, so with sigma = (1, 100) the second task's loss and gradients are about
    10^4 and 10^2 times the first's, which is the imbalance GradNorm is meant to undo.

    How the paper is read here (it gives no more detail):

    * "N(0, 10)" and "N(0, 3.5)" follow the usual N(mean, variance) convention: the entries of
      B have variance 10 (sd 3.16), those of eps_i variance 3.5 (sd 1.87).
    * The paper does not say how x is drawn. We take x ~ N(0, I / 250), i.e. inputs normalised
      to E||x||^2 = 1, so each pre-activation (B + eps_i) x has variance 10 + 3.5 = 13.5 (sd
      3.7): tanh is in its saturated range for most outputs but about a fifth of them fall in
      |z| < 1, so the targets are neither a sign function nor linear. (With unnormalised
      x ~ N(0, I) the sd would be 58 and every target would be +-sigma_i.) The network never
      sees this scale: ``make_splits`` standardises the inputs with training statistics.
    * Ten tasks: the paper draws sigma_i "from a wide normal distribution" without giving it;
      we use ten scales from 1 to 100 in equal ratios (``sigmas`` overrides them).
    * Data are generated from ``data_seed`` only, never from the run seed: every run sees the
      same teacher and the same inputs, and the run seed changes the train / val / test split
      (60 / 20 / 20), the initialisation and the batch order. The paper likewise compares runs
      on data "generated from the same fixed random seed".

    Options:
        n_tasks: 2 or 10.
        sigmas: one scale per task (default: (1, 100), or 1..100 geometric for ten tasks).
        n_samples: rows generated (split 60 / 20 / 20).
        data_seed: seed of the teacher matrices and of the inputs.
    """

    description = "GradNorm's toy: T tanh regressions with output scales sigma_i (1 vs 100)"
    epochs = 20
    batch_size = 100
    lr = 1e-3
    hidden = (100, 100, 100, 100)

    def __init__(self, n_tasks: int = 2, sigmas: Sequence[float] | None = None,
                 n_samples: int = 10000, data_seed: int = 0):
        check_param(n_tasks in N_TASKS and not isinstance(n_tasks, bool), "n_tasks", "2 or 10",
                    n_tasks)
        if sigmas is not None:
            ok = (isinstance(sigmas, Sequence) and not isinstance(sigmas, str)
                  and len(sigmas) == n_tasks
                  and all(isinstance(s, (int, float)) and not isinstance(s, bool)
                          and 0 < s < float("inf") for s in sigmas))
            check_param(ok, "sigmas", f"a list of {n_tasks} positive finite numbers "
                        "(one per task)", sigmas)
        check_param(isinstance(n_samples, int) and not isinstance(n_samples, bool)
                    and n_samples >= 20, "n_samples", "an integer >= 20", n_samples)
        check_param(isinstance(data_seed, int) and not isinstance(data_seed, bool)
                    and data_seed >= 0, "data_seed", "a non-negative integer", data_seed)
        self.n_tasks = n_tasks
        self.sigmas = tuple(float(s) for s in sigmas) if sigmas is not None \
            else default_sigmas(n_tasks)
        self.n_samples = n_samples
        self.data_seed = data_seed

    def options(self) -> dict[str, Any]:
        # sigmas only when they differ from the default for n_tasks: `n_tasks=10` alone and
        # with its default scales spelled out are one configuration (one run id, one label)
        custom = self.sigmas != default_sigmas(self.n_tasks)
        return {"n_tasks": self.n_tasks, "sigmas": list(self.sigmas) if custom else None,
                "n_samples": self.n_samples, "data_seed": self.data_seed}

    def tasks(self) -> tuple[Task, ...]:
        return tuple(Task(f"task{i + 1}", REGRESSION, OUTPUT_DIM, ("rmse", "mae", "r2"))
                     for i in range(self.n_tasks))

    def build_trunk(self, n_features: int) -> nn.Module:
        return mlp([n_features, *self.hidden])

    def build_head(self, task: Task, width: int) -> nn.Module:
        return nn.Linear(width, task.n_outputs)

    def load(self, seed: int) -> TaskData:
        x, ys, info = toy_arrays(self.n_samples, self.sigmas, self.data_seed)
        data = make_splits(x, ys, [REGRESSION] * self.n_tasks, seed,
                           standardise_targets=False, pair=self.name)
        data.info.update(info)
        return data
