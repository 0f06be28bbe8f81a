"""SDMGrad (Xiao, Ban & Ji, NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import TaskInfo, check_positive

from ._gradient import GradientStrategy, check_int, project_simplex


@register_strategy("sdmgrad")
class SDMGrad(GradientStrategy):
    """Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms", NeurIPS 2023. https://openreview.net/forum?id=4Ks8RPcXd9

    With g0 = (1/T) sum_i g_i the mean gradient, SDMGrad looks for the update near g0 that
    improves the worst task; its weights w on the simplex minimise the regularised problem

        F(w) = 1/2 ||G^T w||^2 + lambda <G^T w, g0>,    grad F(w) = M w + lambda M 1/T,

    with M = G G^T. Each step runs ``n_iter`` projected gradient steps on F from the previous
    step's w (the first step starts at the uniform point), with heavy-ball momentum as in the
    official code (a fresh momentum buffer b = 0 every step):

        b <- mu b + grad F(w),        w <- Proj_simplex(w - eta b),

    on M divided by s^2, s the mean task-gradient norm (official code), so that eta does not
    depend on the gradient scale. The update is

        d = (G^T w + lambda g0) / (1 + lambda),    i.e. alpha = (w + lambda/T) / (1 + lambda).

    lambda = 0 gives an MGDA-like min-norm direction (reached after enough inner steps), large
    lambda the mean gradient. The logged weights are alpha (they sum to 1). With the official
    eta = 5 the inner steps converge only when eta is below 2 / (the largest eigenvalue of the
    scaled M on the simplex's tangent space), i.e. for well-aligned task gradients; otherwise w
    moves between faces of the simplex from step to step, as it does in the official code.

    Departures: the paper draws three independent mini-batches per step (one for d and two for
    the two factors of M and M 1/T) so that the weight gradient is unbiased; the harness hands
    over one batch's gradients, and all three products use that one batch. The objective
    sampling variant (SDMGrad-OS) is not implemented. The official code adds 1e-8 to s^2; here
    an all-zero gradient matrix is left unscaled instead (w then stays where it is).

    Args:
        lam: lambda >= 0, the pull towards the mean gradient (LibMTL's port of the official
            code: 0.3).
        n_iter: projected gradient steps on w per training step (same source: 20).
        inner_lr: step size eta of the inner steps on the scaled M (same source: 5).
        momentum: heavy-ball momentum mu of the inner steps, in [0, 1) (same source: 0.5).
        source: ``shared`` (gradients of the shared parameters, the paper) or ``rep`` (the
            shared representation; not in the paper).
    """

    paper = "Xiao, Ban & Ji, NeurIPS 2023"
    summary = "warm-started simplex PGD on 1/2||G^T w||^2 + lambda <G^T w, g0>, plus lambda g0"
    #: Symmetric in exact arithmetic, but with the official eta = 5 the inner iteration is no
    #: contraction unless the task gradients are well aligned: w bounces between faces of the
    #: simplex and rounding differences (a permuted Gram matrix is summed in another order)
    #: grow from step to step, so permuted runs are not equal to the suite's tolerance.
    permutation_invariant = False
    #: Not batched for the same reason: the vectorised model's gradients differ from a lone
    #: run's by rounding, which the inner iteration can blow up past the batching tolerance.
    batchable = False

    def __init__(self, lam: float = 0.3, n_iter: int = 20, inner_lr: float = 5.0,
                 momentum: float = 0.5, source: str = "shared"):
        super().__init__(source)
        check_positive("lam", lam, allow_zero=True)
        check_int("n_iter", n_iter, 1)
        check_positive("inner_lr", inner_lr)
        ok = isinstance(momentum, (int, float)) and not isinstance(momentum, bool) \
            and 0 <= momentum < 1
        check_param(ok, "momentum", "a float in [0, 1)", momentum)
        self.lam = float(lam)
        self.n_iter = n_iter
        self.inner_lr = float(inner_lr)
        self.momentum = float(momentum)
        self.register_buffer("w", torch.zeros(0, dtype=torch.float64))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.w = torch.full((self.n_tasks,), 1.0 / self.n_tasks, dtype=torch.float64)

    def weights_from_gram(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        t = len(gram)
        scale = float(np.sqrt(np.clip(np.diagonal(gram), 0.0, None)).mean())
        m = gram / scale**2 if scale > 0 else gram
        pull = self.lam * m.mean(axis=1)  # lambda M 1/T = lambda G g0
        w = np.array(self.w.tolist())
        buf = np.zeros(t)
        for _ in range(self.n_iter):
            buf = self.momentum * buf + (m @ w + pull)
            w = project_simplex(w - self.inner_lr * buf)
        self.w.copy_(torch.as_tensor(w, dtype=self.w.dtype))
        return (w + self.lam / t) / (1.0 + self.lam)
