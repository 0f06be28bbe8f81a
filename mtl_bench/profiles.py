"""Named run profiles: presets of tasks, strategies, seeds and epochs for ``run --profile``.

Options given on the command line override the profile's. ``quick`` is sized for a CI gate on a
2-core machine; ``default`` is the suite the README's numbers come from.
"""

from __future__ import annotations

from typing import Any

from mtl_bench.errors import UserError

CARD_STRATEGIES = ["fixed", "uncertainty", "gradnorm", "dwa"]

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "tasks": ["clsreg"],
        "strategies": CARD_STRATEGIES,
        "seeds": "3",
        "epochs": 10,
    },
    "default": {
        "tasks": ["clsreg", "multilabel-vs-softmax", "age-gender"],
        "strategies": CARD_STRATEGIES,
        "seeds": "3",
    },
}


def get_profile(name: str) -> dict[str, Any]:
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown profile '{name}'; choose from: {', '.join(PROFILES)}") from None
