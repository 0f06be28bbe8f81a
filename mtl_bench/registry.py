"""Registry of weighting strategies and task pairs.

Built-in plug-ins live in the ``mtl_bench.strategies`` and ``mtl_bench.tasks`` packages and
register themselves with the decorators below when imported. Third-party plug-ins are found
through the entry-point groups ``mtl_bench.strategies`` and ``mtl_bench.tasks``, or loaded from a
file with :func:`load_plugin_file`. The harness only ever looks names up here.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from mtl_bench.errors import UserError

T = TypeVar("T")

STRATEGY_GROUP = "mtl_bench.strategies"
TASK_GROUP = "mtl_bench.tasks"


class Registry:
    """A name -> class table; registering a taken name is an error."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                other = self._items[name]
                raise UserError(
                    f"{self.kind} name '{name}' is already taken by "
                    f"{other.__module__}.{other.__qualname__}"
                )
            self._items[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> type:
        load_builtins()
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise UserError(f"unknown {self.kind} '{name}'; choose from: {valid}") from None

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._items)

    def items(self) -> list[tuple[str, type]]:
        load_builtins()
        return sorted(self._items.items())


strategies = Registry("strategy")
tasks = Registry("task pair")


def register_strategy(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: make a :class:`~mtl_bench.strategy.Strategy` available under ``name``."""
    return strategies.register(name)


def register_task(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: make a :class:`~mtl_bench.task.TaskPair` available under ``name``."""
    return tasks.register(name)


_loaded = False


def _import_package_modules(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def load_builtins() -> None:
    """Import the built-in plug-in packages and installed entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    _import_package_modules(STRATEGY_GROUP)
    _import_package_modules(TASK_GROUP)
    for group in (STRATEGY_GROUP, TASK_GROUP):
        for ep in entry_points(group=group):
            try:
                ep.load()
            except UserError:
                raise
            except Exception as exc:  # a broken third-party package must not crash `list`
                raise UserError(
                    f"plug-in entry point '{ep.name}' ({ep.value}) failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc


def load_plugin_file(path: str | Path) -> Any:
    """Import a Python file that registers strategies or task pairs (``--plugin FILE``)."""
    load_builtins()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"plug-in file '{path}' does not exist")
    mod_name = f"mtl_bench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"plug-in file '{path}' is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        sys.modules.pop(mod_name, None)
        raise
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise UserError(
            f"plug-in file '{path}' failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    return module
