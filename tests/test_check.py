"""`check` and `baseline`: every mark arises in a constructed case, bad input exits 2, and a
deliberately broken strategy trained for real fails the gate.

The constructed run sets are records written through the store (as `run` writes them), with
configs built by RunConfig and test metrics chosen by the test, so each case knows the answer.
"""

import json
import math

import numpy as np
import pytest
import torch

from mtl_bench import baselines, registry
from mtl_bench.baselines import pair_label
from mtl_bench.check import (
    Factors,
    badness,
    ci95,
    min_mann_whitney_p,
    significance,
)
from mtl_bench.cli import main
from mtl_bench.store import RunStore
from mtl_bench.train import RunConfig, train_run

SEEDS = range(5)
#: test means and relative speed of each strategy in the constructed sets
BASE = {"fixed": (0.90, 250.0, 1.0), "dwa": (0.88, 260.0, 0.9), "gradnorm": (0.89, 255.0, 0.6)}
DIRECTIONS = {"accuracy": True, "mae": False}


def _record(strategy, seed, acc, mae, sps, status="ok", epochs=10, code=None, machine="m0",
            threads=1, schema=1):
    config = RunConfig(task="clsreg", strategy=strategy, seed=seed, epochs=epochs,
                       threads=threads).resolved()
    rec = {
        "schema": schema, "run_id": config.run_id, "config": config.to_dict(),
        "task_pair": "clsreg", "strategy": strategy, "seed": seed,
        "metric_directions": DIRECTIONS,
        "code": {"strategy": code or f"{strategy}-v1", "task": "t1", "harness": "h1"},
        "provenance": {"machine": machine, "git_commit": "abc", "created": "2026-01-01"},
        "status": status, "throughput": {"samples_per_s": sps, "step_ms": 1000 / sps},
        # val rows and loss rows are in real summaries too; check must ignore both
        "summary": [[5, "val", "species", "accuracy", 0.5], [5, "test", "species", "loss", 0.3],
                    [5, "test", "species", "accuracy", acc],
                    [5, "test", "body_mass", "mae", mae]],
    }
    if status != "ok":
        rec["reason"] = "non-finite loss at epoch 3 (step 20): task losses [nan, 1.0]"
    return rec


def _write_set(root, rng_seed, q_noise=0.01, s_noise=0.01, edit=None):
    """Five seeds of each strategy in BASE, values multiplied by (1 + uniform noise); ``edit``
    may change a record's fields (strategy, seed, record) before it is written."""
    rng = np.random.default_rng(rng_seed)
    store = RunStore(root)
    for strategy, (acc, mae, speed) in BASE.items():
        for seed in SEEDS:
            a = acc * (1 + rng.uniform(-q_noise, q_noise))
            m = mae * (1 + rng.uniform(-q_noise, q_noise))
            sps = 10000 * speed * (1 + rng.uniform(-s_noise, s_noise))
            kwargs = {"acc": a, "mae": m, "sps": sps}
            if edit is not None:
                edit(strategy, seed, kwargs)
            store.write(_record(strategy, seed, **kwargs))
    return root


@pytest.fixture
def dirs(tmp_path):
    base_runs, new_runs, baselines = tmp_path / "b", tmp_path / "n", tmp_path / "baselines"
    return base_runs, new_runs, baselines


def _save(dirs, name="base"):
    code = main(["baseline", "save", name, "--runs-dir", str(dirs[0]), "--baselines-dir",
                 str(dirs[2])])
    assert code == 0


def _check(dirs, capsys, *extra, name="base"):
    capsys.readouterr()
    code = main(["check", "--baseline", name, "--runs-dir", str(dirs[1]), "--baselines-dir",
                 str(dirs[2]), "--format", "json", *extra])
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["exit_code"] == code
    return code, doc["rows"], out.err


def _marks(rows):
    return {(r["strategy"], r["metric"]): r["mark"] for r in rows if r["mark"]}


def _baseline_and_new(dirs, new_edit=None, base_edit=None, **noise):
    _write_set(dirs[0], 0, edit=base_edit)
    _save(dirs)
    _write_set(dirs[1], 1, edit=new_edit, **noise)


# -- the marks -----------------------------------------------------------------------------------
def test_seeded_degradation_of_one_strategy_marks_only_its_row(dirs, capsys):
    def degrade(strategy, seed, kw):
        if strategy == "dwa":
            kw["mae"] *= 1.3

    _baseline_and_new(dirs, degrade)
    code, rows, err = _check(dirs, capsys)
    assert code == 1
    assert _marks(rows) == {("dwa", "body_mass.mae"): "+"}
    row = next(r for r in rows if r["mark"] == "+")
    # 5 seeds: Mann-Whitney decides; complete separation of 5 vs 5 gives p = 2/252
    assert row["test"] == "mann-whitney" and row["p"] == pytest.approx(2 / 252)
    assert row["ratio"] == pytest.approx(1.3, rel=0.03)
    assert "worse: clsreg / dwa / body_mass.mae" in err and "result: REGRESSION" in err


def test_noise_within_the_factor_gives_no_mark(dirs, capsys):
    # every new value within 8% of its strategy's mean: beyond no 10% factor, whatever p says
    _baseline_and_new(dirs, q_noise=0.08)
    code, rows, err = _check(dirs, capsys)
    assert code == 0 and _marks(rows) == {}
    assert "ok, nothing worse" in err
    assert {r["kind"] for r in rows} == {"status", "quality"}  # quality only by default
    assert {r["metric"] for r in rows if r["strategy"] == "dwa"} == {
        "runs_ok", "species.accuracy", "body_mass.mae"}


def test_better_is_minus_and_passes(dirs, capsys):
    def improve(strategy, seed, kw):
        if strategy == "gradnorm":
            kw["mae"] *= 0.7

    _baseline_and_new(dirs, improve)
    code, rows, _ = _check(dirs, capsys)
    assert code == 0 and _marks(rows) == {("gradnorm", "body_mass.mae"): "-"}


def test_beyond_factor_but_not_significant_is_tilde(dirs, capsys):
    base_mae = [100.0, 110.0, 120.0, 130.0, 140.0]
    new_mae = [95.0, 125.0, 150.0, 160.0, 170.0]  # mean 140 vs 120: 16.7% worse

    def base_values(strategy, seed, kw):
        if strategy == "gradnorm":
            kw["mae"] = base_mae[seed]

    def new_values(strategy, seed, kw):
        if strategy == "gradnorm":
            kw["mae"] = new_mae[seed]

    _baseline_and_new(dirs, new_values, base_values)
    code, rows, _ = _check(dirs, capsys)
    assert code == 0 and _marks(rows) == {("gradnorm", "body_mass.mae"): "~"}
    row = next(r for r in rows if r["mark"] == "~")
    # by hand: U(new > base) = 0 + 3 + 5 + 5 + 5 = 18, so 2 P(U <= 25 - 18 = 7) over the 252
    # orderings; #orderings with U = 0..7 are 1, 1, 2, 3, 5, 7, 9, 11 (partitions of u into at
    # most 5 parts of size <= 5): p = 2 * 39 / 252
    assert row["p"] == pytest.approx(2 * 39 / 252)


def test_changed_config_is_x_and_only_fails_with_fail_on_x(dirs, capsys):
    def more_epochs(strategy, seed, kw):
        if strategy == "dwa":
            kw["epochs"] = 11
            kw["mae"] *= 1.5  # would be worse, but runs of another config are not compared

    _baseline_and_new(dirs, more_epochs)
    code, rows, err = _check(dirs, capsys)
    assert code == 0
    marks = _marks(rows)
    assert set(marks.values()) == {"x"} and {s for s, _ in marks} == {"dwa"}
    assert all("epochs 10->11" in r["note"] for r in rows if r["mark"] == "x")
    assert "NOT COMPARABLE" in err and "config differs: epochs 10->11" in err
    assert _check(dirs, capsys, "--fail-on-x")[0] == 1
    assert _check(dirs, capsys, "--fail-on-x", "0.5")[0] == 0  # 3 of 9 rows are x


def test_changed_strategy_code_is_x_unless_ignored(dirs, capsys):
    def new_code(strategy, seed, kw):
        if strategy == "dwa":
            kw["code"] = "dwa-v2"
            kw["mae"] *= 1.3

    _baseline_and_new(dirs, new_code)
    code, rows, err = _check(dirs, capsys)
    assert code == 0 and set(_marks(rows).values()) == {"x"}
    assert "strategy code changed" in err
    code, rows, _ = _check(dirs, capsys, "--ignore-code-hash")
    assert code == 1 and _marks(rows) == {("dwa", "body_mass.mae"): "+"}


def test_newly_failing_is_bang_and_fails(dirs, capsys):
    def fail(strategy, seed, kw):
        if strategy == "dwa" and seed == 3:
            kw["status"] = "failed"

    _baseline_and_new(dirs, fail)
    code, rows, err = _check(dirs, capsys)
    assert code == 1 and _marks(rows) == {("dwa", "runs_ok"): "!"}
    status = next(r for r in rows if r["mark"] == "!")
    assert status["baseline"] == "5/5" and status["new"] == "4/5"
    assert "newly failing: clsreg / dwa: newly failing seed(s) 3: non-finite loss" in err
    mae = next(r for r in rows if r["strategy"] == "dwa" and r["metric"] == "body_mass.mae")
    assert mae["n"] == 4  # the other seeds are still compared


def test_newly_fixed_is_star_and_passes(dirs, capsys):
    def fail(strategy, seed, kw):
        if strategy == "dwa" and seed == 3:
            kw["status"] = "failed"

    _baseline_and_new(dirs, base_edit=fail)
    code, rows, _ = _check(dirs, capsys)
    assert code == 0 and _marks(rows) == {("dwa", "runs_ok"): "*"}


def test_factor_options_and_baseline_factors_file(dirs, capsys):
    def degrade(strategy, seed, kw):
        if strategy == "dwa":
            kw["mae"] *= 1.3

    _baseline_and_new(dirs, degrade)
    assert _check(dirs, capsys, "--factor-for", "mae=0.5")[0] == 0
    assert _check(dirs, capsys, "--factor-for", "clsreg/dwa/*=40%")[0] == 0
    assert _check(dirs, capsys, "--factor-for", "clsreg/gradnorm/*=40%")[0] == 1
    assert _check(dirs, capsys, "--factor", "0.5")[0] == 0
    (dirs[2] / "base" / "check.toml").write_text('factor = 0.1\n[factors]\n"*.mae" = 0.5\n')
    assert _check(dirs, capsys)[0] == 0
    # the command line wins over the file: a later pattern overrides an earlier one
    assert _check(dirs, capsys, "--factor-for", "mae=0.2")[0] == 1


def test_markdown_and_csv_output(dirs, capsys):
    _baseline_and_new(dirs)
    capsys.readouterr()
    args = ["check", "--baseline", "base", "--runs-dir", str(dirs[1]), "--baselines-dir",
            str(dirs[2])]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| task_pair | strategy") and out[1].startswith("|---")
    assert len(out) == 2 + 9
    assert main([*args, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("task_pair,strategy,metric,n,baseline,new,ratio,p,mark,note")
    assert len(lines) == 1 + 9


# -- bad input: one line, exit 2 -----------------------------------------------------------------
def _one_line_exit_2(args, capsys, message):
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_baselines_exit_2(dirs, capsys):
    _baseline_and_new(dirs)
    args = ["check", "--baseline", "base", "--runs-dir", str(dirs[1]), "--baselines-dir",
            str(dirs[2])]
    _one_line_exit_2([*args[:2], "nope", *args[3:]], capsys,
                     "baseline 'nope' not found")
    path = dirs[2] / "base" / "baseline.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    _one_line_exit_2(args, capsys, "is corrupt or truncated")
    doc = json.loads(text)
    # a whole run line lost (valid JSON, one run short) is caught by the run count
    path.write_text(json.dumps({**doc, "runs": doc["runs"][1:]}))
    _one_line_exit_2(args, capsys, "is corrupt: expected 15 runs, found 14")
    path.write_text(json.dumps({**doc, "version": 99}))
    _one_line_exit_2(args, capsys, "has format version 99, this mtl-bench reads versions 1, 2")
    broken = [dict(doc["runs"][0], test="oops"), *doc["runs"][1:]]
    path.write_text(json.dumps({**doc, "runs": broken}))
    _one_line_exit_2(args, capsys, "run 0 has no valid test")


def test_bad_new_runs_and_options_exit_2(dirs, capsys, tmp_path):
    _baseline_and_new(dirs)
    common = ["--baseline", "base", "--baselines-dir", str(dirs[2])]
    (tmp_path / "empty").mkdir()
    _one_line_exit_2(["check", *common, "--runs-dir", str(tmp_path / "empty")], capsys,
                     "no run records in")
    _one_line_exit_2(["check", *common, "--runs-dir", str(tmp_path / "missing")], capsys,
                     "does not exist")
    other = RunStore(tmp_path / "other")
    other.write(_record("uncertainty", 0, 0.9, 250.0, 1000.0))
    _one_line_exit_2(["check", *common, "--runs-dir", str(tmp_path / "other")], capsys,
                     "no run in")
    runs = ["--runs-dir", str(dirs[1])]
    _one_line_exit_2(["check", *common, *runs, "--factor-for", "ece"], capsys,
                     "--factor-for expects PATTERN=FACTOR")
    _one_line_exit_2(["check", *common, *runs, "--factor", "-1"], capsys, "factor should be")
    _one_line_exit_2(["check", *common, *runs, "--alpha", "2"], capsys, "alpha should be")
    (dirs[2] / "base" / "check.toml").write_text("factor = [")
    _one_line_exit_2(["check", *common, *runs], capsys, "is not valid TOML")


def test_baseline_save_list_show(dirs, capsys):
    _write_set(dirs[0], 0)
    _save(dirs)
    _one_line_exit_2(["baseline", "save", "base", "--runs-dir", str(dirs[0]),
                      "--baselines-dir", str(dirs[2])], capsys, "already exists")
    _one_line_exit_2(["baseline", "save", "../x", "--runs-dir", str(dirs[0]),
                      "--baselines-dir", str(dirs[2])], capsys, "baseline name")
    # two configs of one (pair, strategy, seed) make an ambiguous baseline
    RunStore(dirs[0]).write(_record("dwa", 0, 0.9, 250.0, 1000.0, epochs=11))
    _one_line_exit_2(["baseline", "save", "b2", "--runs-dir", str(dirs[0]),
                      "--baselines-dir", str(dirs[2])], capsys, "(they differ in epochs ")
    doc = json.loads((dirs[2] / "base" / "baseline.json").read_text())
    run = doc["runs"][0]
    assert doc["version"] == baselines.BASELINE_VERSION and doc["n_runs"] == 15
    assert set(run["test"]) == {"species.accuracy", "body_mass.mae"}  # test split, no loss
    assert "curves" not in run and run["machine"] == "m0" and run["code"]["strategy"]
    capsys.readouterr()
    assert main(["baseline", "list", "--baselines-dir", str(dirs[2])]) == 0
    assert capsys.readouterr().out.startswith("base ")
    assert main(["baseline", "show", "base", "--baselines-dir", str(dirs[2])]) == 0
    assert "clsreg / dwa: seeds 0,1,2,3,4, 5/5 ok" in capsys.readouterr().out


# -- an honest check: nothing compared is not a pass ---------------------------------------------
def test_every_row_not_comparable_exits_2_with_the_reason(dirs, capsys):
    def other_epochs(strategy, seed, kw):
        kw["epochs"] = 11

    _baseline_and_new(dirs, other_epochs)
    args = ["check", "--baseline", "base", "--runs-dir", str(dirs[1]), "--baselines-dir",
            str(dirs[2])]
    _one_line_exit_2(args, capsys, "nothing compared")
    _one_line_exit_2(args, capsys, "config differs: epochs 10->11")
    _one_line_exit_2(args, capsys, "regenerate the baseline")


def test_zero_rows_compared_exits_2(dirs, capsys):
    def fail(strategy, seed, kw):
        kw["status"] = "failed"

    # every run failed on both sides: the seeds match, but no metric can be compared
    _baseline_and_new(dirs, fail, fail)
    args = ["check", "--baseline", "base", "--runs-dir", str(dirs[1]), "--baselines-dir",
            str(dirs[2])]
    _one_line_exit_2(args, capsys, "nothing compared")
    _one_line_exit_2(args, capsys, "no seed finished in both")


def test_quality_only_by_default_ignores_per_run_throughput(dirs, capsys):
    def slower(strategy, seed, kw):
        if strategy == "dwa":
            kw["sps"] /= 3  # per-run timers of a loaded sweep: no evidence about speed

    _baseline_and_new(dirs, slower)
    code, rows, err = _check(dirs, capsys)
    assert code == 0 and _marks(rows) == {}
    assert not any(r["kind"] == "speed" for r in rows) and "ok, nothing worse" in err
    code, rows, err = _check(dirs, capsys, "--only-quality")  # the deprecated alias still works
    assert code == 0 and not any(r["kind"] == "speed" for r in rows) and "deprecated" in err


# -- speed: only from the speed stage ------------------------------------------------------------
REF_S = [1.00e-3, 1.30e-3, 0.90e-3, 1.10e-3, 1.05e-3]


def _speed_entry(strategy, ratios, machine="m0", code=None):
    from mtl_bench.speed import summarise

    times = [r * t for r, t in zip(ratios, REF_S)]
    return {"setting": "clsreg", "task_pair": "clsreg", "options": {}, "architecture": "shared",
            "strategy": strategy, "code": code or f"{strategy}-v1", "reference_code": "fixed-v1",
            "batch_size": 32, "samples_per_step": 32, "device": "cpu", "threads": 1,
            "machine": machine, "torch": "t", "created": "2026-01-01T00:00:00Z", "rounds": 5,
            "steps": 20, **summarise(times, REF_S, 32, strategy == "fixed")}


def _plant_speed(runs_dir, gradnorm, machine="m0", code=None):
    from mtl_bench.speed import write_speed

    write_speed(runs_dir, [_speed_entry("fixed", [1.0] * 5, machine),
                           _speed_entry("dwa", [0.9, 1.1, 1.0, 0.95, 1.05], machine),
                           _speed_entry("gradnorm", gradnorm, machine, code)])


def test_speed_needs_speed_measurements_on_both_sides(dirs, capsys):
    _baseline_and_new(dirs)  # no speed.json anywhere
    args = ["check", "--baseline", "base", "--runs-dir", str(dirs[1]), "--baselines-dir",
            str(dirs[2]), "--speed"]
    _one_line_exit_2(args, capsys, "mtl-bench speed --runs-dir")
    _one_line_exit_2(args, capsys, "holds no speed measurements")
    _plant_speed(dirs[0], [2.0] * 5)
    _save(dirs, "with-speed")
    _one_line_exit_2([*args[:2], "with-speed", *args[3:]], capsys,
                     f"no speed measurements in '{dirs[1]}'")


def test_speed_marks_need_the_factor_and_disjoint_intervals(dirs, capsys):
    _write_set(dirs[0], 0)
    _plant_speed(dirs[0], [1.9, 2.1, 2.0, 1.95, 2.05])
    _save(dirs)
    assert json.loads((dirs[2] / "base" / "baseline.json").read_text())["version"] == 2
    _write_set(dirs[1], 1)
    # inside the noise: 2.0 -> 2.1 is within 10%
    _plant_speed(dirs[1], [2.0, 2.2, 2.1, 2.05, 2.15])
    code, rows, err = _check(dirs, capsys, "--speed")
    assert code == 0 and _marks(rows) == {}
    assert {r["metric"] for r in rows if r["kind"] == "speed"} == {
        "step_time_vs_fixed", "samples_per_s"}
    ratio = next(r for r in rows if r["metric"] == "step_time_vs_fixed"
                 and r["strategy"] == "gradnorm")
    assert ratio["baseline"] == pytest.approx(2.0, rel=0.01) and ratio["n"] == 5
    # beyond the factor with disjoint 95% intervals: worse, and the check fails
    _plant_speed(dirs[1], [2.9, 3.1, 3.0, 2.95, 3.05])
    code, rows, err = _check(dirs, capsys, "--speed")
    assert code == 1 and _marks(rows) == {("gradnorm", "step_time_vs_fixed"): "+",
                                          ("gradnorm", "samples_per_s"): "+"}
    assert "worse: clsreg / gradnorm / step_time_vs_fixed" in err and "5 rounds" in err
    # beyond the factor, but so noisy that the intervals overlap: not significant
    _plant_speed(dirs[1], [1.5, 4.0, 2.0, 5.0, 2.5])
    code, rows, _ = _check(dirs, capsys, "--speed")
    assert code == 0 and _marks(rows)[("gradnorm", "step_time_vs_fixed")] == "~"
    # another machine: the ratio still gates, absolute samples/s are shown, not gated
    _plant_speed(dirs[1], [2.9, 3.1, 3.0, 2.95, 3.05], machine="other")
    code, rows, _ = _check(dirs, capsys, "--speed")
    assert code == 1 and _marks(rows) == {("gradnorm", "step_time_vs_fixed"): "+"}
    assert all(r["note"] == "other machine: shown, not gated"
               for r in rows if r["metric"] == "samples_per_s")
    # changed strategy code: not comparable; --only-speed (deprecated) compares speed alone
    _plant_speed(dirs[1], [2.9, 3.1, 3.0, 2.95, 3.05], code="gradnorm-v2")
    code, rows, err = _check(dirs, capsys, "--only-speed")
    assert code == 0 and not any(r["kind"] in ("quality", "status") for r in rows)
    assert _marks(rows)[("gradnorm", "step_time_vs_fixed")] == "x"
    # quality only, the default, never looks at speed
    code, rows, _ = _check(dirs, capsys)
    assert code == 0 and not any(r["kind"] == "speed" for r in rows)


def test_version_1_baselines_are_still_read(dirs, capsys):
    _baseline_and_new(dirs)
    path = dirs[2] / "base" / "baseline.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "version": 1}))
    code, rows, _ = _check(dirs, capsys)
    assert code == 0 and rows


@pytest.mark.parametrize("kind", ["folder", "symlink loop"])
def test_a_baseline_file_that_is_a_folder_or_a_loop_is_one_line(kind, dirs, capsys):
    _baseline_and_new(dirs)
    _save(dirs, "good")
    path = dirs[2] / "base" / "baseline.json"
    path.unlink()
    if kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(path)
    common = ["--baselines-dir", str(dirs[2])]
    _one_line_exit_2(["check", "--baseline", "base", "--runs-dir", str(dirs[1]), *common],
                     capsys, "baseline 'base' is broken")
    _one_line_exit_2(["baseline", "show", "base", *common], capsys, "is broken")
    _one_line_exit_2(["check", "--baseline", "nope", "--runs-dir", str(dirs[1]), *common],
                     capsys, "saved baselines: good")
    capsys.readouterr()
    # listing still works (exit 0) and names the broken one
    assert main(["baseline", "list", *common]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert "Traceback" not in out.err
    assert len(lines) == 2 and lines[0].startswith("base ") and "broken:" in lines[0]
    assert lines[1].startswith("good ") and "15 runs" in lines[1]


# -- the README's session, on a loaded machine ---------------------------------------------------
@pytest.mark.slow
def test_unchanged_code_passes_the_check_while_the_machine_is_busy(tmp_path, capsys):
    import subprocess
    import sys

    sweep = ["run", "--task", "clsreg", "--strategy", "fixed,dwa", "--seeds", "2", "--epochs",
             "2", "--quiet"]
    assert main([*sweep, "--runs-dir", str(tmp_path / "A")]) == 0
    assert main(["baseline", "save", "b", "--runs-dir", str(tmp_path / "A"),
                 "--baselines-dir", str(tmp_path / "baselines")]) == 0
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert main([*sweep, "--runs-dir", str(tmp_path / "B")]) == 0
        capsys.readouterr()
        code = main(["check", "--baseline", "b", "--baselines-dir", str(tmp_path / "baselines"),
                     "--runs-dir", str(tmp_path / "B")])
    finally:
        burner.kill()
        burner.wait()
    err = capsys.readouterr().err
    assert code == 0, err
    assert "ok, nothing worse" in err


# -- the statistics, by hand ---------------------------------------------------------------------
def test_min_mann_whitney_p_by_hand():
    # complete separation is 2 of C(n1 + n2, n1) orderings
    assert min_mann_whitney_p(3, 3) == pytest.approx(2 / 20)
    assert min_mann_whitney_p(4, 4) == pytest.approx(2 / 70)
    assert min_mann_whitney_p(5, 5) == pytest.approx(2 / 252)
    assert min_mann_whitney_p(1, 1) == 1.0


def test_few_seeds_fall_back_to_confidence_intervals():
    # 3 vs 3 can never reach p < 0.05 with Mann-Whitney (best 0.1): 95% CIs decide.
    # mean 101, sd 1: half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732 = 2.48
    lo, hi = ci95([100.0, 101.0, 102.0])
    assert (lo, hi) == pytest.approx((101 - 2.4843, 101 + 2.4843), abs=1e-3)
    ev = significance([100.0, 101.0, 102.0], [150.0, 151.0, 152.0])
    assert ev.test == "ci95" and ev.significant and ev.p is None
    # sd 20: half-width 49.7, so [70.3, 169.7] and [100.3, 199.7] overlap
    ev = significance([100.0, 120.0, 140.0], [130.0, 150.0, 170.0])
    assert ev.test == "ci95" and not ev.significant
    assert not significance([1.0], [2.0]).significant  # one seed: no evidence


def test_badness_is_direction_aware():
    assert badness(100, 130, higher_is_better=False) == pytest.approx(1.3)
    assert badness(0.9, 0.81, higher_is_better=True) == pytest.approx(0.9 / 0.81)
    assert badness(0.5, 0.6, higher_is_better=True) < 1
    assert badness(-1.0, -2.0, higher_is_better=True) == pytest.approx(2.0)
    assert badness(0.1, -0.1, higher_is_better=True) == math.inf  # r2 turned negative
    assert badness(0.0, 0.0, higher_is_better=True) == 1.0


def test_factor_patterns_last_match_wins():
    f = Factors(0.1, [("mae", 0.5), ("clsreg/dwa/*", 0.3)])
    assert f.for_row("clsreg", "fixed", "body_mass.mae") == 0.5
    assert f.for_row("clsreg", "dwa", "body_mass.mae") == 0.3
    assert f.for_row("clsreg", "fixed", "species.accuracy") == 0.1


def test_pair_label_carries_the_settings():
    assert pair_label(RunConfig().to_dict()) == "clsreg"
    assert pair_label(RunConfig(task_options={"dataset": "synthetic"}).to_dict()) == \
        "clsreg [dataset=synthetic]"
    assert pair_label(RunConfig(architecture="separate").to_dict()) == "clsreg (separate)"


# -- end to end: a broken strategy, trained for real, fails the gate -----------------------------
PROBE = "check-probe"
Fixed = registry.strategies.get("fixed")


class _ProbeGood(Fixed):
    """Equal weights, as the real `fixed`."""


class _ProbeBroken(Fixed):
    """The same strategy with one task's weight zeroed: body mass is never trained."""

    def setup(self, tasks, seed=0):
        super().setup(tasks, seed)
        self.w = torch.tensor([1.0, 0.0])


def _train_into(store, strategy, cls=None):
    if cls is not None:
        registry.strategies.unregister(PROBE)
        registry.strategies.register(PROBE)(cls)
    for seed in SEEDS:
        store.write(train_run(RunConfig(strategy=strategy, seed=seed, epochs=4)))


@pytest.mark.slow
def test_broken_strategy_trained_for_real_fails_the_check(dirs, capsys):
    # both probe classes live in this module, so their code hash is the same and the check
    # compares them (a real edit would change the hash: see test_changed_strategy_code_is_x)
    base, new = RunStore(dirs[0]), RunStore(dirs[1])
    try:
        _train_into(base, PROBE, _ProbeGood)
        _train_into(new, PROBE, _ProbeBroken)
    finally:
        registry.strategies.unregister(PROBE)
    _train_into(base, "fixed")  # the untouched reference, trained in both sets
    _train_into(new, "fixed")
    _save(dirs)
    code, rows, err = _check(dirs, capsys)
    assert code == 1
    marks = _marks(rows)
    assert marks[(PROBE, "body_mass.mae")] == "+" and marks[(PROBE, "body_mass.rmse")] == "+"
    assert not any(s == "fixed" for s, _ in marks)
    assert f"worse: clsreg / {PROBE} / body_mass.mae" in err


def test_the_committed_baselines_are_found_from_any_folder(tmp_path, monkeypatch):
    from mtl_bench import baselines as bl

    monkeypatch.chdir(tmp_path)  # no results/ here
    assert bl.default_baselines_dir() == bl.PROJECT_BASELINES_DIR
    assert (bl.default_baselines_dir() / "quick" / "baseline.json").is_file()
    (tmp_path / "results" / "baselines").mkdir(parents=True)  # a project with its own
    assert bl.default_baselines_dir() == bl.DEFAULT_BASELINES_DIR
