"""ConFIG (Liu, Chu, Thuerey, 2024)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtl_bench.registry import register_strategy

from ._gradient import GradientStrategy, nonzero, normalised


def config_coefficients(gram: np.ndarray) -> np.ndarray:
    """alpha with alpha @ G = the ConFIG direction, from the Gram matrix M = G G^T.

    With D = diag(||g_i||), the unit gradients are U = D^-1 G and U U^T = D^-1 M D^-1. The
    minimum-norm solution of U x = 1 is x = U^T c with c = (U U^T)^+ 1, i.e. x = a @ G with
    a = D^-1 c and ||x||^2 = c^T U U^T c. Then g_u = x / ||x|| and
    d = (sum_i g_i . g_u) g_u = (1^T M a / ||x||^2) a @ G."""
    t = len(gram)
    alpha = np.zeros(t)
    keep = nonzero(gram) if np.trace(gram) > 0 else np.zeros(t, dtype=bool)
    if not keep.any():
        return alpha  # every gradient is zero: so is the update
    sub = gram[np.ix_(keep, keep)]
    norms = np.sqrt(np.diagonal(sub))
    unit_gram = sub / np.outer(norms, norms)
    c = np.linalg.pinv(unit_gram, rcond=1e-10, hermitian=True) @ np.ones(len(sub))
    a = c / norms
    x_norm2 = float(c @ unit_gram @ c)
    if not x_norm2 > 0:
        return alpha
    alpha[keep] = float(np.ones(len(sub)) @ sub @ a) / x_norm2 * a
    return alpha


@register_strategy("config")
class ConFIG(GradientStrategy):
    """Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks", ICLR 2025 (arXiv 2024). https://arxiv.org/abs/2408.11104

    Conflict-free inverse gradients. With the unit task gradients u_i = g_i / ||g_i|| stacked
    in U, the direction is the normalised pseudo-inverse solution of U x = 1, scaled by the sum
    of the projections of the task gradients on it:

        g_u = U^+ 1 / ||U^+ 1||,        d = (sum_i g_i . g_u) g_u

    Every u_i . g_u is the same number, so when the gradients are linearly independent d has
    the same positive cosine with every task gradient: no task conflicts with the update and
    none is favoured. Everything follows from the Gram matrix (``config_coefficients``), so the
    module returns alpha with d = alpha @ G.

    Departures from the official code: the pseudo-inverse is taken of the T x T Gram matrix of
    the unit gradients rather than by least squares on the P-column matrix U (the same
    minimum-norm solution); tasks with a zero gradient have no unit vector and are left out
    (weight 0); the optional loss-based rescaling of the official code is not offered.

    Args:
        source: ``shared`` (gradients of the shared parameters, the paper's setting) or ``rep``.
    """

    paper = "Liu et al., ICLR 2025"
    summary = "direction with equal cosine to every task gradient (pseudo-inverse of unit grads)"
    permutation_invariant = True

    def __init__(self, source: str = "shared"):
        super().__init__(source)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        # alpha is homogeneous of degree 0 in the scale of M, so solving on M / mean(diag M)
        # gives the same alpha with O(1) numbers
        return config_coefficients(normalised(gram))
