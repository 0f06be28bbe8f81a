"""Every ``python -m mtl_bench ...`` command in README.md's code blocks runs.

Each command is run in order through :func:`mtl_bench.cli.main` in one temporary folder (so
``runs/``, ``reports/`` and the examples' other folders are shared, as in a user's session, and
a run already stored is not trained again), shrunk to stay quick: ``run`` trains 1 epoch of 1
seed in this process (``--epochs 1 --seeds 1 --jobs 1``), ``speed`` times 2 rounds of 2 steps,
``baseline save`` writes under the temporary folder, never over the committed baselines, and
"every registered strategy" is a registry of five built-in strategies (one or more of each
family) plus the examples' plug-in. A command left out is listed in :data:`SKIP` with the
reason; a skip that no longer matches a README command fails the test.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mtl_bench import registry
from mtl_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
PREFIX = ["python", "-m", "mtl_bench"]

#: README commands not run here, by their command line as written (comment dropped).
SKIP = {
    "run --profile default --executor dask --scheduler tcp://HOST:8786":
        "needs a Dask scheduler at a real address (tests/test_dask.py covers the Dask executor)",
    "run --profile default --executor dask":
        "starts a Dask LocalCluster, several seconds (tests/test_dask.py covers it)",
    "run --profile default --device cuda --jobs 8": "needs a CUDA GPU",
}
#: The registry that stands for "every registered strategy" (loss weighting, gradient-norm
#: balancing, gradient manipulation at both gradient sources).
STRATEGIES = ("fixed", "uncertainty", "dwa", "gradnorm", "pcgrad")
#: Small values for the options that size a run (rounds: the speed stage needs at least 2).
SMALL = {"--epochs": "1", "--seeds": "1", "--jobs": "1", "--rounds": "2", "--steps": "2"}
ADDED = {"run": ("--epochs", "--seeds", "--jobs"), "speed": ("--rounds", "--steps")}
#: A check of 1-epoch runs against a committed baseline compares nothing: that is the
#: expected one-line error (exit 2), any other error fails.
CHECK_NOTHING = ("matches baseline", "nothing compared")
SWEEP_TOML = 'strategies = ["fixed", "dwa"]\nlr = [1e-3, 3e-3]\n'


def readme_commands() -> list[str]:
    """The ``python -m mtl_bench`` commands of README.md's fenced blocks, comments dropped,
    each as written after ``python -m mtl_bench`` (what precedes the command on its line, such
    as ``pip install -e . &&``, is dropped too)."""
    out, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if not inside or "python -m mtl_bench " not in line:
            continue
        tokens = shlex.split(line, comments=True)
        start = next(i for i in range(len(tokens)) if tokens[i:i + 3] == PREFIX)
        out.append(shlex.join(tokens[start + 3:]))
    return out


def _command(argv: list[str]) -> tuple[str, int]:
    """The command's name and index, after global options (``--plugin FILE``)."""
    i = 0
    while argv[i].startswith("-"):
        i += 2
    return argv[i], i


def shrink(argv: list[str]) -> list[str]:
    """The command with the sizes of :data:`SMALL`, folders relative to the test's folder, and
    ``baseline save`` kept away from the committed baselines."""
    out = list(argv)
    for i, token in enumerate(out[:-1]):
        if token in SMALL:
            out[i + 1] = SMALL[token]
        if token == "--runs-dir":
            out[i + 1] = out[i + 1].lstrip("/").replace("/", "-")
    name, _ = _command(out)
    out += [x for option in ADDED.get(name, ()) if option not in out
            for x in (option, SMALL[option])]
    if name == "baseline" and "save" in out and "--baselines-dir" not in out:
        out += ["--baselines-dir", "results/baselines"]
    return out


def test_readme_commands_are_found_and_skips_are_current():
    commands = readme_commands()
    assert len(commands) >= 30, commands
    assert "run --task clsreg --architecture separate" in commands
    assert not set(SKIP) - set(commands), f"stale SKIP entries: {set(SKIP) - set(commands)}"


def test_shrink_rewrites_sizes_and_folders():
    assert shrink(["run", "--profile", "quick", "--runs-dir", "/tmp/mtl-base-quick",
                   "--seeds", "3"]) == ["run", "--profile", "quick", "--runs-dir",
                                        "tmp-mtl-base-quick", "--seeds", "1", "--epochs", "1",
                                        "--jobs", "1"]
    assert shrink(["--plugin", "a.py", "speed", "--rounds", "15"]) == [
        "--plugin", "a.py", "speed", "--rounds", "2", "--steps", "2"]
    assert shrink(["baseline", "save", "quick", "--force"])[-2:] == [
        "--baselines-dir", "results/baselines"]


def _plugin_example() -> str:
    """docs/plugins.md's worked strategy, the file README's ``--plugin inverse_loss.py`` names."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    found = re.search(r"Save this as `inverse_loss.py`:\s*```python\n(.*?)```", text, re.S)
    assert found, "docs/plugins.md lost its inverse_loss.py example"
    return found.group(1)


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    registry.load_builtins()
    monkeypatch.setattr(registry.strategies, "_items",
                        {n: registry.strategies.get(n) for n in STRATEGIES})
    monkeypatch.setattr("webbrowser.open", lambda *a, **k: False)  # report --open: no browser
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inverse_loss.py").write_text(_plugin_example())
    (tmp_path / "sweep.toml").write_text(SWEEP_TOML)
    committed = {p: p.read_bytes() for p in (ROOT / "results" / "baselines").glob("*/*")}
    ran = []
    for command in readme_commands():
        if command in SKIP:
            continue
        argv = shrink(shlex.split(command))
        code = main(argv)
        err = capsys.readouterr().err
        name, _ = _command(argv)
        nothing_to_check = name == "check" and code == 2 and any(m in err for m in CHECK_NOTHING)
        assert code == 0 or nothing_to_check or (name == "check" and code == 1), (
            f"README command `python -m mtl_bench {command}` (run as {shlex.join(argv)}) "
            f"exited {code}: {err.strip()}")
        ran.append(command)
    assert len(ran) == len(readme_commands()) - len(SKIP)
    # the examples' outputs exist where the README says they go
    assert (tmp_path / "reports" / "report.html").is_file()
    assert (tmp_path / "results" / "baselines" / "quick" / "baseline.json").is_file()
    assert list((tmp_path / "runs" / "clsreg").glob("*.json"))
    # and the committed baselines were only read
    assert {p: p.read_bytes() for p in committed} == committed
