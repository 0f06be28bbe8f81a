"""ExcessMTL (He et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import (
    Strategy,
    TaskGradients,
    TaskInfo,
    Update,
    check_grad_source,
    check_positive,
)

HESSIAN_EPS = 1e-7  # added to the accumulated squares before the square root (official code)
SOURCES = ("shared", "last")


@register_strategy("excess_mtl")
class ExcessMTL(Strategy):
    """He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024.
    https://openreview.net/forum?id=JzWFmMySpn

    Task weights follow exponentiated gradient ascent on each task's excess risk (its loss
    minus the lowest loss reachable), so that tasks far from their own optimum get more
    weight, whatever their label noise. The excess risk is estimated from a second-order
    expansion, L_i(theta) - L_i(theta*) ~ g_i^T H_i^{-1} g_i / 2, with the Hessian replaced by
    the Adagrad-style diagonal of accumulated squared gradients:

        S_i   <- S_i + g_i * g_i                         (elementwise, per task)
        e_i    = g_i^T diag(sqrt(S_i + 1e-7))^{-1} g_i
        r_i    = e_i / e_i(first step)                   (scale of each task removed)
        lam_i <- lam_i exp(eta r_i),  lam <- T lam / sum_j lam_j
        L      = sum_i lam_i L_i

    g_i is task i's gradient on the shared parameters. On the first step the weights stay 1 and
    e(first step) is recorded. The weights are constants of the network's step.

    Implementation: the weights are kept as log-weights a_i (a_i <- a_i + eta r_i, lam =
    T softmax(a)), which is the same rule without overflow of the product of exponentials.
    The accumulated squares S are a (T, P) buffer, one copy of the shared parameters per task,
    created on the first step (like an optimiser's state).

    Departures: e(first step) is floored at 1e-12 of its largest entry so that a task with a
    zero first gradient does not divide by zero; the 1/2 of the expansion is dropped, as in the
    official code (r_i removes it).

    Args:
        robust_step_size: step eta > 0 of the exponentiated-gradient update (default 0.01; the
            paper tunes it).
        source: where g_i is taken: ``shared`` (all shared parameters, as the paper) or
            ``last`` (the last shared layer, cheaper).
    """

    family = "gradient-norm balancing"
    paper = "He et al., ICML 2024"
    summary = "exponentiated-gradient weights on Adagrad-estimated excess risks"
    permutation_invariant = True

    def __init__(self, robust_step_size: float = 0.01, source: str = "shared"):
        super().__init__()
        check_positive("robust_step_size", robust_step_size)
        check_grad_source(source, SOURCES)
        self.robust_step_size = float(robust_step_size)
        self.source = source
        self.grad_source = source
        for name in ("log_weights", "initial_risk", "sq_sum"):
            self.register_buffer(name, torch.zeros(0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.log_weights = torch.zeros(self.n_tasks)
        self.initial_risk = torch.ones(self.n_tasks)
        self.sq_sum = torch.zeros(0)  # (T, P) once the width P is known
        self.steps = torch.zeros((), dtype=torch.long)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # the accumulated squares are sized on the first step: take the saved shape
        saved = state_dict.get(prefix + "sq_sum")
        if saved is not None:
            self.sq_sum = torch.zeros_like(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _update_weights(self, g: Tensor) -> None:
        if self.sq_sum.shape != g.shape:
            self.sq_sum = torch.zeros_like(g)
        self.sq_sum += g * g
        risk = (g * g / torch.sqrt(self.sq_sum + HESSIAN_EPS)).sum(dim=1).to(self.log_weights)
        if int(self.steps) == 0:
            self.initial_risk = risk.clamp_min(1e-12 * float(risk.max().clamp_min(1e-30)))
        else:
            self.log_weights += self.robust_step_size * risk / self.initial_risk
        self.steps += 1

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        if grads is None:
            raise RuntimeError(f"strategy '{self}' needs task gradients from the harness")
        self._update_weights(grads.matrix.detach())
        weights = self.n_tasks * torch.softmax(self.log_weights, dim=0)
        return self.weighted_sum(weights.to(losses), losses)
