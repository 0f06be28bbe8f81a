"""DualProj (Quinton & Rey, 2024)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from torch import Tensor

from mtl_bench.registry import register_strategy

from ._gradient import GradientStrategy, normalised


def project_onto_dual_cone(gram: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The v with v @ G = projection of w @ G onto {x : G x >= 0} (the dual cone of the rows
    of G), from the Gram matrix M = G G^T alone.

    Dual of the projection: v = w + lambda, lambda = argmin_{lambda >= 0} (w + lambda)^T M
    (w + lambda), which is the non-negative least-squares problem min ||R (w + lambda)|| with
    R^T R = M (Lawson-Hanson active set, exact up to rounding)."""
    eigvals, eigvecs = np.linalg.eigh(gram)
    root = np.sqrt(np.clip(eigvals, 0.0, None))[:, None] * eigvecs.T  # root^T root = M
    lam = nnls(root, -root @ w, maxiter=50 * len(gram))[0]
    return w + lam


@register_strategy("dualproj")
class DualProj(GradientStrategy):
    """Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (the DualProj
    aggregator of torchjd). https://arxiv.org/abs/2406.16232

    Project the mean gradient onto the dual cone of the task gradients,
    C* = {x : g_j . x >= 0 for every j}:

        d = argmin_{x in C*} || x - (1/T) sum_i g_i ||^2

    so d is the closest vector to the mean gradient that conflicts with no task, and d equals
    the mean whenever the mean already has a non-negative inner product with every g_j. The
    projection is solved in the dual, in the space of task weights: d = v @ G with
    v = w + argmin_{lambda >= 0} (w + lambda)^T M (w + lambda), w = (1/T, ..., 1/T) and
    M = G G^T, i.e. a T-variable non-negative least-squares problem solved exactly.

    Departures from torchjd: the dual problem is solved by non-negative least squares on a
    square root of M instead of a quadratic-programming solver, with no ridge regularisation
    of M (the Gram matrix is only divided by its mean diagonal); the preference vector is the
    uniform mean (torchjd's default) with no option to change it.

    Args:
        source: ``shared`` (gradients of the shared parameters, the paper's setting) or ``rep``.
    """

    paper = "Quinton & Rey, 2024"
    summary = "mean gradient projected onto the dual cone of the task gradients (no conflict)"
    permutation_invariant = True

    def __init__(self, source: str = "shared"):
        super().__init__(source)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        t = len(gram)
        return project_onto_dual_cone(normalised(gram), np.full(t, 1.0 / t))
