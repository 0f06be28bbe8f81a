"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, TaskInfo, Update, check_positive


@register_strategy("dwa")
class DWA(Strategy):
    """Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.
    https://arxiv.org/abs/1803.10704

        lambda_k(t) = K exp(w_k(t-1)/T) / sum_i exp(w_i(t-1)/T),
        w_k(t-1) = L_k(t-1) / L_k(t-2)

    where L_k(t) is task k's mean training loss over epoch t, K the number of tasks and T the
    temperature. Weights are 1 for the first two epochs. The harness measures the epoch means
    and hands them over through :meth:`on_epoch_end`.

    Args:
        temperature: T > 0; larger values make the weights more uniform (paper: 2).
    """

    paper = "Liu, Johns & Davison, CVPR 2019"
    summary = "weights from the ratio of each task's last two epoch-mean losses"
    permutation_invariant = True
    batchable = True

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = float(temperature)
        self.register_buffer("history", torch.zeros(2, 0))  # last two epoch means, newest last
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("w", torch.ones(0))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.history = torch.zeros(2, self.n_tasks)
        self.seen = torch.zeros((), dtype=torch.long)
        self.w = torch.ones(self.n_tasks)

    def on_epoch_end(self, epoch: int, train_losses: Tensor) -> None:
        self.history = torch.stack([self.history[1], train_losses.detach().to(self.history)])
        self.seen += 1
        if self.seen >= 2:
            ratio = self.history[1] / self.history[0].clamp_min(1e-12)
            self.w = self.n_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        return self.weighted_sum(self.w, losses)
