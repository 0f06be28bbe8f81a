"""The task pairs with a known answer: toy-2d (CAGrad/Nash-MTL/FAMO toy) and quadratic."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from mtl_bench import registry
from mtl_bench.batched import train_batched
from mtl_bench.cli import main
from mtl_bench.errors import UserError
from mtl_bench.tasks import quadratic as Q
from mtl_bench.tasks import toy_2d as T
from mtl_bench.train import RunConfig, build_task_pair, train_run


# -- an independent transcription of the papers' toy (torch, autograd) --------------------------
def ref_losses(x1, x2, scale=1.0):
    """The reference code's formulas, written out again with torch ops (autograd gives the
    gradient, torch.clamp's conventions included)."""
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), min=5e-6).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), min=5e-6).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), min=0)
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), min=0)
    g1 = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    g2 = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    return scale * (c1 * f1 + c2 * g1), c1 * f2 + c2 * g2


def ref_grads(x1, x2):
    x = torch.tensor([x1, x2], dtype=torch.float64, requires_grad=True)
    l1, l2 = ref_losses(x[0], x[1])
    g1 = torch.autograd.grad(l1, x, retain_graph=True)[0].numpy()
    g2 = torch.autograd.grad(l2, x)[0].numpy()
    return g1, g2


def test_toy_losses_at_hand_computed_points():
    t4, t1, t2 = math.tanh(4), math.tanh(1), math.tanh(2)
    # (7, -8): c1 = 0, c2 = tanh(4); g1 = -20, g2 = 14^2 / 10 - 20 = -0.4
    l1, l2 = T.losses_numpy(7.0, -8.0, "unscaled")
    assert l1 == pytest.approx(-20 * t4, rel=1e-12) and l2 == pytest.approx(-0.4 * t4, rel=1e-12)
    # (-1, 2): c1 = tanh(1), c2 = 0; f1 = log(3 - tanh 2) + 6, f2 = log(4 - tanh 2) + 6
    l1, l2 = T.losses_numpy(-1.0, 2.0, "scaled")
    assert l1 == pytest.approx(0.1 * t1 * (math.log(3 - t2) + 6), rel=1e-12)
    assert l2 == pytest.approx(t1 * (math.log(4 - t2) + 6), rel=1e-12)
    # on the x1-axis both gates are 0
    assert T.losses_numpy(3.0, 0.0, "unscaled") == (0.0, 0.0)
    # where f1's argument vanishes (x2 = 1, x1 = 2 tanh(1) - 7) the floor 5e-6 applies
    l1, _ = T.losses_numpy(2 * t1 - 7, 1.0, "unscaled")
    assert l1 == pytest.approx(math.tanh(0.5) * (math.log(5e-6) + 6), rel=1e-9)
    # shift adds the lower bounds 21 s and 21
    a, b = T.losses_numpy(7.0, -8.0, "scaled", shift=True)
    assert a == pytest.approx(0.1 * (-20 * t4) + 2.1) and b == pytest.approx(-0.4 * t4 + 21)


def test_toy_gradients_match_autograd_of_the_reference_formulas():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-10, 10, (40, 2)), [[0.0, 0.0], [3.0, 0.0]]])
    for task in (0, 1):
        values, grads = T.value_and_grad(points, task)
        for (x1, x2), v, g in zip(points, values, grads):
            ref = ref_losses(torch.tensor(x1, dtype=torch.float64),
                             torch.tensor(x2, dtype=torch.float64))[task]
            assert v == pytest.approx(float(ref), abs=1e-12)
            assert np.allclose(g, ref_grads(x1, x2)[task], atol=1e-10)
            # the scalar path used in training agrees with the vectorised one
            vr, gr = T._value_and_grad_row(x1, x2, task, 1.0, 0.0)
            assert vr == pytest.approx(v, abs=1e-12) and np.allclose(gr, g, atol=1e-12)
    # at the start (0, 0) torch.clamp lets both gates' slopes through: the point moves
    _, g = T.value_and_grad(np.zeros(2), 1)
    assert g[1] == pytest.approx(0.5 * (math.log(3.5) + 6) - 0.5 * (49 + 6.4) / 10 + 10,
                                 rel=1e-12)


def test_toy_objective_backward_and_vmap_match_value_and_grad():
    x = torch.tensor([[1.5, -3.0], [-4.0, 2.0]], requires_grad=True)
    T.objective(x, 0, 0.1, 2.1).sum().backward()
    _, g = T.value_and_grad(x.detach().double().numpy(), 0, 0.1)
    assert np.allclose(x.grad.numpy(), g, atol=1e-5)
    stacked = torch.tensor([[[1.5, -3.0]], [[-4.0, 2.0]]])
    out = torch.func.vmap(lambda r: T.objective(r, 1))(stacked)
    assert out.shape == (2, 1)
    assert np.allclose(out[:, 0].numpy(), T.losses_numpy([1.5, -4.0], [-3.0, 2.0])[1])


def _ref_front_x2(x1):
    """x2 where grad L1 and grad L2 (reference autograd) are anti-parallel, by brentq."""
    def cross(x2):
        g1, g2 = ref_grads(x1, x2)
        return g1[0] * g2[1] - g1[1] * g2[0]
    return brentq(cross, -10.0, -7.0, xtol=1e-13)


@pytest.mark.parametrize("x1", [-6.5, -3.0, 0.0, 2.0, 5.0])
def test_toy_front_solves_the_stationarity_condition(x1):
    assert T.front_height(x1) == pytest.approx(_ref_front_x2(x1), abs=1e-9)
    g1, g2 = ref_grads(x1, float(T.front_height(x1)))
    assert g1 @ g2 < 0  # opposite directions: a Pareto-stationary point, not a saddle of both


def _grid_losses(step=0.05):
    x1, x2 = np.meshgrid(np.arange(-10, 10 + step / 2, step), np.arange(-10, 10 + step / 2, step))
    with torch.no_grad():
        l1, l2 = ref_losses(torch.tensor(x1), torch.tensor(x2))
    return x1.ravel(), x2.ravel(), l1.numpy().ravel(), l2.numpy().ravel()


def test_toy_front_is_the_non_dominated_set_of_a_dense_grid():
    gx1, gx2, l1, l2 = _grid_losses()
    # points on the front: no grid point is better in both losses
    for x1 in (-6.0, -3.0, 0.0, 3.0, 6.0):
        x2 = float(T.front_height(x1))
        with torch.no_grad():
            a, b = (float(v) for v in ref_losses(torch.tensor(x1, dtype=torch.float64),
                                                  torch.tensor(x2, dtype=torch.float64)))
        assert not ((l1 < a - 1e-9) & (l2 < b - 1e-9)).any()
    # points off it: some grid point is better in both
    for x1, x2 in ((0.0, -7.5), (0.0, -9.5), (3.0, 0.5), (9.0, -8.43), (-9.0, -8.43)):
        with torch.no_grad():
            a, b = (float(v) for v in ref_losses(torch.tensor(x1, dtype=torch.float64),
                                                  torch.tensor(x2, dtype=torch.float64)))
        assert ((l1 < a) & (l2 < b)).any()
    # the grid's own non-dominated points lie in a band around the front (the losses vary
    # only to second order along x2 there, so a grid keeps points up to ~0.4 above or below
    # it), and the front's losses are never beaten by them by more than rounding of the grid
    order = np.lexsort((l2, l1))
    best = np.minimum.accumulate(l2[order])
    keep = order[np.concatenate([[True], l2[order][1:] < best[:-1]])]
    assert len(keep) > 200
    assert np.abs(gx1[keep]).max() <= 7.0 + 1e-9
    assert -8.6 < gx2[keep].min() and gx2[keep].max() < -8.0
    fx1, fx2 = T.front_curve()
    with torch.no_grad():
        f1, f2 = (v.numpy() for v in ref_losses(torch.tensor(fx1), torch.tensor(fx2)))
    beaten_by = [np.min(np.maximum(f1 - l1[k], f2 - l2[k])) for k in keep]
    assert max(beaten_by) < 1e-3


def test_toy_front_distance_and_position_by_hand():
    h0, h7 = float(T.front_height(0.0)), float(T.front_height(7.0))
    assert h0 == pytest.approx(-8.3551, abs=1e-4) and h7 == pytest.approx(-8.4345, abs=1e-4)
    assert T.front_distance(7.0, h7) < 1e-9 and T.front_position(7.0, h7) == pytest.approx(0)
    assert T.front_distance(-7.0, h7) < 1e-9 and T.front_position(-7.0, h7) == pytest.approx(1)
    # beyond an end the nearest point is that end
    assert T.front_distance(10.0, h7) == pytest.approx(3.0, abs=1e-9)
    assert T.front_position(10.0, h7) == 0.0 and T.front_position(-12.0, 0.0) == 1.0
    # above the middle, nearly straight up (the front's slope at x1 = 0 is 0)
    assert T.front_distance(0.0, h0 + 1.0) == pytest.approx(1.0, abs=1e-3)
    assert T.front_position(0.0, h0 + 1.0) == pytest.approx(0.5, abs=1e-3)
    assert T.front_position(3.5, h0 + 0.01) == pytest.approx(0.25, abs=1e-3)
    d = T.front_distance(np.array([[7.0, 10.0]]), np.array([[h7, h7]]))
    assert d.shape == (1, 2)


def test_toy_starts_follow_the_seed_and_the_option():
    pair = build_task_pair("toy-2d", {})
    assert [pair.load(s).train.inputs[0][0].tolist() for s in range(6)] == \
        [list(p) for p in T.STARTS]
    assert pair.load(8).info["start_index"] == 2
    fixed = build_task_pair("toy-2d", {"start": 4})
    assert fixed.load(0).info["start"] == [9.0, -1.0]


@pytest.mark.parametrize("options", [{"variant": "half"}, {"start": 6}, {"start": True},
                                     {"epoch_steps": 0}, {"shift": "yes"}])
def test_toy_bad_options_are_user_errors(options):
    with pytest.raises(UserError):
        build_task_pair("toy-2d", options)


def test_toy_run_records_the_point_and_its_place_on_the_front():
    rec = train_run(RunConfig(task="toy-2d", strategy="mgda", seed=5, epochs=2, select="last",
                              task_options={"epoch_steps": 100}))
    assert rec["status"] == "ok", rec.get("reason")
    got = {(r[2], r[3]): r[4] for r in rec["summary"] if r[1] == "test"}
    x1, x2 = got[("task1", "x1")], got[("task1", "x2")]
    assert (x1, x2) != (-8.5, -5.0) and abs(x1 + 8.5) < 0.25  # 200 Adam steps of <= ~1e-3
    assert got[("task1", "pareto_distance")] == pytest.approx(
        float(T.front_distance(x1, x2)), abs=1e-5)
    assert got[("task2", "front_position")] == pytest.approx(
        float(T.front_position(x1, x2)), abs=1e-5)
    l1, l2 = T.losses_numpy(x1, x2, "scaled", shift=True)
    assert got[("task1", "objective")] == pytest.approx(float(l1), rel=1e-5)
    assert got[("task2", "loss")] == pytest.approx(float(l2), rel=1e-5)
    # epoch 0 of the curves is the start point
    start = {(r[2], r[3]): r[4] for r in rec["curves"]["rows"] if r[0] == 0 and r[1] == "test"}
    assert (start[("task1", "x1")], start[("task1", "x2")]) == (-8.5, -5.0)


# -- quadratic ---------------------------------------------------------------------------------
def test_stationary_point_by_hand():
    a = np.array([np.diag([1.0, 2.0]), np.diag([3.0, 1.0])])
    u = np.array([[0.0, 0.0], [1.0, 1.0]])
    # (w1 A1 + w2 A2)^-1 (w2 A2 u2) = diag(2, 1.5)^-1 (1.5, 0.5) at w = (1/2, 1/2)
    assert np.allclose(Q.stationary_point(a, u, [0.5, 0.5]), [0.75, 1 / 3])
    assert np.allclose(Q.stationary_point(a, u, [1.0, 0.0]), u[0])
    # w = (1/4, 3/4): diag(1/4 + 9/4, 1/2 + 3/4)^-1 (9/4, 3/4) = (0.9, 0.6)
    assert np.allclose(Q.stationary_point(a, u, [[0.25, 0.75]]), [[0.9, 0.6]])
    assert np.allclose(Q.objectives(np.array([0.75, 1 / 3]), a, u),
                       [0.75 ** 2 + 2 / 9, 3 * 0.25 ** 2 + (2 / 3) ** 2])


def _brute_force(x, a, u, weights):
    """Nearest of the minimisers of sum_i w_i f_i over many w, solved directly."""
    m = (weights[:, :, None, None] * a[None]).sum(1)
    rhs = (weights[:, :, None] * np.stack([ai @ ui for ai, ui in zip(a, u)])[None]).sum(1)
    d = np.linalg.norm(np.linalg.solve(m, rhs[..., None])[..., 0] - x, axis=1)
    return d.min(), weights[d.argmin()]


def test_pareto_distance_two_tasks():
    a, u = Q.problem({"dim": 5})
    for w1 in (0.0, 0.13, 0.5, 0.97):
        d, w = Q.pareto_distance(Q.stationary_point(a, u, [w1, 1 - w1]), a, u)
        assert d < 1e-8 and w == pytest.approx([w1, 1 - w1], abs=1e-6)
    rng = np.random.default_rng(3)
    ts = np.linspace(0, 1, 20001)
    for _ in range(3):
        x = rng.normal(0, 3, 5)
        d, w = Q.pareto_distance(x, a, u)
        ref_d, ref_w = _brute_force(x, a, u, np.stack([ts, 1 - ts], 1))
        assert d > 0.1 and d == pytest.approx(ref_d, abs=1e-6) and d <= ref_d + 1e-12
        assert w[0] == pytest.approx(ref_w[0], abs=1e-3)


def test_pareto_distance_three_tasks():
    a, u = Q.problem({"n_tasks": 3, "dim": 4, "condition": 10.0})
    rng = np.random.default_rng(4)
    w0 = np.array([0.2, 0.3, 0.5])
    d, w = Q.pareto_distance(Q.stationary_point(a, u, w0), a, u)
    assert d < 1e-6 and w == pytest.approx(w0, abs=1e-4)
    grid = np.concatenate([np.eye(3), rng.dirichlet(np.ones(3), 20000)])
    for _ in range(2):
        x = rng.normal(0, 3, 4)
        d, w = Q.pareto_distance(x, a, u)
        ref_d, _ = _brute_force(x, a, u, grid)
        assert d > 0.1 and d <= ref_d + 1e-9 and d == pytest.approx(ref_d, abs=1e-2)
        assert w.min() >= 0 and w.sum() == pytest.approx(1)


def test_quadratic_problem_is_fixed_by_its_seed_and_scaled_by_condition():
    a, u = Q.problem({"condition": 100.0})
    a2, u2 = Q.problem({})
    assert np.array_equal(a, a2) and np.array_equal(u, u2)
    assert not np.array_equal(Q.problem({"problem_seed": 1})[1], u)
    eig = [np.linalg.eigvalsh(m) for m in a]
    assert eig[0].min() >= 1 - 1e-9 and eig[0].max() <= 10 + 1e-9
    assert eig[1].min() >= 100 - 1e-6 and eig[1].max() <= 1000 + 1e-6
    # the start comes from the run seed, the problem does not
    pair = build_task_pair("quadratic", {})
    assert not torch.equal(pair.load(0).train.inputs[0], pair.load(1).train.inputs[0])


@pytest.mark.parametrize("options", [{"n_tasks": 1}, {"dim": 0}, {"condition": -1.0},
                                     {"condition": float("inf")}, {"problem_seed": -1},
                                     {"epoch_steps": 2.5}, {"n_tasks": True}])
def test_quadratic_bad_options_are_user_errors(options):
    with pytest.raises(UserError):
        build_task_pair("quadratic", options)


def test_fixed_weights_converge_to_their_stationary_point():
    opts = {"dim": 2, "epoch_steps": 100}
    rec = train_run(RunConfig(task="quadratic", strategy="fixed", seed=3, epochs=12,
                              strategy_params={"weights": [0.2, 0.8]}, task_options=opts))
    assert rec["status"] == "ok", rec.get("reason")
    got = {(r[2], r[3]): r[4] for r in rec["summary"] if r[1] == "test"}
    a, u = Q.problem(opts)
    w = np.array([0.2, 0.8])
    want = np.linalg.solve(0.2 * a[0] + 0.8 * a[1], 0.2 * a[0] @ u[0] + 0.8 * a[1] @ u[1])
    assert got[("task1", "x1")] == pytest.approx(want[0], abs=2e-3)
    assert got[("task1", "x2")] == pytest.approx(want[1], abs=2e-3)
    assert got[("task1", "pareto_distance")] < 2e-3
    assert got[("task1", "pareto_weight")] == pytest.approx(w[0], abs=5e-3)
    assert got[("task2", "pareto_weight")] == pytest.approx(w[1], abs=5e-3)


# -- both pairs through the harness -------------------------------------------------------------
TINY = {"toy-2d": {"epoch_steps": 2}, "quadratic": {"epoch_steps": 2, "dim": 3}}


@pytest.mark.parametrize("pair", sorted(TINY))
def test_every_strategy_steps_on_the_pair(pair):
    failed = {}
    for name in registry.strategies.names():
        rec = train_run(RunConfig(task=pair, strategy=name, seed=0, epochs=1,
                                  task_options=TINY[pair]))
        if rec["status"] != "ok":
            failed[name] = rec.get("reason")
    assert not failed


def test_seed_batched_starts_equal_separate_runs():
    configs = [RunConfig(task="toy-2d", strategy="mgda", seed=s, epochs=2, select="last",
                         task_options={"epoch_steps": 20}) for s in (0, 3)]
    for config, batched in zip(configs, train_batched(configs)):
        alone = train_run(config)
        assert batched["status"] == alone["status"] == "ok"
        assert batched["data"]["start"] == alone["data"]["start"]
        a = np.array([r[4] for r in alone["curves"]["rows"]])
        b = np.array([r[4] for r in batched["curves"]["rows"]])
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cli_run_aggregate_report_on_both_pairs(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "report"
    assert main(["run", "--task", "toy-2d", "--strategy",
                 "fixed,mgda,pcgrad,nash_mtl,famo,cagrad", "--seeds", "1", "--epochs", "1",
                 "--set", "toy-2d.epoch_steps=3", "--jobs", "1", "--quiet",
                 "--runs-dir", str(runs)]) == 0
    assert main(["run", "--task", "quadratic", "--strategy", "mgda", "--seeds", "2",
                 "--epochs", "1", "--set", "quadratic.epoch_steps=3", "--seed-batch", "2",
                 "--jobs", "1", "--quiet", "--runs-dir", str(runs)]) == 0
    assert main(["aggregate", "--runs-dir", str(runs), "--out", str(tmp_path / "tables"),
                 "--quiet"]) == 0
    assert main(["report", "--runs-dir", str(runs), "--out", str(out), "--quiet"]) == 0
    records = [json.loads(p.read_text()) for p in runs.rglob("*.json")]
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    text = (out / "report.md").read_text()
    assert "toy-2d" in text and "quadratic" in text and "pareto_distance" in text
