"""IMTL-L, the loss-balancing half of Impartial Multi-Task Learning (Liu et al., ICLR 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import (
    Strategy,
    TaskGradients,
    TaskInfo,
    Update,
    check_optional_lr,
)


@register_strategy("imtl_l")
class IMTLL(Strategy):
    """Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    https://openreview.net/forum?id=IMPnRXEWpvr

    Each task has a learnable log-scale s_i and the objective is

        L = sum_i ( e^{s_i} L_i - s_i ).

    The network sees weights e^{s_i}; the s_i descend dL/ds_i = e^{s_i} L_i - 1, whose zero is
    e^{s_i} L_i = 1: every scaled loss is driven to the same value, whatever the raw scale of
    the task (the "impartial" loss scale). Unlike uncertainty weighting there is no factor
    depending on the task kind, and the regulariser -s_i is linear.

    The s_i are trained by the harness's optimiser (the model's optimiser type) at learning
    rate ``lr`` and with no weight decay, as DESIGN.md prescribes for learnable weights. The
    paper pairs IMTL-L with a gradient-level part (IMTL-G); this strategy is IMTL-L alone.

    Args:
        init: initial log-scale s_i of every task (0 gives weight 1).
        lr: learning rate of the log-scales; ``None`` uses the model's learning rate.
    """

    paper = "Liu et al., ICLR 2021"
    summary = "learnable log-scales: loss e^s L - s per task"
    permutation_invariant = True
    batchable = True
    graph_safe = True

    def __init__(self, init: float = 0.0, lr: float | None = None):
        super().__init__()
        check_param(isinstance(init, (int, float)) and not isinstance(init, bool)
                    and abs(init) < 50, "init", "a finite float (log-scale)", init)
        check_optional_lr(lr)
        self.init = float(init)
        self.lr = lr
        self.log_scales = nn.Parameter(torch.zeros(0))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.log_scales = nn.Parameter(torch.full((self.n_tasks,), self.init))

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        scale = torch.exp(self.log_scales)
        loss = (scale * losses).sum() - self.log_scales.sum()
        return Update(weights=scale.detach(), loss=loss)
