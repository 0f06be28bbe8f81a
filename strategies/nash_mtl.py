"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, ICML 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import TaskInfo, check_positive

from ._gradient import GradientStrategy, check_int, nonzero

#: Ridge added to the cosine matrix of the task gradients (see the class docstring).
RIDGE = 1e-10
NEWTON_TOL = 1e-14
NEWTON_ITER = 200


def nash_weights(gram: np.ndarray) -> np.ndarray:
    """alpha > 0 with (M alpha)_i = 1 / alpha_i: :func:`nash_solve` without its flag."""
    return nash_solve(gram)[0]


def nash_solve(gram: np.ndarray) -> tuple[np.ndarray, bool]:
    """alpha > 0 with (M alpha)_i = 1 / alpha_i, every task gradient non-zero.

    With n_i = ||g_i||, C = M / (n n^T) the cosine matrix and alpha = beta / n, the system is
    C beta = 1 / beta: the same problem free of gradient scales. Those are the stationarity
    conditions of the strictly convex, self-concordant f(b) = b^T C b / 2 - sum_i log b_i on
    b > 0, solved by damped Newton (closed form for two tasks). Also returns whether Newton
    converged (squared decrement below ``NEWTON_TOL`` within ``NEWTON_ITER`` steps, finite).
    """
    t = len(gram)
    norms = np.sqrt(np.diagonal(gram))
    cos = gram / np.outer(norms, norms)
    # rounding can put the cosine of (anti-)parallel gradients just outside [-1, 1], which
    # would make 1 + ridge + cos negative below; the diagonal is left as computed
    off = ~np.eye(t, dtype=bool)
    cos[off] = np.clip(cos[off], -1.0, 1.0)
    m = cos + RIDGE * np.eye(t)
    if t == 2:
        # x^2 (1 + ridge) + x^2 cos = 1 for both tasks: beta = 1 / sqrt(1 + ridge + cos)
        return 1.0 / (np.sqrt(m[0, 0] + m[0, 1]) * norms), True
    x = np.ones(t)  # the solution when the gradients are orthogonal

    def f(y: np.ndarray) -> float:
        return 0.5 * float(y @ m @ y) - float(np.log(y).sum())

    for _ in range(NEWTON_ITER):
        grad = m @ x - 1.0 / x
        step = -np.linalg.solve(m + np.diag(1.0 / x**2), grad)
        decrement = -float(grad @ step)  # Newton decrement squared: f(x) - f* ~ decrement / 2
        if decrement < NEWTON_TOL:
            return x / norms, bool(np.isfinite(x).all())
        size = 1.0
        while np.any(x + size * step <= 0):
            size *= 0.5
        fx = f(x)
        while f(x + size * step) > fx - 0.25 * size * decrement and size > 1e-10:
            size *= 0.5
        x = x + size * step
    return x / norms, False


@register_strategy("nash_mtl")
class NashMTL(GradientStrategy):
    """Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
    https://arxiv.org/abs/2202.01017

    The update is the Nash bargaining solution among the tasks: d = sum_i alpha_i g_i with
    alpha > 0 solving

        (G G^T) alpha = 1 / alpha        (elementwise),  i.e.  alpha_i (M alpha)_i = 1,

    so every task's share d . g_i is inversely proportional to its weight. If ||d|| exceeds
    ``max_norm``, alpha is scaled down so that ||d|| = max_norm (the official code clips the
    norm of the shared-parameter gradient; here the norm is the one at the gradient source).

    Solver (departure: the paper uses a sequence of convex problems solved with cvxpy/ECOS):
    the equations are the optimality conditions of the strictly convex
    f(alpha) = alpha^T M alpha / 2 - sum_i log alpha_i, solved by damped Newton with
    backtracking until the squared Newton decrement is below 1e-14 (at most 200 iterations),
    or in closed form for two tasks: alpha_i = 1 / (||g_i|| sqrt(1 + cos(g_1, g_2))). The
    system is solved for beta_i = alpha_i ||g_i|| on the cosine matrix (free of gradient
    scales), plus a ridge of 1e-10, so that a solution exists even when a positive combination
    of the gradients vanishes (the paper assumes linearly independent gradients; there alpha
    becomes large and ``max_norm`` bounds the step). The ridge moves alpha_i (M alpha)_i away
    from 1 by 1e-10 beta_i^2. Tasks with a zero gradient (norm at most the machine epsilon of
    the gradients' dtype times the largest task gradient norm: 2.2e-16 in float64, 1.2e-7 in
    float32) get weight 0 and are left out; every other task is kept, however small its
    gradient. A Newton solve that does not converge is counted in ``solver_failures`` (its
    last iterate is used).

    Args:
        max_norm: bound on ||d||; 0 disables the clipping (official default 1.0).
        update_weights_every: solve for alpha every this many steps and reuse the last alpha
            (rescaled by ``max_norm`` against the current gradients) in between. The harness
            still computes task gradients every step, so this saves only the solve.
        source: ``shared`` (gradients of the shared parameters, the paper) or ``rep``.
    """

    paper = "Navon et al., ICML 2022"
    summary = "Nash bargaining solution over task gradients"
    permutation_invariant = True

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1,
                 source: str = "shared"):
        super().__init__(source)
        check_positive("max_norm", max_norm, allow_zero=True)
        check_int("update_weights_every", update_weights_every, 1)
        self.max_norm = float(max_norm)
        self.update_weights_every = update_weights_every
        self.register_buffer("alpha", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.alpha = torch.ones(self.n_tasks, dtype=torch.float64)
        self.step = torch.zeros((), dtype=torch.long)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        if int(self.step) % self.update_weights_every == 0:
            keep = nonzero(gram, losses.dtype)
            ok = True
            if keep.all():
                alpha, ok = nash_solve(gram)
            else:
                alpha = np.zeros(len(gram))
                if keep.any():
                    alpha[keep], ok = nash_solve(gram[np.ix_(keep, keep)])
            if not ok:
                self.solver_failed()
            self.alpha.copy_(torch.from_numpy(alpha))
        else:
            alpha = self.alpha.cpu().numpy().copy()
        self.step += 1
        if self.max_norm > 0:
            norm = float(np.sqrt(max(float(alpha @ gram @ alpha), 0.0)))
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return alpha
