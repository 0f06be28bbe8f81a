"""DB-MTL (Lin, Ye, Xu, Shi & Zhang, 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import (
    Strategy,
    TaskGradients,
    TaskInfo,
    Update,
    check_grad_source,
    check_positive,
)

#: Added to a loss before the log and to a norm before dividing by it (as in LibMTL).
EPS = 1e-8


@register_strategy("db_mtl")
class DBMTL(Strategy):
    """Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv 2023.
    https://arxiv.org/abs/2308.12029

    Two balancing steps. Loss scales: every task is trained on log L_i, whose gradient is
    g_i / L_i (the log removes each loss's scale). Gradient magnitudes: the log-loss gradients
    are tracked by an exponential moving average and every tracked gradient is rescaled to the
    largest tracked norm, so all tasks contribute with the same magnitude:

        h_i <- (1 - beta_t) g_i / (L_i + eps) + beta_t h_i,     beta_t = beta / t^beta_sigma
        d = sum_i (max_j ||h_j|| / ||h_i||) h_i

    with t the step count from 1 and h_i = 0 before the first step (as in LibMTL, so the first
    step's h_i is (1 - beta) g_i / L_i). The logged weights are alpha_i = max_j ||h_j|| /
    ||h_i||, the factors the tracked gradients receive; d is handed over as the direction
    because it is not a combination of this step's gradients alone.

    The tracked gradients are (T, P) and kept in the module's extra state (P is only known at
    the first step), with the step count in a buffer; both are part of ``state_dict``.

    Departure: none in the update (LibMTL's version, from the authors, is the reference). The
    EMA runs over the gradient of all shared parameters as one vector per task, as there;
    ``rep`` is not offered because the representation gradient changes shape with the batch
    size, nor ``last`` because the direction would then reach only the last shared layer.

    Args:
        beta: EMA factor of the tracked gradients, in [0, 1) (LibMTL default 0.9).
        beta_sigma: decay exponent of the EMA factor, beta_t = beta / t^beta_sigma, >= 0
            (LibMTL default 0: a constant factor).
        source: ``shared`` (gradients of all shared parameters; the only choice, kept as a
            parameter so that every gradient strategy names its source alike).
    """

    family = "gradient-norm balancing"
    paper = "Lin et al., 2023"
    summary = "log losses, then EMA task gradients rescaled to the largest norm"
    permutation_invariant = True

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, source: str = "shared"):
        super().__init__()
        ok = isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 <= beta < 1
        check_param(ok, "beta", "a float in [0, 1)", beta)
        check_positive("beta_sigma", beta_sigma, allow_zero=True)
        check_grad_source(source, ("shared",))
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)
        self.source = source
        self.grad_source = source
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.tracked: Tensor | None = None

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.step.zero_()
        self.tracked = None

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        if grads is None:
            raise RuntimeError(f"strategy '{self}' needs task gradients from the harness")
        g = grads.matrix
        log_grads = g / (losses.detach().to(g) + EPS)[:, None]
        self.step += 1
        rate = self.beta / float(self.step) ** self.beta_sigma
        previous = torch.zeros_like(g) if self.tracked is None else self.tracked.to(g)
        self.tracked = log_grads + rate * (previous - log_grads)
        norms = torch.linalg.vector_norm(self.tracked, dim=1)
        alpha = norms.max() / (norms + EPS)
        return Update(weights=alpha.to(losses.dtype), direction=alpha @ self.tracked)

    def get_extra_state(self) -> Any:
        return {**super().get_extra_state(), "tracked": self.tracked}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        tracked = state.get("tracked") if isinstance(state, dict) else None
        self.tracked = None if tracked is None else tracked.clone()
