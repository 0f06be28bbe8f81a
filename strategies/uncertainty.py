"""Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import (
    REGRESSION,
    Strategy,
    TaskGradients,
    TaskInfo,
    Update,
    check_optional_lr,
)


@register_strategy("uncertainty")
class Uncertainty(Strategy):
    """Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics", CVPR 2018. https://arxiv.org/abs/1705.07115

    Each task has a learnable log-variance s_i = log sigma_i^2 and the objective is

        regression task (Gaussian likelihood, eq. 7):      1/(2 sigma_i^2) L_i + log sigma_i
                                                           = 0.5 exp(-s_i) L_i + 0.5 s_i
        classification task (scaled softmax, eq. 10):      1/sigma_i^2 L_i + log sigma_i
                                                           = exp(-s_i) L_i + 0.5 s_i

    The form is chosen from each task's kind. At the optimum over s_i, sigma_i^2 = L_i
    (regression) and sigma_i^2 = 2 L_i (classification). The logged weight is the factor in
    front of L_i. The s_i are trained with the model's optimiser type at learning rate ``lr``
    (default: the model's) and no weight decay. Predicting log-variance rather than sigma is the
    paper's own choice for numerical stability.

    Args:
        init: initial log-variance s_i (0 gives sigma = 1).
        lr: learning rate of the log-variances; ``None`` uses the model's learning rate.
    """

    paper = "Kendall, Gal & Cipolla, CVPR 2018"
    summary = "learn homoscedastic task uncertainty: L/(2 sigma^2) + log sigma"
    permutation_invariant = True
    batchable = True
    graph_safe = True

    def __init__(self, init: float = 0.0, lr: float | None = None):
        super().__init__()
        check_param(isinstance(init, (int, float)) and init == init and abs(init) < 50, "init",
                    "a finite float (log-variance)", init)
        check_optional_lr(lr)
        self.init = float(init)
        self.lr = lr
        self.log_vars = nn.Parameter(torch.zeros(0))
        self.register_buffer("scale", torch.ones(0))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.log_vars = nn.Parameter(torch.full((self.n_tasks,), self.init))
        # 1/2 for a Gaussian (regression) likelihood, 1 for a Boltzmann (classification) one
        self.scale = torch.tensor([0.5 if t.kind == REGRESSION else 1.0 for t in tasks])

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        precision = self.scale * torch.exp(-self.log_vars)
        loss = (precision * losses).sum() + 0.5 * self.log_vars.sum()
        return Update(weights=precision.detach(), loss=loss)
