"""Fixed (static) task weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, TaskInfo, Update, is_finite


def simplex_compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """All tuples of ``parts`` positive integers summing to ``total``, lexicographic order."""
    if parts == 1:
        return [(total,)]
    return [(first, *rest) for first in range(1, total - parts + 2)
            for rest in simplex_compositions(total - first, parts - 1)]


@register_strategy("fixed")
class Fixed(Strategy):
    """Static linear scalarisation: L = sum_i w_i L_i with constant weights.

    With no weights given every task gets weight 1 (equal weighting, the baseline every other
    strategy is compared against). Fixed weights swept over the simplex trace the scalarisation
    front of Xin et al., "Do Current Multi-Task Optimization Methods in Deep Learning Even Help?"
    (NeurIPS 2022). https://mlanthology.org/neurips/2022/xin2022neurips-current/

    Sweep mode: ``--set fixed.sweep=K`` expands into one run per point of a grid on the simplex
    with spacing 1/(K+1) and every weight positive (K=9 with two tasks: fractions 0.1 .. 0.9),
    scaled so that the weights sum to T (equal weights (1, 1) is then a grid point for odd K).
    These runs trace the scalarisation Pareto front.

    Args:
        weights: one non-negative weight per task, not all zero; ``None`` means all ones.
    """

    paper = "linear scalarisation; Xin et al., NeurIPS 2022"
    summary = "constant weights (equal by default); sweep mode traces the Pareto front"
    #: Equal weights treat tasks alike; explicit weights are permuted along with the tasks.
    permutation_invariant = True
    batchable = True
    graph_safe = True

    def __init__(self, weights: Sequence[float] | None = None):
        super().__init__()
        if weights is not None:
            ok = (isinstance(weights, Sequence) and not isinstance(weights, str)
                  and len(weights) > 0
                  and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                          and is_finite(w) for w in weights)
                  and any(w > 0 for w in weights))
            check_param(ok, "weights", "a list of non-negative finite numbers, not all zero",
                        weights)
            weights = tuple(float(w) for w in weights)
        self.weights = weights
        self.register_buffer("w", torch.ones(0))

    @classmethod
    def variants(cls, params: dict[str, Any], n_tasks: int) -> list[dict[str, Any]]:
        if "sweep" not in params:
            return [params]
        k = params["sweep"]
        check_param(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 99, "sweep",
                    "an integer from 1 to 99 (grid points per edge of the simplex)", k)
        rest = {key: v for key, v in params.items() if key not in ("sweep", "weights")}
        return [{**rest, "weights": [round(n_tasks * c / (k + 1), 6) for c in combo]}
                for combo in simplex_compositions(k + 1, n_tasks)]

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        if self.weights is not None and len(self.weights) != self.n_tasks:
            check_param(False, "weights", f"a list of {self.n_tasks} numbers (one per task)",
                        list(self.weights))
        values = self.weights if self.weights is not None else [1.0] * self.n_tasks
        self.w = torch.tensor(values, dtype=torch.float32)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        return self.weighted_sum(self.w, losses)
