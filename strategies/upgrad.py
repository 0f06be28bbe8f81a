"""UPGrad (Quinton & Rey, 2024)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from torch import Tensor

from mtl_bench.registry import register_strategy

from ._gradient import GradientStrategy, normalised


def dual_cone_weights(gram: np.ndarray) -> np.ndarray:
    """Row i: the v with v @ G = projection of g_i onto {x : G x >= 0} (the dual cone of the
    rows of G). v = e_i + lambda, lambda = argmin_{lambda >= 0} ||A (e_i + lambda)||^2 with
    A^T A = M, a non-negative least-squares problem (Lawson-Hanson, scipy.optimize.nnls)."""
    t = len(gram)
    if t == 2:
        a, b, c = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
        # minimise (e_i + l e_j)^T M (e_i + l e_j) over l >= 0: l = max(0, -M_ij / M_jj)
        return np.array([[1.0, max(0.0, -b / c) if c > 0 else 0.0],
                         [max(0.0, -b / a) if a > 0 else 0.0, 1.0]])
    eigvals, eigvecs = np.linalg.eigh(gram)
    root = np.sqrt(np.clip(eigvals, 0.0, None))[:, None] * eigvecs.T  # root^T root = M
    out = np.eye(t)
    for i in range(t):
        out[i] += nnls(root, -root[:, i], maxiter=50 * t)[0]
    return out


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
    v_2 = (max(0, -M_12/M_11), 1); more tasks solve one non-negative least-squares problem per
    task (Lawson-Hanson active set, exact up to rounding) on a square root of M.

    Departure from torchjd (the reference implementation): no normalisation or ridge
    regularisation of the Gram matrix (the NNLS form needs neither; the Gram matrix is only
    divided by its mean diagonal), and the preference vector is the uniform mean (torchjd's
    default) with no option to change it.

    Args:
        source: ``shared`` (gradients of the shared parameters, the paper's setting) or ``rep``.
    """

    paper = "Quinton & Rey, 2024"
    summary = "average of task gradients projected onto the dual cone (no conflict)"
    permutation_invariant = True

    def __init__(self, source: str = "shared"):
        super().__init__(source)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        return dual_cone_weights(normalised(gram)).mean(axis=0)
