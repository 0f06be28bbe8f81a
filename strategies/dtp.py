"""Dynamic Task Prioritization (Guo, Haque, Huang, Yeung & Fei-Fei, ECCV 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, TaskInfo, Update, check_positive

KPIS = ("exp", "relative")
KPI_FLOOR = 1e-6  # keeps -log(k) finite for a task whose KPI is (numerically) zero


@register_strategy("dtp")
class DTP(Strategy):
    """Guo et al., "Dynamic Task Prioritization for Multitask Learning", ECCV 2018.
    https://doi.org/10.1007/978-3-030-01270-0_17

    Task-level prioritisation: each task's loss is weighted by the focal loss of its key
    performance indicator (KPI) k_i in [0, 1], so tasks that perform badly get large weights,

        kbar_i(t) = alpha k_i(t) + (1 - alpha) kbar_i(t-1),     kbar_i(1) = k_i(1)
        w_i(t)    = FL(kbar_i; gamma) = -(1 - kbar_i(t))^gamma log kbar_i(t)
        L         = sum_i w_i(t) L_i,                            w treated as constants.

    Departure from the paper (stated): the paper's KPIs are task metrics such as accuracy or
    average precision, measured on training batches. A strategy here sees only the task losses,
    so the KPI is derived from the current batch loss:

        kpi="exp":       k_i = exp(-L_i)          (for cross-entropy this is the geometric mean
                                                   of the probability given to the true class)
        kpi="relative":  k_i = exp(-L_i / L_i(0)) (L_i(0): the task's first-step loss; puts
                                                   tasks of different loss scales on one footing)

    Both are 1 at zero loss and fall towards 0 as the loss grows. The paper also has an
    example-level focal loss inside each task; that belongs to the task's loss, not to the
    weighting, and is not part of this strategy. The paper allows one gamma per task; here one
    gamma is shared by all tasks. kbar is floored at 1e-6 before the logarithm.

    Args:
        gamma: focusing parameter gamma >= 0 of the task-level focal loss (0 gives -log kbar).
        alpha: weight of the newest KPI in its moving average, in (0, 1] (1: no smoothing).
            The default 0.1 (about ten steps of memory) is this benchmark's choice.
        kpi: how the KPI is derived from the loss: ``exp`` or ``relative`` (see above).
    """

    paper = "Guo et al., ECCV 2018"
    summary = "focal-style priority on tasks whose KPI (from the loss) is low"
    permutation_invariant = True
    batchable = True

    def __init__(self, gamma: float = 2.0, alpha: float = 0.1, kpi: str = "exp"):
        super().__init__()
        check_positive("gamma", gamma, allow_zero=True)
        check_param(isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
                    and 0 < alpha <= 1, "alpha", "a float in (0, 1]", alpha)
        check_param(kpi in KPIS, "kpi", "one of " + ", ".join(map(repr, KPIS)), kpi)
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.kpi = kpi
        self.register_buffer("kpi_average", torch.zeros(0))
        self.register_buffer("initial_losses", torch.zeros(0))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.kpi_average = torch.zeros(self.n_tasks)
        self.initial_losses = torch.ones(self.n_tasks)
        self.seen = torch.zeros((), dtype=torch.bool)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        # No branch on the state and buffers updated in place, so that K seeds can run this
        # under vmap (``batchable``): the first step is picked out with torch.where.
        current = losses.detach().to(self.kpi_average)
        first = ~self.seen
        if self.kpi == "relative":
            self.initial_losses.copy_(torch.where(first, current.clamp_min(1e-12),
                                                  self.initial_losses))
        kpi = self._kpi(current)
        self.kpi_average.copy_(torch.where(
            first, kpi, self.alpha * kpi + (1 - self.alpha) * self.kpi_average))
        self.seen.fill_(True)
        k = self.kpi_average.clamp(KPI_FLOOR, 1.0)
        weights = -((1 - k) ** self.gamma) * torch.log(k)
        return self.weighted_sum(weights.to(losses), losses)

    def _kpi(self, losses: Tensor) -> Tensor:
        scaled = losses / self.initial_losses if self.kpi == "relative" else losses
        return torch.exp(-scaled.clamp_min(0))
