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
from mtl_bench.store import RunStore

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
    ("tune unknown", ["--tune", "momentum"], _plain, 2, "--tune expects 'lr' or NAME.PARAM"),
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
    assert f"{12 - len(records)} to run ({12 - len(records)} new, {len(records)} done)" in out


# -- one line and exit 2 for every command: devices, output folders, files, ranges, names ------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A runs folder with one finished run and its aggregated tables, for aggregate / report."""
    root = tmp_path_factory.mktemp("finished")
    assert main([*RUN, "--runs-dir", str(root / "runs"), "--quiet"]) == EXIT_OK
    assert main(["aggregate", "--runs-dir", str(root / "runs"), "--out", str(root / "tables"),
                 "--quiet"]) == EXIT_OK
    return root


def _a_file(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    return []


def _not_utf8_config(tmp_path, monkeypatch):
    path = tmp_path / "sweep.toml"
    path.write_bytes(b"\xff\xfe\x00")
    return ["--config", str(path)]


R = [*RUN, "--runs-dir", "{tmp}/runs"]  # a run; nothing may be stored under {tmp}/runs
AGGREGATE = ["aggregate", "--runs-dir", "{finished}/runs"]
REPORT = ["report", "--runs-dir", "{finished}/runs"]
NO_SPACE = "No space left on device"
EXIT_2_CASES = [
    # id, argv ({tmp}: this test's folder, {finished}: the shared finished runs), setup, message
    ("device tpu", [*R, "--device", "tpu"], _plain, "--device: expects cpu, cuda or cuda:N"),
    ("device mps", [*R, "--device", "mps"], _plain, "--device: expects cpu, cuda or cuda:N"),
    ("device meta", [*R, "--device", "meta"], _plain, "--device: expects cpu, cuda or cuda:N"),
    ("device empty", [*R, "--device", ""], _plain, "--device: expects cpu, cuda or cuda:N"),
    ("aggregate out under a file", [*AGGREGATE, "--out", "{tmp}/a-file/sub"], _a_file,
     "cannot write tables to '{tmp}/a-file/sub': '{tmp}/a-file' is a file, not a folder"),
    ("aggregate out is a file", [*AGGREGATE, "--out", "{tmp}/a-file"], _a_file,
     "cannot write tables to '{tmp}/a-file': '{tmp}/a-file' is a file, not a folder"),
    ("aggregate disk full", [*AGGREGATE, "--out", "{tmp}/tables"], _disk_full,
     f"cannot write tables to '{{tmp}}/tables': {NO_SPACE}"),
    ("report out under a file", [*REPORT, "--out", "{tmp}/a-file/sub"], _a_file,
     "'{tmp}/a-file' is a file, not a folder"),
    ("report out is a file", [*REPORT, "--out", "{tmp}/a-file"], _a_file,
     "'{tmp}/a-file' is a file, not a folder"),
    ("report disk full", ["report", "--tables", "{finished}/tables", "--out", "{tmp}/rep"],
     _disk_full, f"cannot write the report to '{{tmp}}/rep': {NO_SPACE}"),
    ("run --report under a file", [*R, "--report", "{tmp}/a-file/rep"], _a_file,
     "cannot write the report to '{tmp}/a-file/rep': '{tmp}/a-file' is a file, not a folder"),
    ("config not UTF-8", R, _not_utf8_config, "is not UTF-8 text"),
    ("seeds 1e11", [*R, "--seeds", "100000000000"], _plain, "at most 10000 seeds"),
    ("seeds 1e7", [*R, "--seeds", str(10**7)], _plain, "at most 10000 seeds"),
    ("seed above 2**32-1", [*R, "--seeds", f"0,{2**32}"], _plain, "at most 4294967295"),
    ("TOML seeds 1e7", R, _toml(f"seeds = {10**7}\n"), "at most 10000 seeds"),
    ("gradnorm alpha inf", [*R, "--strategy", "gradnorm", "--set", "gradnorm.alpha=inf"], _plain,
     "Parameter `alpha` should be a non-negative float. Found `alpha = inf`."),
    ("dwa temperature inf", [*R, "--strategy", "dwa", "--set", "dwa.temperature=inf"], _plain,
     "Parameter `temperature` should be a positive float. Found `temperature = inf`."),
    ("dwa temperature nan", [*R, "--strategy", "dwa", "--set", "dwa.temperature=nan"], _plain,
     "Found `temperature = nan`."),
    ("weight decay < 0", [*R, "--weight-decay", "-1"], _plain,
     "--weight-decay: must be a non-negative finite number, got '-1'"),
    ("weight decay nan", [*R, "--weight-decay", "nan"], _plain, "non-negative finite number"),
    ("weight decay inf", [*R, "--weight-decay", "inf"], _plain, "non-negative finite number"),
    ("TOML weight decay nan", R, _toml("weight_decay = nan\n"),
     "'weight_decay' should be a non-negative finite number, got nan"),
    ("diag-every < 0", [*R, "--diag-every", "-1"], _plain,
     "--diag-every: must be a non-negative integer"),
    ("TOML diag_every < 0", R, _toml("diag_every = -1\n"), "'diag_every' should be a non-negative"),
    ("TOML batch_size = 0", R, _toml("batch_size = 0\n"), "'batch_size' should be a positive"),
    ("threads < 0", [*R, "--threads", "-1"], _plain, "--threads must be a positive integer"),
    ("batch size = 0", [*R, "--batch-size", "0"], _plain,
     "--batch-size must be a positive integer"),
    ("task empty", [*R, "--task", ""], _plain, "--task: expects at least one name"),
    ("task comma", [*R, "--task", ","], _plain, "--task: expects at least one name"),
    ("strategy empty", [*R, "--strategy", ""], _plain, "--strategy: expects at least one name"),
    ("strategy blank list", [*R, "--strategy", " , "], _plain,
     "--strategy: expects at least one name"),
    ("--set for a strategy not swept", [*R, "--set", "gradnorm.alpha=0.5"], _plain,
     "--set names strategy 'gradnorm', which is not in this sweep (--strategy fixed)"),
    ("--set for a pair not swept", [*R, "--set", "age-gender.n_sex_genes=5"], _plain,
     "--set names task pair 'age-gender', which is not in this sweep (--task clsreg)"),
    ("--weights without fixed", [*R, "--strategy", "dwa", "--weights", "1,0.5"], _plain,
     "--weights sets the weights of strategy 'fixed', which is not in this sweep"),
]


@pytest.mark.parametrize("argv,setup,message", [c[1:] for c in EXIT_2_CASES],
                         ids=[c[0] for c in EXIT_2_CASES])
def test_bad_input_is_one_error_line_and_exit_2(argv, setup, message, finished, tmp_path,
                                                monkeypatch, capsys):
    def fill(text):
        return text.format(tmp=tmp_path, finished=finished)

    extra = setup(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main([fill(a) for a in argv] + extra) == EXIT_USER
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert fill(message) in err
    assert not list((tmp_path / "runs").glob("*/*.json"))  # no run was trained


def test_config_set_for_a_strategy_left_out_is_ignored(tmp_path, capsys):
    # a sweep file may hold options for strategies that a narrower --strategy leaves out
    config = tmp_path / "sweep.toml"
    config.write_text("[set.gradnorm]\nalpha = 0.5\n")
    assert main([*RUN, "--runs-dir", str(tmp_path / "runs"), "--config", str(config),
                 "--dry-run"]) == EXIT_OK
    assert "1 to run" in capsys.readouterr().out


def test_unwritable_report_after_the_sweep_keeps_the_records(tmp_path, monkeypatch, capsys):
    def disk_full(tables, folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mtl_bench.display.write_tables", disk_full)  # only the report's files
    runs = tmp_path / "runs"
    capsys.readouterr()
    code = main([*RUN, "--seeds", "2", "--runs-dir", str(runs), "--quiet", "--report",
                 str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert code == EXIT_USER
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no report written: cannot write tables to "
                      f"'{tmp_path / 'reports' / 'tables'}': {NO_SPACE}; the run records are "
                      f"kept in {runs}/"]
    store = RunStore(runs)
    records = [store.read(p) for p in runs.glob("*/*.json")]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
