"""Auto-Lambda: task weights meta-learned from a look-ahead of the model (Liu, Johns & Davison,
TMLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl_bench.errors import check_param
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import (
    MetaProblem,
    Strategy,
    TaskGradients,
    TaskInfo,
    Update,
    check_positive,
)

#: Finite-difference radius, divided by the norm of the meta gradient (the official code's).
FD_RADIUS = 0.01


@register_strategy("auto_lambda")
class AutoLambda(Strategy):
    """Liu, Johns & Davison, "Auto-Lambda: Disentangling Dynamic Task Relationships", TMLR 2022.
    https://arxiv.org/abs/2202.03091

    The training loss is sum_i lambda_i L_i(theta). The weights lambda are trained on a meta
    loss, the summed task loss of the model after one virtual SGD step with the weighted loss,
    taken on a meta batch (DARTS-style, first order in theta):

        theta'  = theta - alpha (grad_theta sum_i lambda_i L_i(theta) + wd theta)
        d       = grad_theta' sum_i L^meta_i(theta')
        theta+- = theta +- eps d,   eps = 0.01 / ||d||
        grad_lambda_i = -alpha (L_i(theta+) - L_i(theta-)) / (2 eps)

    The last line is the finite-difference form of -alpha (d^2 L_train / d lambda d theta) d,
    the second-order term of the hypergradient; because the training loss is linear in lambda,
    d/d lambda_i of it at theta+- is just L_i(theta+-). alpha and wd are the model's learning
    rate and weight decay. lambda starts at ``init`` for every task, is updated before the
    model's step of the same iteration (the model then trains with the new weights), with Adam
    at learning rate ``lr`` and no weight decay, as in the official code; it is neither
    normalised nor clipped. Multi-task mode: every task is primary (in the meta loss).

    Meta batch: the official code draws it from the *training* set, through a second loader
    with its own shuffling; so does the harness (a second, independent draw from the training
    split at every step). The validation split (model selection) and the test split are never
    seen in training.

    Departures: the look-ahead is a plain SGD step (the harness's optimiser is Adam; the
    official look-ahead mirrors its SGD-with-momentum optimiser, adding the momentum buffer);
    the look-ahead and the probes cover every trainable parameter of the model, trunk and heads,
    as the official code does. When d is exactly zero the hypergradient is zero (eps is kept
    finite instead of dividing by zero).

    Args:
        init: initial weight of every task (official default 0.1).
        lr: Adam learning rate of the weights (official default 1e-4 for dense prediction;
            3e-4 for CIFAR-100).
        update_every: meta-update the weights every this many steps (1, every step, as in the
            official code); the meta batch is drawn at every step either way.
    """

    family = "bilevel"
    paper = "Liu, Johns & Davison, TMLR 2022"
    summary = "meta-learn weights by a look-ahead on a second training batch (finite diff.)"
    permutation_invariant = True
    needs_meta_batch = True

    def __init__(self, init: float = 0.1, lr: float = 1e-4, update_every: int = 1):
        super().__init__()
        check_positive("init", init)
        check_positive("lr", lr)
        check_param(isinstance(update_every, int) and not isinstance(update_every, bool)
                    and update_every >= 1, "update_every", "a positive integer", update_every)
        self.init = float(init)
        self.lr = float(lr)
        self.update_every = update_every
        self.meta_weights = nn.Parameter(torch.zeros(0))
        self.steps = 0  # meta_gradients calls so far (a host counter: no device read)

    def setup(self, tasks: Sequence[TaskInfo], seed: int = 0) -> None:
        super().setup(tasks, seed)
        self.meta_weights = nn.Parameter(torch.full((self.n_tasks,), self.init))

    def get_extra_state(self) -> Any:
        return {**super().get_extra_state(), "steps": self.steps}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        self.steps = int(state.get("steps", 0))

    def combine(self, losses: Tensor, grads: TaskGradients | None = None) -> Update:
        # a copy: the next meta update changes the parameter in place
        return self.weighted_sum(self.meta_weights.detach().to(losses.dtype, copy=True), losses)

    def meta_gradients(self, problem: MetaProblem) -> list[Tensor] | None:
        due = self.steps % self.update_every == 0
        self.steps += 1
        if not due:
            return None
        params, alpha = problem.params, problem.lr
        lam = self.meta_weights.detach().to(problem.losses.dtype)
        grads = torch.autograd.grad((lam * problem.losses).sum(), params, retain_graph=True,
                                    allow_unused=True)
        with torch.no_grad():
            ahead = [(p - alpha * (_or_zeros(g, p) + problem.weight_decay * p)).requires_grad_()
                     for p, g in zip(params, grads)]
        meta = problem.meta_losses(ahead)
        d = [_or_zeros(g, p) for g, p in zip(
            torch.autograd.grad(meta.sum(), ahead, allow_unused=True), ahead)]
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in d]))
            eps = FD_RADIUS / norm.clamp_min(torch.finfo(norm.dtype).tiny)
            plus = problem.train_losses([p + eps * g for p, g in zip(params, d)])
            minus = problem.train_losses([p - eps * g for p, g in zip(params, d)])
            hyper = -alpha * (plus - minus) / (2 * eps)
        return [hyper.to(self.meta_weights.dtype)]


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad
