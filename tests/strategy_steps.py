"""Helpers the golden strategy tests share: build a strategy for T regression tasks and run
one ``combine`` on a float64 gradient matrix."""

import numpy as np
import torch

from mtl_bench.strategy import REGRESSION, TaskGradients, TaskInfo
from mtl_bench.train import build_strategy


def setup_strategy(name, n_tasks, seed=0, **params):
    s = build_strategy(name, params)
    s.setup([TaskInfo(f"t{i}", REGRESSION) for i in range(n_tasks)], seed=seed)
    return s


def update(s, g, losses=None):
    """One step on the (T, P) matrix ``g`` with losses (default all ones); loss-level
    strategies get no gradients."""
    g = torch.as_tensor(np.asarray(g, dtype=np.float64))
    losses = torch.ones(len(g), dtype=torch.float64) if losses is None else \
        torch.as_tensor(np.asarray(losses, dtype=np.float64))
    return s.combine(losses, TaskGradients(g, s.grad_source) if s.grad_source else None)
