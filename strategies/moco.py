"""MoCo (Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, ICLR 2023)."""

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


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of v onto {x : x >= 0, sum x = 1} (sort-based, exact)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, 0) - 1.0
    index = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    k = int((u - cumulative / index > 0).nonzero().max())
    return torch.clamp(v - cumulative[k] / (k + 1), min=0.0)


def _unit_interval(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    check_param(ok, name, "a float in (0, 1]", value)


@register_strategy("moco")
class MoCo(Strategy):
    """Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably
    Convergent Approach", ICLR 2023. https://openreview.net/forum?id=dLAYGdKTi2

    MGDA's weights computed from stochastic gradients are biased; MoCo replaces the gradients
    by tracking variables y_i and takes one projected gradient step on the weights per step
    instead of solving the min-norm problem (paper, Algorithm 1):

        y_i <- y_i - beta (y_i - g_i)
        lambda <- Proj_simplex(lambda - gamma (Y Y^T + rho I) lambda)
        d = lambda @ Y

    with Y the (T, P) stack of the y_i, lambda starting at the uniform point and y_i at 0.
    (Y Y^T + rho I) lambda is the gradient of (1/2) ||lambda @ Y||^2 + (rho/2) ||lambda||^2;
    rho > 0 regularises the weights towards uniform. The logged weights are lambda; d is
    handed over as the direction because the y_i are not this step's gradients.

    Y is kept in the module's extra state (P is only known at the first step) and lambda in a
    buffer; both are part of ``state_dict``.

    Departures: the paper also projects each y_i onto the ball of radius L_i (a bound on the
    task's gradient norm, needed by the analysis); that bound is unknown here and the
    projection is left out. Step sizes beta and gamma are constant and lambda is projected
    exactly (Euclidean) onto the simplex, as in the paper's algorithm. LibMTL's version (from
    the authors' code) instead decays both steps as 1/sqrt(t), maps lambda back with a
    softmax, and normalises each g_i to norm L_i before tracking it; none of that is done
    here. Only the ``shared`` source is offered: the representation gradient changes shape
    with the batch size, and from ``last`` the direction would reach only the last layer.

    Args:
        beta: step size of the tracking variables, in (0, 1] (1: y_i = g_i; LibMTL 0.5).
        gamma: step size of the weights, > 0 (LibMTL 0.1).
        rho: l2 regularisation of the weights, >= 0 (LibMTL 0).
        source: ``shared`` (gradients of all shared parameters; the only choice, kept as a
            parameter so that every gradient strategy names its source alike).
    """

    family = "gradient manipulation"
    paper = "Fernando et al., ICLR 2023"
    summary = "MGDA-like weights by a simplex-projected step on tracked task gradients"
    permutation_invariant = True

    def __init__(self, beta: float = 0.5, gamma: float = 0.1, rho: float = 0.0,
                 source: str = "shared"):
        super().__init__()
        _unit_interval("beta", beta)
        check_positive("gamma", gamma)
        check_positive("rho", rho, allow_zero=True)
        check_grad_source(source, ("shared",))
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.rho = float(rho)
        self.source = source
        self.grad_source = source
        self.register_buffer("lam", torch.zeros(0, dtype=torch.float64))
        self.tracked: Tensor | None = None

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.lam = torch.full((self.n_tasks,), 1.0 / self.n_tasks, dtype=torch.float64)
        self.tracked = None

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        if grads is None:
            raise RuntimeError(f"strategy '{self}' needs task gradients from the harness")
        g = grads.matrix
        previous = torch.zeros_like(g) if self.tracked is None else self.tracked.to(g)
        self.tracked = previous - self.beta * (previous - g)
        gram = (self.tracked @ self.tracked.T).to(self.lam)
        step = (gram + self.rho * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)) \
            @ self.lam
        if bool(torch.isfinite(step).all()):
            self.lam.copy_(project_simplex(self.lam - self.gamma * step))
        return Update(weights=self.lam.to(losses.dtype).clone(),
                      direction=self.lam.to(g) @ self.tracked)

    def get_extra_state(self) -> Any:
        return {**super().get_extra_state(), "tracked": self.tracked}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        tracked = state.get("tracked") if isinstance(state, dict) else None
        self.tracked = None if tracked is None else tracked.clone()
