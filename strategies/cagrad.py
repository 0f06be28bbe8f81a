"""CAGrad (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021)."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import check_positive

from ._gradient import (
    EXACT_MAX_TASKS,
    GradientStrategy,
    bordered_inverses,
    candidates,
    min_norm_exact,
    normalised,
    scaled_gram,
    supports,
)

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


def cagrad_dual_exact(gram: np.ndarray, c: float) -> np.ndarray | None:
    """Exact minimiser over the simplex of F(w) = w^T M 1/T + c ||g0|| sqrt(w^T M w).

    For each support S of w, with rho = ||g_w|| and k = c ||g0||, stationarity on the face,
    b_S + (k / rho) (M w)_S = lambda 1 (b = M 1/T), is linear in w for a fixed rho: w = A +
    (rho / k) B from two small linear solves (on the cosine matrix, see
    :func:`scaled_gram`). rho = ||g_w|| is then a quadratic equation in rho. Every non-negative
    root gives a feasible point, the optimum is among them (or is the min-norm point, where
    g_w = 0), so the feasible point of least F is the minimiser. None if none is feasible.
    """
    t = len(gram)
    b = gram.mean(axis=1)
    kk = c * math.sqrt(max(float(gram.mean()), 0.0))
    cos, n = scaled_gram(gram)
    u = 1.0 / n
    top = float(u.max())
    u = u / top
    b_n = b / n

    def values(alpha: np.ndarray) -> np.ndarray:
        beta = alpha * n
        norm2 = np.clip(np.einsum("ni,ij,nj->n", beta, cos, beta), 0.0, None)
        return alpha @ b + kk * np.sqrt(norm2)

    best, best_value = None, np.inf
    for subsets in supports(t):
        k = subsets.shape[1]
        inv = bordered_inverses(cos, u, subsets)
        sub = cos[subsets[:, :, None], subsets[:, None, :]]
        a = inv[:, :k, k] / top
        v = -np.einsum("nij,nj->ni", inv[:, :k, :k], b_n[subsets])
        # (v C v - k^2) x^2 + 2 (a C v) x + a C a = 0 for x = rho / k
        q2 = np.einsum("ni,nij,nj->n", v, sub, v) - kk * kk
        q1 = np.einsum("ni,nij,nj->n", a, sub, v)
        q0 = np.einsum("ni,nij,nj->n", a, sub, a)
        with np.errstate(divide="ignore", invalid="ignore"):
            linear = np.abs(q2) <= 1e-14 * np.maximum(np.maximum(np.abs(q1), np.abs(q0)), 1e-300)
            disc = q1 * q1 - q2 * q0
            root = np.sqrt(np.clip(disc, 0.0, None))
            big = -q1 - np.copysign(root, q1)  # the two roots, each without cancellation
            roots = [np.where(linear, -q0 / (2.0 * q1), big / q2),
                     np.where(linear, np.nan, np.where(big != 0.0, q0 / big, big / q2))]
            real = linear | (disc >= 0.0)
        for x in roots:
            keep = real & np.isfinite(x) & (x > 0.0)
            if not keep.any():
                continue
            alpha = candidates(a[keep] + x[keep, None] * v[keep], n, subsets[keep], t)
            if len(alpha):
                f = values(alpha)
                i = int(np.argmin(f))
                if f[i] < best_value:
                    best, best_value = alpha[i], float(f[i])
    if not best_value < 0.0:  # the optimum may be g_w = 0 (value 0), at the min-norm point
        low = min_norm_exact(gram)
        if low is not None and values(low[None])[0] < best_value:
            best = low
    return best


def no_conflict_projection(gram: np.ndarray) -> np.ndarray | None:
    """y >= 0 such that d = g0 + sum_i y_i g_i is the closest point to g0 with g_i . d >= 0 for
    every task, or None if the exact solve finds none (T <= :data:`EXACT_MAX_TASKS`).

    The dual is min_{y >= 0} y^T M y / 2 + y . b (b = M 1/T). For every support S of y the
    stationary point solves M_SS y_S = -b_S (on the cosine matrix, least squares when
    singular); those with y >= 0 and g_i . d >= 0 (up to rounding) are feasible, and the one
    nearest to g0 is the projection.
    """
    t = len(gram)
    if t > EXACT_MAX_TASKS:
        return None
    cos, n = scaled_gram(gram)
    b_n = gram.mean(axis=1) / n
    tol = 1e-9 * max(float(np.abs(b_n).max()), 1e-300)
    if b_n.min() >= -tol:
        return np.zeros(t)  # g0 itself conflicts with no task
    best, best_value = None, np.inf
    for subsets in supports(t):
        sub = cos[subsets[:, :, None], subsets[:, None, :]]
        part = -np.einsum("nij,nj->ni", np.linalg.pinv(sub), b_n[subsets])
        beta = np.zeros((len(subsets), t))
        np.put_along_axis(beta, subsets, part, axis=1)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(beta).all(axis=1)
            ok &= beta.min(axis=1) >= -1e-9 * np.abs(beta).max(axis=1)
        beta = np.clip(beta[ok], 0.0, None)
        beta = beta[(b_n + beta @ cos).min(axis=1) >= -tol]
        if len(beta):
            value = np.einsum("ni,ij,nj->n", beta, cos, beta)
            i = int(np.argmin(value))
            if value[i] < best_value:
                best, best_value = beta[i] / n, float(value[i])
    return best


def cagrad_dual_slsqp(gram: np.ndarray, c: float) -> tuple[np.ndarray, bool]:
    """Minimiser over the simplex of F(w) = w^T M 1/T + c ||g0|| sqrt(w^T M w), by SLSQP, and
    whether SLSQP reported success."""
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
                   options={"ftol": 1e-12, "maxiter": 500})
    w = np.clip(res.x, 0.0, None)
    ok = bool(res.success) and np.isfinite(w).all() and w.sum() > 0
    return (w / w.sum(), True) if ok else (np.full(t, 1.0 / t), False)


def cagrad_dual_solve(gram: np.ndarray, c: float) -> tuple[np.ndarray, bool]:
    """The dual minimiser w* and whether the solver succeeded: closed form for two tasks,
    :func:`cagrad_dual_exact` up to :data:`EXACT_MAX_TASKS` tasks, SLSQP beyond."""
    if len(gram) == 2:
        return cagrad_dual_pair(gram, c), True
    if len(gram) <= EXACT_MAX_TASKS:
        w = cagrad_dual_exact(gram, c)
        if w is not None:
            return w, True
        return cagrad_dual_slsqp(gram, c)[0], False
    return cagrad_dual_slsqp(gram, c)


def cagrad_dual(gram: np.ndarray, c: float) -> np.ndarray:
    """Minimiser over the simplex of F(w) = w^T M 1/T + c ||g0|| sqrt(w^T M w) (any T)."""
    t = len(gram)
    if t <= EXACT_MAX_TASKS:
        w = cagrad_dual_exact(gram, c)
        if w is not None:
            return w
    return cagrad_dual_slsqp(gram, c)[0]


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
    closed form of the one-dimensional dual. Up to 8 tasks the dual is solved exactly (departure:
    the official code uses SLSQP, which stalls near its start when gradient norms differ by 1e4
    or more): on each support of w, stationarity makes w affine in rho = ||g_w||, and rho solves
    a quadratic equation; the feasible point of least dual value is the minimiser. More tasks
    use SLSQP (scipy, ftol 1e-12, at most 500 iterations); an SLSQP failure is counted in
    ``solver_failures`` and gives the mean gradient. The Gram matrix is normalised by its mean
    diagonal first (w* does not depend on the gradient scale). When the dual optimum has
    g_w* = 0 (e.g. a task with a zero gradient) the formula is undefined and the update
    falls back to the point nearest g0 that conflicts with no task (g_i . d >= 0 for all i; it
    lies in the ball and attains the optimum, 0), found exactly up to 8 tasks, else the mean
    gradient (the official code's 1e-8 guard would give an arbitrary step).

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
            w, ok = cagrad_dual_solve(gram, self.c)
            if not ok:
                self.solver_failed()
            cos, n = scaled_gram(gram)
            gw_norm = math.sqrt(max(float((w * n) @ cos @ (w * n)), 0.0))
            if gw_norm > 1e-12 * g0_norm:
                alpha = alpha + (self.c * g0_norm / gw_norm) * w
            else:  # the optimum is 0: any d in the ball that conflicts with no task attains it
                y = no_conflict_projection(gram)
                if y is not None:
                    alpha = alpha + y
        return alpha / {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
