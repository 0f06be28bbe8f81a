"""T convex quadratics of one point x: the Pareto set is known in closed form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar
from torch import Tensor, nn

from mtl_bench.errors import check_param
from mtl_bench.metrics import READOUT_COLUMNS
from mtl_bench.registry import register_task
from mtl_bench.strategy import REGRESSION
from mtl_bench.task import Split, Task, TaskData, TaskPair
from mtl_bench.tasks._point import Offset, objective_loss

#: Eigenvalues of every A_i before its scale: log-uniform in [1, EIGEN_RANGE].
EIGEN_RANGE = 10.0
#: Start points: N(0, START_SCALE^2 I) from the run seed; centres u_i ~ N(0, I).
START_SCALE = 3.0
#: Grid of the two-task search before the bounded refinement (see :func:`pareto_distance`).
GRID = 201


def scales(n_tasks: int, condition: float) -> np.ndarray:
    """s_i = condition^(i / (T - 1)): task 1 at scale 1, task T at ``condition``."""
    if n_tasks == 1:
        return np.ones(1)
    return np.asarray(condition, dtype=float) ** (np.arange(n_tasks) / (n_tasks - 1))


def make_problem(n_tasks: int, dim: int, condition: float, problem_seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(A (T, d, d), u (T, d)) in float64: A_i = s_i Q_i diag(lambda_i) Q_i^T with Q_i a random
    rotation, lambda_i log-uniform in [1, EIGEN_RANGE], s_i from :func:`scales`; u_i ~ N(0, I).
    Everything comes from ``problem_seed``; task i's rotation, eigenvalues and centre do not
    depend on T (its scale does)."""
    s = scales(n_tasks, condition)
    a, u = np.empty((n_tasks, dim, dim)), np.empty((n_tasks, dim))
    for i in range(n_tasks):
        rng = np.random.default_rng([problem_seed, i])
        q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
        q = q * np.sign(np.diag(r))  # a uniformly random rotation
        lam = np.exp(rng.uniform(0.0, np.log(EIGEN_RANGE), dim))
        a[i] = s[i] * (q * lam) @ q.T
        a[i] = 0.5 * (a[i] + a[i].T)
        u[i] = rng.normal(size=dim)
    return a, u


def problem(options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(A, u) of the ``quadratic`` pair built with ``options`` (its defaults for the rest)."""
    pair = Quadratic(**dict(options or {}))
    return pair.a.copy(), pair.u.copy()


def objectives(x: np.ndarray, a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """f_i(x) = (x - u_i)^T A_i (x - u_i) for every task: shape (..., T) for x (..., d)."""
    diff = np.asarray(x, dtype=float)[..., None, :] - u
    return np.einsum("...ti,tij,...tj->...t", diff, a, diff)


def stationary_point(a: np.ndarray, u: np.ndarray, w: Any) -> np.ndarray:
    """x*(w) = (sum_i w_i A_i)^-1 sum_i w_i A_i u_i, the minimiser of sum_i w_i f_i; ``w`` (T,)
    or a batch (..., T) of weights gives (d,) or (..., d)."""
    w = np.asarray(w, dtype=float)
    m = np.einsum("...t,tij->...ij", w, a)
    b = np.einsum("...t,tij,tj->...i", w, a, u)
    return np.linalg.solve(m, b[..., None])[..., 0]


def pareto_distance(x: Any, a: np.ndarray, u: np.ndarray) -> tuple[float, np.ndarray]:
    """(distance, w): the Euclidean distance from ``x`` to the Pareto set {x*(w) : w in the
    simplex} (the whole Pareto set, as every f_i is strictly convex) and the w of the nearest
    point.

    Two tasks: the distance to x*(t, 1 - t) on a grid of 201 values of t, then a bounded
    scalar minimisation (xatol 1e-12) between the best grid point's neighbours: accurate to
    ~1e-10 unless two far-apart t give distances within the grid's resolution, which does not
    happen for a curve without self-approach. More tasks: the best of a grid of the simplex
    (vertices, edge midpoints, the centre, 1000 random points) refined by SLSQP on the
    simplex (analytic gradient) from the three best, to ~1e-8 in distance (checked against a
    200,000-point search in the tests). ``w`` sums to 1 with w_i >= 0.
    """
    x = np.asarray(x, dtype=float)
    n_tasks = len(a)

    def dist(w: np.ndarray) -> np.ndarray:
        return np.linalg.norm(stationary_point(a, u, w) - x, axis=-1)

    if n_tasks == 1:
        return float(dist(np.ones(1))), np.ones(1)
    if n_tasks == 2:
        t = np.linspace(0.0, 1.0, GRID)
        d = dist(np.stack([t, 1 - t], axis=1))
        k = int(d.argmin())
        lo, hi = t[max(k - 1, 0)], t[min(k + 1, GRID - 1)]
        res = minimize_scalar(lambda s: float(dist(np.array([s, 1 - s]))), bounds=(lo, hi),
                              method="bounded", options={"xatol": 1e-12})
        best_t, best_d = (res.x, res.fun) if res.fun < d[k] else (t[k], d[k])
        return float(best_d), np.array([best_t, 1 - best_t])
    rng = np.random.default_rng(0)
    eye = np.eye(n_tasks)
    edges = [(eye[i] + eye[j]) / 2 for i in range(n_tasks) for j in range(i + 1, n_tasks)]
    cands = np.concatenate([eye, np.array(edges), np.full((1, n_tasks), 1 / n_tasks),
                            rng.dirichlet(np.ones(n_tasks), 1000)])
    d = dist(cands)
    best_w, best_d = cands[d.argmin()], float(d.min())

    def half_square(w: np.ndarray) -> tuple[float, np.ndarray]:
        # 0.5 ||x*(w) - x||^2 and its gradient: d x*/d w_i = M^-1 A_i (u_i - x*), M = sum w A
        m = np.einsum("t,tij->ij", w, a)
        xs = np.linalg.solve(m, np.einsum("t,tij,tj->i", w, a, u))
        r = xs - x
        back = np.linalg.solve(m.T, r)
        return 0.5 * float(r @ r), np.einsum("i,tij,tj->t", back, a, u - xs)

    cons = ({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},)
    for w0 in cands[np.argsort(d)[:3]]:
        res = minimize(half_square, w0, jac=True, method="SLSQP",
                       bounds=[(0.0, 1.0)] * n_tasks, constraints=cons,
                       options={"ftol": 1e-16, "maxiter": 200})
        w = np.clip(res.x, 0.0, None)
        w = w / w.sum()
        dw = float(dist(w))
        if dw < best_d:
            best_w, best_d = w, dw
    return best_d, best_w


class QuadraticHead(nn.Module):
    """f_i at each row of the representation (no parameters). In eval mode it adds the
    read-out columns of :data:`mtl_bench.metrics.READOUT_COLUMNS` (distance to the Pareto
    set, this task's weight of the nearest Pareto point, and x1, x2)."""

    def __init__(self, index: int, a: np.ndarray, u: np.ndarray):
        super().__init__()
        self.index = index
        self.a_all, self.u_all = a, u  # float64 copies for the read-outs
        self.register_buffer("a", torch.tensor(a[index], dtype=torch.float32))
        self.register_buffer("u", torch.tensor(u[index], dtype=torch.float32))
        self._last: tuple[bytes, tuple[float, np.ndarray]] | None = None

    def _nearest(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        # every row, and both evaluation splits, hold the same point: solve once per point
        key = x.tobytes()
        if self._last is None or self._last[0] != key:
            self._last = key, pareto_distance(x, self.a_all, self.u_all)
        return self._last[1]

    def forward(self, rep: Tensor) -> Tensor:
        diff = rep - self.u
        value = ((diff @ self.a) * diff).sum(-1, keepdim=True)
        if self.training:
            return value
        x = rep.detach().double().cpu().numpy()
        nan = np.full(len(x), np.nan)
        cols = {"objective": objectives(x, self.a_all, self.u_all)[:, self.index],
                "pareto_distance": nan.copy(), "pareto_weight": nan.copy(),
                "x1": x[:, 0], "x2": x[:, 1] if x.shape[1] > 1 else nan}
        for r in range(len(x)):
            d, w = self._nearest(x[r])
            cols["pareto_distance"][r], cols["pareto_weight"][r] = d, w[self.index]
        out = np.stack([cols.get(c, nan) for c in READOUT_COLUMNS], axis=1)
        return torch.as_tensor(out, dtype=rep.dtype, device=rep.device)


@register_task("quadratic")
class Quadratic(TaskPair):
    """T quadratics f_i(x) = (x - u_i)^T A_i (x - u_i) of one point x in R^d, A_i SPD.

    The classic setting in which multi-objective gradient methods are analysed (e.g. Sener &
    Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018; Liu et al.'s
    CAGrad, NeurIPS 2021): everything is known. For weights w on the simplex the minimiser of
    sum_i w_i f_i is x*(w) = (sum_i w_i A_i)^-1 sum_i w_i A_i u_i (:func:`stationary_point`),
    and since every f_i is strictly convex the Pareto set is exactly {x*(w)}. A method that
    converges should end on it (``pareto_distance`` 0); ``pareto_weight`` says which trade-off
    it picked (for fixed weights w, exactly w normalised).

    The problem (A, u) comes from ``problem_seed`` alone (:func:`make_problem`); the run seed
    draws the start point x0 ~ N(0, 9 I). ``condition`` scales task i's matrix by
    condition^(i/(T-1)) (i = 0..T-1), so at equal distances task T's loss and gradient are
    ``condition`` times task 1's: with the default 100 the gradient norms differ by two orders
    of magnitude, the imbalance that loss weighting is meant to undo. Within each A_i the
    eigenvalues span [1, 10] (condition number at most 10).

    The model is x: as in ``toy-2d``, the trunk adds a trainable d-vector (zero at the start)
    to its input row, which holds x0, and each head computes f_i without parameters.

    Metrics per task, read from x at evaluation: ``objective`` (f_i), ``pareto_distance``
    (primary) and ``pareto_weight`` (w_i of the nearest Pareto point, :func:`pareto_distance`);
    with ``dim=2`` also ``x1``, ``x2``.

    Training defaults: Adam with learning rate 1e-2 and 50 epochs of 100 steps. Measured at
    the defaults (two seeds, 3,000 steps): equal weights, MGDA and PCGrad end within 1e-3 of
    the Pareto set, CAGrad within 0.03 and still closing in (hence 5,000 steps), Nash-MTL and
    FAMO hover 1e-3 to 0.1 from it as their weights keep moving.

    Options:
        n_tasks: T >= 2 (default 2).
        dim: d >= 1 (default 10).
        condition: scale ratio between the last and the first task (> 0, default 100).
        problem_seed: seed of A and u (default 0).
        epoch_steps: training rows, i.e. steps per epoch at batch size 1 (default 100).
    """

    description = "T convex quadratics of one point x: known Pareto set, imbalanced scales"
    epochs = 50
    batch_size = 1
    lr = 1e-2
    hidden = ()

    def __init__(self, n_tasks: int = 2, dim: int = 10, condition: float = 100.0,
                 problem_seed: int = 0, epoch_steps: int = 100):
        def whole(v: Any, low: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        check_param(whole(n_tasks, 2) and n_tasks <= 64, "n_tasks", "an integer from 2 to 64",
                    n_tasks)
        check_param(whole(dim, 1) and dim <= 1000, "dim", "an integer from 1 to 1000", dim)
        check_param(isinstance(condition, (int, float)) and not isinstance(condition, bool)
                    and 0 < condition < float("inf"), "condition", "a positive finite number",
                    condition)
        check_param(whole(problem_seed, 0), "problem_seed", "a non-negative integer",
                    problem_seed)
        check_param(whole(epoch_steps, 1), "epoch_steps", "an integer >= 1", epoch_steps)
        self.n_tasks, self.dim, self.condition = n_tasks, dim, float(condition)
        self.problem_seed, self.epoch_steps = problem_seed, epoch_steps
        self.a, self.u = make_problem(n_tasks, dim, self.condition, problem_seed)

    def options(self) -> dict[str, Any]:
        return {"n_tasks": self.n_tasks, "dim": self.dim, "condition": self.condition,
                "problem_seed": self.problem_seed, "epoch_steps": self.epoch_steps}

    def tasks(self) -> tuple[Task, ...]:
        metrics = ("objective", "pareto_distance", "pareto_weight")
        if self.dim == 2:
            metrics += ("x1", "x2")
        return tuple(Task(f"task{i + 1}", REGRESSION, 1, metrics, loss=objective_loss,
                          primary="pareto_distance") for i in range(self.n_tasks))

    def start_point(self, seed: int) -> np.ndarray:
        return np.random.default_rng([seed, 7919]).normal(0.0, START_SCALE, self.dim)

    def load(self, seed: int) -> TaskData:
        point = torch.tensor(self.start_point(seed), dtype=torch.float32)

        def split(rows: int) -> Split:
            return Split((point.repeat(rows, 1),),
                         tuple(torch.zeros(rows) for _ in range(self.n_tasks)))

        info = {"start": [float(v) for v in point], "n_train": self.epoch_steps, "n_val": 1,
                "n_test": 1}
        return TaskData(split(self.epoch_steps), split(1), split(1), (None,) * self.n_tasks,
                        info)

    def build_trunk(self, n_features: int) -> nn.Module:
        return Offset(n_features)

    def build_head(self, task: Task, width: int) -> nn.Module:
        index = [t.name for t in self.tasks()].index(task.name)
        return QuadraticHead(index, self.a, self.u)
