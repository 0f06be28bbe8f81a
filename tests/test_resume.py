"""A sweep survives: kill -9 and rerun, corrupt records, failed runs and --retry-failed."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mtl_bench.cli import main
from mtl_bench.store import RunStore
from mtl_bench.sweep import SweepSpec, expand
from mtl_bench.train import RunConfig

SWEEP = ["run", "--strategy", "fixed,dwa", "--seeds", "4", "--epochs", "5", "--jobs", "2"]


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (the sweep, its fork server, workers)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _wait_for(predicate, timeout: float, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_kill_9_mid_sweep_then_rerun_loses_and_duplicates_nothing(tmp_path):
    runs = tmp_path / "runs"
    marker = f"MTL_BENCH_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, marker: "1"}
    cmd = [sys.executable, "-m", "mtl_bench", *SWEEP, "--runs-dir", str(runs)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: any(runs.glob("*/*.json")) or proc.poll() is not None, 300)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    before = {p.name: p.read_bytes() for p in runs.glob("*/*.json")}
    expected = {c.run_id + ".json" for c in expand(SweepSpec(
        ["clsreg"], ["fixed", "dwa"], [0, 1, 2, 3], {}, RunConfig(epochs=5)))}
    assert 1 <= len(before) < len(expected), "the sweep must be killed in the middle"
    # the workers and the fork server notice that the sweep is gone and exit by themselves
    assert _wait_for(lambda: not _marked_pids(marker), 20, every=0.2), _marked_pids(marker)

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    n_left = len(expected) - len(before)
    assert f"{n_left} run(s) to do ({n_left} new, {len(before)} done)" in again.stderr
    after = {p.name: p for p in runs.glob("*/*.json")}
    assert set(after) == expected  # nothing lost, no duplicates, no stray record names
    store = RunStore(runs)
    assert all(r["status"] == "ok" for r in store.load().records)
    for name, content in before.items():  # finished runs were skipped, not redone
        assert after[name].read_bytes() == content


def _tiny(runs, *extra):
    return ["run", "--strategy", "fixed,dwa", "--seeds", "2", "--epochs", "2", "--jobs", "1",
            "--runs-dir", str(runs), *extra]


def test_corrupt_record_is_reported_and_redone(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(_tiny(runs)) == 0
    paths = sorted(runs.glob("*/*.json"))
    victim, others = paths[0], {p: p.read_bytes() for p in paths[1:]}
    victim.write_bytes(victim.read_bytes()[:100])  # what a crash mid-write would leave
    store = RunStore(runs)
    assert store.status("clsreg", victim.stem) == "corrupt"
    capsys.readouterr()
    assert main(_tiny(runs, "--dry-run")) == 0
    assert "corrupt" in capsys.readouterr().out
    assert main(_tiny(runs)) == 0
    err = capsys.readouterr().err
    assert f"note: record {victim} is corrupt; rerunning it" in err
    assert "1 run(s) to do (1 corrupt, 3 done)" in err
    assert store.read(victim)["status"] == "ok"
    assert all(p.read_bytes() == b for p, b in others.items())


def test_failed_runs_are_kept_and_rerun_only_when_asked(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(_tiny(runs, "--max-run-seconds", "1e-9")) == 0
    captured = capsys.readouterr()
    assert "4 run(s) done here (4 failed); this sweep's 4 record(s): 0 ok, 4 failed" in captured.out
    assert "exceeded --max-run-seconds" in captured.out
    # a timeout says nothing about the run itself: a plain rerun retries it ...
    assert main(_tiny(runs, "--dry-run")) == 0
    assert capsys.readouterr().out.count("failed (timeout): will retry") == 4
    # ... while a deterministic failure (here: records marked diverged) is kept unless asked
    store = RunStore(runs)
    for path in sorted(runs.glob("*/*.json")):
        rec = store.read(path)
        store.write({**rec, "failure": "diverged", "reason": "non-finite loss at epoch 1"})
    assert main(_tiny(runs)) == 0
    assert "0 run(s) to do (4 failed, kept)" in capsys.readouterr().err
    assert main(_tiny(runs, "--retry-failed")) == 0
    captured = capsys.readouterr()
    assert "4 run(s) to do" in captured.err and "4 ok, 0 failed" in captured.out
