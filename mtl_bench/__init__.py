"""mtl-bench: a benchmark suite for multi-task loss-balancing strategies in PyTorch.

Public API for plug-ins: :mod:`mtl_bench.strategy` (Strategy, Update, TaskGradients),
:mod:`mtl_bench.task` (TaskPair, Task, data helpers), :mod:`mtl_bench.metrics` and the
decorators :func:`register_strategy` / :func:`register_task`.
"""

from mtl_bench.registry import register_strategy, register_task

__version__ = "0.1.0"
__all__ = ["register_strategy", "register_task", "__version__"]
