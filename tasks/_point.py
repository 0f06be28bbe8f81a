"""Shared parts of the pairs whose parameters are the point being optimised (``toy-2d``,
``quadratic``): the trunk that holds the point and the loss that reads a head's objective."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Offset(nn.Module):
    """The trunk: representation = input row + a trainable vector that starts at zero.

    Every input row holds the start point, so the representation is the point x itself and
    the one trainable tensor moves it: its gradient is dL/dx and Adam's (or SGD's) updates are
    those of x. The start comes with the data, i.e. from the seed, which is what lets seed
    batching train several starts as one batch. (Weight decay, off by default, would pull x
    towards its start rather than towards 0.)
    """

    def __init__(self, width: int):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.delta


def objective_loss(output: Tensor, target: Tensor) -> Tensor:
    """The task's objective (column 0 of the head's output); the target is not used."""
    return output[:, 0].mean()
