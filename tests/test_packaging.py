"""The layout promise of DESIGN.md: plug-in folders install under the mtl_bench namespace."""

import importlib
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_for_the_wheel():
    cfg = _pyproject()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *rel.parts]) if rel.parts else package
            assert name in listed, f"{name} ({init.parent}) would be missing from the wheel"


def test_plugin_folders_import_under_the_namespace_only():
    cfg = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert cfg["mtl_bench.strategies"] == "strategies" and cfg["mtl_bench.tasks"] == "tasks"
    assert "strategies" not in cfg and "tasks" not in cfg
    assert importlib.import_module("mtl_bench.strategies").__file__.endswith(
        str(Path("strategies") / "__init__.py"))
    # outside the source tree (where the folders themselves are on sys.path) neither bare name
    # may be importable from the installed package
    code = ("import importlib.util as u; "
            "print(u.find_spec('strategies'), u.find_spec('tasks'), "
            "u.find_spec('mtl_bench.strategies') is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), check=True).stdout.split()
    assert out == ["None", "None", "True"]


def test_console_script_and_module_entry_point():
    scripts = _pyproject()["project"]["scripts"]
    assert scripts["mtl-bench"] == "mtl_bench.cli:main"
    assert (ROOT / "mtl_bench" / "__main__.py").exists()
