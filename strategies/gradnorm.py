"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import (
    Strategy,
    TaskGradients,
    TaskInfo,
    Update,
    check_optional_lr,
    check_positive,
)

LAYERS = {"last": "last", "all": "shared", "rep": "rep"}
INITIALS = ("first_step", "first_epoch")


@register_strategy("gradnorm")
class GradNorm(Strategy):
    """Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks", ICML 2018. https://arxiv.org/abs/1711.02257

    Learnable weights w_i(t), initialised to 1, scale the task losses: L = sum_i w_i L_i. With W
    the last shared layer's parameters,

        G_i(t) = || grad_W w_i(t) L_i(t) ||_2,        G_bar(t) = mean_i G_i(t)
        Ltilde_i(t) = L_i(t) / L_i(0),                r_i(t) = Ltilde_i(t) / mean_j Ltilde_j(t)
        L_grad = sum_i | G_i(t) - G_bar(t) * r_i(t)^alpha |

    The target G_bar r_i^alpha is held constant and L_grad is differentiated with respect to
    the w_i only (the network is trained on L alone). After each step the weights are
    renormalised so that sum_i w_i = T.

    Implementation: G_i = w_i ||g_i|| with g_i = grad_W L_i, so dL_grad/dw_i =
    sign(G_i - target_i) ||g_i||. The harness computes g_i with one ``autograd.grad`` per task
    restricted to W, and this module forms L_grad from detached norms: no second-order graph
    (``create_graph``) is needed, which is what makes it cheap.

    Departures from the paper, stated: (1) a weight that a step would drive to or below zero is
    floored at 1e-4 before renormalisation (the paper does not say what happens then);
    (2) ``layer`` offers the paper's choice and two common variants.

    Args:
        alpha: asymmetry alpha >= 0 (paper: 1.5 for NYUv2, 0.12 for the synthetic task).
        layer: where G_i is measured: ``last`` (the paper: last shared layer), ``all`` (all
            shared parameters, as some libraries do) or ``rep`` (the gradient at the shared
            representation; cheapest).
        initial: L_i(0) is the loss of the first training step (``first_step``, the paper) or
            the mean over the first epoch (``first_epoch``; during epoch 1 the running mean).
        lr: learning rate of the weights (the paper uses the network's); ``None``: the model's.
    """

    family = "gradient-norm balancing"
    paper = "Chen et al., ICML 2018"
    summary = "learn weights so task gradient norms match their relative training rates"
    permutation_invariant = True
    batchable = True

    def __init__(self, alpha: float = 1.5, layer: str = "last", initial: str = "first_step",
                 lr: float | None = None):
        super().__init__()
        check_positive("alpha", alpha, allow_zero=True)
        check_param(layer in LAYERS, "layer", "one of 'last', 'all', 'rep'", layer)
        check_param(initial in INITIALS, "initial", "one of 'first_step', 'first_epoch'", initial)
        check_optional_lr(lr)
        self.alpha = float(alpha)
        self.layer = layer
        self.initial = initial
        self.lr = lr
        self.grad_source = LAYERS[layer]
        self.w = nn.Parameter(torch.ones(0))
        self.register_buffer("initial_losses", torch.zeros(0))
        self.register_buffer("loss_sum", torch.zeros(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.w = nn.Parameter(torch.ones(self.n_tasks))
        self.initial_losses = torch.zeros(self.n_tasks)
        self.loss_sum = torch.zeros(self.n_tasks)

    def _initial(self, losses: Tensor) -> Tensor:
        # No branch on the state and buffers updated in place, so that K seeds can run this
        # under vmap (``batchable``): a frozen L_i(0) is kept by torch.where.
        current = losses.detach().to(self.initial_losses)
        live = ~self.frozen
        if self.initial == "first_step":
            self.initial_losses.copy_(torch.where(live, current, self.initial_losses))
            self.frozen.fill_(True)
        else:
            self.loss_sum.add_(torch.where(live, current, torch.zeros_like(current)))
            self.count.add_(live.to(self.count.dtype))
            self.initial_losses.copy_(torch.where(live, self.loss_sum / self.count,
                                                  self.initial_losses))
        return self.initial_losses

    def on_epoch_end(self, epoch: int, train_losses: Tensor) -> None:
        if self.initial == "first_epoch" and not self.frozen:
            self.initial_losses = train_losses.detach().to(self.initial_losses).clone()
            self.frozen.fill_(True)

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        if grads is None:
            raise RuntimeError("gradnorm needs task gradients from the harness")
        norms = grads.norms.to(losses.dtype)  # ||grad_W L_i||, unweighted
        with torch.no_grad():
            w = self.w.detach()
            g = w * norms
            ratio = losses.detach() / self._initial(losses).clamp_min(1e-12)
            r = ratio / ratio.mean()
            target = g.mean() * r.pow(self.alpha)
        grad_loss = (self.w * norms - target).abs().sum()
        return Update(weights=w.clone(), loss=(w * losses).sum() + grad_loss)

    @torch.no_grad()
    def after_step(self) -> None:
        w = self.w.clamp(min=1e-4)  # out of place: vmap has no batching rule for clamp_
        self.w.copy_(w * (self.n_tasks / w.sum()))
