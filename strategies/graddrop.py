"""GradDrop (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, NeurIPS 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, Update, check_grad_source

#: Keeps the sign purity defined where every task's gradient component is zero.
EPS = 1e-7


def sign_purity(g: Tensor) -> Tensor:
    """P = (1/2) (1 + sum_i g_i / sum_i |g_i|), elementwise over the columns of (T, P) g."""
    return 0.5 * (1.0 + g.sum(0) / (g.abs().sum(0) + EPS))


@register_strategy("graddrop")
class GradDrop(Strategy):
    """Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
    Dropout", NeurIPS 2020. https://arxiv.org/abs/2010.06808

    At every element of the gradient (by default at the shared representation), the positive
    sign purity P = (1/2) (1 + sum_i g_i / sum_i |g_i|) in [0, 1] measures how much the tasks
    agree on a positive sign. One uniform draw U per element decides which sign survives:

        M_i = [P > U] [g_i > 0] + [P < U] [g_i < 0]
        d = sum_i (leak g_i + (1 - leak) M_i g_i)

    so an element where every task agrees keeps all of its gradients, and a disputed element
    keeps the positive components with probability P and the negative ones otherwise (f is the
    identity, the paper's choice). The draws come from the strategy's seeded generator, whose
    state is in ``state_dict``. The logged weight of task i is the share of its squared
    gradient norm that reaches d, ||kept_i||^2 / ||g_i||^2 (1 when nothing is dropped).

    Departures: one scalar ``leak`` for every task (the paper's per-task leak l_i serves
    transfer learning, where some tasks are never dropped). With batch-separated gradients the
    paper (and LibMTL) first multiplies each task's gradient by the sign of the representation
    and sums it over the batch, drawing one mask per feature; strategies here are not handed
    the representation itself, so with ``source="rep"`` the purity and the draws are per
    element of the batch x width gradient.

    Args:
        leak: share of every task's gradient that passes undropped, in [0, 1] (paper: 0).
        source: ``rep`` (the shared representation, the paper's setting) or ``shared``.
    """

    family = "gradient manipulation"
    paper = "Chen et al., NeurIPS 2020"
    summary = "drop gradient components whose sign disagrees with a purity-weighted draw"
    #: The draws do not follow the tasks when they are reordered.
    permutation_invariant = False

    def __init__(self, leak: float = 0.0, source: str = "rep"):
        super().__init__()
        ok = isinstance(leak, (int, float)) and not isinstance(leak, bool) and 0 <= leak <= 1
        check_param(ok, "leak", "a float in [0, 1]", leak)
        check_grad_source(source)
        self.leak = float(leak)
        self.source = source
        self.grad_source = source

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        if grads is None:
            raise RuntimeError(f"strategy '{self}' needs task gradients from the harness")
        g = grads.matrix
        purity = sign_purity(g)
        # drawn on the CPU generator so that the draws are the same on every device
        u = torch.rand(purity.shape, generator=self.generator, dtype=g.dtype).to(g.device)
        mask = (purity > u) & (g > 0) | (purity < u) & (g < 0)
        kept = g * (self.leak + (1.0 - self.leak) * mask.to(g.dtype))
        norm2 = (g * g).sum(1)
        tiny = torch.finfo(g.dtype).tiny  # a task with a zero gradient loses nothing: share 1
        share = torch.where(norm2 > 0, (kept * g).sum(1) / norm2.clamp_min(tiny),
                            torch.ones_like(norm2))
        return Update(weights=share.to(losses.dtype), direction=kept.sum(0))
