"""The command line as a user meets it: exit codes, one-line errors, records on disk."""

import subprocess
import sys

import pandas as pd
import pytest

from mtl_bench.cli import main
from mtl_bench.store import load_runs


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args,message", [
    (["run", "--strategy", "nope"], "unknown strategy 'nope'; choose from:"),
    (["run", "--task", "nope"], "unknown task pair 'nope'; choose from:"),
    (["run", "--weights", "1,x"], "expects comma-separated numbers"),
    (["run", "--weights", "1,-1"], "non-negative"),
    (["run", "--strategy", "fixed", "--weights", "1,2,3"], "list of 2 numbers"),
    (["run", "--set", "gradnorm.alpha=-1", "--strategy", "gradnorm"], "Parameter `alpha`"),
    (["run", "--set", "garbage"], "--set expects"),
    (["run", "--seeds", "zero"], "--seeds expects"),
    (["run", "--epochs", "0"], "--epochs must be a positive integer"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message, capsys, runs_dir):
    code, out, err = _run([*args, "--runs-dir", str(runs_dir)] if args[0] == "run" else args,
                          capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_run_prints_table_and_skips_finished_runs(capsys, runs_dir):
    args = ["run", "--strategy", "fixed,gradnorm", "--epochs", "2", "--seeds", "2",
            "--runs-dir", str(runs_dir)]
    code, out, err = _run(args, capsys)
    assert code == 0
    assert "gradnorm" in out and "samples/s (sweep)" in out and "species accuracy" in out
    assert "4 run(s) to do" in err
    runs = load_runs(runs_dir)
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}
    code, out, err = _run(args, capsys)
    assert code == 0 and "0 run(s) to do (4 done)" in err
    code, out, err = _run([*args, "--dry-run", "--seeds", "3"], capsys)
    assert "2 to run (2 new, 4 done)" in out


def test_weights_option_and_list(capsys, runs_dir):
    code, out, _ = _run(["run", "--strategy", "fixed", "--weights", "1,0.5", "--epochs", "1",
                         "--runs-dir", str(runs_dir)], capsys)
    assert code == 0 and "fixed(weights=1/0.5)" in out
    code, out, _ = _run(["list"], capsys)
    assert code == 0 and "gradnorm" in out and "clsreg" in out


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mtl_bench", "run", "--strategy", "bogus"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown strategy 'bogus'")


def test_records_load_with_pandas_in_one_call(runs_dir, capsys):
    _run(["run", "--strategy", "dwa", "--epochs", "1", "--runs-dir", str(runs_dir)], capsys)
    path = next(runs_dir.glob("*/*.json"))
    df = pd.read_json(path, typ="series")
    assert df["status"] == "ok"


def test_list_shows_every_strategy_with_summary_and_paper(capsys):
    from mtl_bench import registry

    code, out, _ = _run(["list"], capsys)
    names = registry.strategies.names()
    assert code == 0 and len(names) >= 16
    for name in names:
        cls = registry.strategies.get(name)
        assert cls.summary and cls.paper, name
        assert cls.summary in out and f"[{cls.paper}]" in out
    for name in registry.tasks.names():
        assert registry.tasks.get(name).description in out


def test_run_report_writes_the_report_after_the_sweep(capsys, runs_dir, tmp_path):
    out = tmp_path / "rep"
    code, stdout, _ = _run(["run", "--strategy", "fixed,dwa", "--epochs", "2", "--seeds", "2",
                            "--jobs", "1", "--runs-dir", str(runs_dir), "--report", str(out)],
                           capsys)
    assert code == 0 and "report:" in stdout
    assert (out / "report.html").stat().st_size > 1000
    assert any((out / "figures").glob("*.png"))
