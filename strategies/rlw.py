"""Random Loss Weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, Update

DISTRIBUTIONS = ("normal", "uniform", "dirichlet")


@register_strategy("rlw")
class RLW(Strategy):
    """Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning", TMLR 2022. https://openreview.net/forum?id=jjtFD8A1Wx

    Every step draws fresh weights, independent of the losses, and maps them onto the simplex:

        normal (default):  lambda = softmax(z),     z_i ~ N(0, 1)
        uniform:           lambda = u / sum_j u_j,   u_i ~ U(0, 1)
        dirichlet:         lambda = e / sum_j e_j,   e_i ~ Exp(1)
                           (that is, lambda ~ Dirichlet(1, ..., 1))

        L = sum_i lambda_i L_i

    ``normal`` with softmax is the authors' reference implementation. For the other two
    distributions (two of those the paper compares) this module divides by the sum, so that a
    Dirichlet draw is used as drawn; an earlier version of the authors' code passed every draw
    through softmax, which pulls these weights towards 1/T.

    The weights sum to 1, as in the paper (equal weighting in this benchmark uses weights 1,
    which sum to T: under Adam the factor T makes almost no difference, under SGD it is a
    learning-rate factor). Draws come from the strategy's own generator, seeded by ``setup``,
    and the generator state is part of ``state_dict``, so a resumed run draws the same weights
    as an uninterrupted one.

    Args:
        distribution: where the unnormalised weights come from: ``normal``, ``uniform`` or
            ``dirichlet``.
    """

    paper = "Lin et al., TMLR 2022"
    summary = "random weights drawn afresh every step"
    #: The draws do not follow the tasks when they are reordered (the distribution of the
    #: weights is symmetric, a single run is not).
    permutation_invariant = False
    batchable = True

    def __init__(self, distribution: str = "normal"):
        super().__init__()
        check_param(distribution in DISTRIBUTIONS, "distribution",
                    "one of " + ", ".join(map(repr, DISTRIBUTIONS)), distribution)
        self.distribution = distribution

    def draw(self) -> Tensor:
        """One weight vector on the simplex (advances the generator)."""
        t = self.n_tasks
        if self.distribution == "normal":
            return torch.softmax(torch.randn(t, generator=self.generator), dim=0)
        u = torch.rand(t, generator=self.generator)
        if self.distribution == "dirichlet":
            # 1 - u lies in (0, 1], so the exponential draw -log(1 - u) is finite
            u = -torch.log1p(-u)
        return u / u.sum().clamp_min(1e-12)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        return self.weighted_sum(self.draw().to(losses), losses)

    def combine_seeds(self, members: Sequence[RLW], losses: Tensor,
                      grads: Sequence[TaskGradients] | None = None) -> Update:
        """Seed batching (``batchable``, written batched): the combine of K instances at once,
        (K, T) losses. vmap cannot draw from K generators, so each instance draws its own
        weights as in :meth:`combine`; the weighted sums are one tensor operation."""
        weights = torch.stack([m.draw() for m in members]).to(losses)
        return Update(weights=weights, loss=(weights * losses).sum(dim=1))

    # The generator is not a tensor, so nn.Module would not save it without these two hooks.
    def get_extra_state(self) -> Any:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self.generator.set_state(state["generator"])
