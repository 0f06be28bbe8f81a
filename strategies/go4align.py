"""GO4Align (Shen, Wang, Xiao, van Noord & Worring, NeurIPS 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, TaskInfo, Update, check_positive

from ._gradient import check_int

#: Smallest loss used in the ratio sum_j L_j / L_i (a zero loss would make it infinite).
MIN_LOSS = 1e-12


def group_means(values: np.ndarray, k: int) -> np.ndarray:
    """Each value replaced by the mean of its group in the optimal K-means partition of the
    values into (at most) ``k`` groups: the partition of least within-group sum of squares.

    In one dimension the optimal groups are runs of the sorted values, so the minimum is found
    exactly by dynamic programming over the cut points (Bellman's recursion D_m(j) = min_i
    D_{m-1}(i) + SSE(i, j) on the sorted values). Cuts fall only between distinct values, so
    equal values always share a group (and the result does not depend on the task order);
    with fewer distinct values than ``k`` each distinct value is its own group.
    """
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    n = len(values)
    cut_ok = np.ones(n + 1, dtype=bool)
    cut_ok[1:n] = sorted_values[1:] > sorted_values[:-1]
    k = min(k, int(cut_ok[1:n].sum()) + 1)
    if k == n:  # every value its own group
        return values.astype(np.float64, copy=True)
    x = sorted_values - sorted_values.mean()  # centred: the prefix-sum SSE keeps its accuracy
    s1 = np.concatenate([[0.0], np.cumsum(x)])
    s2 = np.concatenate([[0.0], np.cumsum(x * x)])
    i, j = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]
    count = np.maximum(j - i, 1)
    sse = s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / count
    sse[(j <= i) | ~cut_ok[:, None] | ~cut_ok[None, :]] = np.inf
    best = sse[0]  # D_1(j): the first j sorted values in one group
    back = []
    for _ in range(k - 1):
        total = best[:, None] + sse
        arg = np.argmin(total, axis=0)
        back.append(arg)
        best = total[arg, j[0]]
    cuts = [n]
    for arg in reversed(back):
        cuts.append(int(arg[cuts[-1]]))
    cuts.append(0)
    out = np.empty(n)
    for start, stop in zip(cuts[:0:-1], cuts[-2::-1]):
        out[order[start:stop]] = sorted_values[start:stop].mean()
    return out

@register_strategy("go4align")
class GO4Align(Strategy):
    """Shen, Wang, Xiao, van Noord & Worring, "GO4Align: Group Optimization for Multi-Task
    Alignment", NeurIPS 2024. https://arxiv.org/abs/2404.06486

    A loss-level method (no task gradients) that weights groups of tasks, not single tasks. At
    every step, from the (T,) task losses L_i:

        risk-guided indicator:  p_i <- p_i exp(-beta L_i) / sum_j p_j exp(-beta L_j)   (p = 1/T
                                at the start; p_i is proportional to exp(-beta sum_t L_i(t)))
                                gamma_i = (sum_j L_j / L_i) p_i
        group assignment:       K-means of the T scalars gamma_i into K groups
        group weights:          w_i = mean of gamma over task i's group
        loss:                   sum_i w_i L_i        (w treated as constants)

    The ratio sum_j L_j / L_i balances the loss scales (a task with a small loss gets a large
    indicator); p carries the risk history of the whole run; grouping tasks with similar
    indicators and giving each group one weight aligns their progress. K = T gives each task its
    own weight gamma_i (sum_i w_i L_i is then sum_j L_j in value); K = 1 gives every task the
    mean indicator.

    Departures: the official code clusters with Lloyd's K-means from a random start; here the
    one-dimensional K-means problem is solved exactly (dynamic programming over the sorted
    indicators), which is deterministic and at least as good in the K-means objective. A loss
    below 1e-12 counts as 1e-12 in the ratio (the official code divides by it as is). A step
    with a non-finite loss uses weights 1 and leaves p unchanged (the harness then records the
    divergence). p is kept in the log domain, the same numbers without underflow over long
    runs. Everything happens in :meth:`combine`, once per step, as in the official code.

    Args:
        num_groups: K, the number of task groups, an integer >= 1 (capped at the number of
            tasks; the official code has no default value and its experiments vary it; 2 here).
        robust_step_size: beta > 0, how fast the cumulative risk moves p (official code: 1e-4).
    """

    paper = "Shen et al., NeurIPS 2024"
    summary = "group weights: K-means of loss-ratio x risk-history indicators, group means"
    permutation_invariant = True

    def __init__(self, num_groups: int = 2, robust_step_size: float = 1e-4):
        super().__init__()
        check_int("num_groups", num_groups, 1)
        check_positive("robust_step_size", robust_step_size)
        self.num_groups = num_groups
        self.robust_step_size = float(robust_step_size)
        self.register_buffer("log_p", torch.zeros(0, dtype=torch.float64))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.log_p = torch.zeros(self.n_tasks, dtype=torch.float64)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        loss = np.array(losses.detach().tolist(), dtype=np.float64)
        if not np.isfinite(loss).all():
            return self.weighted_sum(torch.ones_like(losses), losses)
        loss = np.maximum(loss, MIN_LOSS)
        log_p = np.array(self.log_p.tolist()) - self.robust_step_size * loss
        log_p -= log_p.max()
        self.log_p.copy_(torch.as_tensor(log_p, dtype=self.log_p.dtype))
        p = np.exp(log_p)
        indicator = loss.sum() / loss * (p / p.sum())
        weights = group_means(indicator, self.num_groups)
        return self.weighted_sum(torch.as_tensor(weights, dtype=losses.dtype,
                                                 device=losses.device), losses)
