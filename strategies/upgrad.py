"""UPGrad (Quinton & Rey, 2024)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from torch import Tensor

from mtl_bench.registry import register_strategy

from ._gradient import EXACT_MAX_TASKS, GradientStrategy, nonzero, normalised, scaled_gram, supports


def _pair(gram: np.ndarray) -> np.ndarray:
    """Two tasks: minimise (e_i + l e_j)^T M (e_i + l e_j) over l >= 0, l = max(0, -M_ij/M_jj)
    (then (M v)_i = M_ii - M_ij^2 / M_jj >= 0, so l_i = 0 is optimal)."""
    a, b, c = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
    return np.array([[1.0, max(0.0, -b / c) if c > 0 else 0.0],
                     [max(0.0, -b / a) if a > 0 else 0.0, 1.0]])


def projections_exact(cos: np.ndarray) -> np.ndarray:
    """Row i: w_i = argmin_{w >= e_i} w^T C w for a cosine matrix C (unit diagonal), exactly.

    For each support S of lambda = w - e_i the stationary point on that face solves
    C_SS lambda_S = -C_Si (pseudo-inverse when singular); the ones with lambda_S >= 0 (up to
    rounding) are feasible points and the optimum is among them (a support of linearly
    independent rows always exists, where C_SS is invertible), so the feasible point with the
    smallest objective is the minimiser. lambda = 0 (the empty support) is always feasible.
    All |S| and all i are solved at once, one batched pseudo-inverse per support size."""
    t = len(cos)
    best = np.eye(t)
    if (cos >= 0).all():  # no conflicting pair: lambda = 0 meets the optimality conditions
        return best
    best_value = np.diagonal(cos).copy()
    rows = np.arange(t)
    for subsets in supports(t):
        count, k = subsets.shape
        inv = np.linalg.pinv(cos[subsets[:, :, None], subsets[:, None, :]])  # (N, k, k)
        lam = -inv @ cos[subsets]  # (N, k, T): column i is task i's lambda_S
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(lam).all(axis=1)
            ok &= lam.min(axis=1) >= -1e-9 * np.maximum(1.0, np.abs(lam).max(axis=1))
        w = np.zeros((count, t, t))  # w[n, i] for support n and task i
        w[:, rows, rows] = 1.0
        idx = np.arange(count)[:, None, None]
        lam = np.where(ok[:, None, :], np.clip(lam, 0.0, None), 0.0)
        w[idx, rows[None, :, None], subsets[:, None, :]] += lam.transpose(0, 2, 1)
        value = np.where(ok, ((w @ cos) * w).sum(axis=-1), np.inf)
        n = np.argmin(value, axis=0)
        better = value[n, rows] < best_value
        best[better] = w[n[better], rows[better]]
        best_value[better] = value[n[better], rows[better]]
    return best


def projections_nnls(cos: np.ndarray) -> tuple[np.ndarray, bool]:
    """Row i: argmin_{w >= e_i} w^T C w as a non-negative least-squares problem
    (Lawson-Hanson, scipy.optimize.nnls) on an eigen square root of C; False when one of them
    hit its iteration limit (that row is then e_i, the unprojected gradient)."""
    t = len(cos)
    eigvals, eigvecs = np.linalg.eigh(cos)
    root = np.sqrt(np.clip(eigvals, 0.0, None))[:, None] * eigvecs.T  # root^T root = C
    out, converged = np.eye(t), True
    for i in range(t):
        try:
            out[i] += nnls(root, -root[:, i], maxiter=50 * t)[0]
        except RuntimeError:
            converged = False
    return out, converged


def dual_cone_weights(gram: np.ndarray) -> tuple[np.ndarray, bool]:
    """Row i: the v with v @ G = projection of g_i onto {x : G x >= 0} (the dual cone of the
    rows of G), v = e_i + lambda with lambda = argmin_{lambda >= 0} (e_i + lambda)^T M
    (e_i + lambda); and whether the solver converged.

    Zero gradients (:func:`nonzero`) are left out of the cone (they constrain nothing) and
    project to zero (v = e_i). The rest is solved on their cosine matrix C (:func:`scaled_gram`)
    for w = v * n / n_i, which keeps every number O(1) whatever the norm ratios; then
    v_ij = w_ij n_i / n_j. Exact (:func:`projections_exact`) for up to
    :data:`EXACT_MAX_TASKS` non-zero gradients, NNLS beyond."""
    t = len(gram)
    if t == 2:
        return _pair(gram), True
    out = np.eye(t)
    keep = np.flatnonzero(nonzero(gram))
    if len(keep) < 2:  # a lone gradient is in its own dual cone
        return out, True
    cos, n = scaled_gram(gram[np.ix_(keep, keep)])
    if len(keep) <= EXACT_MAX_TASKS:
        w, converged = projections_exact(cos), True
    else:
        w, converged = projections_nnls(cos)
    out[np.ix_(keep, keep)] = w * n[:, None] / n[None, :]
    return out, converged


@register_strategy("upgrad")
class UPGrad(GradientStrategy):
    """Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024.
    https://arxiv.org/abs/2406.16232

    UPGrad (unconflicting projection of gradients) projects each task gradient onto the dual
    cone of all of them, C* = {x : g_j . x >= 0 for every j}, and averages the projections:

        d = (1/T) sum_i pi_{C*}(g_i).

    d lies in C*, so it never conflicts with any task (d . g_j >= 0), and it equals the mean
    gradient when no pair conflicts. Each projection is a small dual problem:
    pi(g_i) = v_i @ G with v_i = argmin_{v >= e_i} v^T M v (elementwise), so alpha = mean_i v_i
    from the Gram matrix alone. Two tasks have the closed form v_1 = (1, max(0, -M_12/M_22)),
    v_2 = (max(0, -M_12/M_11), 1). More tasks solve the problem on the cosine matrix of the
    non-zero gradients (zero ones, by the relative threshold of ``_gradient.nonzero``, project
    to zero): exactly, by enumerating the 2^T - 1 possible supports of v - e_i (small batched
    linear solves) for up to ``EXACT_MAX_TASKS`` of them, by non-negative least squares
    (Lawson-Hanson) beyond; an NNLS that hits its iteration limit is counted in
    ``solver_failures`` and leaves that gradient unprojected.

    Departure from torchjd (the reference implementation): no normalisation or ridge
    regularisation of the Gram matrix (the exact solve needs neither), and the preference
    vector is the uniform mean (torchjd's default) with no option to change it.

    Args:
        source: ``shared`` (gradients of the shared parameters, the paper's setting) or ``rep``.
    """

    paper = "Quinton & Rey, 2024"
    summary = "average of task gradients projected onto the dual cone (no conflict)"
    permutation_invariant = True

    def __init__(self, source: str = "shared"):
        super().__init__(source)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        weights, converged = dual_cone_weights(normalised(gram))
        if not converged:
            self.solver_failed()
        return weights.mean(axis=0)
