"""Third-party plug-ins: a strategy file loaded with --plugin, broken plug-ins, entry points.

The working example is the one in docs/plugins.md, read from there, so the documentation
cannot drift from what works.
"""

import json
import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from mtl_bench import registry
from mtl_bench.cli import main
from mtl_bench.errors import UserError
from mtl_bench.train import build_strategy

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"


def documented_example() -> str:
    """The first Python code block of docs/plugins.md (the ten-line strategy)."""
    match = re.search(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert match, "docs/plugins.md lost its Python example"
    return match.group(1)


@pytest.fixture
def clean_registry():
    """Unregister whatever a test registers, so later tests see only the built-ins."""
    before = set(registry.strategies.names())
    yield
    for name in set(registry.strategies.names()) - before:
        registry.strategies.unregister(name)


@pytest.fixture
def example_file(tmp_path):
    path = tmp_path / "inverse_loss.py"
    path.write_text(documented_example())
    return path


def _main(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_documented_plugin_runs_end_to_end(example_file, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "mtl_bench", "--plugin", str(example_file), "run",
         "--strategy", "inverse_loss", "--epochs", "1", "--runs-dir", str(runs), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "inverse_loss" in proc.stdout
    (record_path,) = runs.glob("*/*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok" and record["strategy"] == "inverse_loss"
    assert record["strategy_repr"] == "InverseLoss(power=1.0)"
    # the weights follow the rule of the example: they sum to T = 2 at every step
    assert all(abs(sum(w) - 2) < 1e-5 for w in record["weights"]["values"])


def test_plugin_is_listed_and_takes_set_parameters(example_file, capsys, clean_registry):
    code, out, _ = _main(["--plugin", str(example_file), "list"], capsys)
    assert code == 0
    assert re.search(r"inverse_loss\s+loss weighting\s+\S.*\n\s+\[example plug-in\]", out)
    s = build_strategy("inverse_loss", {"power": 0.5})
    assert repr(s) == "InverseLoss(power=0.5)" and str(s) == "inverse_loss(power=0.5)"
    with pytest.raises(UserError, match="Parameter `power` should be a non-negative float"):
        build_strategy("inverse_loss", {"power": -1})


@pytest.mark.parametrize("source,message", [
    ("raise RuntimeError('boom')\n",
     r"plug-in file '.*bad_plugin\.py' failed to import: RuntimeError: boom"),
    ("from mtl_bench.registry import register_strategy\n"
     "from mtl_bench.strategy import Strategy\n"
     "@register_strategy('fixed')\n"
     "class Mine(Strategy):\n"
     "    pass\n",
     r"strategy name 'fixed' is already taken by mtl_bench\.strategies\.fixed\.Fixed"),
    ("def broken(:\n", r"plug-in file '.*bad_plugin\.py' failed to import: SyntaxError"),
])
def test_broken_plugin_gives_one_line_and_exit_2(source, message, tmp_path, capsys,
                                                 clean_registry):
    path = tmp_path / "bad_plugin.py"
    path.write_text(source)
    code, out, err = _main(["--plugin", str(path), "list"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.match("error: " + message, err)
    assert registry.strategies.get("fixed").__module__ == "mtl_bench.strategies.fixed"


def test_missing_plugin_file_gives_exit_2(tmp_path, capsys):
    code, _, err = _main(["--plugin", str(tmp_path / "nope.py"), "list"], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


def _fake_entry_points(monkeypatch, eps):
    def entry_points(group):
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_loaded", False)  # look the groups up again


def test_entry_point_registers_a_strategy(monkeypatch, tmp_path, capsys, clean_registry):
    (tmp_path / "ep_inverse_loss.py").write_text(
        documented_example().replace('"inverse_loss"', '"ep_inverse_loss"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ep_inverse_loss", raising=False)
    _fake_entry_points(monkeypatch, [
        EntryPoint("ep_inverse_loss", "ep_inverse_loss", registry.STRATEGY_GROUP)])
    try:
        assert "ep_inverse_loss" in registry.strategies.names()
        code, out, _ = _main(["list"], capsys)
        assert code == 0 and "ep_inverse_loss" in out
        assert type(build_strategy("ep_inverse_loss", {})).__module__ == "ep_inverse_loss"
    finally:
        sys.modules.pop("ep_inverse_loss", None)


def test_broken_entry_point_gives_one_line_and_exit_2(monkeypatch, capsys):
    _fake_entry_points(monkeypatch, [
        EntryPoint("broken", "no_such_module_for_mtl_bench", registry.STRATEGY_GROUP)])
    code, _, err = _main(["list"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: plug-in entry point 'broken' (no_such_module_for_mtl_bench) "
                          "failed to import: ModuleNotFoundError")


@pytest.mark.slow
def test_shared_suite_runs_against_a_plugin_file(example_file):
    """The documented way to test a plug-in: MTL_BENCH_PLUGIN=FILE pytest test_strategy_suite."""
    env = {**os.environ, "MTL_BENCH_PLUGIN": str(example_file)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_strategy_suite.py", "-q", "-k",
         "inverse_loss"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    assert passed >= 8 and "failed" not in proc.stdout
