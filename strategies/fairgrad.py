"""FairGrad (Ban & Ji, ICML 2024)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares
from torch import Tensor

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import check_positive

from ._gradient import GradientStrategy, nonzero


def fairgrad_weights(gram: np.ndarray, alpha: float) -> np.ndarray:
    """alpha-fair weights w > 0 solving M w = w^(-1/alpha) (elementwise), by bounded nonlinear
    least squares from the uniform point; the least-squares solution when none exists."""
    t = len(gram)

    def residual(w: np.ndarray) -> np.ndarray:
        return gram @ w - np.power(w, -1.0 / alpha)

    def jacobian(w: np.ndarray) -> np.ndarray:
        return gram + np.diag(np.power(w, -1.0 / alpha - 1.0) / alpha)

    # A small positive floor: the residual has w^(-1/alpha), infinite at w = 0.
    result = least_squares(residual, np.full(t, 1.0 / t), jac=jacobian, bounds=(1e-12, np.inf))
    return result.x


@register_strategy("fairgrad")
class FairGrad(GradientStrategy):
    """Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.
    https://arxiv.org/abs/2402.15638

    The update d = G^T w maximises the alpha-fair utility sum_i (g_i . d)^(1-alpha) / (1-alpha)
    (sum_i log(g_i . d) for alpha = 1) over a ball. Its optimality condition, with M = G G^T the
    Gram matrix, is the nonlinear system

        (M w)_i = w_i^(-1/alpha)   for every task i,         d = sum_i w_i g_i,

    solved, as in the official code, by bounded least squares (scipy ``least_squares``, w > 0)
    from the uniform point w = 1/T. alpha = 1 gives proportional fairness (each task's
    directional derivative g_i . d equals 1 / w_i, the Nash-MTL condition); alpha -> infinity
    tends to max-min fairness. The weights are not scale-free: multiplying every gradient by c
    multiplies w by c^(-2 alpha / (1 + alpha)), so the Gram matrix is used unnormalised.

    Departures: the analytic Jacobian M + diag(w^(-1/alpha-1) / alpha) is passed to the solver
    (the official code lets it use finite differences) and the lower bound is 1e-12 instead of 0,
    so that w^(-1/alpha) stays finite. Where the system has no exact solution (linearly
    dependent gradients) the solver's least-squares point is used, as in the official code. A
    task with a zero gradient has no solution at all ((M w)_i = 0): it is left out of the solve
    and gets weight 0, which changes nothing in d (all zero: 1/T each).

    Args:
        alpha: fairness exponent alpha > 0 (default 1; the paper tunes it, e.g. 0.5 to 8).
        source: ``shared`` (gradients of the shared parameters) or ``rep`` (the shared
            representation).
    """

    paper = "Ban & Ji, ICML 2024"
    summary = "alpha-fair update: solve (G G^T w)_i = w_i^(-1/alpha), d = w @ G"
    permutation_invariant = True

    def __init__(self, alpha: float = 1.0, source: str = "shared"):
        super().__init__(source)
        check_positive("alpha", alpha)
        self.alpha = float(alpha)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        keep = nonzero(gram)
        if keep.all():
            return fairgrad_weights(gram, self.alpha)
        alpha = np.zeros(len(gram))
        if keep.any():
            alpha[keep] = fairgrad_weights(gram[np.ix_(keep, keep)], self.alpha)
        else:
            alpha[:] = 1.0 / len(gram)
        return alpha
