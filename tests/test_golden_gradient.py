"""Golden values of the gradient-manipulation strategies.

Hand-computed values come from the papers' update rules on 2-D examples (worked out in the
comments); properties the papers claim are checked on random inputs; where a method solves an
optimisation problem, an independent reference solves the same problem with scipy's SLSQP in the
space of the gradients (P-length vectors), not from the Gram matrix as the strategies do.
"""

import importlib
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mtl_bench import registry
from mtl_bench.errors import UserError
from mtl_bench.strategy import REGRESSION, TaskGradients, TaskInfo
from mtl_bench.train import RunConfig, build_strategy, train_run


def _module(name):
    """A strategy's module, for its solver helpers (looked up through the registry)."""
    return importlib.import_module(registry.strategies.get(name).__module__)


NAMES = ["pcgrad", "mgda", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "gradvac", "upgrad"]


def _setup(name, n_tasks, seed=0, **params):
    s = build_strategy(name, params)
    s.setup([TaskInfo(f"t{i}", REGRESSION) for i in range(n_tasks)], seed=seed)
    return s


def _step(s, g, losses=None):
    g = torch.as_tensor(np.asarray(g, dtype=np.float64))
    losses = torch.ones(len(g), dtype=torch.float64) if losses is None else \
        torch.tensor(losses, dtype=torch.float64)
    return s.combine(losses, TaskGradients(g, "shared")).weights.numpy()


def _weights(name, g, losses=None, seed=0, **params):
    return _step(_setup(name, len(g), seed, **params), g, losses)


def _random(t, p, seed):
    return np.random.default_rng(seed).standard_normal((t, p))


# -- common behaviour ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_family_source_and_bad_source(name):
    s = build_strategy(name, {"source": "rep"})
    assert s.grad_source == "rep" and s.family == "gradient manipulation" and s.paper
    assert build_strategy(name, {}).grad_source == "shared"
    assert str(s) == f"{name}(source=rep)"
    with pytest.raises(UserError, match="Parameter `source` should be one of 'shared', 'rep'"):
        build_strategy(name, {"source": "last"})


@pytest.mark.parametrize("name,params", [
    ("mgda", {"normalize": "l1"}), ("mgda", {"max_iter": 0}), ("mgda", {"tol": -1.0}),
    ("cagrad", {"c": -0.1}), ("cagrad", {"rescale": 3}),
    ("nash_mtl", {"max_norm": -1.0}), ("nash_mtl", {"update_weights_every": 0}),
    ("aligned_mtl", {"scale": "max"}), ("gradvac", {"beta": 0.0}), ("gradvac", {"beta": 1.5}),
])
def test_bad_hyper_parameters(name, params):
    key = next(iter(params))
    with pytest.raises(UserError, match=f"Parameter `{key}` should be"):
        build_strategy(name, params)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [1, 2, 3, 5])
def test_weights_are_finite_with_right_shape(name, t):
    w = _weights(name, _random(t, 7, seed=t))
    assert w.shape == (t,) and np.isfinite(w).all()


@pytest.mark.parametrize("name", NAMES)
def test_training_run_ends_ok_for_both_sources(name):
    for source in ("shared", "rep"):
        rec = train_run(RunConfig(strategy=name, strategy_params={"source": source}, epochs=2))
        assert rec["status"] == "ok", rec.get("reason")
        assert np.isfinite(np.array(rec["weights"]["values"])).all()


# -- PCGrad ----------------------------------------------------------------------------------
def test_pcgrad_two_conflicting_gradients_by_hand():
    # g1 = (1, 0), g2 = (-1, 1), g1.g2 = -1 < 0:
    # g1_PC = g1 - (-1/2) g2 = (0.5, 0.5) = g1 + 0.5 g2;  g2_PC = g2 - (-1/1) g1 = (0, 1) = g2 + g1
    # d = (0.5, 1.5) = 2 g1 + 1.5 g2
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    w = _weights("pcgrad", g)
    np.testing.assert_allclose(w, [2.0, 1.5])
    np.testing.assert_allclose(w @ g, [0.5, 1.5])
    np.testing.assert_allclose(_weights("pcgrad", [[1.0, 0.0], [1.0, 1.0]]), [1.0, 1.0])


def test_pcgrad_two_tasks_never_conflicts_with_either_task():
    for seed in range(20):
        g = _random(2, 6, seed)
        d = _weights("pcgrad", g) @ g
        assert (g @ d >= -1e-10).all()


def _pcgrad_vectors(g, orders):
    """Independent reference: the paper's Algorithm 1 on the vectors themselves."""
    out = []
    for i, order in enumerate(orders):
        gi = g[i].copy()
        for j in order:
            if gi @ g[j] < 0:
                gi -= gi @ g[j] / (g[j] @ g[j]) * g[j]
        out.append(gi)
    return np.sum(out, axis=0)


def test_pcgrad_coefficients_match_vector_projections_for_any_order():
    g = _random(4, 5, 3)
    orders = [[2, 1, 3], [3, 0, 2], [0, 1, 3], [1, 2, 0]]
    d = _module("pcgrad").pcgrad_coefficients(g @ g.T, orders).sum(axis=0) @ g
    np.testing.assert_allclose(d, _pcgrad_vectors(g, orders), rtol=1e-10)


def test_pcgrad_order_is_seeded():
    g = _random(4, 3, 0)  # 4 tasks in 3-D: conflicts are certain
    a, b = _weights("pcgrad", g, seed=1), _weights("pcgrad", g, seed=1)
    np.testing.assert_array_equal(a, b)
    draws = {tuple(np.round(_weights("pcgrad", g, seed=s), 8)) for s in range(8)}
    assert len(draws) > 1  # the order matters with 4 conflicting tasks, and it varies by seed


# -- MGDA ------------------------------------------------------------------------------------
def test_mgda_two_task_closed_form_by_hand():
    # g1 = (2, 0), g2 = (0, 1): alpha_1 = (g2 - g1).g2 / ||g1 - g2||^2 = 1 / 5
    g = np.array([[2.0, 0.0], [0.0, 1.0]])
    w = _weights("mgda", g)
    np.testing.assert_allclose(w, [0.2, 0.8])
    assert (w @ g) @ (g[0] - g[1]) == pytest.approx(0.0)  # min-norm point: d orthogonal to edge
    # clipped: g1 = (1, 0) lies between 0 and g2 = (2, 0), so the min-norm point is g1 itself
    np.testing.assert_allclose(_weights("mgda", [[1.0, 0.0], [2.0, 0.0]]), [1.0, 0.0])


@pytest.mark.parametrize("normalize,expected", [
    ("l2", [0.5, 0.5]),     # g/||g||: (1, 0) and (0, 1)
    ("loss", [0.5, 0.5]),   # g/L with L = (2, 1): (1, 0) and (0, 1)
    ("loss+", [0.8, 0.2]),  # g/(L ||g||): (0.5, 0) and (0, 1): alpha_1 = 1 / 1.25
])
def test_mgda_normalisations_by_hand(normalize, expected):
    g = np.array([[2.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(_weights("mgda", g, losses=[2.0, 1.0], normalize=normalize),
                               expected)


def _min_norm_reference(g):
    m = g @ g.T
    t = len(g)
    res = minimize(lambda a: a @ m @ a, np.full(t, 1 / t), jac=lambda a: 2 * m @ a,
                   method="SLSQP", bounds=[(0, 1)] * t,
                   constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}],
                   options={"ftol": 1e-14, "maxiter": 500})
    return res.x


@pytest.mark.parametrize("seed", range(5))
def test_mgda_frank_wolfe_reaches_the_min_norm_point(seed):
    g = _random(4, 6, seed) + 0.5  # a shared component keeps 0 out of the hull
    w = _weights("mgda", g)  # default max_iter and tol
    ref = _min_norm_reference(g)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    d = w @ g
    assert d @ d == pytest.approx(ref @ g @ g.T @ ref, rel=1e-4)
    # optimality (the paper's Pareto-stationarity argument): g_i . d >= ||d||^2 for every task
    assert (g @ d >= d @ d * (1 - 1e-3)).all()


# -- CAGrad ----------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [2, 3, 5])
def test_cagrad_with_c_zero_is_the_mean_gradient(t):
    np.testing.assert_allclose(_weights("cagrad", _random(t, 6, t), c=0.0), np.full(t, 1 / t))


@pytest.mark.parametrize("rescale,expected", [(0, 0.75), (1, 0.6), (2, 0.5)])
def test_cagrad_orthonormal_pair_by_hand(rescale, expected):
    # g1 = e1, g2 = e2: by symmetry w = (1/2, 1/2), g_w = g0, so d = g0 + c g0 = 0.75 (g1 + g2)
    # for c = 0.5; divided by 1 + c^2 = 1.25 or 1 + c = 1.5
    w = _weights("cagrad", np.eye(2), c=0.5, rescale=rescale)
    np.testing.assert_allclose(w, [expected, expected])


def _cagrad_primal_value(g, c):
    """Independent reference: max_d min_i g_i.d subject to ||d - g0|| <= c ||g0||, over (d, s)."""
    g0 = g.mean(axis=0)
    r2 = c * c * (g0 @ g0)
    p = g.shape[1]
    cons = [{"type": "ineq", "fun": lambda z: g @ z[:p] - z[p]},
            {"type": "ineq", "fun": lambda z: r2 - (z[:p] - g0) @ (z[:p] - g0)}]
    z0 = np.concatenate([g0, [(g @ g0).min()]])
    res = minimize(lambda z: -z[p], z0, method="SLSQP", constraints=cons,
                   options={"ftol": 1e-14, "maxiter": 1000})
    return -res.fun


@pytest.mark.parametrize("t,seed", [(2, 0), (2, 1), (2, 2), (3, 3), (4, 4)])
def test_cagrad_solves_the_primal_problem(t, seed):
    g = _random(t, 5, seed)
    c = 0.5
    d = _weights("cagrad", g, c=c, rescale=0) @ g
    g0 = g.mean(axis=0)
    # the constraint is active at the solution, and the worst task's gain is the optimum
    assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-6)
    assert (g @ d).min() == pytest.approx(_cagrad_primal_value(g, c), rel=1e-4, abs=1e-6)


def test_cagrad_two_task_closed_form_matches_the_general_solver():
    cagrad = _module("cagrad")
    for seed in range(10):
        g = _random(2, 4, seed)
        m = g @ g.T
        np.testing.assert_allclose(cagrad.cagrad_dual_pair(m, 0.4), cagrad.cagrad_dual(m, 0.4),
                                   atol=1e-5)


# -- IMTL-G ----------------------------------------------------------------------------------
def test_imtl_g_two_tasks_by_hand():
    # g1 = (3, 0), g2 = (0, 1): alpha = (||g2||, ||g1||) / (||g1|| + ||g2||) = (1/4, 3/4);
    # d = (0.75, 0.75) projects 0.75 onto both u1 = (1, 0) and u2 = (0, 1)
    g = np.array([[3.0, 0.0], [0.0, 1.0]])
    w = _weights("imtl_g", g)
    np.testing.assert_allclose(w, [0.25, 0.75])
    np.testing.assert_allclose(w @ g, [0.75, 0.75])


@pytest.mark.parametrize("t,seed", [(2, 0), (3, 1), (4, 2), (5, 3)])
def test_imtl_g_equal_projections_on_unit_gradients(t, seed):
    g = _random(t, 8, seed) * np.array([1.0, 10.0, 0.1, 3.0, 0.5])[:t, None]
    w = _weights("imtl_g", g)
    proj = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (w @ g)
    np.testing.assert_allclose(proj, np.full(t, proj[0]), rtol=1e-8)
    assert w.sum() == pytest.approx(1.0)


def test_imtl_g_zero_gradient_task_gets_zero_weight():
    g = _random(3, 4, 0)
    g[1] = 0.0
    w = _weights("imtl_g", g)
    assert w[1] == 0.0 and w.sum() == pytest.approx(1.0)


# -- Nash-MTL --------------------------------------------------------------------------------
def test_nash_mtl_by_hand_and_max_norm():
    # g1 = (1, 0), g2 = (0, 2): M = diag(1, 4), alpha_i = 1 / (||g_i|| sqrt(1 + cos)) = (1, 1/2);
    # then d = (1, 1), ||d|| = sqrt(2) > max_norm = 1, so alpha is divided by sqrt(2)
    g = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(_weights("nash_mtl", g, max_norm=0.0), [1.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(_weights("nash_mtl", g), np.array([1.0, 0.5]) / math.sqrt(2),
                               rtol=1e-6)


@pytest.mark.parametrize("t,seed", [(2, 0), (2, 1), (3, 2), (4, 3), (5, 4)])
def test_nash_mtl_solves_the_bargaining_equations(t, seed):
    g = _random(t, 9, seed) * np.array([1.0, 5.0, 0.2, 2.0, 0.7])[:t, None]
    w = _weights("nash_mtl", g, max_norm=0.0)
    assert (w > 0).all()
    np.testing.assert_allclose(w * (g @ g.T @ w), np.ones(t), rtol=1e-5)


def test_nash_mtl_update_every_and_state_round_trip():
    g1, g2, g3 = _random(2, 4, 0), _random(2, 4, 1), _random(2, 4, 2)
    s = _setup("nash_mtl", 2, update_weights_every=2, max_norm=0.0)
    first = _step(s, g1)
    np.testing.assert_allclose(_step(s, g2), first)  # reused on the second step
    clone = _setup("nash_mtl", 2, update_weights_every=2, max_norm=0.0)
    clone.load_state_dict(s.state_dict())
    third = _step(s, g3)
    np.testing.assert_allclose(third * (g3 @ g3.T @ third), [1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(_step(clone, g3), third)
    # with clipping the reused alpha is rescaled against the current gradients
    s = _setup("nash_mtl", 2, update_weights_every=2, max_norm=0.1)
    _step(s, g1)
    w = _step(s, 10 * g2)
    assert np.linalg.norm(w @ (10 * g2)) == pytest.approx(0.1)


# -- Aligned-MTL -----------------------------------------------------------------------------
def test_aligned_mtl_by_hand():
    # g1 = (1, 0), g2 = (0, 2): M = diag(1, 4), sigma^2 = 1, B = diag(1, 1/2): aligned rows
    # (1, 0) and (0, 1), alpha = B 1 = (1, 1/2), d = (1, 1)
    g = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(_weights("aligned_mtl", g), [1.0, 0.5])


@pytest.mark.parametrize("scale", ["min", "median", "rmse"])
@pytest.mark.parametrize("t,p,seed", [(2, 5, 0), (3, 5, 1), (4, 6, 2), (4, 2, 3)])
def test_aligned_mtl_equal_singular_values(scale, t, p, seed):
    g = _random(t, p, seed) * np.array([1.0, 4.0, 0.3, 2.0])[:t, None]
    m = g @ g.T
    b = _module("aligned_mtl").alignment_matrix(m, scale)
    sv = np.linalg.svd(b @ g, compute_uv=False)
    rank = min(t, p)  # (4, 2): rank 2, the aligned matrix keeps 2 equal singular values
    lam = np.sort(np.linalg.eigvalsh(m))[::-1][:rank]
    sigma2 = {"min": lam[-1], "median": np.sort(lam)[(rank - 1) // 2], "rmse": lam.mean()}[scale]
    np.testing.assert_allclose(sv[:rank], np.full(rank, math.sqrt(sigma2)), rtol=1e-8)
    np.testing.assert_allclose(sv[rank:], 0.0, atol=1e-8)
    np.testing.assert_allclose(_weights("aligned_mtl", g, scale=scale), b.sum(axis=1))


# -- GradVac ---------------------------------------------------------------------------------
def test_gradvac_adjustment_by_hand():
    # g1 = e1, g2 = e2 (cos 0) with target 0.5: a = 1 (0.5 * 1 - 0) / (1 * sqrt(0.75)) = 1/sqrt(3)
    # on both sides, so alpha = 1 + 1/sqrt(3) each; targets -> 0.99 * 0.5 + 0.01 * 0 = 0.495
    s = _setup("gradvac", 2)
    s.target.fill_(0.5)
    w = _step(s, np.eye(2))
    np.testing.assert_allclose(w, np.full(2, 1 + 1 / math.sqrt(3)))
    g1 = np.array([1.0, 1 / math.sqrt(3)])
    assert g1[1] / np.linalg.norm(g1) == pytest.approx(0.5)  # cos(g1', g2) hits the target
    np.testing.assert_allclose([s.target[0, 1].item(), s.target[1, 0].item()], [0.495, 0.495])


def test_gradvac_hits_the_target_cosine_and_tracks_the_ema():
    for seed in range(10):
        g = _random(2, 5, seed)
        cos = g[0] @ g[1] / np.linalg.norm(g[0]) / np.linalg.norm(g[1])
        s = _setup("gradvac", 2, beta=0.1)
        s.target.fill_(0.3)
        w = _step(s, g)
        if cos < 0.3:  # g_1' = g_1 + w_2' g_2 with w = (1 + a_21, 1 + a_12)
            g1 = g[0] + (w[1] - 1) * g[1]
            assert g1 @ g[1] / np.linalg.norm(g1) / np.linalg.norm(g[1]) == pytest.approx(0.3)
        else:
            np.testing.assert_allclose(w, [1.0, 1.0])
        np.testing.assert_allclose(s.target[0, 1].item(), 0.9 * 0.3 + 0.1 * cos)


def test_gradvac_first_step_equals_pcgrad_and_state_round_trips():
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(_weights("gradvac", g), _weights("pcgrad", g))
    s = _setup("gradvac", 3)
    _step(s, _random(3, 4, 0))
    clone = _setup("gradvac", 3)
    clone.load_state_dict(s.state_dict())
    torch.testing.assert_close(clone.target, s.target)
    assert s.target.abs().sum() > 0


# -- UPGrad ----------------------------------------------------------------------------------
def test_upgrad_two_tasks_by_hand():
    # g1 = (1, 0), g2 = (-1, 1): projecting g1 onto {x: g2.x >= 0} gives g1 + g2/2 = (0.5, 0.5),
    # projecting g2 onto {x: g1.x >= 0} gives g2 + g1 = (0, 1); the mean is 1.0 g1 + 0.75 g2
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    w = _weights("upgrad", g)
    np.testing.assert_allclose(w, [1.0, 0.75])
    np.testing.assert_allclose(w @ g, [0.25, 0.75])
    np.testing.assert_allclose(_weights("upgrad", [[1.0, 0.0], [1.0, 1.0]]), [0.5, 0.5])


def _dual_cone_projection(g, i):
    """Independent reference: argmin ||x - g_i||^2 subject to g_j . x >= 0 for all j."""
    res = minimize(lambda x: (x - g[i]) @ (x - g[i]), g[i], jac=lambda x: 2 * (x - g[i]),
                   method="SLSQP", constraints=[{"type": "ineq", "fun": lambda x: g @ x,
                                                 "jac": lambda x: g}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    return res.x


@pytest.mark.parametrize("t,seed", [(2, 0), (2, 1), (3, 2), (4, 3), (5, 4)])
def test_upgrad_is_the_mean_dual_cone_projection_and_never_conflicts(t, seed):
    g = _random(t, 6, seed)
    d = _weights("upgrad", g) @ g
    ref = np.mean([_dual_cone_projection(g, i) for i in range(t)], axis=0)
    np.testing.assert_allclose(d, ref, atol=1e-6)
    assert (g @ d >= -1e-10).all()


# -- zero gradients, exact solvers and solver failures ---------------------------------------
def test_zero_gradient_threshold_is_relative_and_follows_the_dtype():
    helpers = _module("mgda")  # the shared helpers, through a strategy module
    gram = np.diag([1.0, 1e-12, 0.0])  # norms 1, 1e-6, 0
    zero = importlib.import_module(helpers.__package__ + "._gradient")
    np.testing.assert_array_equal(zero.nonzero(gram), [True, True, False])
    np.testing.assert_array_equal(zero.nonzero(np.diag([1.0, 1e-20, 0.0]), torch.float32),
                                  [True, False, False])  # norm ratio 1e-10 < float32 eps
    assert zero.zero_norm_ratio(torch.float64) == np.finfo(np.float64).eps
    assert not zero.nonzero(np.zeros((2, 2))).any()


@pytest.mark.parametrize("small,rtol", [(1e-6, 1e-7), (1e-9, 1e-5)])
def test_imtl_g_and_nash_keep_a_task_with_a_tiny_gradient(small, rtol):
    g = _random(3, 6, 11)
    g[2] *= small / np.linalg.norm(g[2])
    w = _weights("imtl_g", g)
    proj = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (w @ g)
    assert w[2] != 0.0
    np.testing.assert_allclose(proj, np.full(3, proj[0]), rtol=rtol)
    w = _weights("nash_mtl", g, max_norm=0.0)
    assert (w > 0).all()
    np.testing.assert_allclose(w * (g @ g.T @ w), np.ones(3), rtol=1e-6)


def test_cagrad_exact_dual_matches_slsqp_on_benign_inputs_and_beats_it_at_extreme_ratios():
    cagrad = _module("cagrad")
    for t, seed in [(3, 0), (4, 1), (5, 2)]:
        m = _random(t, 8, seed) @ _random(t, 8, seed).T
        np.testing.assert_allclose(cagrad.cagrad_dual(m, 0.5),
                                   cagrad.cagrad_dual_slsqp(m, 0.5)[0], atol=1e-4)
    # norms 1e-3, 1, 1e3: the worst task's improvement is the primal optimum
    g = _random(3, 5, 7) * np.array([1e-3, 1.0, 1e3])[:, None]
    d = _weights("cagrad", g, c=0.5, rescale=0) @ g
    g0 = g.mean(axis=0)
    assert np.linalg.norm(d - g0) == pytest.approx(0.5 * np.linalg.norm(g0), rel=1e-9)
    # the dual certificate: min_i g_i.d equals F(w*) for the exact w*, its upper bound
    m = g @ g.T
    w = cagrad.cagrad_dual(m, 0.5)
    dual = w @ m.mean(axis=1) + 0.5 * np.linalg.norm(g0) * math.sqrt(w @ m @ w)
    assert (g @ d).min() == pytest.approx(dual, rel=1e-9)


def test_cagrad_with_zero_in_the_hull_returns_a_conflict_free_step_in_the_ball():
    # g2 = 0 puts 0 in the hull; F(w) >= 0 on it, so the optimum min_i g_i.d is 0, while the
    # mean gradient conflicts with task 1 (g1.g0 = -1/6)
    g = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.5, 1.0, 0.0]])
    g0 = g.mean(axis=0)
    assert g[0] @ g0 < 0
    d = _weights("cagrad", g, c=0.5, rescale=0) @ g
    assert np.linalg.norm(d - g0) <= 0.5 * np.linalg.norm(g0) * (1 + 1e-9)
    assert (g @ d).min() >= -1e-12


def test_mgda_exact_min_norm_point_at_a_norm_ratio_of_1e6():
    g = _random(5, 7, 3) * np.logspace(-3, 3, 5)[:, None]
    w = _weights("mgda", g)
    d = w @ g
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    # min-norm optimality: g_i.d >= ||d||^2 for every task, with equality where alpha_i > 0
    assert (g @ d >= d @ d * (1 - 1e-9)).all()
    np.testing.assert_allclose((g @ d)[w > 0], d @ d, rtol=1e-9)


def test_mgda_frank_wolfe_stops_relative_to_the_point_beyond_the_exact_range():
    gradient = importlib.import_module(_module("mgda").__package__ + "._gradient")
    g = _random(10, 20, 4) * np.logspace(-2, 2, 10)[:, None]
    m = gradient.normalised(g @ g.T)
    alpha, ok = gradient.frank_wolfe(m, 100000, 1e-12)
    assert ok
    d = alpha @ g
    assert (g @ d >= d @ d * (1 - 1e-5)).all()


def test_solver_failures_are_counted():
    s = _setup("mgda", 10, max_iter=1)
    assert s.solver_failures == 0
    _step(s, _random(10, 20, 0) + 0.3)
    assert s.solver_failures == 1  # Frank-Wolfe (T > 8) hit max_iter
    nash = _module("nash_mtl")
    s = _setup("nash_mtl", 3, max_norm=0.0)
    old = nash.NEWTON_ITER
    nash.NEWTON_ITER = 1
    try:
        _step(s, _random(3, 5, 1))
    finally:
        nash.NEWTON_ITER = old
    assert s.solver_failures == 1
    s = _setup("imtl_g", 3)
    s.weights_from_gram = lambda gram, losses: np.full(3, np.nan)
    np.testing.assert_array_equal(_step(s, _random(3, 5, 2)), np.ones(3))
    assert s.solver_failures == 1
