"""The two-objective toy of CAGrad, Nash-MTL and FAMO: a 2-vector x, two losses, a known front."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtl_bench.errors import check_param
from mtl_bench.metrics import READOUT_COLUMNS
from mtl_bench.registry import register_task
from mtl_bench.strategy import REGRESSION
from mtl_bench.task import Split, Task, TaskData, TaskPair
from mtl_bench.tasks._point import Offset, objective_loss

#: Starting points: the five of Nash-MTL and FAMO, then CAGrad's (-8.5, -5) (CAGrad's other two,
#: (-8.5, 7.5) and (9, 9), are among the five). Start k is used by seed k (mod 6).
STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0), (-8.5, -5.0))
#: Factor on L1: 1 in CAGrad, 0.1 in Nash-MTL and FAMO.
VARIANTS = {"unscaled": 1.0, "scaled": 0.1}
#: Floor under |.| inside the logarithms (the reference code's lower clamp).
FLOOR = 5e-6
#: Lower bound that ``shift`` adds to each loss (times the scale for L1): every L_i > -20, so
#: the shifted losses are positive, as FAMO's toy code makes them (its loss minima -21 s, -21).
LOWER_BOUND = 21.0
#: x1 of the front's two ends: task 1's optimum is at x1 = +7, task 2's at x1 = -7.
FRONT_X1 = 7.0
METRICS = ("objective", "pareto_distance", "front_position", "x1", "x2")


def losses_numpy(x1: Any, x2: Any, variant: str = "scaled", shift: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(L1, L2) at points (x1, x2) (arrays of any one broadcastable shape), in float64; with
    ``shift``, plus the lower bounds (21 s, 21) as the pair trains them."""
    x1, x2 = np.asarray(x1, dtype=float), np.asarray(x2, dtype=float)
    f1 = np.log(np.maximum(np.abs(0.5 * (-x1 - 7) - np.tanh(-x2)), FLOOR)) + 6
    f2 = np.log(np.maximum(np.abs(0.5 * (-x1 + 3) + np.tanh(-x2) + 2), FLOOR)) + 6
    c1, c2 = np.maximum(np.tanh(0.5 * x2), 0.0), np.maximum(np.tanh(-0.5 * x2), 0.0)
    g1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    g2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    s = VARIANTS[variant]
    b1, b2 = (s * LOWER_BOUND, LOWER_BOUND) if shift else (0.0, 0.0)
    return s * (c1 * f1 + c2 * g1) + b1, c1 * f2 + c2 * g2 + b2


def value_and_grad(x: np.ndarray, task: int, scale: float = 1.0, shift: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """L_task (task 0 or 1; L1 times ``scale``, plus ``shift``) at every row of ``x`` (..., 2)
    and its gradient (..., 2), in float64. Where the max/clamp functions are not differentiable
    the one-sided derivative is torch.clamp's (the papers' code): at x2 = 0 both c1 and c2 pass
    their slope +-1/2, so a start on the x1-axis does not sit still."""
    x1, x2 = x[..., 0], x[..., 1]
    sign = 1.0 if task == 0 else -1.0
    t2 = np.tanh(x2)
    # task 1: 0.5(-x1 - 7) - tanh(-x2) = -x1/2 - 3.5 + tanh(x2); task 2: -x1/2 + 3.5 - tanh(x2)
    inner = -0.5 * x1 - sign * 3.5 + sign * t2
    mag = np.abs(inner)
    passes = mag >= FLOOR
    f = np.log(np.maximum(mag, FLOOR)) + 6
    df = np.where(passes, 1.0 / np.where(passes, inner, 1.0), 0.0)  # d f / d inner
    df1, df2 = -0.5 * df, sign * (1 - t2 ** 2) * df
    g = ((x1 - 7 * sign) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    dg1, dg2 = 0.2 * (x1 - 7 * sign), 0.02 * (x2 + 8)
    th = np.tanh(0.5 * x2)
    slope = 0.5 * (1 - th ** 2)
    c1, c2 = np.maximum(th, 0.0), np.maximum(-th, 0.0)
    dc1, dc2 = np.where(th >= 0, slope, 0.0), np.where(-th >= 0, -slope, 0.0)
    k = scale if task == 0 else 1.0
    value = k * (c1 * f + c2 * g) + shift
    grad = k * np.stack([c1 * df1 + c2 * dg1, dc1 * f + c1 * df2 + dc2 * g + c2 * dg2], axis=-1)
    return value, grad


def _value_and_grad_row(x1: float, x2: float, task: int, scale: float, shift: float
                        ) -> tuple[float, tuple[float, float]]:
    """:func:`value_and_grad` of one point in Python floats (the same formula, term by term)."""
    sign = 1.0 if task == 0 else -1.0
    t2 = math.tanh(x2)
    inner = -0.5 * x1 - sign * 3.5 + sign * t2
    mag = abs(inner)
    f = math.log(max(mag, FLOOR)) + 6
    df = 1.0 / inner if mag >= FLOOR else 0.0
    df1, df2 = -0.5 * df, sign * (1 - t2 * t2) * df
    g = ((x1 - 7 * sign) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    dg1, dg2 = 0.2 * (x1 - 7 * sign), 0.02 * (x2 + 8)
    th = math.tanh(0.5 * x2)
    slope = 0.5 * (1 - th * th)
    c1, c2 = max(th, 0.0), max(-th, 0.0)
    dc1 = slope if th >= 0 else 0.0
    dc2 = -slope if -th >= 0 else 0.0
    k = scale if task == 0 else 1.0
    return (k * (c1 * f + c2 * g) + shift,
            (k * (c1 * df1 + c2 * dg1), k * (dc1 * f + c1 * df2 + dc2 * g + c2 * dg2)))


class _Objective(torch.autograd.Function):
    """L_i of each row with its analytic gradient: one node instead of ~30 small torch ops
    (the step's cost is the harness's, not the toy's). Rows are independent, so under vmap
    (seed batching) the K stacked batches are evaluated as one."""

    @staticmethod
    def forward(rep: Tensor, task: int, scale: float, shift: float):  # type: ignore[override]
        flat = rep.detach().reshape(-1, 2)
        if len(flat) <= 16:  # the training batch: Python floats beat numpy's per-call cost
            pairs = [_value_and_grad_row(a, b, task, scale, shift) for a, b in flat.tolist()]
            value = [v for v, _ in pairs]
            grad = [g for _, g in pairs]
        else:
            value, grad = value_and_grad(flat.to("cpu", torch.float64).numpy(), task, scale,
                                         shift)
        return (torch.as_tensor(value, dtype=rep.dtype).to(rep.device).reshape(rep.shape[:-1]),
                torch.as_tensor(grad, dtype=rep.dtype).to(rep.device).reshape(rep.shape))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx: Any, grad_value: Tensor, _grad_grad: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_value.unsqueeze(-1) * grad, None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, rep: Tensor, task: int, scale: float, shift: float):
        if in_dims[0] is None:
            return _Objective.apply(rep, task, scale, shift), (None, None)
        return _Objective.apply(rep.movedim(in_dims[0], 0), task, scale, shift), (0, 0)


def objective(rep: Tensor, task: int, scale: float = 1.0, shift: float = 0.0) -> Tensor:
    """L_task of every row of ``rep`` (..., 2) as a differentiable tensor (...,)."""
    return _Objective.apply(rep, task, scale, shift)[0]


def _front_equation(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Zero where grad L1 and grad L2 are parallel at (x1, x2 < 0) (see :func:`front_curve`)."""
    c = np.tanh(-0.5 * x2)
    return 0.02 * c * (x2 + 8) + 0.5 * (1 - c ** 2) * ((x1 ** 2 + 151) / 10
                                                         - 0.01 * (x2 + 8) ** 2)


def front_height(x1: Any) -> np.ndarray:
    """x2 of the Pareto front above each x1 in [-7, 7] (vectorised bisection to 1e-13)."""
    x1 = np.asarray(x1, dtype=float)
    lo, hi = np.full(x1.shape, -12.0), np.full(x1.shape, -8.0)  # equation < 0 at lo, > 0 at hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        neg = _front_equation(x1, mid) < 0
        lo, hi = np.where(neg, mid, lo), np.where(neg, hi, mid)
    return 0.5 * (lo + hi)


@lru_cache(maxsize=1)
def front_curve(n: int = 2801) -> tuple[np.ndarray, np.ndarray]:
    """The Pareto front as ``n`` points (x1, x2), x1 from +7 (task 1's optimum) to -7.

    Below the x1-axis c1 = 0, so L_i = c2 g_i with c2 = tanh(-x2/2). A point is Pareto-stationary
    when grad L1 = -t grad L2 for some t >= 0; the x1-components 0.2 c2 (x1 -+ 7) have opposite
    signs exactly for |x1| < 7, and the 2-D cross product of the gradients vanishes when
    ``0.02 c2 (x2 + 8) + 0.5 (1 - c2^2) ((x1^2 + 151)/10 - 0.01 (x2 + 8)^2) = 0``, which has one
    root x2 in [-12, -8] for every x1. The front is that curve: x2 = -8.3551 at x1 = 0, falling
    to -8.4345 at x1 = +-7 (it is not exactly flat). Scaling L1 (the ``scaled`` variant) does
    not move it. Above the axis no point comes close: there L_i >= log(5e-6) + 6 = -6.2, while
    both losses are below -15 on the front's middle (checked on a dense grid in the tests).
    """
    x1 = np.linspace(FRONT_X1, -FRONT_X1, n)
    return x1, front_height(x1)


def _nearest_on_front(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each point to the front (a polyline through :func:`front_curve`, whose
    chords stay within 1e-7 of the curve) and x1 of the nearest front point."""
    px, py = front_curve()
    ax, ay, dx, dy = px[:-1], py[:-1], np.diff(px), np.diff(py)
    qx, qy = x1.reshape(-1, 1), x2.reshape(-1, 1)
    dist, near = np.empty(qx.shape[0]), np.empty(qx.shape[0])
    for s in range(0, len(qx), 256):  # bounded memory: 256 points x 2800 segments at a time
        bx, by = qx[s:s + 256], qy[s:s + 256]
        t = np.clip(((bx - ax) * dx + (by - ay) * dy) / (dx ** 2 + dy ** 2), 0.0, 1.0)
        nx, ny = ax + t * dx, ay + t * dy
        d2 = (bx - nx) ** 2 + (by - ny) ** 2
        k = d2.argmin(axis=1)
        rows = np.arange(len(k))
        dist[s:s + 256], near[s:s + 256] = np.sqrt(d2[rows, k]), nx[rows, k]
    return dist.reshape(x1.shape), near.reshape(x1.shape)


def front_distance(x1: Any, x2: Any) -> np.ndarray:
    """Euclidean distance from (x1, x2) to the Pareto front (vectorised; ~1e-7 accurate)."""
    x1, x2 = np.broadcast_arrays(np.asarray(x1, dtype=float), np.asarray(x2, dtype=float))
    return _nearest_on_front(x1, x2)[0]


def front_position(x1: Any, x2: Any) -> np.ndarray:
    """Where the front point nearest to (x1, x2) lies: (7 - x1_front) / 14, i.e. 0 at task 1's
    optimum (x1 = 7), 1 at task 2's (x1 = -7); points beyond an end map to that end."""
    x1, x2 = np.broadcast_arrays(np.asarray(x1, dtype=float), np.asarray(x2, dtype=float))
    return (FRONT_X1 - _nearest_on_front(x1, x2)[1]) / (2 * FRONT_X1)


class ToyHead(nn.Module):
    """Task ``index``'s loss at each row of the representation; no parameters. In eval mode it
    adds the read-out columns of :data:`mtl_bench.metrics.READOUT_COLUMNS`."""

    def __init__(self, index: int, scale: float, shift: float):
        super().__init__()
        self.index, self.scale, self.shift = index, scale, shift

    def forward(self, rep: Tensor) -> Tensor:
        value = objective(rep, self.index, self.scale, self.shift)[:, None]
        if self.training:
            return value
        x = rep.detach().double().cpu().numpy()
        dist, near = _nearest_on_front(x[:, 0], x[:, 1])
        cols = {"objective": value.detach().double().cpu().numpy()[:, 0],
                "pareto_distance": dist, "front_position": (FRONT_X1 - near) / (2 * FRONT_X1),
                "x1": x[:, 0], "x2": x[:, 1]}
        out = np.stack([cols.get(c, np.full(len(x), np.nan)) for c in READOUT_COLUMNS], axis=1)
        return torch.as_tensor(out, dtype=rep.dtype, device=rep.device)


@register_task("toy-2d")
class Toy2D(TaskPair):
    """Two losses of a 2-vector x with a curved Pareto front (no data, no head parameters).

    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021 (https://arxiv.org/abs/2110.14048); Navon et al., "Multi-Task Learning as a
    Bargaining Game", ICML 2022 (https://arxiv.org/abs/2202.01017); Liu, Liang, Liu, Stone &
    Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023
    (https://arxiv.org/abs/2306.03792). With x = (x1, x2)::

        f1 = log(max(|0.5(-x1 - 7) - tanh(-x2)|, 5e-6)) + 6
        f2 = log(max(|0.5(-x1 + 3) + tanh(-x2) + 2|, 5e-6)) + 6
        c1 = max(tanh(x2 / 2), 0),  c2 = max(tanh(-x2 / 2), 0)
        g1 = ((-x1 + 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
        g2 = ((-x1 - 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
        L1 = s (c1 f1 + c2 g1),  L2 = c1 f2 + c2 g2

    as in the papers' toy code; s = 1 (``variant="unscaled"``, CAGrad) or 0.1 (``"scaled"``,
    the default: Nash-MTL's and FAMO's setting, where the gradient of L1 is ten times smaller,
    the imbalance their figures are about). The Pareto front is the curve of
    :func:`front_curve` from (7, -8.43) (task 1's optimum) over (0, -8.36) to (-7, -8.43).

    The model is x: the trunk adds one trainable 2-vector (starting at zero) to its input row,
    which holds the start point, so the representation is x, gradient sources ``shared``,
    ``last`` and ``rep`` all give dL_i/dx, and each head computes its L_i from it without
    parameters. Every row of every split is the start point, so the loss does not depend on
    the batch (default batch size 1; an epoch is ``epoch_steps`` steps). Training defaults:
    the papers' Adam with learning rate 1e-3, and 140 epochs of 500 steps = 70,000 steps, the
    fewest that bring every trajectory that reaches the front there (measured, scaled
    variant, six strategies x six starts): CAGrad and PCGrad from (9, 9) arrive only after
    66,000 and 62,000 steps, equal weights from (-8.5, 7.5) after 42,500 (so Nash-MTL's
    35,000 and FAMO's 50,000 are too few here). Equal weights from (9, 9) never arrive (they
    stall on the plateau above the axis, the failure the papers show). Larger learning rates
    are no shortcut: at 3e-3 or more Adam keeps oscillating across the flat valley below the
    front and ends 0.1-2 away from it.

    Metrics per task, all read from x at evaluation: ``objective`` (L_i), ``pareto_distance``
    (to the front, :func:`front_distance`; primary, so model selection keeps the epoch nearest
    the front), ``front_position`` (:func:`front_position`: 0 at task 1's optimum, 1 at task
    2's) and ``x1``, ``x2`` (the point; every epoch's values are in the record's curves, which
    therefore hold the trajectory at epoch resolution).

    Departure, stated: by default (``shift``) each loss is trained plus its lower bound,
    L1 + 21 s and L2 + 21, so that both are positive, as FAMO's toy code makes them through its
    loss minima: strategies that take the log or a ratio of losses (FAMO, DWA, uncertainty...)
    then see FAMO's setting. Gradients, hence the gradient methods and the front, are unchanged;
    ``objective`` reports the shifted value. ``shift=False`` trains the papers' L_i as written.

    Options:
        variant: ``scaled`` (default) or ``unscaled``.
        start: index into :data:`STARTS`, or None (default) for start ``seed % 6``: seeds 0-5
            then run every start, and seed batching trains them together.
        epoch_steps: training rows, i.e. steps per epoch at batch size 1.
        shift: add the lower bounds (21 s, 21) to the losses (default True).
    """

    description = "CAGrad/Nash-MTL/FAMO 2-D toy: two losses of a point x, known Pareto front"
    epochs = 140
    batch_size = 1
    lr = 1e-3
    hidden = ()

    def __init__(self, variant: str = "scaled", start: int | None = None,
                 epoch_steps: int = 500, shift: bool = True):
        check_param(variant in VARIANTS, "variant", " or ".join(VARIANTS), variant)
        check_param(start is None or (isinstance(start, int) and not isinstance(start, bool)
                                      and 0 <= start < len(STARTS)),
                    "start", f"None or an integer from 0 to {len(STARTS) - 1}", start)
        check_param(isinstance(epoch_steps, int) and not isinstance(epoch_steps, bool)
                    and epoch_steps >= 1, "epoch_steps", "an integer >= 1", epoch_steps)
        check_param(isinstance(shift, bool), "shift", "True or False", shift)
        self.variant, self.start, self.epoch_steps = variant, start, epoch_steps
        self.shift = shift

    def options(self) -> dict[str, Any]:
        return {"variant": self.variant, "start": self.start, "epoch_steps": self.epoch_steps,
                "shift": self.shift}

    def tasks(self) -> tuple[Task, ...]:
        return tuple(Task(f"task{i + 1}", REGRESSION, 1, METRICS, loss=objective_loss,
                          primary="pareto_distance") for i in range(2))

    def start_index(self, seed: int) -> int:
        return self.start if self.start is not None else seed % len(STARTS)

    def load(self, seed: int) -> TaskData:
        k = self.start_index(seed)
        point = torch.tensor(STARTS[k], dtype=torch.float32)

        def split(rows: int) -> Split:
            return Split((point.repeat(rows, 1),), (torch.zeros(rows), torch.zeros(rows)))

        info = {"start_index": k, "start": list(STARTS[k]), "variant": self.variant,
                "n_train": self.epoch_steps, "n_val": 1, "n_test": 1}
        return TaskData(split(self.epoch_steps), split(1), split(1), (None, None), info)

    def build_trunk(self, n_features: int) -> nn.Module:
        return Offset(n_features)

    def build_head(self, task: Task, width: int) -> nn.Module:
        index = [t.name for t in self.tasks()].index(task.name)
        scale = VARIANTS[self.variant]
        bound = (scale if index == 0 else 1.0) * LOWER_BOUND if self.shift else 0.0
        return ToyHead(index, scale, bound)
