"""UW-SO: analytical, soft-optimal uncertainty weighting (Kirchdorfer et al., GCPR 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, Update, check_positive


@register_strategy("uw_so")
class UWSO(Strategy):
    """Kirchdorfer et al., "Analytical Uncertainty-Based Loss Weighting in Multi-Task
    Learning", GCPR 2024. https://arxiv.org/abs/2408.07985

    Uncertainty weighting (Kendall et al., 2018) learns a precision per task whose optimum is
    inversely proportional to the task's loss. UW-SO uses that optimum directly instead of
    learning it, and softens it with a softmax over the tasks:

        lambda_i = exp(1 / (T L_i)) / sum_j exp(1 / (T L_j)),        L = sum_i lambda_i L_i

    with the losses detached (the weights are constants of the step, so dL/dL_i = lambda_i) and
    T the temperature. A small T concentrates the weight on the task with the smallest loss; a
    large T tends to equal weights 1/K. The weights sum to 1 (the paper's form; multiply the
    learning rate by K to compare with a sum of losses). No state is kept between steps.

    Departure: losses are floored at 1e-12 before 1/L_i (the paper assumes positive losses).

    Args:
        temperature: T > 0 of the softmax (the paper tunes it per data set; default 1).
    """

    paper = "Kirchdorfer et al., GCPR 2024"
    summary = "softmax over tasks of the inverse detached losses / temperature"
    permutation_invariant = True
    batchable = True
    graph_safe = True

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = float(temperature)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        inverse = 1.0 / losses.detach().clamp_min(1e-12)
        return self.weighted_sum(torch.softmax(inverse / self.temperature, dim=0), losses)
