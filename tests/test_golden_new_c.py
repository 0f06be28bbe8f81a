"""Golden values of SDMGrad, MoDo, CR-MOGM and GO4Align.

Hand-computed values come from each paper's update rule on 2-D examples (worked out in the
comments). Multi-step checks compare with a reference written here in numpy on the P-length
gradient vectors, independently of the strategies' code: a bisection projection onto the
simplex, MGDA's min-norm point from the KKT conditions of every support, K-means by trying
every labelling of the tasks. Each method's stated limit is checked too (CR-MOGM with alpha = 0
is MGDA, MoDo's weights settle at MGDA's, SDMGrad with lambda = 0 reaches the min-norm point).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from strategy_steps import setup_strategy, update

from mtl_bench.cli import main
from mtl_bench.errors import UserError
from mtl_bench.train import build_strategy

_setup, _update = setup_strategy, update


def _direction(update, g):
    if update.direction is not None:
        return update.direction.numpy()
    return update.weights.numpy() @ np.asarray(g, dtype=np.float64)


def _random(t, p, seed):
    return np.random.default_rng(seed).standard_normal((t, p))


def _proj(v):
    """Projection onto the simplex by bisection on the shift theta of max(v - theta, 0)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(v - mid, 0).sum() > 1:
            lo = mid
        else:
            hi = mid
    return np.maximum(v - (lo + hi) / 2, 0)


def _min_norm(g):
    """MGDA's weights from the vectors: the support whose KKT point (G_S G_S^T a = mu 1,
    sum a = 1) is feasible (a >= 0, g_j . d >= mu off S), least norm among those."""
    t = len(g)
    m = g @ g.T
    best, best_norm = None, np.inf
    for k in range(1, t + 1):
        for s in itertools.combinations(range(t), k):
            mat = np.zeros((k + 1, k + 1))
            mat[:k, :k] = m[np.ix_(s, s)]
            mat[:k, k], mat[k, :k] = -1.0, 1.0
            try:
                sol = np.linalg.solve(mat, np.r_[np.zeros(k), 1.0])
            except np.linalg.LinAlgError:
                continue
            a = np.zeros(t)
            a[list(s)] = sol[:k]
            d = a @ g
            if a.min() >= -1e-12 and (g @ d >= sol[k] - 1e-12).all() and d @ d < best_norm:
                best, best_norm = a, d @ d
    return best


# -- common behaviour ------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [
    ("sdmgrad", {"lam": -0.1}), ("sdmgrad", {"n_iter": 0}), ("sdmgrad", {"n_iter": 2.5}),
    ("sdmgrad", {"inner_lr": 0.0}), ("sdmgrad", {"momentum": 1.0}),
    ("sdmgrad", {"momentum": -0.1}), ("sdmgrad", {"source": "last"}),
    ("modo", {"gamma": 0.0}), ("modo", {"rho": -1.0}), ("modo", {"source": "last"}),
    ("cr_mogm", {"alpha": 1.0}), ("cr_mogm", {"alpha": -0.1}), ("cr_mogm", {"max_iter": 0}),
    ("cr_mogm", {"tol": 0.0}), ("cr_mogm", {"source": "last"}),
    ("go4align", {"num_groups": 0}), ("go4align", {"num_groups": 1.5}),
    ("go4align", {"num_groups": True}), ("go4align", {"robust_step_size": 0.0}),
])
def test_bad_hyper_parameters(name, params):
    key = next(iter(params))
    with pytest.raises(UserError, match=f"Parameter `{key}` should be"):
        build_strategy(name, params)


def test_bad_hyper_parameter_is_one_line_on_the_command_line(capsys, runs_dir):
    code = main(["run", "--strategy", "go4align", "--set", "go4align.num_groups=0",
                 "--dry-run", "--runs-dir", str(runs_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "Parameter `num_groups`" in err and "Traceback" not in err


def test_repr_and_labels():
    assert repr(build_strategy("sdmgrad", {})) == (
        "SDMGrad(lam=0.3, n_iter=20, inner_lr=5.0, momentum=0.5, source='shared')")
    assert repr(build_strategy("modo", {})) == "MoDo(gamma=0.001, rho=0.1, source='shared')"
    assert str(build_strategy("cr_mogm", {"alpha": 0.5})) == "cr_mogm(alpha=0.5)"
    assert str(build_strategy("go4align", {"num_groups": 3})) == "go4align(num_groups=3)"
    assert build_strategy("go4align", {}).grad_source is None


@pytest.mark.parametrize("name", ["sdmgrad", "modo", "cr_mogm"])
def test_zero_gradients_give_a_finite_update(name):
    g = np.zeros((3, 4))
    g[0] = [1.0, -2.0, 0.5, 0.0]
    for rows in (g, np.zeros((3, 4))):
        u = _update(_setup(name, 3), rows)
        assert np.isfinite(u.weights.numpy()).all() and np.isfinite(_direction(u, rows)).all()


# -- SDMGrad -----------------------------------------------------------------------------------
def test_sdmgrad_hand_value():
    # g1 = (2, 0), g2 = (0, 1): mean norm s = 1.5, scaled M = diag(4, 1) / 2.25 = diag(16, 4)/9.
    # grad F(w0 = (1/2, 1/2)) = M w0 + 0.3 M 1/2 = (8/9 + 2.4/9, 2/9 + 0.6/9) = (52, 13) / 45.
    # One step of size 0.1: w0 - 0.1 grad = (1/2 - 5.2/45, 1/2 - 1.3/45), inside the simplex's
    # line; the projection adds back half the lost mass: w = (137/300, 163/300).
    # alpha = (w + 0.3/2) / 1.3 = (182/300, 208/300) / 1.3 = (7/15, 8/15).
    g = [[2.0, 0.0], [0.0, 1.0]]
    s = _setup("sdmgrad", 2, n_iter=1, inner_lr=0.1, momentum=0.0)
    u = _update(s, g)
    np.testing.assert_allclose(u.weights.numpy(), [7 / 15, 8 / 15], rtol=1e-13)
    np.testing.assert_allclose(s.w.numpy(), [137 / 300, 163 / 300], rtol=1e-13)
    np.testing.assert_allclose(_direction(u, g), [14 / 15, 8 / 15], rtol=1e-13)
    # with the official step size 5 the same first step leaves the simplex's line on the
    # side of e_2: w = (0, 1), alpha = (0.15, 1.15) / 1.3
    u = _update(_setup("sdmgrad", 2, n_iter=1, momentum=0.0), g)
    np.testing.assert_allclose(u.weights.numpy(), [0.15 / 1.3, 1.15 / 1.3], rtol=1e-13)


def _sdmgrad_ref(steps, lam, n_iter, lr, mu):
    t = len(steps[0])
    w = np.full(t, 1.0 / t)
    out = []
    for g in steps:
        s = np.mean(np.linalg.norm(g, axis=1))
        gs = g / s  # the scaled products below are (G/s)(G/s)^T w and (G/s)(G/s)^T g0
        g0 = gs.mean(axis=0)
        v = np.zeros(t)
        for _ in range(n_iter):
            v = mu * v + (gs @ (gs.T @ w) + lam * (gs @ g0))
            w = _proj(w - lr * v)
        out.append(((w @ g + lam * g.mean(axis=0)) / (1 + lam), w.copy()))
    return out


@pytest.mark.parametrize("t", [2, 3, 5])
def test_sdmgrad_matches_a_reference_over_several_steps(t):
    steps = [_random(t, 9, seed=10 * t + k) for k in range(6)]
    s = _setup("sdmgrad", t, inner_lr=0.5)
    for g, (d_ref, w_ref) in zip(steps, _sdmgrad_ref(steps, 0.3, 20, 0.5, 0.5)):
        d = _direction(_update(s, g), g)
        np.testing.assert_allclose(d, d_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(s.w.numpy(), w_ref, rtol=1e-10, atol=1e-12)


def test_sdmgrad_limits():
    g = [[1.0, 0.0], [-0.5, 1.0]]
    # lambda = 0 and enough contracting inner steps: the min-norm point, here in closed form
    # gamma = (g2 - g1).g2 / ||g1 - g2||^2 = (0.75 + 1) / (2.25 + 1) = 7/13
    u = _update(_setup("sdmgrad", 2, lam=0.0, n_iter=500, inner_lr=0.5, momentum=0.0), g)
    np.testing.assert_allclose(u.weights.numpy(), [7 / 13, 6 / 13], rtol=1e-10)
    # a huge lambda: the mean gradient
    u = _update(_setup("sdmgrad", 2, lam=1e9), g)
    np.testing.assert_allclose(u.weights.numpy(), [0.5, 0.5], atol=1e-8)


def test_sdmgrad_is_permutation_equivariant_when_its_inner_steps_contract():
    # (the suite does not check it: with the official step size 5, w moves between faces of
    # the simplex and rounding differences grow; with a contracting step they do not)
    perm = [2, 0, 3, 1]
    steps = [_random(4, 8, seed=k) for k in range(5)]
    a, b = _setup("sdmgrad", 4, inner_lr=0.3), _setup("sdmgrad", 4, inner_lr=0.3)
    for g in steps:
        np.testing.assert_allclose(_update(b, g[perm]).weights.numpy(),
                                   _update(a, g).weights.numpy()[perm], atol=1e-12)


# -- MoDo --------------------------------------------------------------------------------------
def test_modo_hand_value():
    # g1 = (1, 0), g2 = (0, 2): M = diag(1, 4). From lambda = (1/2, 1/2) with gamma = rho = 0.1:
    # (M + 0.1 I) lambda = (0.55, 2.05); lambda - 0.1 (0.55, 2.05) = (0.445, 0.295), sum 0.74;
    # the projection adds 0.13 to each: lambda = (0.575, 0.425), d = (0.575, 0.85).
    g = [[1.0, 0.0], [0.0, 2.0]]
    u = _update(_setup("modo", 2, gamma=0.1, rho=0.1), g)
    np.testing.assert_allclose(u.weights.numpy(), [0.575, 0.425], rtol=1e-13)
    np.testing.assert_allclose(_direction(u, g), [0.575, 0.85], rtol=1e-13)


@pytest.mark.parametrize("t", [2, 3, 5])
def test_modo_matches_a_reference_over_several_steps(t):
    steps = [_random(t, 9, seed=20 * t + k) for k in range(8)]
    s = _setup("modo", t, gamma=0.05, rho=0.2)
    lam = np.full(t, 1.0 / t)
    for g in steps:
        lam = _proj(lam - 0.05 * (g @ (g.T @ lam) + 0.2 * lam))
        u = _update(s, g)
        np.testing.assert_allclose(u.weights.numpy(), lam, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(_direction(u, g), lam @ g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("t", [2, 3, 4])
def test_modo_settles_at_the_mgda_weights(t):
    # rho = 0: the fixed point of lambda <- Proj(lambda - gamma M lambda) is MGDA's min-norm
    # point; the same G every step, as for a full-batch gradient
    g = _random(t, 6, seed=t) + np.array([0.8] + [0.0] * 5)  # 0 outside the convex hull
    s = _setup("modo", t, gamma=0.1, rho=0.0)
    for _ in range(3000):
        u = _update(s, g)
    ref = _min_norm(g)
    np.testing.assert_allclose(_direction(u, g), ref @ g, atol=1e-9)
    # cross-check of the reference itself by scipy on the simplex
    res = minimize(lambda a: (a @ g) @ (a @ g), np.full(t, 1.0 / t), method="SLSQP",
                   bounds=[(0, 1)] * t, constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}],
                   options={"ftol": 1e-14})
    np.testing.assert_allclose(res.x @ g, ref @ g, atol=1e-5)


# -- CR-MOGM -----------------------------------------------------------------------------------
def test_cr_mogm_hand_values():
    # alpha = 0.5. Step 1, G = I: MGDA (1/2, 1/2), the starting average.
    # Step 2, g2 = (0, 2): gamma = (4 - 0) / (1 + 4) = 0.8, average (0.65, 0.35).
    # Step 3, g2 = -g1: gamma = (1 + 1) / 4 = 0.5, average (0.575, 0.425).
    s = _setup("cr_mogm", 2, alpha=0.5)
    for g, want in [([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5]),
                    ([[1.0, 0.0], [0.0, 2.0]], [0.65, 0.35]),
                    ([[1.0, 0.0], [-1.0, 0.0]], [0.575, 0.425])]:
        np.testing.assert_allclose(_update(s, g).weights.numpy(), want, rtol=1e-13)


@pytest.mark.parametrize("t", [2, 3, 5, 10])
def test_cr_mogm_with_alpha_zero_is_mgda(t):
    a, b = _setup("cr_mogm", t, alpha=0.0), _setup("mgda", t)
    for k in range(4):
        g = _random(t, 12, seed=30 * t + k)
        assert torch.equal(_update(a, g).weights, _update(b, g).weights)
    assert a.solver_failures == b.solver_failures


@pytest.mark.parametrize("t", [2, 3, 4])
def test_cr_mogm_matches_a_reference_over_several_steps(t):
    s = _setup("cr_mogm", t, alpha=0.8)
    lam = None
    for k in range(6):
        g = _random(t, 7, seed=40 * t + k)
        hat = _min_norm(g)
        lam = hat if lam is None else 0.8 * lam + 0.2 * hat
        u = _update(s, g)
        np.testing.assert_allclose(_direction(u, g), lam @ g, rtol=1e-10, atol=1e-12)


# -- GO4Align ----------------------------------------------------------------------------------
def test_go4align_hand_values():
    # Two tasks, two groups (each task its own group), beta = 0.1, losses (1, 3):
    # p = softmax(-0.1 (1, 3)) = (1, e^-0.2) / (1 + e^-0.2); ratio sum L / L = (4, 4/3).
    s = _setup("go4align", 2, robust_step_size=0.1)
    u = _update(s, None, losses=[1.0, 3.0])
    p1 = 1 / (1 + math.exp(-0.2))
    np.testing.assert_allclose(u.weights.numpy(), [4 * p1, 4 / 3 * (1 - p1)], rtol=1e-13)
    np.testing.assert_allclose(float(u.loss), 4 * p1 + 4 * (1 - p1), rtol=1e-13)  # = sum L
    # One group: every task gets the mean indicator.
    u = _update(_setup("go4align", 2, num_groups=1, robust_step_size=0.1), None, [1.0, 3.0])
    np.testing.assert_allclose(u.weights.numpy(), [(4 * p1 + 4 / 3 * (1 - p1)) / 2] * 2,
                               rtol=1e-13)
    # Three tasks, losses (1, 2, 4), p = 1/3 (beta ~ 0): indicators (7/3, 7/6, 7/12). Two
    # groups: {7/3} alone costs 2 (7/24)^2 = 0.170, {7/12} alone 2 (7/12)^2 = 0.68: the first;
    # weights (7/3, 7/8, 7/8).
    u = _update(_setup("go4align", 3, robust_step_size=1e-15), None, [1.0, 2.0, 4.0])
    np.testing.assert_allclose(u.weights.numpy(), [7 / 3, 7 / 8, 7 / 8], rtol=1e-12)


def _kmeans_brute(x, k):
    """Every labelling of the tasks into k non-empty groups; each value -> its group's mean
    in the labelling of least within-group sum of squares."""
    best, best_sse = None, np.inf
    for labels in itertools.product(range(k), repeat=len(x)):
        labels = np.array(labels)
        if len(set(labels.tolist())) < k:
            continue
        means = np.array([x[labels == c].mean() for c in labels])
        sse = ((x - means) ** 2).sum()
        if sse < best_sse:
            best, best_sse = means, sse
    return best


@pytest.mark.parametrize("t,k", [(3, 2), (4, 2), (5, 3), (4, 4)])
def test_go4align_matches_a_reference_over_several_steps(t, k):
    rng = np.random.default_rng(t + k)
    s = _setup("go4align", t, num_groups=k, robust_step_size=0.05)
    p = np.full(t, 1.0 / t)
    for _ in range(8):
        losses = rng.uniform(0.1, 3.0, t)
        p = p * np.exp(-0.05 * losses)  # the official multiplicative form
        p = p / p.sum()
        want = _kmeans_brute(losses.sum() / losses * p, k)
        u = _update(s, None, losses)
        np.testing.assert_allclose(u.weights.numpy(), want, rtol=1e-10)
        np.testing.assert_allclose(float(u.loss), want @ losses, rtol=1e-10)


def test_go4align_groups_equal_indicators_and_permutes_with_the_tasks():
    # equal losses give equal indicators: they share one group, whatever the task order
    losses = [2.0, 0.5, 2.0, 1.0]
    w = _update(_setup("go4align", 4, num_groups=3), None, losses).weights.numpy()
    assert w[0] == w[2]
    perm = [3, 1, 0, 2]
    wp = _update(_setup("go4align", 4, num_groups=3), None, [losses[i] for i in perm])
    np.testing.assert_allclose(wp.weights.numpy(), w[perm], rtol=1e-13)


def test_go4align_survives_zero_and_non_finite_losses():
    s = _setup("go4align", 3)
    u = _update(s, None, [0.0, 1.0, 2.0])
    assert np.isfinite(u.weights.numpy()).all()
    before = s.log_p.clone()
    u = _update(s, None, [math.nan, 1.0, 2.0])
    assert torch.equal(u.weights, torch.ones(3, dtype=torch.float64))
    assert torch.equal(s.log_p, before)
