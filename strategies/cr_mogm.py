"""CR-MOGM (Zhou, Zhang, Jiang, Zhong, Gu & Zhu, NeurIPS 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import TaskInfo, check_positive

from ._gradient import GradientStrategy, check_int, min_norm_weights


@register_strategy("cr_mogm")
class CRMOGM(GradientStrategy):
    """Zhou, Zhang, Jiang, Zhong, Gu & Zhu, "On the Convergence of Stochastic Multi-Objective
    Gradient Manipulation and Beyond", NeurIPS 2022.
    https://proceedings.neurips.cc/paper_files/paper/2022/hash/f91bd64a3620aad8e70a27ad9cb3ca57-Abstract-Conference.html

    Stochastic gradient manipulation picks its composite weights from this batch's gradients
    alone, and the paper shows it can then fail to converge. The correlation-reduced variant
    (CR-MOGM) averages the weights exponentially over the steps:

        lambda_hat_k = argmin_{lambda in simplex} ||G_k^T lambda||^2       (MGDA, the base method)
        lambda_k     = alpha lambda_{k-1} + (1 - alpha) lambda_hat_k
        d_k          = G_k^T lambda_k

    with lambda_0 = lambda_hat_1 (the first step is plain MGDA). alpha = 0 is MGDA exactly;
    alpha -> 1 freezes the weights. lambda_hat_k is solved exactly as in ``mgda`` (closed
    form for two tasks, every support up to 8 tasks, Frank-Wolfe with away steps beyond; a
    Frank-Wolfe run that hits ``max_iter`` counts in ``solver_failures``). The logged weights
    are lambda_k.

    Departures: the paper's analysis takes alpha_k -> 1 on a schedule tied to the step size
    (1 - alpha_k proportional to it); the harness owns the learning rate, so alpha is a
    constant here. The paper leaves lambda_0 free; the first step's MGDA weights are used. Only
    MGDA is offered as the base method (the paper also wraps PCGrad and CAGrad).

    Args:
        alpha: averaging factor in [0, 1) on the previous weights (default 0.9, a common
            moving-average constant; the paper gives a schedule, not one value).
        max_iter: Frank-Wolfe iterations at most for the base MGDA solve (T > 8).
        tol: Frank-Wolfe duality-gap tolerance for the base MGDA solve (T > 8), as in ``mgda``.
        source: ``shared`` (gradients of the shared parameters) or ``rep``.
    """

    paper = "Zhou et al., NeurIPS 2022"
    summary = "MGDA weights averaged exponentially over the steps (correlation reduction)"
    permutation_invariant = True

    def __init__(self, alpha: float = 0.9, max_iter: int = 250, tol: float = 1e-5,
                 source: str = "shared"):
        super().__init__(source)
        ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 <= alpha < 1
        check_param(ok, "alpha", "a float in [0, 1)", alpha)
        check_int("max_iter", max_iter, 1)
        check_positive("tol", tol)
        self.alpha = float(alpha)
        self.max_iter = max_iter
        self.tol = float(tol)
        self.register_buffer("lam", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.lam = torch.full((self.n_tasks,), 1.0 / self.n_tasks, dtype=torch.float64)
        self.started = torch.zeros((), dtype=torch.bool)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        hat, converged = min_norm_weights(gram, self.max_iter, self.tol)
        if not converged:
            self.solver_failed()
        if not np.isfinite(hat).all():  # counted by the caller; the average is left intact
            return hat
        if bool(self.started):
            hat = self.alpha * np.array(self.lam.tolist()) + (1.0 - self.alpha) * hat
        self.lam.copy_(torch.as_tensor(hat, dtype=self.lam.dtype))
        self.started.fill_(True)
        return hat
