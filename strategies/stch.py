"""Smooth Tchebycheff scalarisation (Lin et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, TaskInfo, Update, check_positive

from ._gradient import check_int

EPS = 1e-8  # added to every loss before log and 1/L


@register_strategy("stch")
class STCH(Strategy):
    """Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", ICML
    2024. https://openreview.net/forum?id=m4dO5L6eCp

    The Tchebycheff scalarisation max_i w_i (f_i - z_i) (z the ideal point) is smoothed with a
    log-sum-exp of temperature mu:

        L_stch = mu log sum_i exp( w_i (f_i - z_i) / mu ),

    which tends to the max as mu -> 0 and is differentiable. In the paper's multi-task
    experiments (and the official code) the objectives are log-losses normalised by a nadir
    point, the ideal point is 0 in that space and all w_i are 1:

        warm-up (first ``warmup_epochs`` epochs):   L = sum_i log(L_i + eps)
        afterwards:    f_i = log((L_i + eps) / n_i),    L = T mu log sum_i exp(f_i / mu)

    where n_i is task i's mean training loss over the last warm-up epoch (handed over by
    :meth:`on_epoch_end`) and the factor T (number of tasks) is the official code's. With z = 0
    in log space the reference point is the nadir itself: the same vector normalises the losses
    and plays the role of z (no separate ideal point is estimated). The weight of task i is
    dL/dL_i = 1 / (L_i + eps) during the warm-up and T softmax(f / mu)_i / (L_i + eps)
    afterwards. The nadir vector is state (a buffer).

    Departures: the official code counts warm-up epochs from 0 and averages the losses of epoch
    ``STCH_warmup_epoch`` itself, i.e. its warm-up lasts ``STCH_warmup_epoch + 1`` epochs (4 + 1
    by default); here ``warmup_epochs`` is that total, default 5. The losses are shifted by
    eps = 1e-8 (official: 1e-20 inside the log) and the nadir is floored at 1e-12.

    Args:
        mu: smoothing temperature mu > 0 (official default 1).
        warmup_epochs: epochs of the log-loss sum before switching; the last one sets the nadir
            point (integer >= 1).
    """

    paper = "Lin et al., ICML 2024"
    summary = "smooth Tchebycheff (log-sum-exp) of nadir-normalised log losses"
    permutation_invariant = True

    def __init__(self, mu: float = 1.0, warmup_epochs: int = 5):
        super().__init__()
        check_positive("mu", mu)
        check_int("warmup_epochs", warmup_epochs, 1)
        self.mu = float(mu)
        self.warmup_epochs = warmup_epochs
        self.register_buffer("nadir", torch.ones(0))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.nadir = torch.ones(self.n_tasks)
        self.epochs_seen = torch.zeros((), dtype=torch.long)

    @property
    def warming_up(self) -> bool:
        return int(self.epochs_seen) < self.warmup_epochs

    def on_epoch_end(self, epoch: int, train_losses: Tensor) -> None:
        if self.warming_up:
            self.epochs_seen += 1
            if not self.warming_up:  # that was the last warm-up epoch
                self.nadir = train_losses.detach().to(self.nadir).clamp_min(1e-12)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        shifted = losses + EPS
        if self.warming_up:
            return Update(weights=1.0 / shifted.detach(), loss=torch.log(shifted).sum())
        f = torch.log(shifted / self.nadir.to(losses))
        loss = self.n_tasks * self.mu * torch.logsumexp(f / self.mu, dim=0)
        soft = torch.softmax(f.detach() / self.mu, dim=0)
        return Update(weights=self.n_tasks * soft / shifted.detach(), loss=loss)
