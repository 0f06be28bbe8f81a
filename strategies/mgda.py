"""MGDA-UB (Sener & Koltun, NeurIPS 2018)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import check_positive

from ._gradient import (
    GradientStrategy,
    check_int,
    min_norm_pair,
    min_norm_solve,
    normalised,
)

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@register_strategy("mgda")
class MGDA(GradientStrategy):
    """Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
    https://arxiv.org/abs/1810.04650

    The update is the minimum-norm point of the convex hull of the task gradients:

        alpha = argmin_{alpha in simplex} || sum_i alpha_i g_i ||^2,     d = sum_i alpha_i g_i

    which is zero at a Pareto-stationary point and otherwise a descent direction for every task.
    Two tasks have the closed form alpha_1 = clip((g_2 - g_1) . g_2 / ||g_1 - g_2||^2, 0, 1),
    alpha_2 = 1 - alpha_1 (paper, Algorithm 1). Up to 8 tasks the problem is solved exactly: for
    every support S of alpha, the stationary point of the quadratic on that face of the simplex
    (a small linear solve on the cosine matrix, so that gradient norm ratios of 1e6 cost no
    accuracy); the feasible one of least norm is the minimum. More tasks use Frank-Wolfe with
    exact line search (Algorithm 2) plus away steps. All of it works from the Gram matrix. With
    ``source="rep"`` the gradients are taken at the shared representation, which is the paper's
    MGDA-UB (minimising an upper bound); with ``source="shared"`` it is plain MGDA on the shared
    parameters.

    Gradient normalisation (the ``normalize`` modes of the official code): before solving, each
    g_i is divided by n_i, where n_i = 1 (``none``), ||g_i|| (``l2``: every task counts alike
    whatever its gradient scale), L_i (``loss``: the task's current loss) or L_i ||g_i||
    (``loss+``, the official sample configuration). As in the official code the alpha found on
    the normalised gradients is applied to the raw gradients: d = sum_i alpha_i g_i.

    Departures: an exact solve up to 8 tasks instead of Frank-Wolfe; beyond, Frank-Wolfe takes
    away steps as well (plain Frank-Wolfe converges sublinearly when the solution lies on a face
    of the simplex and stalls well short of it), starts at the uniform point like the paper (the
    official code starts at the best pair) and stops on the duality gap relative to the current
    point rather than on the size of a step; the official two-task solver returns
    0.999/0.001 at the clip boundaries, this one the exact 1/0; identical gradients get
    alpha = (1/2, 1/2).

    Args:
        normalize: ``none`` (default, the paper's algorithm), ``l2``, ``loss`` or ``loss+``.
        max_iter: Frank-Wolfe iterations at most (T > 8; official code: 250). Hitting it is
            counted in ``solver_failures`` and the last iterate is used.
        tol: Frank-Wolfe (T > 8) stops when its duality gap alpha^T M alpha - min_s
            (M alpha)_s, which bounds alpha^T M alpha - its minimum, is at most ``tol``
            alpha^T M alpha: the squared norm of the returned point is within a factor 1 + tol
            of the minimum and its distance to the min-norm point at most sqrt(tol) times its
            norm, whatever the gradient scales.
        source: ``shared`` (gradients of the shared parameters) or ``rep`` (MGDA-UB).
    """

    paper = "Sener & Koltun, NeurIPS 2018"
    summary = "minimum-norm point in the convex hull of the task gradients"
    permutation_invariant = True

    def __init__(self, normalize: str = "none", max_iter: int = 250, tol: float = 1e-5,
                 source: str = "shared"):
        super().__init__(source)
        check_param(normalize in NORMALIZATIONS, "normalize",
                    "one of " + ", ".join(map(repr, NORMALIZATIONS)), normalize)
        check_int("max_iter", max_iter, 1)
        check_positive("tol", tol)
        self.normalize = normalize
        self.max_iter = max_iter
        self.tol = float(tol)

    def _scales(self, gram: np.ndarray, losses: Tensor) -> np.ndarray | None:
        if self.normalize == "none":
            return None
        norms = np.sqrt(np.clip(np.diagonal(gram), 0.0, None))
        loss = np.abs(np.array(losses.tolist()))
        n = {"l2": norms, "loss": loss, "loss+": loss * norms}[self.normalize]
        # A zero scale means a zero gradient or a zero loss: leave that task unscaled.
        return np.where(n > 0, n, 1.0)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        scales = self._scales(gram, losses)
        if scales is not None:
            gram = gram / np.outer(scales, scales)
        if not np.trace(gram) > 0:  # every gradient is zero: any alpha is the min-norm point
            return np.full(len(gram), 1.0 / len(gram))
        if len(gram) == 2:
            gamma = min_norm_pair(float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1]))
            return np.array([gamma, 1.0 - gamma])
        alpha, converged = min_norm_solve(normalised(gram), self.max_iter, self.tol)
        if not converged:
            self.solver_failed()
        return alpha
