"""CAGrad (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021)."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import check_positive

from ._gradient import GradientStrategy, normalised

RESCALES = (0, 1, 2)


def cagrad_dual_pair(gram: np.ndarray, c: float) -> np.ndarray:
    """Exact minimiser over the 2-simplex of F(w) = g_w . g0 + c ||g0|| ||g_w||.

    With g_w = g_2 + t (g_1 - g_2), delta = g_1 - g_2, F'(t) = delta.g0 + K delta.g_w/||g_w||
    (K = c ||g0||). Writing g_2 = beta e + n (e = delta/||delta||, n orthogonal to e, nu =
    ||n||^2) and s = beta + t ||delta||, delta.g_w/||g_w|| = ||delta|| s / sqrt(s^2 + nu), so
    F'(t) = 0 at s = r sqrt(nu / (1 - r^2)) with r = -delta.g0 / (K ||delta||) when |r| < 1.
    F is convex, so clipping t to [0, 1] gives the constrained minimiser.
    """
    a, b, d = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
    dd = a + d - 2.0 * b                      # ||delta||^2
    k = c * math.sqrt(max((a + d + 2.0 * b) / 4.0, 0.0))
    dg0 = (a - d) / 2.0                       # delta . g0 with g0 = (g_1 + g_2) / 2
    if dd <= 1e-15 * max(a + d, 1e-300):      # identical gradients: every w gives the same g_w
        return np.array([0.5, 0.5])
    if k <= 0.0:                              # F is linear in t
        t = 0.5 if dg0 == 0.0 else (1.0 if dg0 < 0.0 else 0.0)
        return np.array([t, 1.0 - t])
    norm_delta = math.sqrt(dd)
    beta = (b - d) / norm_delta               # g_2 . e
    nu = max(d - beta * beta, 0.0)
    r = -dg0 / (k * norm_delta)
    if r >= 1.0:
        t = 1.0
    elif r <= -1.0:
        t = 0.0
    else:
        s = r * math.sqrt(nu / (1.0 - r * r))
        t = min(1.0, max(0.0, (s - beta) / norm_delta))
    return np.array([t, 1.0 - t])


def cagrad_dual(gram: np.ndarray, c: float) -> np.ndarray:
    """Minimiser over the simplex of F(w) = w^T M 1/T + c ||g0|| sqrt(w^T M w), by SLSQP."""
    t = len(gram)
    b = gram.mean(axis=1)
    k = c * math.sqrt(max(float(gram.mean()), 0.0))

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        mw = gram @ w
        norm = math.sqrt(max(float(w @ mw), 0.0) + 1e-12)
        return float(w @ b) + k * norm, b + k * mw / norm

    res = minimize(f, np.full(t, 1.0 / t), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * t,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                 "jac": lambda w: np.ones_like(w)}],
                   options={"ftol": 1e-10, "maxiter": 200})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


@register_strategy("cagrad")
class CAGrad(GradientStrategy):
    """Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
    https://arxiv.org/abs/2110.14048

    With g0 = (1/T) sum_i g_i the average gradient, CAGrad picks the update that maximises the
    worst task's improvement within a ball around g0:

        max_d min_i g_i . d    subject to    ||d - g0|| <= c ||g0||.

    Through its dual over the simplex, w* = argmin_w g_w . g0 + c ||g0|| ||g_w|| with
    g_w = sum_i w_i g_i, the solution is

        d = g0 + (c ||g0|| / ||g_w*||) g_w*,     divided by 1 + c^2 (rescale=1) or 1 + c (2).

    So alpha = 1/T + (c ||g0|| / ||g_w*||) w*, over the rescale factor. c = 0 gives the mean
    gradient (note: the mean, not the sum that fixed equal weights apply). Two tasks use an exact
    closed form of the one-dimensional dual; more tasks solve it with SLSQP (scipy, ftol 1e-10,
    at most 200 iterations), like the official code. The Gram matrix is normalised by its mean
    diagonal first (w* does not depend on the gradient scale). When the dual optimum has
    g_w* = 0 (e.g. a task with a zero gradient) the formula is undefined and the update falls
    back to the mean gradient (the official code's 1e-8 guard would give an arbitrary step).

    Args:
        c: radius of the ball relative to ||g0||, >= 0 (paper: 0.4 to 0.5; c < 1 keeps
            convergence to a stationary point of the average loss).
        rescale: 0 (none), 1 (divide by 1 + c^2, official default) or 2 (divide by 1 + c).
        source: ``shared`` (gradients of the shared parameters, the paper) or ``rep``.
    """

    paper = "Liu et al., NeurIPS 2021"
    summary = "maximise the worst task's improvement near the mean gradient (c-ball)"
    permutation_invariant = True

    def __init__(self, c: float = 0.5, rescale: int = 1, source: str = "shared"):
        super().__init__(source)
        check_positive("c", c, allow_zero=True)
        check_param(rescale in RESCALES and not isinstance(rescale, bool), "rescale",
                    "one of 0, 1, 2", rescale)
        self.c = float(c)
        self.rescale = rescale

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        t = len(gram)
        gram = normalised(gram)
        alpha = np.full(t, 1.0 / t)
        g0_norm = math.sqrt(max(float(gram.mean()), 0.0))
        if self.c > 0 and g0_norm > 0:
            w = cagrad_dual_pair(gram, self.c) if t == 2 else cagrad_dual(gram, self.c)
            gw_norm = math.sqrt(max(float(w @ gram @ w), 0.0))
            if gw_norm > 1e-12 * g0_norm:
                alpha = alpha + (self.c * g0_norm / gw_norm) * w
        return alpha / {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
