"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, CVPR 2023)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy

from ._gradient import GradientStrategy

SCALES = ("min", "median", "rmse")
#: Eigenvalues below max * T * this count as zero. The Gram matrix is accumulated in float32,
#: so float32's machine epsilon is the honest tolerance (the official code's choice too).
RANK_EPS = float(np.finfo(np.float32).eps)


def alignment_matrix(gram: np.ndarray, scale: str = "min") -> np.ndarray:
    """B = sigma V_R Lambda_R^{-1/2} V_R^T from M = V Lambda V^T restricted to its rank R, so
    that the aligned gradients B G have B M B = sigma^2 V_R V_R^T: equal singular values."""
    eigvals, eigvecs = np.linalg.eigh(gram)
    keep = eigvals > max(float(eigvals.max()), 0.0) * len(gram) * RANK_EPS
    if not keep.any():
        return np.zeros_like(gram)
    lam, vec = eigvals[keep], eigvecs[:, keep]  # ascending
    sigma2 = {"min": lam[0], "median": lam[(len(lam) - 1) // 2], "rmse": lam.mean()}[scale]
    return (vec * np.sqrt(sigma2 / lam)) @ vec.T


@register_strategy("aligned_mtl")
class AlignedMTL(GradientStrategy):
    """Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023.
    https://arxiv.org/abs/2305.19000

    Aligned-MTL removes the dominance and conflict of task gradients by making their matrix
    well conditioned: with the Gram matrix M = G G^T = V Lambda V^T (eigenvalues lambda_1 >= ...
    >= lambda_R > 0, R the rank), the aligned gradients are

        G_hat = B G,    B = sigma V Lambda^{-1/2} V^T,    sigma = sqrt(lambda_R) (smallest),

    whose rows are orthogonal with equal norms sigma (all singular values equal sigma: condition
    number 1). The update sums them, d = 1^T G_hat = (B 1) @ G, so alpha = B 1. Everything is a
    T x T eigen-decomposition of the Gram matrix. With ``source="rep"`` it is the paper's
    Aligned-MTL-UB (gradients at the shared representation).

    Eigenvalues at or below lambda_max * T * eps(float32) count as zero and their directions
    are dropped, as in the official code. Departure: the paper allows pre-set task weights w
    (d = G_hat w); here w = 1.

    Args:
        scale: sigma^2 is the smallest eigenvalue (``min``, the paper), the lower median
            (``median``) or the mean (``rmse``) of the kept eigenvalues (the official code's
            ``scale_mode`` options).
        source: ``shared`` (Aligned-MTL) or ``rep`` (Aligned-MTL-UB).
    """

    paper = "Senushkin et al., CVPR 2023"
    summary = "align task gradients to equal singular values (stable gradient system)"
    permutation_invariant = True

    def __init__(self, scale: str = "min", source: str = "shared"):
        super().__init__(source)
        check_param(scale in SCALES, "scale", "one of " + ", ".join(map(repr, SCALES)), scale)
        self.scale = scale

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        return alignment_matrix(gram, self.scale).sum(axis=1)
