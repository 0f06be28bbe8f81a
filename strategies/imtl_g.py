"""IMTL-G (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, ICLR 2021)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtl_bench.registry import register_strategy

from ._gradient import GradientStrategy, nonzero, normalised


def imtl_g_weights(gram: np.ndarray) -> np.ndarray:
    """alpha with sum 1 and equal projections of alpha @ G onto every unit task gradient.

    With g_1 as reference, D = [g_1 - g_i]_{i>=2}, U = [u_1 - u_i]_{i>=2} (u_i = g_i/||g_i||):
    alpha_{2:T} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum_{i>=2} alpha_i, all from the Gram
    matrix since g_a . u_b = M_ab / ||g_b||.
    """
    t = len(gram)
    norms = np.sqrt(np.clip(np.diagonal(gram), 0.0, None))
    if t == 2:
        # The general formula reduces to alpha = (||g_2||, ||g_1||) / (||g_1|| + ||g_2||):
        # d = ||g_1|| ||g_2|| (u_1 + u_2) / (||g_1|| + ||g_2||), defined even for parallel g_i.
        total = norms.sum()
        return np.array([norms[1], norms[0]]) / total if total > 0 else np.full(2, 0.5)
    gu = gram / np.where(norms > 0, norms, 1.0)[None, :]      # g_a . u_b
    du = gu[0, 0] - gu[0:1, 1:] - gu[1:, 0:1] + gu[1:, 1:]   # (g_1 - g_j) . (u_1 - u_k)
    rhs = gu[0, 0] - gu[0, 1:]                                # g_1 . (u_1 - u_k)
    # alpha_rest @ du = rhs; least squares gives the minimum-norm solution if du is singular
    rest = np.linalg.lstsq(du.T, rhs, rcond=None)[0]
    return np.concatenate([[1.0 - rest.sum()], rest])


@register_strategy("imtl_g")
class IMTLG(GradientStrategy):
    """Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    https://openreview.net/forum?id=IMPnRXEWpvr

    IMTL-G looks for the update d = sum_i alpha_i g_i, sum_i alpha_i = 1, whose projections
    onto every unit task gradient u_i = g_i / ||g_i|| are equal (d . u_1 = d . u_i for all i):
    no task is favoured. With D = [g_1 - g_i]_{i>=2} and U = [u_1 - u_i]_{i>=2} (rows), the
    closed form is

        alpha_{2:T} = g_1 U^T (D U^T)^{-1},        alpha_1 = 1 - sum_{i>=2} alpha_i.

    For two tasks this is alpha = (||g_2||, ||g_1||) / (||g_1|| + ||g_2||). Everything is
    computed from the Gram matrix (a (T-1) x (T-1) solve). The paper computes these gradients at
    the shared representation for speed, which is ``source="rep"`` here.

    Departures: only the gradient part (IMTL-G) is implemented, not the loss scaling IMTL-L
    (the paper's full IMTL combines both). Tasks with a zero gradient (norm at most the machine
    epsilon of the gradients' dtype times the largest task gradient norm, 2.2e-16 in float64,
    1.2e-7 in float32) are left out of the solve and get weight 0 (any weight gives the same
    update); every other task, however small its gradient, keeps the equal-projection
    condition. If D U^T is singular the least-squares minimum-norm solution is used.

    Args:
        source: ``shared`` (gradients of the shared parameters) or ``rep`` (the shared
            representation, as in the paper's experiments).
    """

    paper = "Liu et al., ICLR 2021"
    summary = "combined gradient with equal projection on every unit task gradient"
    permutation_invariant = True

    def __init__(self, source: str = "shared"):
        super().__init__(source)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        t = len(gram)
        keep = nonzero(gram, losses.dtype)
        if keep.all():
            return imtl_g_weights(normalised(gram))
        if not keep.any():
            return np.full(t, 1.0 / t)
        alpha = np.zeros(t)
        sub = normalised(gram[np.ix_(keep, keep)])
        alpha[keep] = imtl_g_weights(sub) if keep.sum() > 1 else 1.0
        return alpha
