"""The README's workflows end to end, as a user runs them: each ends in a correct report or one
`error:` line. Every command runs in a fresh process, like a shell would start it."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mtl_bench import aggregate as agg
from mtl_bench.store import RunStore

pytestmark = pytest.mark.slow

TINY = ["--epochs", "2", "--quiet"]


def cli(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "mtl_bench", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_two_settings_in_one_folder_are_reported_side_by_side(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "rep"
    cli("run", "--strategy", "fixed,dwa", "--epochs", "2", "--quiet", "--runs-dir", runs)
    cli("run", "--strategy", "fixed,dwa", "--epochs", "3", "--quiet", "--runs-dir", runs)
    cli("report", "--runs-dir", runs, "--out", out)
    tables = agg.Tables.read(out / "tables")
    labels = sorted(s["label"] for s in tables.meta["settings"])
    assert labels == ["clsreg [epochs=2]", "clsreg [epochs=3]"]
    for label in labels:  # never averaged together: one run per strategy in each
        assert tables.setting(label)["n_runs"] == 2
    md = (out / "report.md").read_text()
    assert "clsreg [epochs=2]" in md and "clsreg [epochs=3]" in md


def test_report_aggregates_again_when_the_runs_are_newer_than_the_tables(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "rep"
    cli("run", "--strategy", "fixed", *TINY, "--runs-dir", runs)
    cli("report", "--runs-dir", runs, "--out", out)
    cli("run", "--strategy", "fixed,dwa", *TINY, "--runs-dir", runs)
    proc = cli("report", "--out", out)  # no --runs-dir: the tables remember where they came from
    assert "newer" in proc.stderr
    assert set(agg.Tables.read(out / "tables")["runs"]["strategy"]) == {"fixed", "dwa"}


PLUGIN = '''
import pandas as pd
from palmerpenguins import load_penguins

from mtl_bench.task import frame_task_pair


def penguins() -> pd.DataFrame:
    return load_penguins()


frame_task_pair("my-pair", penguins, inputs={inputs}, classification="sex",
                regression="body_mass_g", epochs=2)
'''


def test_an_edited_plugin_makes_its_runs_stale_and_they_are_retrained(tmp_path):
    plugin, runs = tmp_path / "elsewhere" / "my_pair.py", tmp_path / "runs"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN.format(inputs=["bill_length_mm", "bill_depth_mm", "island"]))
    base = ["--plugin", plugin, "run", "--task", "my-pair", "--strategy", "fixed,dwa",
            "--quiet", "--runs-dir", runs]
    cli(*base)
    first = {r["run_id"]: r["code"]["task"] for r in RunStore(runs).load().records}
    assert len(first) == 2
    plugin.write_text(PLUGIN.format(inputs=["bill_length_mm", "island"]))  # a column removed
    dry = cli(*base, "--dry-run")
    assert dry.stdout.count("stale (task-pair code changed): will retrain") == 2
    assert "2 to run (2 stale)" in dry.stdout
    kept = cli(*base[:-2], "--runs-dir", runs, "--keep-stale", "--dry-run")
    assert "0 to run" in kept.stdout and "kept" in kept.stdout
    proc = cli(*base)
    assert "2 stored record(s) were trained with other code" in proc.stderr
    second = {r["run_id"]: r["code"]["task"] for r in RunStore(runs).load().records}
    assert second.keys() == first.keys()
    assert all(second[k] != first[k] for k in first)  # retrained with the new code
    # nothing stale is left: a rerun trains nothing
    assert "0 to run (2 done)" in cli(*base, "--dry-run").stdout


KILLER = '''
import os, signal
from pathlib import Path

from mtl_bench.registry import register_strategy
from mtl_bench.strategy import Strategy

MARKER = Path({marker!r})


@register_strategy("flaky")
class Flaky(Strategy):
    """Equal weights; its worker is killed (as by the OOM killer) while a marker file exists."""

    def combine(self, losses, grads=None):
        if MARKER.exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return self.weighted_sum(losses.new_ones(self.n_tasks), losses)
'''


def test_a_killed_worker_is_one_failed_cell_and_a_plain_rerun_repairs_it(tmp_path):
    marker, runs, out = tmp_path / "kill-now", tmp_path / "runs", tmp_path / "rep"
    plugin = tmp_path / "flaky.py"
    plugin.write_text(KILLER.format(marker=str(marker)))
    marker.touch()
    base = ["--plugin", plugin, "run", "--strategy", "fixed,flaky", "--seeds", "2",
            "--jobs", "2", *TINY, "--runs-dir", runs]
    proc = cli(*base, "--report", out)
    assert (out / "report.html").is_file()  # the dead worker did not block the report
    tables = agg.Tables.read(out / "tables")
    failed = tables["runs"][tables["runs"]["status"] != "ok"]
    assert list(failed["strategy"]) == ["flaky", "flaky"]
    assert failed["reason"].str.contains("SIGKILL").all()
    assert "0/2 (2 failed)" in (out / "tables" / "tables.md").read_text()
    records = RunStore(runs).load().records
    dead = [r for r in records if r["status"] == "failed"]
    assert all(r["failure"] == "worker" and r["code"]["task"] for r in dead)
    assert "failed (worker): will retry" in cli(*base, "--dry-run").stdout
    marker.unlink()
    proc = cli(*base, "--report", out)
    assert "2 run(s) done here (0 failed)" in proc.stdout  # only the 2 dead ones reran
    assert all(r["status"] == "ok" for r in RunStore(runs).load().records)


def test_a_diverged_run_is_kept_unless_asked(tmp_path):
    runs = tmp_path / "runs"
    # a huge learning rate on the regression target makes the loss non-finite
    cli("run", "--strategy", "fixed", "--lr", "1e6", *TINY, "--runs-dir", runs)
    (rec,) = RunStore(runs).load().records
    if rec["status"] == "ok":
        pytest.skip("this lr did not diverge here")
    assert rec["failure"] == "diverged"
    dry = cli("run", "--strategy", "fixed", "--lr", "1e6", *TINY, "--runs-dir", runs, "--dry-run")
    assert "kept (--retry-failed reruns it)" in dry.stdout
    again = cli("run", "--strategy", "fixed", "--lr", "1e6", *TINY, "--runs-dir", runs,
                "--retry-failed", "--dry-run")
    assert "will rerun" in again.stdout


def test_readme_examples_use_commands_that_exist():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in readme.splitlines():
        if line.startswith("python -m mtl_bench ") and " run " not in line:
            command = line.split()[3]
            assert command in {"list", "run", "aggregate", "report", "check", "baseline",
                               "speed", "export", "--plugin"}, line


def test_killing_report_leaves_no_truncated_figure(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "rep"
    cli("run", "--strategy", "fixed,dwa", *TINY, "--runs-dir", runs)
    cli("report", "--runs-dir", runs, "--out", out)
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs
    for delay in (2.5, 3.5):  # killed while it rewrites the figures
        proc = subprocess.Popen([sys.executable, "-m", "mtl_bench", "report", "--runs-dir",
                                 str(runs), "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    from matplotlib import image

    for png in pngs:
        image.imread(png)  # a truncated PNG would fail to decode
    json.loads((out / "tables" / "meta.json").read_text())


def test_one_setting_by_label_and_an_ambiguous_name(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "rep"
    cli("run", "--strategy", "fixed,dwa", "--epochs", "2", "--quiet", "--runs-dir", runs)
    cli("run", "--strategy", "fixed", "--epochs", "3", "--quiet", "--runs-dir", runs)
    bad = cli("report", "--runs-dir", runs, "--out", out, "--setting", "clsreg", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "ambiguous" in bad.stderr and "clsreg [epochs=2]" in bad.stderr
    assert str(runs / "clsreg") in bad.stderr  # the files are named
    cli("report", "--runs-dir", runs, "--out", out, "--setting", "clsreg [epochs=2]")
    tables = agg.Tables.read(out / "tables")
    assert [s["label"] for s in tables.meta["settings"]] == ["clsreg [epochs=2]"]
    assert set(tables["runs"]["strategy"]) == {"fixed", "dwa"}
