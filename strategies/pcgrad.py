"""PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from mtl_bench.registry import register_strategy

from ._gradient import RandomOrderStrategy


def pcgrad_coefficients(gram: np.ndarray, orders: Sequence[Sequence[int]]) -> np.ndarray:
    """Coefficient matrix C with g_i^PC = C[i] @ G, projecting task i against the tasks in
    ``orders[i]`` one after the other (the original, unprojected g_j each time)."""
    t = len(gram)
    coef = np.eye(t)
    for i in range(t):
        row = coef[i]
        for j in orders[i]:
            dot = float(row @ gram[:, j])  # g_i^PC . g_j
            if dot < 0.0 and gram[j, j] > 0.0:
                row[j] -= dot / gram[j, j]
    return coef


@register_strategy("pcgrad")
class PCGrad(RandomOrderStrategy):
    """Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
    https://arxiv.org/abs/2001.06782

    For each task i, start from g_i^PC = g_i and visit the other tasks j in random order; when
    the two conflict (g_i^PC . g_j < 0), remove the conflicting component:

        g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j

    The update is the sum of the projected gradients, d = sum_i g_i^PC (paper, Algorithm 1).
    Every projection keeps g_i^PC in the span of the task gradients, so the module tracks the
    T x T coefficients from the Gram matrix and returns d = alpha @ G with alpha = 1^T C: the
    logged weights are the effective task weights (all 1 when nothing conflicts, as with fixed
    equal weights).

    The task order is drawn from the strategy's seeded generator (its state is in
    ``state_dict``), one permutation per task and step, only when T > 2 (with two tasks there
    is a single other task and the order is moot).

    Args:
        source: where task gradients are taken: ``shared`` (all shared parameters, the paper)
            or ``rep`` (the shared representation; cheaper, as in the MGDA-UB bound).
    """

    paper = "Yu et al., NeurIPS 2020"
    summary = "project away the conflicting component between task gradients"
    permutation_invariant = False

    def __init__(self, source: str = "shared"):
        super().__init__(source)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        return pcgrad_coefficients(gram, self.task_orders(len(gram))).sum(axis=0)
