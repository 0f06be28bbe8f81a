"""Sweep configuration files (``run --config sweep.toml``).

Schema (every key optional; options given on the command line win over the file)::

    tasks = ["clsreg"]                  # task pairs (a string is one name)
    strategies = ["fixed", "gradnorm"]  # strategies
    seeds = 3                           # a count, or a list such as [0, 5, 7]
    epochs = 20                         # one value, or a list = a grid of settings
    batch_size = 32
    lr = [1e-3, 3e-3]                   # one number, or a list = a grid
    weight_decay = 0.0
    architecture = "shared"             # or "separate"
    sampling = "proportional"           # or "equal", "temperature"
    single_task = false                 # also train each task alone
    diag_every = 0
    tune = "lr"                         # same as --tune lr

    [set.gradnorm]                      # strategy hyper-parameters (as --set gradnorm.alpha=...)
    alpha = [0.5, 1.5]                  # a list is a grid of values
    [set.fixed]
    weights = [[1, 0.5]]                # a list-valued parameter: a grid of one list
    [set.clsreg]                        # task-pair options
    dataset = "synthetic"

Any problem (missing file, invalid TOML, unknown key, wrong type) is a one-line UserError.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtl_bench.errors import UserError

#: Top-level keys and the Python types each accepts.
SCALAR_KEYS: dict[str, tuple[type, ...]] = {
    "epochs": (int,),
    "batch_size": (int,),
    "weight_decay": (int, float),
    "architecture": (str,),
    "sampling": (str,),
    "single_task": (bool,),
    "diag_every": (int,),
    "tune": (str,),
    "select": (str,),
}
#: Allowed values of the numeric settings: (test, what the message asks for). ``run``'s options
#: of the same names use these too, so a file and the command line accept the same values.
SETTING_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: v >= 1, "a positive integer"),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "weight_decay": (lambda v: 0 <= v <= sys.float_info.max, "a non-negative finite number"),
    "diag_every": (lambda v: v >= 0, "a non-negative integer (0: once per epoch)"),
}
LIST_KEYS = ("tasks", "strategies", "seeds", "lr")
#: Setting keys that also take a list, a grid of settings (as their ``run`` options do).
SETTING_LISTS = ("epochs", "batch_size", "weight_decay", "architecture", "sampling")
KEYS = (*LIST_KEYS, *SCALAR_KEYS, "set")


def _toml_module():
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UserError("reading --config needs Python >= 3.11 or the 'tomli' package "
                            "(pip install tomli)") from None
    return tomllib


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(names[t] for t in types if not (t is int and float in types))


def load_config(path: str | Path) -> dict[str, Any]:
    """Parse and check a sweep file; returns the keys it sets, ``set`` as
    {NAME: {PARAM: [values...]}} (the same shape as ``--set``)."""
    path = Path(path)
    toml = _toml_module()
    try:
        with path.open("rb") as fh:
            data = toml.load(fh)
    except FileNotFoundError:
        raise UserError(f"config file '{path}' does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read config file '{path}': {exc.strerror or exc}") from None
    except toml.TOMLDecodeError as exc:
        raise UserError(f"config file '{path}' is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file '{path}' is not UTF-8 text (TOML files must be): byte "
                        f"{exc.object[exc.start]:#04x} at offset {exc.start}") from None
    return check_config(data, str(path))


def check_config(data: dict[str, Any], where: str = "config") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise UserError(f"{where}: unknown key '{key}'; valid keys: {', '.join(KEYS)}")
        if key in SCALAR_KEYS:
            types = SCALAR_KEYS[key]
            many = key in SETTING_LISTS and isinstance(value, list)
            if many and not value:
                raise UserError(f"{where}: '{key}' is an empty list")
            for item in value if many else [value]:
                ok = isinstance(item, types) and (bool in types or not isinstance(item, bool))
                if not ok:
                    also = " (or a list of them: a grid)" if key in SETTING_LISTS else ""
                    raise UserError(f"{where}: '{key}' should be {_type_name(types)}{also}, "
                                    f"got {item!r}")
                ok_range, requirement = SETTING_RANGES.get(key, (lambda v: True, ""))
                if not ok_range(item):
                    raise UserError(f"{where}: '{key}' should be {requirement}, got {item!r}")
            out[key] = list(value) if many else value
        elif key in ("tasks", "strategies"):
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not names or not all(
                    isinstance(n, str) and n for n in names):
                raise UserError(f"{where}: '{key}' should be a name or a list of names, "
                                f"got {value!r}")
            out[key] = names
        elif key == "seeds":
            ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
                isinstance(value, list) and value and all(
                    isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value))
            if not ok:
                raise UserError(f"{where}: 'seeds' should be a count (3) or a list of "
                                f"non-negative integers ([0, 5, 7]), got {value!r}")
            out[key] = value
        elif key == "lr":
            from mtl_bench.sweep import check_lrs

            out[key] = check_lrs(value if isinstance(value, list) else [value],
                                 f"{where}: 'lr'")
        else:  # set
            out[key] = _check_set(value, where)
    return out


def _check_set(value: Any, where: str) -> dict[str, dict[str, list[Any]]]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: 'set' should be tables such as [set.gradnorm]")
    out: dict[str, dict[str, list[Any]]] = {}
    for name, params in value.items():
        if not isinstance(params, dict):
            raise UserError(f"{where}: [set.{name}] should be a table of PARAM = VALUE lines, "
                            f"got {params!r}")
        out[name] = {param: (v if isinstance(v, list) else [v]) for param, v in params.items()}
        for param, values in out[name].items():
            if not values:
                raise UserError(f"{where}: [set.{name}] {param} is an empty list")
    return out
