"""Grid points chosen on validation: by hand, with failures and ties, and end to end."""

import json

import pytest

from mtl_bench import aggregate as agg
from mtl_bench.cli import main
from mtl_bench.selection import record_score, score, selection_metrics
from mtl_bench.store import RunStore
from mtl_bench.train import RunConfig, train_run
from mtl_bench.tuning import choose_all, parse_tuned, read_spec


def _record(lr, seed, val0, val_sel, selected=2, status="ok", strategy="fixed", params=None):
    """A record of the earlier layout (no stored score): rescored by its validation losses."""
    rows = []
    for task, v0 in val0.items():
        rows.append([0, "val", task, "loss", v0])
        rows.append([1, "val", task, "loss", 99.0])  # another epoch, never read
        rows.append([selected, "val", task, "loss", val_sel[task]])
        rows.append([selected, "test", task, "loss", 0.0])
    label = strategy + (f"(alpha={params['alpha']})" if params else "")
    return {"run_id": f"{label}-{lr}-{seed}", "status": status, "seed": seed,
            "task_pair": "clsreg", "strategy": label, "selected_epoch": selected,
            "config": {"task": "clsreg", "strategy": strategy, "lr": lr, "seed": seed,
                       "strategy_params": params or {}, "task_options": {},
                       "single_task": None},
            "curves": {"columns": ["epoch", "split", "task", "metric", "value"], "rows": rows}}


V0 = {"a": 1.0, "b": 1.0}


def test_the_best_mean_validation_score_wins_and_a_failed_seed_disqualifies():
    records = [
        # lr 1e-3: loss ratios 0.5, 0.7 -> scores 0.5, 0.3 -> mean 0.4
        _record(1e-3, 0, V0, {"a": 0.5, "b": 0.5}), _record(1e-3, 1, V0, {"a": 0.7, "b": 0.7}),
        # lr 3e-3: 0.6, 0.4 -> mean 0.5 (chosen)
        _record(3e-3, 0, V0, {"a": 0.4, "b": 0.4}), _record(3e-3, 1, V0, {"a": 0.6, "b": 0.6}),
        # lr 9e-3 scores 0.9 on one seed but the other failed: not eligible
        _record(9e-3, 0, V0, {"a": 0.1, "b": 0.1}),
        _record(9e-3, 1, V0, {"a": 0.1, "b": 0.1}, status="failed"),
        # dwa: equal scores (0.7) -> the first grid point, the smaller lr, at the grid's edge
        _record(1e-3, 0, V0, {"a": 0.3, "b": 0.3}, strategy="dwa"),
        _record(3e-3, 0, V0, {"a": 0.2, "b": 0.4}, strategy="dwa"),
    ]
    choices = choose_all(records, ["lr"])
    fixed, dwa = choices[("fixed", None)], choices[("dwa", None)]
    assert fixed.chosen.point == {"lr": 3e-3}
    assert [c.score for c in fixed.candidates][:2] == pytest.approx([0.4, 0.5])
    assert not fixed.candidates[2].eligible and fixed.candidates[2].n_failed == 1
    assert fixed.at_edge == []  # 3e-3 is inside the grid 1e-3..9e-3
    assert dwa.chosen.point == {"lr": 1e-3} and dwa.at_edge == ["lr"]


def test_a_tuned_hyper_parameter_is_a_grid_point_of_one_cell():
    records = [_record(1e-3, 0, V0, {"a": 0.5, "b": 0.5}, strategy="gradnorm",
                       params={"alpha": 0.5}),
               _record(1e-3, 0, V0, {"a": 0.2, "b": 0.2}, strategy="gradnorm",
                       params={"alpha": 1.5})]
    side_by_side = choose_all(records, ["lr"])
    assert set(side_by_side) == {("gradnorm(alpha=0.5)", None), ("gradnorm(alpha=1.5)", None)}
    tuned = choose_all(records, ["lr", "gradnorm.alpha"])
    assert list(tuned) == [("gradnorm", None)]
    assert tuned[("gradnorm", None)].chosen.point == {"lr": 1e-3, "alpha": 1.5}


def test_parse_tuned():
    assert parse_tuned(["lr", " gradnorm.alpha", "lr"]) == ["lr", "gradnorm.alpha"]
    for bad in (["momentum"], ["gradnorm."], [""]):
        with pytest.raises(Exception, match="--tune"):
            parse_tuned(bad)


def test_the_stored_score_is_the_primary_rule_at_the_selected_epoch():
    rec = train_run(RunConfig(strategy="dwa", epochs=4, seed=1))
    rows = rec["curves"]["rows"]
    val = {}
    for e, split, t, m, v in rows:
        if split == "val":
            val.setdefault(e, {})[(t, m)] = v
    metrics = selection_metrics("primary", rec["tasks"])
    by_epoch = {e: score(val[e], val[0], metrics) for e in range(0, 5)}
    best = max(by_epoch.values())
    assert rec["selected_epoch"] == min(e for e, v in by_epoch.items() if v == best)
    assert record_score(rec) == pytest.approx(best)
    assert rec["selection"]["rule"] == "primary"


def test_tune_lr_then_report_reports_the_chosen_point_only(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "rep"
    code = main(["run", "--strategy", "fixed,dwa", "--epochs", "2", "--tune", "lr",
                 "--lr", "1e-3,1e-2", "--jobs", "1", "--quiet", "--runs-dir", str(runs),
                 "--report", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert read_spec(runs) == ["lr"]
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    tables = agg.Tables.read(out / "tables")
    tuning = tables["tuning"]
    assert set(tuning["strategy"]) == {"fixed", "dwa"} and len(tuning) == 4
    records = {r["run_id"]: r for r in RunStore(runs).load().records}
    for lb in ("fixed", "dwa"):
        rows = tuning[tuning["strategy"] == lb]
        chosen = rows[rows["chosen"]].iloc[0]
        assert chosen["val_score"] == rows["val_score"].max()
        assert f"tuned {lb}: {chosen['point']}" in printed
        # the summary holds one seed's runs: the chosen lr's
        assert (tables["runs"]["strategy"] == lb).sum() == 1
        run_id = tables["runs"].loc[tables["runs"]["strategy"] == lb, "run_id"].iloc[0]
        assert records[run_id]["config"]["lr"] == chosen["grid_lr"]
    md = (out / "report.md").read_text()
    assert "lr" in md and "Tuning" in md
    assert json.loads((runs / "tuning.json").read_text())["tuned"] == ["lr"]


def test_a_tuned_sweep_gives_a_baseline_of_its_chosen_points_and_checks_clean(tmp_path, capsys):
    runs, base = tmp_path / "runs", tmp_path / "baselines"
    assert main(["run", "--strategy", "fixed,dwa", "--epochs", "2", "--tune", "lr", "--lr",
                 "1e-3,1e-2", "--seeds", "2", "--jobs", "1", "--quiet", "--runs-dir",
                 str(runs)]) == 0
    assert main(["baseline", "save", "tuned", "--runs-dir", str(runs), "--baselines-dir",
                 str(base)]) == 0
    doc = json.loads((base / "tuned" / "baseline.json").read_text())
    # one run per strategy and seed: the chosen lr's, as in the report
    assert doc["n_runs"] == 4 and all("lr" not in r["config"] for r in doc["runs"])
    assert {r["grid"]["lr"] for r in doc["runs"]} <= {1e-3, 1e-2}
    capsys.readouterr()
    assert main(["check", "--baseline", "tuned", "--baselines-dir", str(base), "--runs-dir",
                 str(runs)]) == 0
    assert "0 worse" in capsys.readouterr().err
