"""FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy, TaskGradients, TaskInfo, Update, check_positive

UPDATES = ("adam", "sgd")
EPS = 1e-8  # added to every loss before log and 1/L, as in the official code
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@register_strategy("famo")
class FAMO(Strategy):
    """Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.
    https://arxiv.org/abs/2306.03792

    Task logits xi (initially 0) give weights z = softmax(xi). The model descends

        L = c sum_i z_i log L_i,        c = (sum_i z_i / L_i)^(-1)  (a constant),

    whose gradient is sum_i (c z_i / L_i) grad L_i: a convex combination of the task gradients
    (the coefficients c z_i / L_i sum to 1 and are the weights this strategy reports). After
    the step the logits move so that tasks whose log-loss fell less get more weight:

        delta_i = log L_i(t) - log L_i(t+1)
        g       = J_softmax(xi)^T delta = z * (delta - z . delta)
        xi     <- xi - beta (g + gamma xi)                  (update="sgd", Algorithm 1)
        xi     <- Adam step on xi with gradient g + gamma xi  (update="adam", Algorithm 2 and
                                                            the official code)

    The logits are this strategy's own state, not model parameters: they are buffers (as are
    the previous losses and the Adam moments, so a run resumed from ``state_dict`` continues
    exactly) and are updated by the rule above inside :meth:`combine`. The harness's optimiser
    never sees them.

    Departures from the paper, stated: (1) the paper computes L(t+1) with an extra forward pass
    on the same batch right after the model step. A strategy here cannot run the model, so the
    update happens at the start of the next ``combine`` with that step's losses, which come from
    the next batch: delta then also contains the difference between two batches (the expected
    update is unchanged, its variance grows). The first step has no previous losses and leaves
    the logits at 0. (2) The official code clips the model's gradient norm at 1; the harness
    owns the model's optimiser and does not clip. (3) The loss lower bounds of the paper are 0.

    Args:
        beta: step size of the logits (official code: 0.025).
        gamma: decay (L2 regularisation) of the logits, gamma >= 0 (paper, Algorithm 2: 1e-3).
        update: ``adam`` (Adam on the logits, as in the paper's experiments) or ``sgd`` (the
            plain step of Algorithm 1).
    """

    paper = "Liu et al., NeurIPS 2023"
    summary = "learn loss weights so every task's log-loss falls at the same rate"
    permutation_invariant = True
    batchable = True

    def __init__(self, beta: float = 0.025, gamma: float = 1e-3, update: str = "adam"):
        super().__init__()
        check_positive("beta", beta)
        check_positive("gamma", gamma, allow_zero=True)
        check_param(update in UPDATES, "update", "one of " + ", ".join(map(repr, UPDATES)),
                    update)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.update = update
        for name in ("logits", "prev_log_losses", "adam_m", "adam_v"):
            self.register_buffer(name, torch.zeros(0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        for name in ("logits", "prev_log_losses", "adam_m", "adam_v"):
            setattr(self, name, torch.zeros(self.n_tasks))
        self.steps = torch.zeros((), dtype=torch.long)
        self.has_prev = torch.zeros((), dtype=torch.bool)

    @torch.no_grad()
    def _update_logits(self, log_losses: Tensor) -> None:
        # A no-op until there are previous losses. No branch on the state and buffers updated
        # in place, so that K seeds can run this under vmap (``batchable``).
        live = self.has_prev
        delta = self.prev_log_losses - log_losses
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.logits
        if self.update == "sgd":
            self.logits.copy_(torch.where(live, self.logits - self.beta * grad, self.logits))
            return
        b1, b2 = ADAM_BETAS
        self.steps.add_(live.to(self.steps.dtype))
        t = self.steps.clamp_min(1).double()  # bias corrections in double, as Python floats
        m = torch.add(self.adam_m * b1, grad, alpha=1 - b1)
        v = torch.addcmul(self.adam_v * b2, grad, grad, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt() + ADAM_EPS
        logits = self.logits - self.beta / (1 - b1**t) * m / denom
        for state, new in ((self.adam_m, m), (self.adam_v, v), (self.logits, logits)):
            state.copy_(torch.where(live, new, state))

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        shifted = losses + EPS
        log_now = torch.log(shifted.detach()).to(self.logits)
        self._update_logits(log_now)
        self.prev_log_losses.copy_(log_now)
        self.has_prev.fill_(True)
        z = torch.softmax(self.logits, dim=0).to(losses)
        c = 1.0 / (z / shifted.detach()).sum()
        weights = c * z / shifted.detach()
        return Update(weights=weights, loss=c * (z * torch.log(shifted)).sum())
