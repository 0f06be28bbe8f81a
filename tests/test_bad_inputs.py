"""Bad inputs to ``run``: each gives one line and a documented exit code, never a traceback.

Exit codes (README): 0 done (failed runs are records, not errors), 2 user error, 130 interrupted.
"""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from mtl_bench.cli import EXIT_INTERRUPT, EXIT_OK, EXIT_USER, main

RUN = ["run", "--strategy", "fixed", "--epochs", "1", "--jobs", "1"]


def _toml(text):
    def setup(tmp_path, monkeypatch):
        path = tmp_path / "sweep.toml"
        path.write_text(text)
        return ["--config", str(path)]
    return setup


def _runs_dir_under_a_file(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    return ["--runs-dir", str(blocker / "runs")]


def _disk_full(tmp_path, monkeypatch):
    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", replace)
    return []


def _corrupt_record(tmp_path, monkeypatch):
    assert main([*RUN, "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    path = next((tmp_path / "runs").glob("*/*.json"))
    path.write_text(path.read_text()[:50])
    return []


def _no_dask(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)  # import dask -> ImportError
    monkeypatch.setitem(sys.modules, "distributed", None)
    return ["--executor", "dask"]


def _plain(tmp_path, monkeypatch):
    return []


CASES = [
    # id, extra args, setup, exit code, message on stderr
    ("unknown strategy", ["--strategy", "nope"], _plain, 2, "unknown strategy 'nope'"),
    ("unknown task", ["--task", "nope"], _plain, 2, "unknown task pair 'nope'"),
    ("unknown strategy option", ["--strategy", "gradnorm", "--set", "gradnorm.nope=1"], _plain,
     2, "strategy 'gradnorm' has no parameter 'nope'"),
    ("unknown task option", ["--set", "clsreg.nope=1"], _plain, 2,
     "task pair 'clsreg' has no option 'nope'; its options are: dataset"),
    ("unknown flag", ["--frobnicate"], _plain, 2, "unrecognized arguments: --frobnicate"),
    ("--set names nothing", ["--set", "nothing.x=1"], _plain, 2, "--set names 'nothing'"),
    ("bad TOML", [], _toml("tasks = [\n"), 2, "is not valid TOML"),
    ("TOML unknown key", [], _toml("epoch = 3\n"), 2, "unknown key 'epoch'; valid keys:"),
    ("TOML wrong type", [], _toml('epochs = "ten"\n'), 2, "'epochs' should be an integer"),
    ("TOML bad set table", [], _toml("[set]\ngradnorm = 1\n"), 2, "[set.gradnorm] should be"),
    ("missing config", ["--config", "/nonexistent/sweep.toml"], _plain, 2, "does not exist"),
    ("unwritable results folder", [], _runs_dir_under_a_file, 2, "cannot write run records"),
    ("disk full", ["--quiet"], _disk_full, 2, "No space left on device"),
    ("corrupt record", ["--quiet"], _corrupt_record, 0, "is corrupt; rerunning it"),
    ("alpha < 0", ["--strategy", "gradnorm", "--set", "gradnorm.alpha=-1"], _plain, 2,
     "Parameter `alpha` should be"),
    ("task option out of range", ["--set", "clsreg.n_samples=5"], _plain, 2,
     "Parameter `n_samples` should be"),
    ("lr < 0", ["--lr", "-0.001"], _plain, 2, "--lr expects positive numbers"),
    ("lr = 0 in a list", ["--lr", "1e-3,0"], _plain, 2, "--lr expects positive numbers"),
    ("TOML lr = 0", [], _toml("lr = [0.0]\n"), 2, "'lr' expects positive numbers"),
    ("epochs = 0", ["--epochs", "0"], _plain, 2, "--epochs must be a positive integer"),
    ("seeds = 0", ["--seeds", "0"], _plain, 2, "--seeds expects"),
    ("jobs = 0", ["--jobs", "0"], _plain, 2, "--jobs must be a positive integer"),
    ("threads = 0", ["--threads", "0"], _plain, 2, "--threads must be a positive integer"),
    ("max-run-seconds = 0", ["--max-run-seconds", "0"], _plain, 2,
     "--max-run-seconds must be positive"),
    ("tune unknown", ["--tune", "momentum"], _plain, 2, "invalid choice: 'momentum'"),
    ("scheduler without dask", ["--executor", "local", "--scheduler", "tcp://127.0.0.1:1"],
     _plain, 2, "--scheduler needs --executor dask"),
    ("dask extra missing", [], _no_dask, 2, "pip install 'mtl-bench[dask]'"),
]


@pytest.mark.parametrize("extra,setup,code,message", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input(extra, setup, code, message, tmp_path, monkeypatch, capsys):
    args = [*RUN, "--runs-dir", str(tmp_path / "runs"), *setup(tmp_path, monkeypatch), *extra]
    capsys.readouterr()
    assert main(args) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    if code == EXIT_USER:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
        assert not list((tmp_path / "runs").glob("*/*.json"))  # nothing half-done was stored
    else:
        assert code == EXIT_OK


def test_disk_full_leaves_no_temporary_files(tmp_path, monkeypatch, capsys):
    _disk_full(tmp_path, monkeypatch)
    assert main([*RUN, "--runs-dir", str(tmp_path / "runs")]) == EXIT_USER
    assert [p.name for p in (tmp_path / "runs").rglob("*") if p.is_file()] == []


def test_ctrl_c_stops_workers_exits_130_and_keeps_finished_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "mtl_bench", "run", "--strategy", "fixed,dwa,uncertainty",
           "--seeds", "4", "--epochs", "5", "--jobs", "2", "--runs-dir", str(runs)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        end = time.monotonic() + 300
        while not any(runs.glob("*/*.json")) and proc.poll() is None \
                and time.monotonic() < end:
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPT
    assert time.monotonic() - sent < 30  # workers were stopped, not waited for
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "interrupted: finished runs are kept; rerun the same command to resume")
    records = list(runs.glob("*/*.json"))
    assert 1 <= len(records) < 12
    assert main([*cmd[3:], "--dry-run"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"{12 - len(records)} to run, {len(records)} already done" in out
