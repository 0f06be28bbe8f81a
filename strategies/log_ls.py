"""Scale-invariant linear scalarisation: the sum of the log task losses."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, Update, check_positive


@register_strategy("log_ls")
class LogLS(Strategy):
    """Scale-invariant baseline ("SI") of Navon et al., "Multi-Task Learning as a Bargaining
    Game", ICML 2022. https://arxiv.org/abs/2202.01017

    The network descends the sum of the log task losses,

        L = sum_i log(L_i + eps),        dL/dL_i = 1 / (L_i + eps),

    so each task's gradient is divided by its own loss: multiplying a task's loss by a constant
    c > 0 adds log c to L and leaves the update unchanged (hence "scale-invariant"). The weights
    reported are the factors 1 / (L_i + eps) that the task gradients receive; there is no state
    and no learnable parameter.

    Departure: ``eps`` (default 1e-8) keeps log and 1/L finite for a zero loss; the paper writes
    the objective without it.

    Args:
        eps: non-negative shift added to every loss before the log (0 gives the exact formula).
    """

    paper = "Navon et al., ICML 2022 (SI baseline)"
    summary = "sum of log losses: each task's gradient divided by its loss"
    permutation_invariant = True
    batchable = True
    graph_safe = True

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        check_positive("eps", eps, allow_zero=True)
        self.eps = float(eps)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        shifted = losses + self.eps
        return Update(weights=1.0 / shifted.detach(), loss=torch.log(shifted).sum())
