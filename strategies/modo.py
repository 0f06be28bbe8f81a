"""MoDo (Chen, Fernando, Ying & Chen, NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import TaskInfo, check_positive

from ._gradient import GradientStrategy, project_simplex


@register_strategy("modo")
class MoDo(GradientStrategy):
    """Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning:
    Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023.
    https://openreview.net/forum?id=yPkbdJxQ0o

    Multi-objective gradient with double sampling: persistent weights lambda on the simplex
    (uniform at the start) take one projected gradient step per training step on
    1/2 ||G^T lambda||^2 + rho/2 ||lambda||^2, and the model follows the updated weights:

        lambda <- Proj_simplex(lambda - gamma (G G^T + rho I) lambda),     d = G^T lambda.

    With rho = 0 the fixed points of the lambda update are the minimisers of ||G^T lambda||^2
    on the simplex, i.e. MGDA's weights for a fixed G; the step size gamma trades how fast
    lambda tracks them against how much it averages the noise of the stochastic G. G G^T is
    used unnormalised, as in the paper, so gamma is relative to the squared gradient scale.
    The logged weights are lambda.

    Departures: the paper takes the two factors of G G^T and the G of the update from three
    independent mini-batches, which makes the lambda step unbiased; the harness hands over one
    batch's gradients and all three use that one batch. A step whose Gram matrix is not finite
    leaves lambda unchanged (the harness then sees the non-finite loss).

    Args:
        gamma: step size of lambda, > 0 (the official NYUv2 script and LibMTL: 1e-3).
        rho: l2 regularisation of lambda, >= 0 (official code and LibMTL: 0.1; 0 gives
            MGDA's fixed point).
        source: ``shared`` (gradients of the shared parameters, the paper) or ``rep`` (the
            shared representation; not in the paper).
    """

    paper = "Chen et al., NeurIPS 2023"
    summary = "persistent simplex weights, one projected step on ||G^T lambda||^2 per step"
    permutation_invariant = True

    def __init__(self, gamma: float = 1e-3, rho: float = 0.1, source: str = "shared"):
        super().__init__(source)
        check_positive("gamma", gamma)
        check_positive("rho", rho, allow_zero=True)
        self.gamma = float(gamma)
        self.rho = float(rho)
        self.register_buffer("lam", torch.zeros(0, dtype=torch.float64))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.lam = torch.full((self.n_tasks,), 1.0 / self.n_tasks, dtype=torch.float64)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        lam = np.array(self.lam.tolist())
        lam = project_simplex(lam - self.gamma * (gram @ lam + self.rho * lam))
        self.lam.copy_(torch.as_tensor(lam, dtype=self.lam.dtype))
        return lam
