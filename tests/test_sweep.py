"""The sweep: grids (--lr, --set, TOML), local worker processes, failures, tuning, progress."""

import io
import math
import textwrap

import pytest

from mtl_bench import registry, sweep
from mtl_bench.cli import main
from mtl_bench.config_file import load_config
from mtl_bench.errors import UserError
from mtl_bench.executors import base, local
from mtl_bench.store import RunStore
from mtl_bench.sweep import (
    Progress,
    SweepSpec,
    execute,
    expand,
    parse_lrs,
)
from mtl_bench.train import RunConfig, train_run

TINY = {"epochs": 2}

# Plug-in strategies that misbehave inside a worker process: one kills its own process (as the
# kernel's OOM killer would), one hangs inside a step where train_run cannot check the clock.
MISBEHAVING = textwrap.dedent("""
    import os, signal, time
    from mtl_bench.registry import register_strategy
    from mtl_bench.strategy import Strategy

    @register_strategy("test-sigkill")
    class SigKill(Strategy):
        def combine(self, losses, grads=None):
            os.kill(os.getpid(), signal.SIGKILL)

    @register_strategy("test-hang")
    class Hang(Strategy):
        def combine(self, losses, grads=None):
            time.sleep(600)
""")


@pytest.fixture
def misbehaving(tmp_path):
    path = tmp_path / "misbehaving.py"
    path.write_text(MISBEHAVING)
    registry.load_plugin_file(path)
    yield base.plugin_sources([path])
    registry.strategies.unregister("test-sigkill")
    registry.strategies.unregister("test-hang")


def _spec(**kw):
    base = RunConfig(**TINY)
    args = {"tasks": ["clsreg"], "strategies": ["fixed"], "seeds": [0], "assignments": {},
            "base": base}
    args.update(kw)
    return SweepSpec(**args)


# -- grids -------------------------------------------------------------------------------------
def test_lr_list_forms_a_grid_with_distinct_run_ids():
    assert parse_lrs("1e-3,3e-3") == [0.001, 0.003]
    configs = expand(_spec(strategies=["fixed", "dwa"], seeds=[0, 1], lrs=[1e-3, 3e-3]))
    assert len(configs) == 2 * 2 * 2
    assert {c.lr for c in configs} == {1e-3, 3e-3}
    assert len({c.run_id for c in configs}) == 8


def test_default_lr_is_the_same_run_as_the_explicit_default():
    # clsreg's default lr is 3e-3: naming it must not create a second run
    configs = expand(_spec(lrs=[3e-3]))
    assert configs[0].run_id == expand(_spec())[0].run_id


def test_tune_grid_is_a_third_and_three_times_the_pairs_default():
    configs = expand(_spec(lr_factors=sweep.TUNE_LR_FACTORS))
    # clsreg.lr = 3e-3 -> 1e-3, 3e-3, 9e-3 (rounded to 3 significant digits)
    assert sorted(c.lr for c in configs) == [0.001, 0.003, 0.009]


@pytest.mark.parametrize("text", ["0", "-1e-3", "abc", "nan", "inf", "1e-3,,x"])
def test_bad_lr_list_is_a_user_error(text):
    with pytest.raises(UserError, match="--lr expects positive numbers"):
        parse_lrs(text)


def test_toml_config_schema(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(textwrap.dedent("""
        tasks = "clsreg"
        strategies = ["fixed", "gradnorm"]
        seeds = [0, 5]
        epochs = 3
        lr = [1e-3, 3e-3]
        [set.gradnorm]
        alpha = [0.5, 1.5]
        [set.fixed]
        weights = [[1, 0.5]]
    """))
    cfg = load_config(path)
    assert cfg["tasks"] == ["clsreg"] and cfg["seeds"] == [0, 5] and cfg["lr"] == [1e-3, 3e-3]
    assert cfg["set"] == {"gradnorm": {"alpha": [0.5, 1.5]}, "fixed": {"weights": [[1, 0.5]]}}


def test_config_file_drives_the_grid_and_the_command_line_wins(tmp_path, capsys):
    path = tmp_path / "sweep.toml"
    path.write_text('strategies = ["fixed", "gradnorm"]\nseeds = 2\nepochs = 1\n'
                    'lr = [1e-3, 3e-3]\n[set.gradnorm]\nalpha = [0.5, 1.5]\n')
    runs = str(tmp_path / "runs")
    assert main(["run", "--config", str(path), "--runs-dir", runs, "--dry-run"]) == 0
    out = capsys.readouterr().out
    # (fixed + 2 gradnorm variants) x 2 lrs x 2 seeds
    assert "12 to run (12 new)" in out
    assert "gradnorm(alpha=0.5)" in out and "lr 0.001" in out
    assert main(["run", "--config", str(path), "--runs-dir", runs, "--dry-run",
                 "--strategy", "fixed", "--lr", "1e-3", "--seeds", "1"]) == 0
    assert "1 to run (1 new)" in capsys.readouterr().out


# -- local worker processes --------------------------------------------------------------------
def _curves(store):
    return {r["run_id"]: (r["curves"]["rows"], r["weights"]["values"], r["selected_epoch"])
            for r in store.load().records}


def test_jobs_2_gives_bit_identical_records_to_jobs_1(tmp_path):
    configs = expand(_spec(strategies=["fixed", "gradnorm", "dwa"], seeds=[0, 1]))
    one, two = RunStore(tmp_path / "one"), RunStore(tmp_path / "two")
    execute(configs, one, jobs=1, quiet=True)
    progress = execute(configs, two, jobs=2, quiet=True)
    assert progress.done == 6 and progress.failed == 0
    a, b = _curves(one), _curves(two)
    assert len(a) == 6 and a.keys() == b.keys()
    for run_id in a:
        assert a[run_id] == b[run_id]  # exact equality of every float, not approx


def test_run_command_preloads_what_the_workers_preload():
    from mtl_bench.commands import run

    assert run.WORKER_PRELOAD == local.PRELOAD


def test_worker_crash_and_hang_become_failed_records(tmp_path, misbehaving, monkeypatch):
    # the parent kills a worker stuck inside one step after max_seconds plus a grace period;
    # shorten the grace so that the test does not wait the default 30 s (it still covers the
    # run's set-up, which on a busy machine can take seconds)
    monkeypatch.setattr(local, "hard_deadline", lambda s: None if s is None else s + 8.0)
    configs = [RunConfig(strategy="test-sigkill", **TINY), RunConfig(strategy="fixed", **TINY),
               RunConfig(strategy="test-hang", **TINY), RunConfig(strategy="fixed", seed=1,
                                                                 **TINY)]
    store = RunStore(tmp_path / "runs")
    progress = execute(configs, store, jobs=2, quiet=True, max_seconds=1.0,
                       plugins=misbehaving)
    records = {r["strategy"]: r for r in store.load().records if r["seed"] == 0}
    assert progress.done == 4 and progress.failed == 2
    assert records["test-sigkill"]["status"] == "failed"
    assert "worker process died from SIGKILL" in records["test-sigkill"]["reason"]
    assert records["test-hang"]["status"] == "failed"
    assert "exceeded --max-run-seconds 1; worker killed" in records["test-hang"]["reason"]
    assert records["fixed"]["status"] == "ok"
    assert len(store.load().records) == 4


# -- progress ----------------------------------------------------------------------------------
def test_progress_lines_count_failures_and_give_an_eta():
    stream = io.StringIO()
    p = Progress(3, stream=stream)
    cfg = RunConfig()
    p.finished(cfg, {"status": "ok", "wall_s": 1.0})
    p.finished(cfg, {"status": "failed", "reason": "non-finite loss", "wall_s": 2.0})
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/3] clsreg fixed seed 0: ok") and "ETA" in lines[0]
    assert lines[1].startswith("[2/3]") and "FAILED: non-finite loss" in lines[1]
    assert p.failed == 1 and p.failures[0][1] == "non-finite loss"
    quiet = io.StringIO()
    q = Progress(1, quiet=True, stream=quiet)
    q.finished(cfg, {"status": "failed", "reason": "x"})
    assert quiet.getvalue() == "" and q.failed == 1


def test_failed_record_has_the_keys_of_a_train_run_record():
    rec = base.failed_record(RunConfig(strategy="dwa", epochs=2), "worker died")
    real = train_run(RunConfig(strategy="dwa", epochs=1))
    assert rec["run_id"] == RunConfig(strategy="dwa", epochs=2).run_id
    assert rec["status"] == "failed" and rec["reason"] == "worker died"
    missing = {"schema", "run_id", "config", "task_pair", "strategy", "seed", "curves",
               "weights", "throughput", "summary", "wall_s", "selected_epoch"} - rec.keys()
    assert not missing and set(rec["config"]) == set(real["config"])
    assert not math.isnan(rec["wall_s"])
