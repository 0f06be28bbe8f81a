"""Shared pieces of the gradient-manipulation strategies (a helper module, not a strategy).

Every method of this family can be written from the Gram matrix M = G G^T of the task gradients
alone: the combined update is d = alpha @ G, and whatever a method does to the gradients
(projections, alignments, convex combinations) is tracked as a small T x T coefficient matrix
instead of P-length vectors. :class:`GradientStrategy` fetches M once per step as a float64
numpy array (a T x T copy), hands it to ``weights_from_gram`` and returns ``Update(weights=alpha)``,
so the harness applies alpha @ G and logs alpha as the task weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.strategy import Strategy, TaskGradients, Update, check_grad_source

#: A task whose squared gradient norm is below this fraction of the largest one counts as zero.
ZERO_NORM = 1e-12


class GradientStrategy(Strategy):
    """Base of the gradient-manipulation strategies: ``source`` handling and the Gram fetch.

    Subclasses implement :meth:`weights_from_gram`, which maps the (T, T) float64 Gram matrix
    (and the detached (T,) losses, for the few methods that use them) to the (T,) coefficients
    alpha of the applied update alpha @ G.
    """

    family = "gradient manipulation"
    #: Seed batching (mtl_bench.batched): written batched by :meth:`combine_seeds`.
    batchable = True

    def __init__(self, source: str = "shared") -> None:
        super().__init__()
        check_grad_source(source)
        self.source = source
        self.grad_source = source

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        raise NotImplementedError

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        if grads is None:
            raise RuntimeError(f"strategy '{self}' needs task gradients from the harness")
        # one small device-to-host copy; T x T Python floats are the cheapest thing to solve on
        gram = np.array(grads.gram.tolist())
        if np.isfinite(gram).all():
            alpha = self.weights_from_gram(gram, losses.detach())
        else:
            # Non-finite gradients: no solver can help. Equal weights let the step go through so
            # the harness sees the non-finite loss next and records the run as diverged.
            alpha = np.ones(len(gram))
        return Update(weights=torch.as_tensor(alpha, dtype=losses.dtype, device=losses.device))

    def combine_seeds(self, members: Sequence[GradientStrategy], losses: Tensor,
                      grads: Sequence[TaskGradients] | None = None) -> Update:
        """Seed batching: the combine of K instances, (K, T) losses and one TaskGradients per
        seed. Each seed's solve is a small host-side problem on its own Gram matrix, so they
        run one after the other, each exactly as :meth:`combine` runs alone."""
        if grads is None:
            raise RuntimeError(f"strategy '{self}' needs task gradients from the harness")
        updates = [m.combine(lk, g) for m, lk, g in zip(members, losses, grads)]
        return Update(weights=torch.stack([u.weights for u in updates]))


class RandomOrderStrategy(GradientStrategy):
    """A gradient strategy that visits the other tasks in random order (PCGrad, GradVac).

    The orders come from the seeded generator, whose state the base class saves in
    ``state_dict``: a resumed run draws the same orders as an uninterrupted one.
    """

    def task_orders(self, n_tasks: int) -> list[list[int]]:
        """For each task i, the other tasks in a fresh random order. With two tasks there is a
        single other task, and nothing is drawn."""
        orders = []
        for i in range(n_tasks):
            others = [j for j in range(n_tasks) if j != i]
            if n_tasks > 2:
                others = [others[k] for k in torch.randperm(n_tasks - 1,
                                                            generator=self.generator).tolist()]
            orders.append(others)
        return orders


def check_int(name: str, value: object, minimum: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    check_param(ok, name, f"an integer >= {minimum}", value)


def nonzero(gram: np.ndarray) -> np.ndarray:
    """Mask of tasks whose gradient is not (numerically) zero."""
    diag = np.diagonal(gram)
    return diag > ZERO_NORM * max(float(diag.max()), 0.0)


def normalised(gram: np.ndarray) -> np.ndarray:
    """Gram matrix divided by its mean diagonal: solvers then see O(1) numbers whatever the
    gradient scale. Every method whose weights are scale-free uses this (M itself if all zero)."""
    scale = float(np.trace(gram)) / len(gram)
    return gram / scale if scale > 0 else gram


def min_norm_pair(aa: float, ab: float, bb: float) -> float:
    """gamma in [0, 1] minimising ||gamma a + (1 - gamma) b||^2 from the inner products.

    Closed form of Sener & Koltun (2018), Algorithm 1: gamma = (b - a).b / ||a - b||^2 clipped
    to [0, 1]; identical vectors (zero denominator) get the symmetric 1/2.
    """
    denom = aa + bb - 2.0 * ab
    if denom <= 1e-15 * max(aa + bb, 1e-300):
        return 0.5
    return min(1.0, max(0.0, (bb - ab) / denom))


def min_norm_simplex(gram: np.ndarray, max_iter: int = 250, tol: float = 1e-5) -> np.ndarray:
    """argmin over the simplex of alpha^T M alpha (the min-norm point of the convex hull of the
    task gradients), by Frank-Wolfe with away steps and exact line search.

    Plain Frank-Wolfe (Sener & Koltun 2018, Algorithm 2) moves towards the vertex e_s with the
    smallest (M alpha)_s and converges sublinearly when the solution lies on a face; away steps
    (moving away from the worst vertex in use) make the rate linear on a polytope. Starts at the
    uniform point and stops when the Frank-Wolfe duality gap alpha^T M alpha - (M alpha)_s,
    which bounds the distance to the optimum, is at most ``tol`` or after ``max_iter`` steps.
    """
    t = len(gram)
    alpha = np.full(t, 1.0 / t)
    for _ in range(max_iter):
        m_alpha = gram @ alpha
        norm2 = float(alpha @ m_alpha)
        s = int(np.argmin(m_alpha))
        gap_fw = norm2 - float(m_alpha[s])
        if gap_fw <= tol:
            break
        used = np.flatnonzero(alpha > 0)
        v = int(used[np.argmax(m_alpha[used])])
        gap_away = float(m_alpha[v]) - norm2
        if gap_fw >= gap_away:  # towards e_s
            direction = -alpha.copy()
            direction[s] += 1.0
            gap, step_max = gap_fw, 1.0
            curvature = float(gram[s, s]) - 2.0 * float(m_alpha[s]) + norm2
        else:  # away from e_v
            direction = alpha.copy()
            direction[v] -= 1.0
            gap, step_max = gap_away, float(alpha[v]) / max(1.0 - float(alpha[v]), 1e-300)
            curvature = norm2 - 2.0 * float(m_alpha[v]) + float(gram[v, v])
        step = step_max if curvature <= 0 else min(step_max, gap / curvature)
        alpha = alpha + step * direction
        if step == step_max and gap_away > gap_fw:
            alpha[v] = 0.0  # a drop step removes the vertex exactly
        alpha = np.clip(alpha, 0.0, None)
    return alpha / alpha.sum()
