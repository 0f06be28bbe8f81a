"""Geometric Loss Strategy (Chennupati et al., CVPR Workshops 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, Update


@register_strategy("gls")
class GLS(Strategy):
    """Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss
    Strategy for Multi-Task Learning", CVPR Workshops 2019. https://arxiv.org/abs/1904.08492

    The objective is the geometric mean of the task losses,

        L = (prod_i L_i)^(1/T),

    so no task's scale dominates: multiplying one L_i by a constant multiplies L by a constant
    and leaves the direction of the update unchanged. Its gradient is a weighted sum of the task
    gradients with effective weights

        dL/dL_i = L / (T L_i),

    which is what this strategy reports as the step's weights (a task with a small loss gets a
    large weight). The method has no hyper-parameters; ``eps`` is a numerical floor.

    Implementation: L is computed as exp(mean_i log L_i), which is the same number without the
    overflow or underflow of a product of many losses. Each L_i is floored at ``eps`` before the
    logarithm (the paper assumes positive losses and does not say what happens at zero).

    Args:
        eps: floor applied to each task loss before the logarithm.
    """

    paper = "Chennupati et al., CVPR-W 2019"
    summary = "geometric mean of the task losses"
    permutation_invariant = True
    batchable = True
    graph_safe = True

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        check_param(isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < 1,
                    "eps", "a float in (0, 1)", eps)
        self.eps = float(eps)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        safe = losses.clamp_min(self.eps)
        loss = torch.exp(torch.log(safe).mean())
        weights = (loss / (self.n_tasks * safe)).detach()
        return Update(weights=weights, loss=loss)
