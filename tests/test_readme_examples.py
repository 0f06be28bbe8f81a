"""Every ``python -m mtl_bench ...`` command in README.md's code blocks runs.

Each fenced block is a session of its own: its commands run in order through
:func:`mtl_bench.cli.main` in a fresh folder that starts with a small ``runs/`` (two strategies,
their single-task runs, one epoch), so the block's ``runs/``, ``reports/`` and other folders
are shared as in a user's session and a run already stored is not trained again. Commands are
shrunk to stay quick: ``run`` trains 1 epoch of 1 seed in this process (``--epochs 1 --seeds 1
--jobs 1``), ``speed`` times 2 rounds of 2 steps, ``baseline save`` writes under the session's
folder, never over the committed baselines, and "every registered strategy" is a registry of
five built-in strategies (each family, both gradient sources) plus the examples' plug-ins, whose
files come from the docs that show them (:data:`FILES`). A command left out is listed in
:data:`SKIP` with the reason; a skip that no longer matches a README command fails the test.
"""

from __future__ import annotations

import re
import shlex
import shutil
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
#: Files the README's commands name, and where the docs show them: (doc, regex of the text).
FILES = {
    "inverse_loss.py": ("docs/plugins.md",
                        r"Save this as `inverse_loss.py`:\s*```python\n(.*?)```"),
    "two_frames.py": ("docs/tasks.md", r"<!-- example: two-datasets -->\s*```python\n(.*?)```"),
    "sweep.toml": ("", None),  # SWEEP_TOML
}
#: A small sweep file for ``run --config sweep.toml`` (a grid, in the schema of docs/sweeps.md).
SWEEP_TOML = 'strategies = ["fixed", "dwa"]\nlr = [1e-3, 3e-3]\n'
SEED_RUNS = ["run", "--strategy", "fixed,dwa", "--single-task", "--epochs", "1", "--seeds", "1",
             "--jobs", "1", "--quiet"]


def readme_blocks() -> list[list[str]]:
    """Per fenced block of README.md, its ``python -m mtl_bench`` commands, comments dropped,
    each as written after ``python -m mtl_bench`` (what precedes it on its line, such as
    ``pip install -e . &&``, is dropped too); blocks without one are left out."""
    blocks: list[list[str]] = []
    inside = False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append([])
            continue
        if not inside or "python -m mtl_bench " not in line:
            continue
        tokens = shlex.split(line, comments=True)
        start = next(i for i in range(len(tokens)) if tokens[i:i + 3] == PREFIX)
        blocks[-1].append(shlex.join(tokens[start + 3:]))
    return [b for b in blocks if b]


def readme_commands() -> list[str]:
    return [c for block in readme_blocks() for c in block]


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


def example_file(name: str) -> str:
    """The text of a file a README command names, as the docs show it."""
    doc, pattern = FILES[name]
    if pattern is None:
        return SWEEP_TOML
    found = re.search(pattern, (ROOT / doc).read_text(), re.S)
    assert found, f"{doc} no longer shows {name}"
    return found.group(1)


def test_files_the_commands_name_are_known():
    named = {t for c in readme_commands() for t in shlex.split(c)
             if t.endswith((".py", ".toml")) and not t.startswith("-")}
    assert named <= set(FILES), f"add to FILES where the docs show: {named - set(FILES)}"


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    registry.load_builtins()
    monkeypatch.setattr(registry.strategies, "_items",
                        {n: registry.strategies.get(n) for n in STRATEGIES})
    monkeypatch.setattr("webbrowser.open", lambda *a, **k: False)  # report --open: no browser
    committed = {p: p.read_bytes() for p in (ROOT / "results" / "baselines").glob("*/*")}
    seed = tmp_path / "seed"
    seed.mkdir()
    monkeypatch.chdir(seed)
    assert main(SEED_RUNS) == 0
    ran = []
    for i, block in enumerate(readme_blocks()):
        folder = tmp_path / f"block{i}"
        shutil.copytree(seed, folder)
        monkeypatch.chdir(folder)
        for name in FILES:
            (folder / name).write_text(example_file(name))
        for command in block:
            if command in SKIP:
                continue
            argv = shrink(shlex.split(command))
            code = main(argv)
            err = capsys.readouterr().err
            name, _ = _command(argv)
            nothing = name == "check" and code == 2 and any(m in err for m in CHECK_NOTHING)
            assert code == 0 or nothing or (name == "check" and code == 1), (
                f"README command `python -m mtl_bench {command}` (run as {shlex.join(argv)} "
                f"in block {i}) exited {code}: {err.strip()}")
            ran.append(command)
    assert len(ran) == len(readme_commands()) - sum(c in SKIP for c in readme_commands())
    # the outputs are where the README says they go
    assert list(tmp_path.glob("block*/reports/report.html"))
    assert list(tmp_path.glob("block*/results/baselines/quick/baseline.json"))
    # the committed baselines were only read
    assert {p: p.read_bytes() for p in committed} == committed
