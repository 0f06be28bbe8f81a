"""Named run profiles: presets of tasks, strategies, seeds and epochs for ``run --profile``.

Options given on the command line override the profile's; a profile without ``strategies`` runs
every registered strategy. ``quick`` is sized for a CI gate on a 2-core machine (well under a
minute); ``default`` is the suite the README's numbers come from. Committed baselines under
``results/baselines/`` carry the profile's name.
"""

from __future__ import annotations

from typing import Any

from mtl_bench.errors import UserError

CARD_STRATEGIES = ["fixed", "uncertainty", "gradnorm", "dwa"]

PROFILES: dict[str, dict[str, Any]] = {
    # The CI gate (`check --baseline quick`): every registered strategy (no "strategies" key),
    # so a harness change that breaks any family shows up; 3 seeds x 6 epochs on the penguins
    # pair keeps 32 strategies near 30 s of CPU on one core. Quality is deterministic on CPU
    # for a fixed seed, so unchanged code reproduces the baseline's metrics exactly.
    "quick": {
        "tasks": ["clsreg"],
        "seeds": "3",
        "epochs": 6,
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
