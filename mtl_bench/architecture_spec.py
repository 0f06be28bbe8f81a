"""Architecture names and specs (``mmoe:experts=6``) without torch: what ``run --help`` and
the sweep need to list, parse and canonicalise ``--architecture`` values. The networks they
name are built in :mod:`mtl_bench.architectures`, which re-exports everything here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtl_bench.errors import UserError

#: Architectures whose tasks read one shared representation.
SHARED_REPRESENTATION = ("shared", "separate")
#: Architectures that give each task its own representation.
PER_TASK = ("cross-stitch", "mmoe", "cgc", "ple", "dselect-k")
ARCHITECTURES = (*SHARED_REPRESENTATION, *PER_TASK)

#: Defaults of the per-task architectures (the experts are copies of the pair's trunk).
MMOE_EXPERTS = 3
CGC_SHARED_EXPERTS = 1
CGC_TASK_EXPERTS = 1
DSELECT_EXPERTS = 4
DSELECT_K = 2
DSELECT_GAMMA = 1.0
CROSS_STITCH_SELF = 0.9




@dataclass(frozen=True)
class ArchParam:
    """One key of an architecture spec: its default, its type and the values it accepts."""

    default: int | float
    kind: type
    requirement: str  # completes "should be ...", e.g. "an integer >= 1"
    accepts: Callable[[Any], bool]
    meaning: str

    def parse(self, text: str) -> int | float:
        """The value ``text`` spells, or ValueError."""
        value = int(text) if self.kind is int else float(text)
        if not math.isfinite(value) or not self.accepts(value):
            raise ValueError(text)
        return value


def _count(minimum: int, meaning: str, default: int) -> ArchParam:
    return ArchParam(default, int, f"an integer >= {minimum}", lambda v: v >= minimum, meaning)


_EXPERT_SPLIT = {
    "shared_experts": _count(1, "experts shared by every task", CGC_SHARED_EXPERTS),
    "task_experts": _count(0, "experts of each task", CGC_TASK_EXPERTS),
}
#: The keys each architecture's spec accepts, with their defaults.
ARCHITECTURE_PARAMS: dict[str, dict[str, ArchParam]] = {
    "shared": {},
    "separate": {},
    "cross-stitch": {"self": ArchParam(CROSS_STITCH_SELF, float, "a float in [0, 1]",
                                       lambda v: 0 <= v <= 1,
                                       "initial weight of each column on itself")},
    "mmoe": {"experts": _count(1, "shared experts", MMOE_EXPERTS)},
    "cgc": dict(_EXPERT_SPLIT),
    "ple": dict(_EXPERT_SPLIT),  # one level per stage of the pair's trunk
    "dselect-k": {"experts": _count(2, "shared experts", DSELECT_EXPERTS),
                  "k": _count(1, "experts each gate selects at most (<= experts)", DSELECT_K),
                  "gamma": ArchParam(DSELECT_GAMMA, float, "a positive float",
                                     lambda v: v > 0, "width of the smooth step")},
}


def _number(value: int | float) -> str:
    """A value as a spec prints it: the shortest text that reads back the same number."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _keys_text(name: str) -> str:
    params = ARCHITECTURE_PARAMS[name]
    if not params:
        return f"'{name}' takes no parameters"
    return f"keys of '{name}' (defaults): " + ", ".join(
        f"{k}={_number(p.default)}" for k, p in sorted(params.items()))


def architectures_help() -> str:
    """Every architecture with its keys and defaults, for the command line's help."""
    return ", ".join(
        name + (f"[:{','.join(f'{k}={_number(p.default)}' for k, p in sorted(ps.items()))}]"
                if ps else "") for name, ps in ARCHITECTURE_PARAMS.items())


def parse_architecture(spec: str) -> tuple[str, dict[str, int | float]]:
    """``NAME[:key=value,...]`` -> (NAME, every key's value, defaults filled in). UserError
    (one line naming the valid keys and their defaults) for an unknown name or key, a
    malformed item, a repeated key or a bad value."""
    if not isinstance(spec, str):
        raise UserError(f"an architecture is a string NAME[:key=value,...], got {spec!r}")
    name, colon, rest = (part.strip() for part in spec.partition(":"))
    if name not in ARCHITECTURE_PARAMS:
        raise UserError(f"unknown architecture '{name}'; choose from: {architectures_help()}")
    params = ARCHITECTURE_PARAMS[name]
    values = {k: p.default for k, p in params.items()}
    given: set[str] = set()
    for item in rest.split(",") if colon else []:
        key, eq, text = (part.strip() for part in item.partition("="))
        if not (key and eq and text):
            raise UserError(f"architecture '{spec}': expected key=value, got '{item.strip()}'; "
                            + _keys_text(name))
        if key not in params:
            raise UserError(f"architecture '{name}' has no key '{key}'; " + _keys_text(name))
        if key in given:
            raise UserError(f"architecture '{spec}' sets '{key}' twice; " + _keys_text(name))
        given.add(key)
        try:
            values[key] = params[key].parse(text)
        except ValueError:
            raise UserError(f"architecture '{name}': `{key}` should be "
                            f"{params[key].requirement}, got '{text}'; "
                            + _keys_text(name)) from None
    if name == "dselect-k" and values["k"] > values["experts"]:
        raise UserError(f"architecture '{spec}': `k` should be at most `experts` "
                        f"({_number(values['experts'])}), got {_number(values['k'])}; "
                        + _keys_text(name))
    return name, values


def canonical_architecture(spec: str) -> str:
    """The one spelling of ``spec``: keys sorted, values printed again, defaults dropped
    (``mmoe:experts=3`` and `` mmoe `` are ``mmoe``; ``dselect-k:k=1,experts=8`` is
    ``dselect-k:experts=8,k=1``). UserError for a bad spec (:func:`parse_architecture`)."""
    name, values = parse_architecture(spec)
    params = ARCHITECTURE_PARAMS[name]
    changed = [f"{k}={_number(v)}" for k, v in sorted(values.items()) if v != params[k].default]
    return f"{name}:{','.join(changed)}" if changed else name


def architecture_name(spec: str) -> str:
    """The architecture's name in ``spec`` (``mmoe`` for ``mmoe:experts=6``), once the whole
    spec is known to be valid."""
    return parse_architecture(spec)[0]


def check_gradient_source(architecture: str, strategy: object) -> None:
    """Raise UserError when ``strategy`` needs task gradients that ``architecture`` (a spec)
    lacks: any gradient under ``separate`` (nothing is shared), the representation's under an
    architecture that gives each task its own representation."""
    source = getattr(strategy, "grad_source", None)
    architecture = architecture_name(architecture)
    if source is not None and architecture == "separate":
        raise UserError(f"strategy '{strategy}' needs gradients of shared parameters, but the "
                        "'separate' architecture shares none; use --architecture shared")
    if source == "rep" and architecture in PER_TASK:
        raise UserError(rep_refusal(f"strategy '{strategy}'", architecture))


def rep_refusal(who: str, architecture: str) -> str:
    """The one-line refusal of gradient source ``rep`` on a per-task architecture."""
    return (f"{who} takes gradients at the shared representation (source 'rep'), but the "
            f"'{architecture}' architecture gives each task its own representation; use "
            "source 'shared' or --architecture shared")
