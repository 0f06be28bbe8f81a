"""Task pairs of the reproductions (gradnorm-toy, multi-digits) and the reproduce module."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate
from scipy import stats as scipy_stats

from mtl_bench import reproduce
from mtl_bench.errors import UserError
from mtl_bench.reproduce import (
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    Context,
    verdict_all_seeds,
    verdict_gap,
    write_section,
)
from mtl_bench.strategy import label
from mtl_bench.task import mse_loss
from mtl_bench.tasks.gradnorm_toy import GradNormToy, teacher, toy_arrays
from mtl_bench.tasks.multi_digits import (
    MultiDigits,
    composite_arrays,
    load_digit_images,
    overlay,
    pair_indices,
    partners,
)
from mtl_bench.train import RunConfig, train_run


# -- gradnorm-toy ------------------------------------------------------------------------------
def test_toy_shapes_and_target_scales():
    x, ys, info = toy_arrays(2000, (1.0, 100.0))
    assert x.shape == (2000, 250)
    assert [y.shape for y in ys] == [(2000, 100), (2000, 100)]
    # |sigma tanh(.)| <= sigma
    assert np.abs(ys[0]).max() <= 1.0 and np.abs(ys[1]).max() <= 100.0
    # Golden value from the generating equations, not from the code: with E||x||^2 = 1 and
    # entry variances 10 + 3.5, each pre-activation is ~ N(0, 13.5), so the target's RMS is
    # sigma * sqrt(E[tanh(Z)^2]), Z ~ N(0, 13.5), integrated numerically here.
    e_tanh2 = integrate.quad(lambda z: np.tanh(z) ** 2 * scipy_stats.norm.pdf(z, scale=13.5 ** 0.5),
                             -60, 60)[0]
    for sigma, rms in zip((1.0, 100.0), info["target_rms"]):
        assert rms == pytest.approx(sigma * math.sqrt(e_tanh2), rel=0.03)
    assert info["target_rms"][1] / info["target_rms"][0] == pytest.approx(100, rel=0.03)


def test_toy_teacher_reads_the_paper_as_variances():
    b, eps = teacher(2)
    assert b.shape == (100, 250) and eps[0].shape == (100, 250)
    assert b.var() == pytest.approx(10.0, rel=0.05)
    assert np.concatenate(eps).var() == pytest.approx(3.5, rel=0.05)
    assert b.mean() == pytest.approx(0.0, abs=0.05)


def test_toy_construction_is_deterministic_and_independent_of_the_run_seed():
    x1, ys1, _ = toy_arrays(300, (1.0, 100.0))
    x2, ys2, _ = toy_arrays(300, (1.0, 100.0))
    assert np.array_equal(x1, x2) and all(np.array_equal(a, b) for a, b in zip(ys1, ys2))
    # task i's teacher and the inputs do not change with the number of tasks
    x10, ys10, _ = toy_arrays(300, [1.0, 100.0] + [5.0] * 8)
    assert np.array_equal(x1, x10) and np.array_equal(ys1[1], ys10[1])
    # another data seed is another problem
    x3, _, _ = toy_arrays(300, (1.0, 100.0), data_seed=1)
    assert not np.array_equal(x1, x3)

    pair = GradNormToy(n_samples=300)
    a, b = pair.load(0), pair.load(1)
    assert a.info["split_sha"] != b.info["split_sha"]  # the run seed changes the split only

    def all_rows(data, task):
        rows = torch.cat([s.targets[task] for s in (data.train, data.val, data.test)]).numpy()
        return rows[np.lexsort(rows.T[::-1])]

    for task in (0, 1):
        # the same 300 target rows, only dealt to other splits
        assert np.array_equal(all_rows(a, task), all_rows(b, task))
        generated = ys1[task].astype(np.float32)
        np.testing.assert_array_equal(all_rows(a, task),
                                      generated[np.lexsort(generated.T[::-1])])


def test_toy_targets_keep_their_scale():
    data = GradNormToy(n_samples=300).load(0)
    assert data.target_stats == ((0.0, 1.0), (0.0, 1.0))
    rms = [float(t.pow(2).mean().sqrt()) for t in data.train.targets]
    assert rms[1] / rms[0] == pytest.approx(100, rel=0.1)
    assert [t.shape[1] for t in data.train.targets] == [100, 100]


def test_toy_ten_tasks_and_option_errors():
    pair = GradNormToy(n_tasks=10)
    assert len(pair.tasks()) == 10
    assert pair.sigmas[0] == 1.0 and pair.sigmas[-1] == pytest.approx(100.0)
    assert all(b > a for a, b in zip(pair.sigmas, pair.sigmas[1:]))
    with pytest.raises(UserError, match=r"Parameter `n_tasks` should be 2 or 10\. Found"):
        GradNormToy(n_tasks=3)
    with pytest.raises(UserError, match="Parameter `sigmas` should be a list of 2"):
        GradNormToy(sigmas=[1.0])
    with pytest.raises(UserError, match="Parameter `n_samples`"):
        GradNormToy(n_samples=5)


def test_toy_network_is_the_papers():
    pair = GradNormToy(n_samples=300)
    model = pair.build_model(pair.load(0))
    linears = [m for m in model.trunk if isinstance(m, torch.nn.Linear)]
    relus = [m for m in model.trunk if isinstance(m, torch.nn.ReLU)]
    assert [(m.in_features, m.out_features) for m in linears] == [(250, 100)] + [(100, 100)] * 3
    assert len(relus) == 4
    assert all(isinstance(h, torch.nn.Linear) and (h.in_features, h.out_features) == (100, 100)
               for h in model.heads)


def test_mse_loss_on_wide_targets_is_the_mean_over_every_element():
    out, y = torch.randn(8, 100), torch.randn(8, 100)
    assert float(mse_loss(out, y)) == pytest.approx(float(((out - y) ** 2).mean()), rel=1e-6)


# -- multi-digits ------------------------------------------------------------------------------
def test_overlay_hand_made_case():
    left = np.zeros((8, 8))
    right = np.zeros((8, 8))
    left[:, 4] = 1.0
    left[:, 7] = 3.0
    left[2, 0] = 7.0
    right[:, 0] = 2.0
    right[:, 3] = 5.0
    right[5, 7] = 4.0
    # right column c lands on canvas column c + 4; where both have ink the larger value wins
    expected = np.zeros((8, 12))
    expected[2, 0] = 7.0
    expected[:, 4] = 2.0  # max(left col 4 = 1, right col 0 = 2)
    expected[:, 7] = 5.0  # max(left col 7 = 3, right col 3 = 5)
    expected[5, 11] = 4.0
    np.testing.assert_array_equal(overlay(left, right, 4), expected)
    assert overlay(left, right, 0).shape == (8, 16)
    np.testing.assert_array_equal(overlay(left[None], right[None], 4)[0], expected)


def test_partners_have_no_fixed_points():
    for n in range(2, 12):
        for seed in range(5):
            perm = partners(n, np.random.default_rng(seed))
            assert sorted(perm) == list(range(n))
            assert not np.any(perm == np.arange(n))


def test_composites_match_their_digits_and_pools_are_disjoint():
    images, labels = load_digit_images()
    arrays = composite_arrays(pairs_per_image=2, overlap=4)
    ids = {}
    for name in ("train", "val", "test"):
        x, yl, yr, li, ri = arrays[name]
        canvas = x.reshape(-1, 8, 12) * 16.0
        np.testing.assert_allclose(canvas[:, :, :4], images[li][:, :, :4])
        np.testing.assert_allclose(canvas[:, :, 8:], images[ri][:, :, 4:])
        np.testing.assert_allclose(canvas[:, :, 4:8],
                                   np.maximum(images[li][:, :, 4:], images[ri][:, :, :4]))
        np.testing.assert_array_equal(yl, labels[li])
        np.testing.assert_array_equal(yr, labels[ri])
        assert not np.any(li == ri)
        # every image of the pool is the left digit twice and the right digit twice
        assert np.all(np.bincount(li)[np.unique(li)] == 2)
        assert np.all(np.bincount(ri)[np.unique(ri)] == 2)
        ids[name] = set(li) | set(ri)
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"]
    assert not ids["val"] & ids["test"]
    assert len(ids["train"] | ids["val"] | ids["test"]) == len(images)


def test_pair_indices_stay_in_the_pool():
    pool = np.array([3, 8, 11, 40])
    left, right = pair_indices(pool, 3, np.random.default_rng(0))
    assert set(left) == set(right) == set(pool) and len(left) == 12


def test_multi_digits_construction_is_independent_of_the_run_seed():
    pair = MultiDigits(pairs_per_image=1)
    a, b = pair.load(0), pair.load(7)
    for sa, sb in zip(a.splits().values(), b.splits().values()):
        assert torch.equal(sa.inputs[0], sb.inputs[0])
        assert all(torch.equal(ta, tb) for ta, tb in zip(sa.targets, sb.targets))
    assert a.train.inputs[0].shape[1] == 96 and a.info["canvas"] == [8, 12]
    other = MultiDigits(pairs_per_image=1, construction_seed=1).load(0)
    assert not torch.equal(a.test.inputs[0], other.test.inputs[0])
    with pytest.raises(UserError, match="Parameter `overlap` should be an integer from 0 to 7"):
        MultiDigits(overlap=8)


# -- one short run of each pair ----------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_records():
    out = []
    for strategy, params in reproduce.TOY_STRATEGIES:
        for seed in (0, 1):
            out.append(train_run(RunConfig(task="gradnorm-toy", strategy=strategy,
                                           strategy_params=params, seed=seed, epochs=2,
                                           task_options={"n_samples": 200})))
    return out


def test_toy_runs_end_ok_with_metrics_on_wide_targets(toy_records):
    for rec in toy_records:
        assert rec["status"] == "ok", rec.get("reason")
        curves = pd.DataFrame(rec["curves"]["rows"], columns=rec["curves"]["columns"])
        assert {0, 1, 2} == set(curves["epoch"])
        test = curves[curves["split"] == "test"]
        assert set(test["metric"]) == {"loss", "rmse", "mae", "r2"}
        assert np.isfinite(test["value"]).all()
        # the loss is the element mean of the squared error, so rmse^2 equals it
        for task in ("task1", "task2"):
            at = test[(test["task"] == task) & (test["epoch"] == 2)].set_index("metric")["value"]
            assert at["rmse"] ** 2 == pytest.approx(at["loss"], rel=1e-4)


def test_multi_digits_run_ends_ok():
    rec = train_run(RunConfig(task="multi-digits", strategy="fixed", epochs=1,
                              task_options={"pairs_per_image": 1}))
    assert rec["status"] == "ok", rec.get("reason")
    assert set(rec["details"]) == {"left", "right"}
    acc = [row[4] for row in rec["curves"]["rows"] if row[1] == "test" and row[3] == "accuracy"]
    assert all(0.0 <= a <= 1.0 for a in acc)


# -- reproduce: verdicts, docs sections, the toy analysis ---------------------------------------
def test_verdict_rules():
    assert verdict_all_seeds(3, 3) == REPRODUCED
    assert verdict_all_seeds(1, 3) == PARTLY
    assert verdict_all_seeds(0, 3) == NOT_REPRODUCED
    assert verdict_all_seeds(0, 0) == NOT_REPRODUCED
    # a claimed gap of +0.8: CI above zero / straddling with positive mean / negative mean
    assert verdict_gap(0.8, 0.1, 1.5) == REPRODUCED
    assert verdict_gap(0.8, -0.2, 1.0) == PARTLY
    assert verdict_gap(0.8, -1.0, 0.2) == NOT_REPRODUCED
    assert verdict_gap(-0.8, -1.5, -0.1) == REPRODUCED
    # a near-tie (+0.03): no clear difference either way is a reproduction
    assert verdict_gap(0.03, -0.5, 0.4) == REPRODUCED
    assert verdict_gap(0.03, 0.6, 1.2) == NOT_REPRODUCED
    assert verdict_gap(0.8, math.nan, math.nan) == NOT_REPRODUCED


def test_paired_gap_table_matches_a_hand_computed_interval():
    acc = {"mgda": pd.DataFrame({"left": [97.0, 98.0, 97.5], "right": [95.0, 95.5, 96.0]},
                                index=[0, 1, 2]),
           "fixed": pd.DataFrame({"left": [96.0, 96.5, 96.9], "right": [95.0, 95.0, 95.0]},
                                 index=[0, 1, 2])}
    _, rows = reproduce.MultiDigits()._gaps(acc)
    cell = rows[("MGDA-UB", "uniform scaling", "left")]
    d = np.array([1.0, 1.5, 0.6])
    half = scipy_stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert cell["interval"].mean == pytest.approx(d.mean())
    assert cell["interval"].low == pytest.approx(d.mean() - half)
    assert cell["paper"] == pytest.approx(97.26 - 96.46)
    # 1.03 +- 1.12 straddles zero with a positive mean: the paper's +0.80 is only partly backed
    assert cell["verdict"] == PARTLY
    assert rows[("single-task", "uniform scaling", "left")]["interval"].n == 0


def test_write_section_replaces_one_section_and_keeps_the_other(tmp_path):
    docs = tmp_path / "docs" / "reproductions.md"
    write_section(docs, "b", "B one\n", ["a", "b"])
    write_section(docs, "a", "A one\n", ["a", "b"])
    write_section(docs, "b", "B two\n", ["a", "b"])
    text = docs.read_text()
    assert text.startswith("# Reproductions of published findings")
    assert "A one" in text and "B two" in text and "B one" not in text
    assert text.index("A one") < text.index("B two")
    assert text.count("<!-- reproduction: b -->") == 1


def test_toy_section_is_computed_from_records(toy_records, tmp_path):
    ctx = Context([0, 1], 2, 1, tmp_path / "runs", tmp_path / "docs" / "reproductions.md", {})
    text = reproduce.GradNormToy().section(toy_records, ctx)
    assert "### 2 tasks" in text and "### 10 tasks" in text and "No finished runs." in text
    assert "--set gradnorm.alpha=0.12" in text
    # one finding per T=2 claim, each with a computed "k of n seeds" and a verdict
    assert text.count("**") >= 10 and "of 2 seeds" in text
    assert any(v in text for v in (REPRODUCED, PARTLY, NOT_REPRODUCED))
    for name in ("gradnorm-toy_T2", "gradnorm-toy_T2_weights_all"):
        assert (tmp_path / "docs" / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"figures/{name}.png" in text


def test_report_only_refuses_missing_runs_and_cli_reports_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="--report-only: 24 of 24 runs are missing in"):
        reproduce.run_reproduction("gradnorm-toy", runs_root=tmp_path / "runs",
                                   docs=tmp_path / "r.md", report_only=True)
    assert reproduce.main(["no-such-thing"]) == 2
    assert "unknown reproduction 'no-such-thing'" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_records_from_other_code_are_stale_unless_allowed(toy_records, tmp_path):
    from mtl_bench.store import RunStore

    store = RunStore(tmp_path / "runs")
    record = dict(toy_records[0])
    config = RunConfig(**{k: v for k, v in record["config"].items()})
    store.write(record)
    assert reproduce.stale_or_missing([config], store) == []
    store.write({**record, "code": {**record["code"], "harness": "0" * 16}})
    assert reproduce.stale_or_missing([config], store) == [config]
    assert reproduce.stale_or_missing([config], store, allow_stale=True) == []
    missing = RunConfig(task="gradnorm-toy", seed=9, epochs=2)
    assert reproduce.stale_or_missing([missing], store, allow_stale=True) == [missing]


def test_equivalent_toy_options_share_one_run_id():
    ten = RunConfig(task="gradnorm-toy", task_options={"n_tasks": 10})
    spelled = RunConfig(task="gradnorm-toy", task_options={
        "n_tasks": 10, "sigmas": list(GradNormToy(n_tasks=10).sigmas)})
    assert ten.run_id == spelled.run_id
    assert RunConfig(task="gradnorm-toy", task_options={"sigmas": [1, 100]}).run_id == \
        RunConfig(task="gradnorm-toy").run_id
    assert RunConfig(task="gradnorm-toy", task_options={"sigmas": [1, 10]}).run_id != \
        RunConfig(task="gradnorm-toy").run_id


# -- the reproductions package: registry and command line ---------------------------------------
def test_every_reproduction_is_registered_in_page_order():
    from mtl_bench.reproductions import REPRODUCTIONS

    assert list(REPRODUCTIONS) == ["gradnorm-toy", "multi-digits", "toy-2d", "quadratic"]
    assert reproduce.REPRODUCTIONS is REPRODUCTIONS


@pytest.mark.parametrize("name", ["toy-2d", "quadratic", "all"])
def test_cli_help_lists_every_reproduction(name, capsys):
    with pytest.raises(SystemExit) as exc:
        reproduce.main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for listed in ("gradnorm-toy", "multi-digits", "toy-2d", "quadratic", "--report-only"):
        assert listed in out


@pytest.mark.parametrize("argv", [["toy-3d"], ["quadratic", "--jobs", "0"],
                                  ["toy-2d", "--epochs", "x"], []])
def test_cli_user_errors_are_one_error_line_and_exit_2(argv, capsys, tmp_path):
    code = reproduce.main([*argv, "--runs-dir", str(tmp_path / "runs"),
                           "--docs", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "runs").exists()


# -- toy-2d: verdict rules on constructed records ----------------------------------------------
def toy2d_record(strategy, start, distance, position, path=((0.0, 0.0), (1.0, -2.0)),
                 losses=(0.5, 1.5), status="ok"):
    """A record as the harness writes it, reduced to what the toy-2d analysis reads; the
    strategy is named as in the grid and labelled as the sweep labels it (famo(gamma=0))."""
    from mtl_bench.reproductions.toy_2d import STRATEGIES, STRATEGY_GRID

    strategy = dict(zip((n for n, _ in STRATEGY_GRID), STRATEGIES))[strategy]
    rows = []
    for epoch, (x1, x2) in enumerate(path):
        for task, loss in zip(("task1", "task2"), losses):
            for metric, value in (("objective", loss), ("pareto_distance", distance),
                                  ("front_position", position), ("x1", x1), ("x2", x2)):
                rows.append([epoch, "test", task, metric, value])
                rows.append([epoch, "val", task, metric, -99.0])  # another split: not read
    return {"run_id": f"{strategy}-{start}", "task_pair": "toy-2d", "strategy": strategy,
            "seed": start, "status": status, "reason": "" if status == "ok" else "boom",
            "config": {"task_options": {}, "lr": 1e-3, "batch_size": 1,
                       "epochs": len(path) - 1},
            "data": {"start_index": start, "variant": "scaled", "n_train": 500},
            "tasks": [{"name": "task1"}, {"name": "task2"}], "wall_s": 1.0,
            "provenance": {"device": "cpu", "threads": 1, "torch": "x"},
            "curves": {"columns": ["epoch", "split", "task", "metric", "value"],
                       "rows": rows if status == "ok" else []}}


def toy2d_ends(cases):
    from mtl_bench.reproductions.toy_2d import toy_end

    return [toy_end(toy2d_record(*c)) for c in cases]


def test_toy2d_record_reading_takes_the_last_epoch_of_the_test_split():
    from mtl_bench.reproductions.toy_2d import toy_end

    e = toy_end(toy2d_record("famo", 3, 0.01, 0.4, path=((-7.5, -0.5), (0, -5), (7, -8)),
                             losses=(99.0, 99.0)))
    assert (e.strategy, e.start, e.ok) == ("famo(gamma=0)", 3, True)
    np.testing.assert_array_equal(e.path, [[-7.5, -0.5], [0, -5], [7, -8]])
    assert e.distance == 0.01 and e.position == 0.4
    # the unshifted losses at the final x = (7, -8), by hand: c1 = 0, c2 = tanh(4),
    # g1 = (0 + 0) / 10 - 20 = -20, g2 = (14^2 + 0) / 10 - 20 = -0.4; L1 carries the 0.1
    assert e.losses == pytest.approx((0.1 * math.tanh(4) * -20, math.tanh(4) * -0.4),
                                     rel=1e-12)
    failed = toy_end(toy2d_record("famo", 4, 0.0, 0.5, status="failed"))
    assert not failed.ok and failed.where == "failed" and not failed.reaches


def test_toy2d_thresholds_at_their_boundaries():
    from mtl_bench.reproductions import toy_2d as t

    assert (t.REACH_TOL, t.EXTREME, t.BALANCED) == (0.05, 0.15, (0.25, 0.75))
    at_tol, below, extreme_lo, extreme_hi, just_in, bal_lo, bal_hi, just_out = toy2d_ends([
        ("mgda", 0, 0.05, 0.0), ("mgda", 0, 0.0499, 0.0), ("mgda", 0, 0.0, 0.15),
        ("mgda", 0, 0.0, 0.85), ("mgda", 0, 0.0, 0.1501), ("mgda", 0, 0.0, 0.25),
        ("mgda", 0, 0.0, 0.75), ("mgda", 0, 0.0, 0.2499)])
    # distance exactly at the tolerance does not reach the front (d < 0.05 is required)
    assert not at_tol.reaches and at_tol.where == "off the front, still moving"
    assert not at_tol.extreme
    assert below.reaches and below.extreme
    assert extreme_lo.extreme and extreme_hi.extreme and not just_in.extreme
    assert just_in.where == "in between" and just_out.where == "in between"
    assert bal_lo.balanced and bal_hi.balanced and bal_lo.where == "balanced"


def test_toy2d_equal_weights_rule():
    from mtl_bench.reproductions.toy_2d import equal_weights_finding

    # three epochs: the last 10% is one epoch, so "late move" = |x_3 - x_2|
    def stop(dx):
        return ((9, 9), (6, 5), (5.0, 3.9), (5.0 + dx, 3.9))

    reach_all = [("fixed", k, 0.001, 0.5) for k in range(5)]
    f = equal_weights_finding(toy2d_ends(reach_all))
    assert f.verdict == NOT_REPRODUCED and "0 of 5 finished runs" in f.evidence
    # a run exactly at the tolerance is off the front; one that moved exactly 0.05 in its
    # last epoch is stuck; CAGrad's sixth start is not among the five
    one_off = reach_all[:4] + [("fixed", 4, 0.05, 0.0, stop(0.05)), ("fixed", 5, 3.0, 1.0)]
    f = equal_weights_finding(toy2d_ends(one_off))
    assert f.verdict == REPRODUCED and "1 of 5 finished runs" in f.evidence
    assert "(9, -1): d = 0.05, p = 0.00" in f.evidence and "1 of them stuck" in f.evidence
    assert "(9, -1) moved 0.05" in f.evidence
    # off the front but still moving: partly
    moving = reach_all[:4] + [("fixed", 4, 2.0, 0.0, stop(0.0501))]
    f = equal_weights_finding(toy2d_ends(moving))
    assert f.verdict == PARTLY and "0 of them stuck" in f.evidence
    # a crashed run is not a run that got stuck
    crashed = reach_all[:4] + [("fixed", 4, 9.0, 0.0, ((0, 0),), (0, 0), "failed")]
    f = equal_weights_finding(toy2d_ends(crashed))
    assert f.verdict == NOT_REPRODUCED and "0 of 4 finished runs" in f.evidence
    assert "1 run(s) failed" in f.evidence


def test_toy2d_per_run_rules_count_failed_and_missing_runs_against_the_claim():
    from mtl_bench.reproductions.toy_2d import balanced_finding, extremes_finding

    ends = [("mgda", k, 0.0, 0.05 if k % 2 else 0.95) for k in range(5)]
    ends += [("pcgrad", k, 0.0, 1.0) for k in range(5)]
    assert extremes_finding(toy2d_ends(ends)).verdict == REPRODUCED
    # one PCGrad run balanced instead: that strategy is partly, so the finding is partly
    ends[-1] = ("pcgrad", 4, 0.0, 0.5)
    f = extremes_finding(toy2d_ends(ends))
    assert f.verdict == PARTLY and "PCGrad 4 of 5" in f.evidence and "MGDA 5 of 5" in f.evidence

    nash = [("nash_mtl", k, 0.001, 0.5, ((0, 0), (0.5, -8.4), (0.5, -8.4))) for k in range(5)]
    famo = [("famo", k, 0.001, 0.25, ((0, 0), (3.0, -8.4), (3.5, -8.4))) for k in range(4)]
    f = balanced_finding(toy2d_ends(nash + famo + [("famo", 4, 0.0, 0.75)]))
    assert f.verdict == REPRODUCED
    # a run on the front that moved 0.5 in its last epoch is flagged, a settled one is not
    assert "(-8.5, 7.5): d = 0.001, p = 0.25, still moving (0.5)" in f.evidence
    assert "(-8.5, 7.5): d = 0.001, p = 0.50;" in f.evidence
    # FAMO's fifth run failed: 4 of 5; missing entirely: also 4 of 5
    f = balanced_finding(toy2d_ends(nash + famo + [("famo", 4, 0, 0.5, ((0, 0),), (0, 0),
                                                    "failed")]))
    assert f.verdict == PARTLY and "FAMO 4 of 5" in f.evidence
    f = balanced_finding(toy2d_ends(nash + famo))
    assert f.verdict == PARTLY and "FAMO 4 of 5" in f.evidence and "without a record" in f.evidence
    # nobody balanced: off the front (d = 0.2) at a balanced position does not count
    f = balanced_finding(toy2d_ends([(s, k, 0.2, 0.5) for s in ("nash_mtl", "famo")
                                     for k in range(5)]))
    assert f.verdict == NOT_REPRODUCED


def test_toy2d_section_is_computed_from_records(tmp_path):
    from mtl_bench.reproductions.toy_2d import STRATEGY_GRID, Toy2D

    records = [toy2d_record(s, k, 0.001 if s != "fixed" or k != 2 else 4.0,
                            {"mgda": 0.9, "pcgrad": 0.1}.get(s, 0.5),
                            path=((0, 0), (0.5, -4), (k - 2.0, -8.4), (k - 2.0, -8.4)))
               for s, _ in STRATEGY_GRID for k in range(6)]
    records[-1] = toy2d_record("famo", 5, 0, 0, status="failed")
    ctx = Context(list(range(6)), 1, 2, tmp_path / "runs", tmp_path / "docs" / "r.md", {})
    text = Toy2D().section(records, ctx)
    assert "36 runs" in text and "1 of 36 runs failed" in text
    # at x = (0, -8.4): c1 = 0, c2 = tanh(4.2), g1 = g2 = (49 + 0.1 * 0.4^2) / 10 - 20
    g = (49 + 0.1 * 0.4 ** 2) / 10 - 20
    l1, l2 = 0.1 * math.tanh(4.2) * g, math.tanh(4.2) * g
    assert (f"| fixed | (9, 9) | (0.000, -8.400) | {l1:.3f} | {l2:.3f} | 4 | 0.500 | 0 | "
            "off the front, stuck |") in text
    assert "| famo(gamma=0) | (-8.5, -5) | - | - | - | - | - | - | failed |" in text
    assert "--seed-batch 6" in text and "--strategy fixed,mgda,pcgrad,cagrad,nash_mtl,famo" in text
    assert "--set famo.gamma=0" in text
    assert "**1. Equal weights gets stuck from at least one start** — *reproduced*" in text
    assert "**2. MGDA and PCGrad stop near an end of the front** — *reproduced*" in text
    assert "**3. Nash-MTL and FAMO reach balanced points** — *reproduced*" in text
    assert "**4. CAGrad for context** — *no published claim*" in text
    assert (tmp_path / "docs" / "figures" / "toy-2d_trajectories.png").stat().st_size > 1000


# -- quadratic: verdict rules on constructed records -------------------------------------------
def quad_record(strategy, condition, seed, distance, weight, start=(4.0, 2.0), end=(0.2, 0.1),
                params=None, status="ok"):
    """A quadratic record reduced to what the analysis reads: f_i at epochs 0 and 1, the final
    distance to the Pareto set and the nearest point's w_1."""
    rows = []
    for epoch, f in enumerate((start, end)):
        for i, task in enumerate(("task1", "task2")):
            w = weight if i == 0 else 1.0 - weight
            for metric, value in (("objective", f[i]), ("pareto_distance", distance),
                                  ("pareto_weight", w)):
                rows.append([epoch, "test", task, metric, value])
    return {"run_id": f"{strategy}-{condition}-{seed}", "task_pair": "quadratic",
            "strategy": label(strategy, params or {}), "seed": seed, "status": status,
            "reason": "" if status == "ok" else "boom",
            "config": {"strategy": strategy, "strategy_params": params or {},
                       "task_options": {"condition": condition}, "lr": 0.01, "batch_size": 1,
                       "epochs": 1},
            "data": {"n_train": 100}, "tasks": [{"name": "task1"}, {"name": "task2"}],
            "wall_s": 1.0, "provenance": {"device": "cpu", "threads": 1, "torch": "x"},
            "curves": {"columns": ["epoch", "split", "task", "metric", "value"],
                       "rows": rows if status == "ok" else []}}


def quad_tol(condition):
    from mtl_bench.tasks.quadratic import problem

    _, u = problem({"condition": condition})
    return 0.01 * float(np.linalg.norm(u[0] - u[1]))


def test_quadratic_record_reading_and_derived_quantities():
    from mtl_bench.reproductions.quadratic import quad_end

    e = quad_end(quad_record("mgda", 100.0, 2, 1e-3, 0.5, start=(4.0, 2.0), end=(0.2, 0.4)))
    assert (e.strategy, e.condition, e.seed, e.ok) == ("mgda", 100.0, 2, True)
    assert e.ratios == pytest.approx((0.05, 0.2)) and e.spread == pytest.approx(4.0)
    assert e.tol == pytest.approx(quad_tol(100.0))
    # w = (1/2, 1/2) on losses whose second is scaled by 100: on the unscaled problem the
    # same point has weights proportional to (0.5, 50), so w'_1 = 0.5 / 50.5
    assert e.unscaled_weight == pytest.approx(0.5 / 50.5)
    assert math.isnan(e.fixed_gap)
    failed = quad_end(quad_record("famo", 1.0, 0, 0, 0.5, status="failed"))
    assert not failed.ok and not failed.on_set and not failed.balanced


def test_quadratic_fixed_weights_bound_against_a_hand_solved_minimiser():
    from mtl_bench.reproductions.quadratic import SKEWED, fixed_finding, quad_end
    from mtl_bench.tasks.quadratic import problem

    a, u = problem({"condition": 1.0})

    def x_star(w):  # the weighted minimiser, solved here from the normal equations
        return np.linalg.solve(w[0] * a[0] + w[1] * a[1], w[0] * a[0] @ u[0] + w[1] * a[1] @ u[1])

    tol = quad_tol(1.0)
    exact = quad_end(quad_record("fixed", 1.0, 0, 0.0, 0.75, params={"weights": SKEWED}))
    assert exact.fixed_gap == pytest.approx(0.0, abs=1e-12)  # 1.5 : 0.5 = 0.75 : 0.25
    off = quad_end(quad_record("fixed", 1.0, 1, 0.002, 0.6))
    gap = 0.002 + np.linalg.norm(x_star([0.6, 0.4]) - x_star([0.5, 0.5]))
    assert off.fixed_gap == pytest.approx(gap, rel=1e-9) and gap > tol
    f = fixed_finding([exact, off])
    assert f.verdict == PARTLY  # fixed's one run is off (not reproduced), the skewed one is on
    assert "fixed 0 of 1" in f.evidence and "fixed(weights=1.5/0.5) 1 of 1" in f.evidence


def test_quadratic_pareto_rule_at_the_tolerance():
    from mtl_bench.reproductions.quadratic import pareto_finding, quad_end

    tol = quad_tol(1.0)
    at = quad_end(quad_record("mgda", 1.0, 0, tol, 0.5))
    below = quad_end(quad_record("mgda", 1.0, 1, tol * 0.999, 0.5))
    assert not at.on_set and below.on_set  # strictly below the tolerance
    assert pareto_finding([below]).verdict == REPRODUCED
    assert pareto_finding([below, at]).verdict == PARTLY
    assert pareto_finding([at]).verdict == NOT_REPRODUCED
    failed = quad_end(quad_record("pcgrad", 1.0, 0, 0.0, 0.5, status="failed"))
    f = pareto_finding([below, failed])
    assert f.verdict == PARTLY and "pcgrad 0 of 1" in f.evidence and "mgda 1 of 1" in f.evidence


def test_quadratic_balance_classes():
    from mtl_bench.reproductions.quadratic import balance_class, balance_finding, quad_end

    def run(s, c, seed, r1, r2, w1=0.5):
        return quad_end(quad_record(s, c, seed, 0.0, w1, start=(1.0, 1.0), end=(r1, r2)))

    # a spread of exactly 10 is balanced; just above is not
    assert run("famo", 1.0, 0, 0.01, 0.1).balanced
    assert not run("famo", 1.0, 0, 0.01, 0.10001).balanced
    stays = [run("imtl_g", c, s, 0.02, 0.04) for c in (1.0, 100.0, 10000.0) for s in (0, 1)]
    loses = [run("fixed", c, s, 0.02, 0.04 if c < 10000 else 1e-6)
             for c in (1.0, 100.0, 10000.0) for s in (0, 1)]
    # one seed unbalanced at 100 is enough to lose balance there
    early = [run("mgda", c, s, 0.02, 0.04 if (c, s) != (100.0, 1) else 0.9)
             for c in (1.0, 100.0, 10000.0) for s in (0, 1)]
    # unbalanced already at the smallest condition, balanced later: no order to report
    mixed = [run("pcgrad", c, 0, 0.02, 0.9 if c == 1.0 else 0.04) for c in (1.0, 100.0)]
    never = [run("cagrad", c, 0, 0.001, 0.9, w1=1.0) for c in (1.0, 100.0)]
    assert balance_class(stays) == "stays balanced"
    assert balance_class(loses) == "loses balance at condition 10000"
    assert balance_class(early) == "loses balance at condition 100"
    assert balance_class(mixed) == "balanced in 1 of 2 runs"
    assert balance_class(never) == "never balanced"
    f = balance_finding(stays + loses + never)
    assert f.verdict is None  # context: no published claim is tested
    assert "fixed: loses balance at condition 10000" in f.evidence
    assert "cagrad: never balanced" in f.evidence
    assert "2 of 2 runs end at a task's own optimum" in f.evidence


def test_quadratic_invariance_rule_compares_each_seed_with_its_smallest_condition():
    from mtl_bench.reproductions.quadratic import drift, invariance_finding, quad_end

    def run(s, c, seed, w1, status="ok"):
        return quad_end(quad_record(s, c, seed, 0.0, w1, status=status))

    # the same unscaled trade-off w'_1 = 0.6 at c = 1 and c = 100: w_1 / (w_1 + 100 w_2) = 0.6
    w100 = 60 / 60.4
    same = [run("imtl_g", 1.0, s, 0.6) for s in (0, 1)] + \
        [run("imtl_g", 100.0, s, w100) for s in (0, 1)]
    assert drift(same, "imtl_g") == pytest.approx([0.0, 0.0], abs=1e-12)
    def w_at_100(target):  # w_1 with w_1 / (w_1 + 100 (1 - w_1)) = target
        return 100 * target / (1 - target + 100 * target)

    # a move of 0.049 keeps the trade-off (tolerance 0.05), 0.051 does not
    edge = [run("nash_mtl", 1.0, s, 0.6) for s in (0, 1)] + [
        run("nash_mtl", 100.0, 0, w_at_100(0.649)), run("nash_mtl", 100.0, 1, w_at_100(0.651))]
    assert drift(edge, "nash_mtl") == pytest.approx([0.049, 0.051])
    assert invariance_finding(edge).evidence.startswith("runs whose trade-off")
    assert "nash_mtl 1 of 2" in invariance_finding(edge).evidence
    edge[-1] = run("nash_mtl", 100.0, 1, w_at_100(0.6))
    famo = [run("famo", 1.0, 0, 0.5), run("famo", 100.0, 0, 0.5, status="failed")]
    fixed = [run("fixed", 1.0, 0, 0.5), run("fixed", 100.0, 0, 0.5)]
    assert drift(fixed, "fixed") == pytest.approx([0.5 - 0.5 / 50.5])
    ok_famo = [run("famo", 1.0, 0, 0.5), run("famo", 100.0, 0, w_at_100(0.5))]
    f = invariance_finding(same + edge + ok_famo + fixed)
    assert f.verdict == REPRODUCED and "fixed 0 of 1" in f.evidence
    # FAMO's run at c = 100 failed: it counts against the claim
    f = invariance_finding(same + edge + famo + fixed)
    assert f.verdict == PARTLY and "famo 0 of 1" in f.evidence
    assert invariance_finding(same + edge).verdict == PARTLY  # FAMO without runs


def test_quadratic_section_is_computed_from_records(tmp_path):
    from mtl_bench.reproductions.quadratic import STRATEGY_GRID, QuadraticRepro

    records = [quad_record(n, c, s, 1e-4, 0.5, params=p, end=(0.1, 0.2))
               for n, p in STRATEGY_GRID for c in (1.0, 100.0, 10000.0) for s in (0, 1)]
    ctx = Context([0, 1], 1, 2, tmp_path / "runs", tmp_path / "docs" / "r.md", {})
    text = QuadraticRepro().section(records, ctx)
    assert "48 runs" in text and "Every run finished" in text
    # w' = 0.5 / (0.5 + 10000 * 0.5) = 1/10001; r = (0.1 / 4, 0.2 / 2); spread 4
    assert "| mgda | 10000 | 2/2 | 0.0001 | 2/2 | 0.5 | 0.0001 | 0.025 | 0.1 | 4 | 2/2 |" in text
    assert "**1. Every strategy ends on the Pareto set** — *reproduced*" in text
    # w_1 = 0.5 at every condition: the unscaled trade-off drifts, so finding 2 fails
    assert "**2. IMTL-G, Nash-MTL and FAMO pick the same trade-off whatever the scales** — *not " \
        "reproduced*" in text
    assert "**4. Which strategies stay balanced as the scales drift apart** — *no published" in text
    # fixed's w_near = 0.5 is its own weight, the skewed one's is not: partly
    assert "**3. Fixed weights converge to x*(w)** — *partly reproduced*" in text
    assert "--set fixed.weights=1.5/0.5" in text
