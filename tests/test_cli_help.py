"""The command line as it teaches: ``--help`` of every command and sub-command in plain text,
every option explained, fixed choices listed; list-valued options that form grids; ``--plugin``
before or after the command; the committed baselines found from any folder."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from mtl_bench import registry
from mtl_bench.cli import build_parser, main, plain_text, walk_parsers
from mtl_bench.commands import run as run_command

ROOT = Path(__file__).resolve().parents[1]
MARKUP = ("``", ":mod:", ":func:", ":class:", ":data:", ":meth:", ":attr:")


def _parsers() -> list[argparse.ArgumentParser]:
    parser, _ = build_parser()
    return list(walk_parsers(parser))


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_every_command_and_sub_command_is_walked():
    progs = {p.prog for p in _parsers()}
    for command in ("run", "aggregate", "report", "check", "speed", "list",
                    "baseline save", "baseline list", "baseline show",
                    "export splits", "export tensorboard", "export mlflow"):
        assert f"mtl-bench {command}" in progs


@pytest.mark.parametrize("parser", _parsers(), ids=lambda p: p.prog)
def test_help_is_plain_text_with_every_option_explained(parser):
    text = parser.format_help()
    for markup in MARKUP:
        assert markup not in text, f"{parser.prog} --help shows reST markup {markup!r}"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # one line per sub-command
                assert choice.help, f"{parser.prog}: sub-command {choice.dest} has no help"
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{parser.prog}: {name} has no help"
        if action.choices is not None and action.help is not argparse.SUPPRESS:
            missing = [c for c in action.choices if str(c) not in text]
            assert not missing, f"{parser.prog}: {name} does not list the choices {missing}"


def test_run_help_lists_the_fixed_choices(capsys):
    from mtl_bench.architectures import ARCHITECTURES
    from mtl_bench.profiles import PROFILES
    from mtl_bench.selection import SELECT_RULES

    text = " ".join(_help(["run"], capsys).split())  # wrapped lines joined
    for name in (*PROFILES, *ARCHITECTURES, *run_command.SAMPLING_CHOICES, *SELECT_RULES,
                 "local", "dask"):
        assert name in text, f"run --help does not name {name!r}"
    for option in ("--epochs", "--batch-size", "--weight-decay", "--sampling", "--lr"):
        assert f"{option} " in text
    assert text.count("several values form a grid") >= 5


def test_sampling_choices_match_the_task_module():
    from mtl_bench.task import SAMPLING_POLICIES

    assert run_command.SAMPLING_CHOICES == SAMPLING_POLICIES


def test_constants_spelled_out_for_a_quick_help_match_their_modules():
    from mtl_bench import speed, stats
    from mtl_bench.commands import aggregate as aggregate_command
    from mtl_bench.commands import speed as speed_command

    assert aggregate_command.CI_METHODS == stats.CI_METHODS
    assert (speed_command.DEFAULT_ROUNDS, speed_command.DEFAULT_STEPS) == (
        speed.DEFAULT_ROUNDS, speed.DEFAULT_STEPS)


def test_help_imports_neither_torch_nor_scipy():
    import subprocess
    import sys

    code = ("import sys; from mtl_bench.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_plain_text_drops_markup_and_keeps_paragraphs_and_bullets():
    doc = """``mtl-bench x``: does :func:`~mtl_bench.sweep.expand` with :mod:`mtl_bench.store`.

    Second paragraph, with a
    :class:`Thing` on the next line.

    * first item that goes on and on and on and on and on and on and on and on and on and end
    * second item
    """
    assert plain_text(doc, width=60) == (
        "`mtl-bench x`: does expand with mtl_bench.store.\n"
        "\n"
        "Second paragraph, with a Thing on the next line.\n"
        "\n"
        "* first item that goes on and on and on and on and on and on\n"
        "  and on and on and on and end\n"
        "* second item")


def test_bad_option_gives_one_line(capsys):
    assert main(["run", "--sampling", "equal,bogus", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--sampling" in err and "'bogus'" in err and "proportional, equal, temperature" in err
    assert main(["run", "--epochs", "2,x", "--dry-run"]) == 2
    assert "'x'" in capsys.readouterr().err
    assert main(["run", "--weight-decay", "0,-1", "--dry-run"]) == 2
    assert "got '-1'" in capsys.readouterr().err


# -- list-valued options form grids of settings --------------------------------------------
def _dry_run(args: list[str], runs_dir: Path, capsys) -> list[str]:
    assert main(["run", *args, "--dry-run", "--runs-dir", str(runs_dir)]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_list_valued_settings_form_a_grid(runs_dir, capsys):
    lines = _dry_run(["--task", "clsreg-2sets", "--strategy", "fixed,dwa", "--sampling",
                      "equal,temperature", "--epochs", "1,2"], runs_dir, capsys)
    runs = lines[:-1]
    assert len(runs) == 2 * 2 * 2 and lines[-1].startswith("8 to run (8 new)")
    for sampling in ("equal", "temperature"):
        for epochs in (1, 2):
            shown = [r for r in runs if f"sampling={sampling} epochs={epochs} " in r]
            assert len(shown) == 2, (sampling, epochs, runs)
    assert len({r.split()[0] for r in runs}) == 8  # eight distinct run ids


def test_setting_grid_in_expand_makes_one_setting_per_value():
    from mtl_bench.settings import setting_fields
    from mtl_bench.sweep import SweepSpec, expand
    from mtl_bench.train import RunConfig

    spec = SweepSpec(["clsreg"], ["fixed"], [0, 1], {}, RunConfig(epochs=1),
                     settings={"batch_size": [16, 32], "weight_decay": [0.0, 1e-4]})
    configs = expand(spec)
    assert len(configs) == 2 * 2 * 2
    assert {(c.batch_size, c.weight_decay) for c in configs} == {
        (16, 0.0), (16, 1e-4), (32, 0.0), (32, 1e-4)}
    settings = {json.dumps(setting_fields({"config": c.resolved().to_dict()}), sort_keys=True,
                           default=str) for c in configs}
    assert len(settings) == 4  # the seeds are replicates, the values are settings
    with pytest.raises(ValueError, match="not a setting field"):
        expand(SweepSpec(["clsreg"], ["fixed"], [0], {}, RunConfig(), settings={"seed": [1]}))


def test_architecture_lists_keep_their_parameters():
    split = run_command.split_architectures
    assert split("shared,separate") == ["shared", "separate"]
    assert split("dselect-k:experts=8,k=2,shared") == ["dselect-k:experts=8,k=2", "shared"]
    assert split("mmoe") == ["mmoe"]


def test_every_strategy_on_separate_leaves_out_those_that_need_gradients(runs_dir, capsys):
    # the README example `run --task clsreg --architecture separate`
    assert main(["run", "--task", "clsreg", "--architecture", "separate", "--dry-run",
                 "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr()
    assert "left out there: " in out.err and "pcgrad" in out.err.split("left out there: ")[1]
    planned = out.out.strip().splitlines()[:-1]
    assert not any(" pcgrad " in r or " gradnorm " in r for r in planned)
    assert any(" fixed " in r for r in planned) and any(" dwa " in r for r in planned)
    # named explicitly, a strategy that cannot run there is still an error
    assert main(["run", "--task", "clsreg", "--architecture", "separate", "--strategy",
                 "pcgrad", "--dry-run", "--runs-dir", str(runs_dir)]) == 2
    assert "shares none" in capsys.readouterr().err


def test_dry_run_names_the_task_of_single_task_runs(runs_dir, capsys):
    lines = _dry_run(["--strategy", "fixed", "--single-task"], runs_dir, capsys)
    assert any("single-task (species)" in r for r in lines)
    assert any("single-task (body_mass)" in r for r in lines)


def test_end_line_counts_the_whole_runs_folder(runs_dir, capsys):
    common = ["--strategy", "fixed", "--epochs", "1", "--jobs", "1", "--quiet", "--runs-dir",
              str(runs_dir)]
    assert main(["run", "--task", "clsreg", *common]) == 0
    assert main(["run", "--task", "gradnorm-toy", *common]) == 0
    end = capsys.readouterr().out.strip().splitlines()[-1]
    assert end.startswith("1 run(s) done here (0 failed); this sweep's 1 record(s): 1 ok")
    assert end.endswith(f"{runs_dir}/ holds 2 record(s) of 2 task pair(s)")


# -- --plugin anywhere ---------------------------------------------------------------------
PLUGIN = '''
from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy


@register_strategy("{name}")
class Probe(Strategy):
    """Equal weights (a probe for where --plugin is accepted)."""

    def combine(self, losses, grads=None):
        return self.weighted_sum(losses.new_ones(len(losses)), losses)
'''


@pytest.mark.parametrize("where", ["before", "after", "both"])
def test_plugin_before_or_after_the_command(where, tmp_path, runs_dir, capsys):
    names = {"before": ["probe_before"], "after": ["probe_after"],
             "both": ["probe_one", "probe_two"]}[where]
    files = []
    for name in names:
        path = tmp_path / f"{name}.py"
        path.write_text(PLUGIN.format(name=name))
        files.append(str(path))
    before = ["--plugin", files[0]] if where in ("before", "both") else []
    after = [x for f in files[-1:] for x in ("--plugin", f)] if where != "before" else []
    try:
        code = main([*before, "run", *after, "--strategy", ",".join(names), "--dry-run",
                     "--runs-dir", str(runs_dir)])
        out = capsys.readouterr().out
        assert code == 0 and all(n in out for n in names)
    finally:
        for name in names:
            registry.strategies.unregister(name)


def test_plugin_after_a_sub_command(tmp_path, capsys):
    path = tmp_path / "probe_list.py"
    path.write_text(PLUGIN.format(name="probe_list"))
    try:
        assert main(["baseline", "list", "--plugin", str(tmp_path / "missing.py")]) == 2
        assert "missing.py" in capsys.readouterr().err
        assert main(["list", "--plugin", str(path)]) == 0
        assert "probe_list" in capsys.readouterr().out
    finally:
        registry.strategies.unregister("probe_list")


# -- baselines found from any folder ---------------------------------------------------------
def test_committed_baseline_found_from_another_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "results" / "baselines" / "mine").mkdir(parents=True)  # a project of its own
    monkeypatch.chdir(tmp_path)
    assert main(["baseline", "show", "quick"]) == 0
    out = capsys.readouterr().out
    committed = json.loads((ROOT / "results" / "baselines" / "quick" / "baseline.json")
                           .read_text())
    assert out.startswith(f"baseline 'quick': {committed['n_runs']} runs")


def test_check_from_another_folder_uses_the_committed_baseline(tmp_path, monkeypatch, capsys):
    # one record of the committed quick baseline's kind, in a runs folder of another project
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--strategy", "fixed", "--epochs", "1", "--jobs", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["check", "--baseline", "quick"]) == 2  # 1 epoch vs 6: nothing comparable
    err = capsys.readouterr().err
    assert "baseline 'quick'" in err and "epochs 6->1" in err and "not found" not in err


def test_baseline_not_found_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--baseline", "nope"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "baseline 'nope' not found; looked in " in err
    assert f"{tmp_path}/results/baselines/ (no such folder)" in err
    assert "saved baselines: default, quick" in err
    assert main(["check", "--baseline", "nope", "--baselines-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"not found in {tmp_path}/ (no baselines)" in err and "looked in" not in err


def test_installed_copies_are_found_when_no_source_tree_has_them(tmp_path, monkeypatch):
    from mtl_bench import baselines as bl

    installed = tmp_path / "site" / "mtl_bench" / "baselines_data"
    shutil.copytree(ROOT / "results" / "baselines" / "quick", installed / "quick")
    monkeypatch.setattr(bl, "PROJECT_BASELINES_DIR", tmp_path / "no-source-tree")
    monkeypatch.setattr(bl, "PACKAGE_BASELINES_DIR", installed)
    monkeypatch.chdir(tmp_path)
    assert bl.find_baseline("quick") == installed
    assert bl.load_baseline(installed, "quick")["name"] == "quick"


def test_wheel_ships_the_committed_baselines():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "mtl_bench.baselines_data" in cfg["packages"]
    assert cfg["package-dir"]["mtl_bench.baselines_data"] == "results/baselines"
    patterns = cfg["package-data"]["mtl_bench.baselines_data"]
    shipped = {p.relative_to(ROOT / "results" / "baselines") for pattern in patterns
               for p in (ROOT / "results" / "baselines").glob(pattern)}
    assert {Path("quick/baseline.json"), Path("default/baseline.json")} <= shipped


def test_config_file_setting_lists_form_a_grid_like_the_options(tmp_path, capsys):
    """`sampling = ["equal", "temperature"]` in a sweep file gives the same two settings as
    `--sampling equal,temperature`; a bad item or an empty list is one `error:` line."""
    from mtl_bench.cli import main

    good = tmp_path / "sweep.toml"
    good.write_text('tasks = ["clsreg-2sets"]\nstrategies = ["fixed"]\nepochs = [1, 2]\n'
                    'sampling = ["equal", "temperature"]\n')
    runs = str(tmp_path / "runs")
    assert main(["run", "--config", str(good), "--dry-run", "--runs-dir", runs]) == 0
    from_file = capsys.readouterr().out
    assert "4 to run" in from_file
    for text in ("sampling=equal", "sampling=temperature", "epochs=1", "epochs=2"):
        assert text in from_file
    assert main(["run", "--task", "clsreg-2sets", "--strategy", "fixed", "--epochs", "1,2",
                 "--sampling", "equal,temperature", "--dry-run", "--runs-dir", runs]) == 0
    ids = sorted(line.split()[0] for line in capsys.readouterr().out.splitlines()
                 if "to run" in line and "clsreg-2sets" in line)
    assert ids == sorted(line.split()[0] for line in from_file.splitlines()
                         if "to run" in line and "clsreg-2sets" in line) and len(ids) == 4
    for body, expected in (('sampling = ["equal", "bogus"]', "bogus"),
                           ("epochs = []", "empty list"), ("epochs = [2, 0]", "positive")):
        bad = tmp_path / "bad.toml"
        bad.write_text(body + "\n")
        assert main(["run", "--config", str(bad), "--dry-run", "--runs-dir", runs]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and expected in err and err.count("\n") == 1
