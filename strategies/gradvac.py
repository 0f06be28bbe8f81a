"""GradVac (Wang, Tsvetkov, Firat & Cao, ICLR 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import TaskInfo

from ._gradient import RandomOrderStrategy


def gradvac_coefficients(gram: np.ndarray, target: np.ndarray, beta: float,
                         orders: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients C (g_i' = C[i] @ G) and the updated EMA targets after one GradVac pass."""
    t = len(gram)
    coef = np.eye(t)
    target = target.copy()
    for i in range(t):
        row = coef[i]
        for j in orders[i]:
            norm_i = math.sqrt(max(float(row @ gram @ row), 0.0))
            norm_j = math.sqrt(max(float(gram[j, j]), 0.0))
            if norm_i == 0.0 or norm_j == 0.0:
                continue  # the cosine is undefined: nothing to align, nothing to track
            phi = min(1.0, max(-1.0, float(row @ gram[:, j]) / (norm_i * norm_j)))
            goal = min(float(target[i, j]), 1.0 - 1e-12)
            if phi < goal:
                # add a g_j so that cos(g_i' + a g_j, g_j) = goal (law of sines in their plane)
                row[j] += norm_i * (goal * math.sqrt(1.0 - phi**2)
                                    - phi * math.sqrt(1.0 - goal**2)) / (
                    norm_j * math.sqrt(1.0 - goal**2))
            target[i, j] = (1.0 - beta) * target[i, j] + beta * phi
    return coef, target


@register_strategy("gradvac")
class GradVac(RandomOrderStrategy):
    """Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task Optimization in
    Massively Multilingual Models", ICLR 2021. https://arxiv.org/abs/2010.05874

    Like PCGrad, but instead of only removing conflicts it pulls every pair of gradients
    towards an adaptive target similarity. For each task i and each other task j (random
    order), with phi_ij = cos(g_i', g_j) and the target phi_hat_ij (an EMA, starting at 0):

        if phi_ij < phi_hat_ij:
            g_i' <- g_i' + ||g_i'|| (phi_hat_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi_hat_ij^2))
                           / (||g_j|| sqrt(1 - phi_hat_ij^2)) * g_j
        phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij

    after which cos(g_i', g_j) = phi_hat_ij exactly. The update is d = sum_i g_i'. All of it is
    tracked as T x T coefficients from the Gram matrix, so alpha = 1^T C. With the initial
    targets at 0 the first step equals PCGrad. The targets are a (T, T) buffer and the random
    order (one permutation per task and step, when T > 2) comes from the seeded generator; both
    are in ``state_dict``.

    Departure: the paper applies the procedure per layer (each parameter block separately, with
    its own targets); here it works on the whole gradient at the source (all shared parameters,
    or the shared representation), i.e. one target per task pair.

    Args:
        beta: EMA rate of the targets in (0, 1] (paper: 1e-2).
        source: ``shared`` (gradients of the shared parameters) or ``rep``.
    """

    paper = "Wang et al., ICLR 2021"
    summary = "move pairwise gradient cosines towards their running targets"
    permutation_invariant = False

    def __init__(self, beta: float = 0.01, source: str = "shared"):
        super().__init__(source)
        ok = isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 < beta <= 1
        check_param(ok, "beta", "a float in (0, 1]", beta)
        self.beta = float(beta)
        self.register_buffer("target", torch.zeros(0, 0, dtype=torch.float64))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.target = torch.zeros(self.n_tasks, self.n_tasks, dtype=torch.float64)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        coef, target = gradvac_coefficients(gram, self.target.cpu().numpy(), self.beta,
                                            self.task_orders(len(gram)))
        self.target.copy_(torch.from_numpy(target))
        return coef.sum(axis=0)
