"""Shared pieces of the gradient-manipulation strategies (a helper module, not a strategy).

Every method of this family can be written from the Gram matrix M = G G^T of the task gradients
alone: the combined update is d = alpha @ G, and whatever a method does to the gradients
(projections, alignments, convex combinations) is tracked as a small T x T coefficient matrix
instead of P-length vectors. :class:`GradientStrategy` fetches M once per step as a float64
numpy array (a T x T copy), hands it to ``weights_from_gram`` and returns ``Update(weights=alpha)``,
so the harness applies alpha @ G and logs alpha as the task weights.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.strategy import Strategy, TaskGradients, Update, check_grad_source

#: Largest T for which the simplex problems (min-norm point, CAGrad's dual) are solved exactly
#: by enumerating the 2^T - 1 candidate supports; more tasks use iterative solvers.
EXACT_MAX_TASKS = 8


def zero_norm_ratio(dtype: torch.dtype | None = None) -> float:
    """A task gradient counts as zero when its norm is at most this fraction of the largest task
    gradient norm: the machine epsilon of the gradients' floating-point type (2.2e-16 for
    float64, 1.2e-7 for float32; float64 when ``dtype`` is None), i.e. the size of the largest
    gradient's rounding error. Anything larger is a real gradient and is kept."""
    dtype = torch.float64 if dtype is None or not dtype.is_floating_point else dtype
    return float(torch.finfo(dtype).eps)


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
        #: Steps whose inner solver did not converge (iteration limit hit, no feasible candidate)
        #: or gave non-finite weights; such a step falls back to a documented default instead of
        #: failing silently. A running count: a caller wanting it per epoch takes differences.
        self.solver_failures = 0

    def solver_failed(self) -> None:
        """Count one inner-solver failure on this step (see :attr:`solver_failures`)."""
        self.solver_failures = getattr(self, "solver_failures", 0) + 1

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        raise NotImplementedError

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        if grads is None:
            raise RuntimeError(f"strategy '{self}' needs task gradients from the harness")
        # one small device-to-host copy; T x T Python floats are the cheapest thing to solve on
        gram = np.array(grads.gram.tolist())
        if np.isfinite(gram).all():
            alpha = self.weights_from_gram(gram, losses.detach())
            if not np.isfinite(alpha).all():  # a solver breakdown: counted, equal weights
                self.solver_failed()
                alpha = np.ones(len(gram))
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


def nonzero(gram: np.ndarray, dtype: torch.dtype | None = None) -> np.ndarray:
    """Mask of tasks whose gradient is not zero: ||g_i|| > eps max_j ||g_j||, with eps the
    machine epsilon of ``dtype`` (:func:`zero_norm_ratio`; float64 when None). A gradient 1e-6
    times the largest is kept; all-zero gradients give an all-False mask."""
    norms = np.sqrt(np.clip(np.diagonal(gram), 0.0, None))
    top = float(norms.max()) if len(norms) else 0.0
    return norms > zero_norm_ratio(dtype) * top


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
    task gradients): :func:`min_norm_solve` without its convergence flag."""
    return min_norm_solve(gram, max_iter, tol)[0]


def frank_wolfe(gram: np.ndarray, max_iter: int = 250,
                tol: float = 1e-5) -> tuple[np.ndarray, bool]:
    """argmin over the simplex of alpha^T M alpha by Frank-Wolfe with away steps and exact line
    search, and whether it converged.

    Plain Frank-Wolfe (Sener & Koltun 2018, Algorithm 2) moves towards the vertex e_s with the
    smallest (M alpha)_s and converges sublinearly when the solution lies on a face; away steps
    (moving away from the worst vertex in use) make the rate linear on a polytope. Starts at the
    uniform point and stops when the Frank-Wolfe duality gap alpha^T M alpha - (M alpha)_s,
    which bounds alpha^T M alpha - its minimum, is at most ``tol`` alpha^T M alpha (relative to
    the current point: then ||d - d*||^2 <= tol ||d||^2 for d = alpha @ G), or when
    alpha^T M alpha is at rounding level (zero in the hull). Not converged after ``max_iter``
    steps: returns the last point and False.
    """
    t = len(gram)
    floor = np.finfo(np.float64).eps * max(float(np.abs(gram).max()), 1e-300)
    alpha = np.full(t, 1.0 / t)
    for _ in range(max_iter):
        m_alpha = gram @ alpha
        norm2 = float(alpha @ m_alpha)
        s = int(np.argmin(m_alpha))
        gap_fw = norm2 - float(m_alpha[s])
        if gap_fw <= tol * norm2 or norm2 <= floor:
            return alpha / alpha.sum(), True
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
    return alpha / alpha.sum(), False


def scaled_gram(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, n): C = M / (n n^T), n the task gradient norms, with the largest norm standing in for
    a zero gradient's (so C is the cosine matrix, a zero row and column for zero gradients).
    Solving for beta = alpha * n on C keeps every number O(1) whatever the norm ratios."""
    norms = np.sqrt(np.clip(np.diagonal(gram), 0.0, None))
    top = float(norms.max()) if len(norms) else 0.0
    n = np.where(norms > zero_norm_ratio() * top, norms, top if top > 0 else 1.0)
    return gram / np.outer(n, n), n


def supports(t: int) -> list[np.ndarray]:
    """Every non-empty subset of range(t), grouped by size: one (N_k, k) int array per k."""
    return _supports(t)


@functools.lru_cache(maxsize=32)
def _supports(t: int) -> list[np.ndarray]:
    return [np.array(list(itertools.combinations(range(t), k)), dtype=np.intp).reshape(-1, k)
            for k in range(1, t + 1)]


def bordered_inverses(cos: np.ndarray, u: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """For each subset S (rows of ``subsets``, all of one size k), the (pseudo-)inverse of the
    bordered matrix [[C_SS, -u_S], [u_S^T, 0]]: beta = inv[:k] @ (rhs, total) solves
    C_SS beta - mu u_S = rhs, u_S . beta = total, the stationarity of a quadratic on the face
    {u . beta = total} (least squares when singular). Shape (N, k + 1, k + 1)."""
    count, k = subsets.shape
    mat = np.zeros((count, k + 1, k + 1))
    mat[:, :k, :k] = cos[subsets[:, :, None], subsets[:, None, :]]
    mat[:, :k, k] = -u[subsets]
    mat[:, k, :k] = u[subsets]
    return np.linalg.pinv(mat)


def candidates(beta: np.ndarray, n: np.ndarray, subsets: np.ndarray, t: int) -> np.ndarray:
    """The simplex points alpha (alpha_S = beta / n_S normalised, 0 elsewhere), one row per row
    of ``beta`` (N, k) that is (up to rounding) non-negative; others are dropped."""
    w = beta / n[subsets]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(w).all(axis=1)
        ok &= w.min(axis=1) >= -1e-9 * np.abs(w).max(axis=1)
    w = np.clip(w[ok], 0.0, None)
    total = w.sum(axis=1)
    good = total > 0
    alpha = np.zeros((int(good.sum()), t))
    rows = np.arange(len(alpha))[:, None]
    alpha[rows, subsets[ok][good]] = w[good] / total[good, None]
    return alpha


def min_norm_exact(gram: np.ndarray) -> np.ndarray | None:
    """argmin over the simplex of alpha^T M alpha, exactly: for every support S the stationary
    point of the quadratic on that face (a (|S|+1)-square linear solve on the cosine matrix,
    see :func:`scaled_gram`); the non-negative ones are feasible points and the optimum is
    among them, so the one with the smallest value is the minimum. None if none is feasible."""
    t = len(gram)
    cos, n = scaled_gram(gram)
    u = 1.0 / n
    u = u / u.max()
    best, best_value = None, np.inf
    for subsets in supports(t):
        k = subsets.shape[1]
        alpha = candidates(bordered_inverses(cos, u, subsets)[:, :k, k], n, subsets, t)
        if len(alpha):
            beta = alpha * n
            values = np.einsum("ni,ij,nj->n", beta, cos, beta)
            i = int(np.argmin(values))
            if values[i] < best_value:
                best, best_value = alpha[i], float(values[i])
    return best


def min_norm_solve(gram: np.ndarray, max_iter: int = 250,
                   tol: float = 1e-5) -> tuple[np.ndarray, bool]:
    """The min-norm point of the convex hull of the task gradients, and whether the solver
    converged: exact (:func:`min_norm_exact`) for T <= :data:`EXACT_MAX_TASKS`, else
    Frank-Wolfe (:func:`min_norm_simplex`)."""
    if len(gram) <= EXACT_MAX_TASKS:
        alpha = min_norm_exact(gram)
        if alpha is not None:
            return alpha, True
        return frank_wolfe(gram, max_iter, tol)[0], False  # the exact solve broke down
    return frank_wolfe(gram, max_iter, tol)


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of v onto the simplex {x : x >= 0, sum x = 1}, exactly: with u the
    entries sorted in decreasing order and rho the largest k such that u_k > (sum_{j<=k} u_j -
    1) / k, the projection is max(v - theta, 0) with theta = (sum_{j<=rho} u_j - 1) / rho."""
    u = np.sort(v)[::-1]
    excess = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = int(np.flatnonzero(u - excess / k > 0)[-1])
    return np.maximum(v - excess[rho] / (rho + 1), 0.0)


def min_norm_weights(gram: np.ndarray, max_iter: int = 250,
                     tol: float = 1e-5) -> tuple[np.ndarray, bool]:
    """MGDA's weights (the min-norm point of the convex hull of the task gradients, no gradient
    normalisation) and whether the solver converged: uniform when every gradient is zero, the
    closed form :func:`min_norm_pair` for two tasks, :func:`min_norm_solve` on the normalised
    Gram matrix otherwise. ``mgda`` with its defaults gives exactly these weights."""
    t = len(gram)
    if not np.trace(gram) > 0:
        return np.full(t, 1.0 / t), True
    if t == 2:
        gamma = min_norm_pair(float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1]))
        return np.array([gamma, 1.0 - gamma]), True
    return min_norm_solve(normalised(gram), max_iter, tol)
