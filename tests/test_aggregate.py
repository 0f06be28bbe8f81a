"""Run records -> tables: grouping, roles, CIs, Delta_m%, ranks, tests, failures, bad input."""

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from mtl_bench import aggregate as agg
from mtl_bench import display, registry, stats
from mtl_bench.cli import main
from mtl_bench.errors import UserError
from mtl_bench.store import RunStore
from mtl_bench.train import RunConfig, train_run

SEEDS = (0, 1, 2)


@pytest.fixture(scope="session")
def real_records():
    """Tiny real runs on clsreg: fixed, uncertainty, dwa, a 3-point fixed-weight sweep and the
    single-task baselines, 3 seeds x 2 epochs (a few seconds in all)."""
    torch.set_num_threads(1)
    configs = []
    sweep = registry.strategies.get("fixed").variants({"sweep": 3}, 2)
    for seed in SEEDS:
        configs += [RunConfig(strategy=s, seed=seed, epochs=2)
                    for s in ("fixed", "uncertainty", "dwa")]
        configs += [RunConfig(strategy="fixed", strategy_params=p, seed=seed, epochs=2)
                    for p in sweep]
        configs += [RunConfig(strategy="fixed", seed=seed, epochs=2, single_task=t)
                    for t in ("species", "body_mass")]
    records = [train_run(c) for c in configs]
    assert all(r["status"] == "ok" for r in records)
    return records


@pytest.fixture(scope="session")
def real_tables(real_records):
    return agg.aggregate_records(real_records)


def _clone(record, **changes):
    r = copy.deepcopy(record)
    for key, value in changes.items():
        if key.startswith("config."):
            r["config"][key[7:]] = value
        else:
            r[key] = value
    r["run_id"] = r["run_id"][:8] + format(abs(hash(json.dumps(changes, default=str))), "x")[:8]
    return r


def _test_values(records, label, task, metric, single_task=None):
    out = {}
    for r in records:
        if r["strategy"] != label or r["config"].get("single_task") != single_task:
            continue
        for _epoch, split, t, m, v in r["summary"]:
            if split == "test" and t == task and m == metric:
                out[r["seed"]] = v
    return out


# -- real runs ---------------------------------------------------------------------------------
def test_roles_and_counts_from_real_runs(real_tables):
    (s,) = real_tables.meta["settings"]
    assert s["label"] == "clsreg" and s["reference"] == "fixed"
    roles = s["roles"]
    assert roles["fixed"] == "reference" and roles["single-task"] == "single-task"
    assert roles["dwa"] == roles["uncertainty"] == "method"
    assert sorted(lb for lb, r in roles.items() if r == "front") == [
        "fixed(weights=0.5/1.5)", "fixed(weights=1.5/0.5)", "fixed(weights=1/1)"]
    summ = real_tables["summary"]
    assert set(summ["n"]) == {3}
    single = summ[summ["strategy"] == "single-task"]
    assert set(single["n_runs"]) == {3}  # per task: the 3 seeds of that task's baseline
    ranks = real_tables["ranks"]
    assert sorted(ranks["strategy"]) == ["dwa", "fixed", "uncertainty"]  # front is not ranked
    assert ranks["mean_rank"].between(1, 3).all()


def test_mean_and_ci_match_the_records(real_records, real_tables):
    vals = _test_values(real_records, "dwa", "body_mass", "mae")
    v = np.array([vals[s] for s in SEEDS])
    low, high = sps.t.interval(0.95, 2, loc=v.mean(), scale=sps.sem(v))
    row = real_tables["summary"].query("strategy == 'dwa' and metric == 'mae'").iloc[0]
    assert row["mean"] == pytest.approx(v.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))


def test_delta_m_is_per_seed_against_the_same_seed_single_task(real_records, real_tables):
    # primary metrics only: accuracy for the species, MAE for the body mass
    keys = [("species", "accuracy", True), ("body_mass", "mae", False)]
    per_seed = []
    for seed in SEEDS:
        terms = []
        for task, metric, higher in keys:
            m = _test_values(real_records, "uncertainty", task, metric)[seed]
            b = _test_values(real_records, "single-task", task, metric, single_task=task)[seed]
            terms.append((-1 if higher else 1) * (m - b) / abs(b) * 100)
        per_seed.append(sum(terms) / len(terms))
    row = real_tables["delta_m"].query("strategy == 'uncertainty'").iloc[0]
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(np.mean(per_seed))
    assert row["ci_high"] - row["mean"] == pytest.approx(
        sps.t.ppf(0.975, 2) * np.std(per_seed, ddof=1) / math.sqrt(3))


def test_significance_uses_the_exact_sign_flip_test_with_three_seeds(real_records, real_tables):
    sig = real_tables["significance"]
    assert set(sig["test"]) == {stats.SIGN_FLIP} and set(sig["n"]) == {3}
    assert set(sig["p"]) <= {0.25, 0.5, 0.75, 1.0}  # multiples of 2/8 with 3 pairs
    row = sig.query("strategy == 'dwa' and metric == 'mae'").iloc[0]
    a = _test_values(real_records, "dwa", "body_mass", "mae")
    b = _test_values(real_records, "fixed", "body_mass", "mae")
    d = [a[s] - b[s] for s in SEEDS]
    assert row["mean_diff"] == pytest.approx(np.mean(d))
    assert row["p"] == stats.sign_flip_test(d)[1]
    assert (sig["metric"] == agg.DELTA_M).sum() == 5  # dwa, uncertainty and 3 front points


def test_throughput_ratio_is_relative_to_the_reference(real_tables):
    tp = real_tables["throughput"].set_index("strategy")
    assert tp.loc["fixed", "overhead"] == pytest.approx(1.0)
    assert (tp["samples_per_s"] > 0).all() and (tp["step_ms"] > 0).all()
    assert tp.loc["dwa", "n_overhead"] == 3


def test_trajectory_tables(real_tables):
    w = real_tables["weights"]
    fixed = w[w["strategy"] == "fixed"]
    assert set(fixed["epoch"]) == {1, 2} and np.allclose(fixed["mean"], 1.0)
    c = real_tables["curves"]
    assert set(c.query("split == 'train'")["metric"]) == {"loss"}
    assert set(c.query("split == 'val'")["epoch"]) == {0, 1, 2}
    d = real_tables["diagnostics"]
    assert set(d["task_a"]) == {"species"} and d["mean"].between(-1, 1).all()
    det = real_tables["details"]
    conf = det.query("kind == 'confusion' and strategy == 'dwa'")
    assert conf["count"].sum() == 3 * 66  # three seeds x 66 test samples (penguins split)


def test_write_read_round_trip_and_markdown(tmp_path, real_tables):
    display.write_tables(real_tables, tmp_path)
    back = agg.Tables.read(tmp_path)
    assert back.meta["settings"][0]["roles"] == real_tables.meta["settings"][0]["roles"]
    pd.testing.assert_frame_equal(back["summary"], real_tables["summary"], check_dtype=False)
    md = (tmp_path / "tables.md").read_text()
    assert "| fixed (reference) | 3/3 |" in md
    # bold marks exactly the unique winners the summary table records (none on a tie)
    assert ("**" in md) == bool(real_tables["summary"]["best"].any())
    assert "exact sign-flip permutation" in md
    assert "Friedman test needs >= 2 task pairs" in md


def test_bootstrap_option(real_records):
    tables = agg.aggregate_records(real_records, ci="bootstrap")
    text = display.comparison_display(tables, "clsreg").text
    mae = next(c for c in text.columns if "body_mass mae" in c)
    assert text[mae].iloc[0].count("[") == 1  # mean [low, high]


# -- failures and settings ---------------------------------------------------------------------
def test_failed_runs_are_counted_never_dropped(real_records):
    failed = _clone(real_records[2], status="failed", reason="non-finite loss", seed=7,
                    failed_epoch=2, summary=[], details={})
    failed["config"]["seed"] = 7
    all_failed = _clone(real_records[0], strategy="gradnorm", status="failed",
                        reason="boom", summary=[], **{"config.strategy": "gradnorm"})
    tables = agg.aggregate_records([*real_records, failed, all_failed])
    summ = tables["summary"].query("strategy == 'dwa'")
    assert set(summ["n_runs"]) == {4} and set(summ["n_failed"]) == {1} and set(summ["n"]) == {3}
    text = display.comparison_display(tables, "clsreg").text.set_index("strategy")
    assert text.loc["dwa", "runs"] == "3/4 (1 failed)"
    assert text.loc["gradnorm", "runs"] == "0/1 (1 failed)"
    assert tables.meta["n_failed"] == 2
    assert "non-finite loss" in display.markdown_tables(tables)


def test_options_and_architecture_make_separate_settings(real_records):
    other = [_clone(r, **{"config.task_options": {"dataset": "synthetic"}})
             for r in real_records]
    sep = [_clone(r, **{"config.architecture": "separate"}) for r in real_records
           if r["strategy"] == "dwa"]
    tables = agg.aggregate_records([*real_records, *other, *sep])
    labels = [s["label"] for s in tables.meta["settings"]]
    assert labels == ["clsreg", "clsreg (separate)", "clsreg [dataset=synthetic]"]
    assert set(tables["summary"]["n"]) == {3}  # nothing averaged across settings
    sep_meta = tables.setting("clsreg (separate)")
    assert any("single-task runs of 'clsreg'" in n for n in sep_meta["notes"])
    assert tables.meta["friedman"]["reason"].startswith("the Friedman test needs >= 3")


@pytest.mark.parametrize("change,label", [
    ({"config.epochs": 5}, "epochs=5"),
    ({"code": {"strategy": "x", "task": "y", "harness": "z"}}, "code=z/y"),
    ({"schema": 3}, "schema=3"),
])
def test_other_settings_are_reported_apart_never_averaged_never_refused(real_records, change,
                                                                        label):
    odd = _clone(real_records[1], **change)
    tables = agg.aggregate_records([*real_records, odd])
    labels = [s["label"] for s in tables.meta["settings"]]
    assert len(labels) == 2 and sum(label in lb for lb in labels) == 1
    odd_setting = next(lb for lb in labels if label in lb)
    assert tables.setting(odd_setting)["n_runs"] == 1
    other = next(lb for lb in labels if lb != odd_setting)
    # the original setting keeps exactly its own records: nothing of the odd one is mixed in
    assert tables.setting(other)["n_runs"] == len(real_records)


def test_a_metric_direction_conflict_is_still_refused(real_records):
    odd = _clone(real_records[1])
    odd["metric_directions"] = {**odd["metric_directions"], "mae": True}
    with pytest.raises(UserError, match="not comparable"):
        agg.aggregate_records([*real_records, odd])


def test_no_single_task_runs_means_no_delta_m(real_records):
    records = [r for r in real_records if r["strategy"] != "single-task"]
    tables = agg.aggregate_records(records)
    assert tables["delta_m"].empty
    assert any("no single-task runs" in n for n in tables.meta["settings"][0]["notes"])
    assert "Δm%" not in display.comparison_display(tables, "clsreg").text.columns
    assert "Δm% not computed" in display.markdown_tables(tables)


def test_reference_falls_back_to_equal_weights_from_the_sweep(real_records):
    records = [r for r in real_records if r["strategy"] != "fixed"]
    (s,) = agg.aggregate_records(records).meta["settings"]
    assert s["reference"] == "fixed(weights=1/1)"


# -- constructed records -----------------------------------------------------------------------
def _synthetic(label, seed, values, *, directions=None, options=None, base=None, params=None):
    """A minimal record: tasks a (metric m1) and b (metric m2) with given test values."""
    directions = directions or {"m1": True, "m2": False}
    base = base or label.split("(")[0]
    cfg = {"task": "toy", "strategy": base, "seed": seed, "task_options": options or {},
           "strategy_params": params or {}, "epochs": 2, "batch_size": 8, "lr": 0.1,
           "architecture": "shared", "single_task": None}
    summary = [[1, split, t, m, v] for split in ("val", "test")
               for (t, m), v in zip((("a", "m1"), ("b", "m2")), values)]
    return {"schema": 1, "run_id": f"{label}-{seed}-{json.dumps(options)}", "config": cfg,
            "task_pair": "toy", "strategy": label, "seed": seed,
            "tasks": [{"name": "a", "kind": "classification", "metrics": ["m1"]},
                      {"name": "b", "kind": "regression", "metrics": ["m2"]}],
            "metric_directions": directions, "code": {"strategy": base, "task": "t",
                                                      "harness": "h"},
            "status": "ok", "summary": summary, "throughput": {}, "provenance": {}}


def test_ranks_follow_the_recorded_direction_not_the_metric_name():
    # 'accuracy' recorded as lower-is-better: the lowest value must rank first; m2 is
    # recorded higher-is-better, so there the highest value ranks first
    dirs = {"accuracy": False, "m2": True}
    recs = []
    for seed in range(2):
        for label, acc, m2 in (("fixed", 0.9, 1.0), ("low", 0.1, 2.0)):
            r = _synthetic(label, seed, (acc, m2), directions=dirs)
            for row in r["summary"]:
                if row[3] == "m1":
                    row[3] = "accuracy"
            r["tasks"][0]["metrics"] = ["accuracy"]
            recs.append(r)
    summ = agg.aggregate_records(recs)["summary"]
    for metric in ("accuracy", "m2"):
        ranks = summ[summ["metric"] == metric].set_index("strategy")["rank"].to_dict()
        assert ranks == {"fixed": 2.0, "low": 1.0}, metric


def test_wilcoxon_with_six_seeds_and_the_dagger_mark():
    recs = []
    for seed in range(6):
        recs.append(_synthetic("fixed", seed, (0.5 + 0.01 * seed, 2.0)))
        recs.append(_synthetic("better", seed, (0.6 + 0.02 * seed, 1.0 + 0.1 * seed)))
    tables = agg.aggregate_records(recs)
    row = tables["significance"].query("strategy == 'better' and metric == 'm1'").iloc[0]
    assert row["test"] == stats.WILCOXON and row["p"] == pytest.approx(2 / 64)
    assert row["better"] and row["significant"]
    text = display.comparison_display(tables, "toy").text.set_index("strategy")
    assert text.loc["better", "a m1 ↑"].endswith("†")


def test_cross_pair_friedman_over_settings():
    recs = []
    # three settings, three strategies; 'good' wins everywhere, 'bad' loses everywhere
    for opt in ("x", "y", "z"):
        for seed in range(2):
            for label, v in (("fixed", 0.5), ("good", 0.9), ("bad", 0.1)):
                recs.append(_synthetic(label, seed, (v, 1 - v), options={"o": opt}))
    tables = agg.aggregate_records(recs)
    f = tables.meta["friedman"]
    # ranks (1, 2, 3) in each of N = 3 blocks: chi2 = 12/(3*3*4) * (9+36+81) - 3*3*4 = 6
    assert f["statistic"] == pytest.approx(6.0) and f["n_blocks"] == 3 and f["k"] == 3
    assert f["cd"] == pytest.approx(2.343 * math.sqrt(12 / 18), abs=1e-3)
    cross = tables["cross_pair"].set_index("strategy")
    assert cross.loc["good", "friedman_rank"] == 1.0 and cross.loc["bad", "mean_rank"] == 3.0


def test_pareto_points_mark_strategies_inside_the_front():
    recs = []
    for seed in range(2):
        for w, (m1, m2) in (((0.5, 1.5), (0.4, 0.2)), ((1.0, 1.0), (0.6, 0.4)),
                            ((1.5, 0.5), (0.8, 0.6))):
            recs.append(_synthetic(f"fixed(weights={w[0]:g}/{w[1]:g})", seed, (m1, m2),
                                   base="fixed", params={"weights": list(w)}))
        recs.append(_synthetic("inside", seed, (0.55, 0.5)))  # worse than the 1/1 point
        recs.append(_synthetic("beyond", seed, (0.9, 0.1)))
    tables = agg.aggregate_records(recs)
    pts = agg.pareto_points(tables, "toy", [("a", "m1"), ("b", "m2")]).set_index("strategy")
    assert pts.loc["inside", "dominated_by"] == ["fixed(weights=1/1)"]
    assert pts.loc["beyond", "dominated_by"] == []
    assert pts["on_front"].sum() == 3


# -- bad input ---------------------------------------------------------------------------------
def test_missing_empty_and_corrupt_runs_folders(tmp_path, capsys):
    with pytest.raises(UserError, match="does not exist"):
        agg.aggregate_dir(tmp_path / "nope")
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match="no run records"):
        agg.aggregate_dir(tmp_path / "runs")
    (tmp_path / "runs" / "clsreg").mkdir()
    (tmp_path / "runs" / "clsreg" / "x.json").write_text("{trunc")
    code = main(["aggregate", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and "1 corrupt file(s)" in err and len(err.strip().splitlines()) == 1


def test_aggregate_command_writes_tables(tmp_path, real_records, capsys):
    store = RunStore(tmp_path / "runs")
    for r in real_records[:8]:
        store.write(r)
    store.root.joinpath("clsreg", "bad.json").write_text("{")
    out = tmp_path / "tables"
    assert main(["aggregate", "--runs-dir", str(store.root), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "aggregated 8 run records" in captured.out and "corrupt" in captured.err
    assert {f"{n}.csv" for n in agg.TABLE_NAMES} <= {p.name for p in out.iterdir()}
    assert (out / "meta.json").is_file() and (out / "tables.md").is_file()
    assert len(pd.read_csv(out / "long.csv")) > 0


def test_terminal_table_still_prints(real_records):
    text = display.terminal_table(real_records)
    assert "clsreg" in text and "dwa" in text and "species accuracy" in text
    assert "speed vs fixed" not in text and "samples/s (sweep)" in text  # never ranked


@pytest.mark.parametrize("argv", [["--help"], ["aggregate", "--help"], ["report", "--help"]])
def test_help_pages_render(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out
