"""Golden values of DB-MTL, GradDrop, ConFIG, DualProj and MoCo.

Hand-computed values come from each paper's update rule on 2-D examples (worked out in the
comments). Longer checks compare with a reference written here in numpy, in the space of the
gradients (P-length vectors), independently of the strategies' own code: ConFIG by least
squares on the unit gradients, DualProj by scipy's SLSQP on the projection problem, MoCo with
a bisection projection onto the simplex. Each method's stated property is checked too.
"""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from strategy_steps import setup_strategy, update

from mtl_bench.cli import main
from mtl_bench.errors import UserError
from mtl_bench.sweep import parse_assignments
from mtl_bench.train import build_strategy

NAMES = ["db_mtl", "graddrop", "config", "dualproj", "moco"]


_setup, _update = setup_strategy, update


def _direction(update, g):
    if update.direction is not None:
        return update.direction.numpy()
    return update.weights.numpy() @ np.asarray(g, dtype=np.float64)


def _random(t, p, seed):
    return np.random.default_rng(seed).standard_normal((t, p))


# -- common behaviour ------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [
    ("db_mtl", {"beta": 1.0}), ("db_mtl", {"beta": -0.1}), ("db_mtl", {"beta_sigma": -1.0}),
    ("db_mtl", {"source": "rep"}), ("db_mtl", {"source": "last"}), ("moco", {"source": "last"}),
    ("graddrop", {"leak": 1.5}), ("graddrop", {"leak": -0.1}),
    ("graddrop", {"source": "last"}), ("config", {"source": "last"}),
    ("dualproj", {"source": "last"}), ("moco", {"beta": 0.0}), ("moco", {"beta": 2.0}),
    ("moco", {"gamma": 0.0}), ("moco", {"rho": -1.0}), ("moco", {"source": "rep"}),
])
def test_bad_hyper_parameters(name, params):
    key = next(iter(params))
    with pytest.raises(UserError, match=f"Parameter `{key}` should be"):
        build_strategy(name, params)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [1, 2, 3, 5])
def test_finite_update_with_right_shape(name, t):
    g = _random(t, 7, seed=t)
    u = _update(_setup(name, t), g, losses=np.linspace(0.5, 2.0, t))
    d = _direction(u, g)
    assert u.weights.shape == (t,) and np.isfinite(u.weights.numpy()).all()
    assert d.shape == (7,) and np.isfinite(d).all()


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_give_a_finite_update(name):
    g = np.zeros((3, 4))
    g[0] = [1.0, -2.0, 0.5, 0.0]
    for rows in (g, np.zeros((3, 4))):
        u = _update(_setup(name, 3), rows)
        assert np.isfinite(u.weights.numpy()).all() and np.isfinite(_direction(u, rows)).all()


def test_repr_and_labels():
    assert repr(build_strategy("db_mtl", {})) == "DBMTL(beta=0.9, beta_sigma=0.0, source='shared')"
    assert repr(build_strategy("moco", {"rho": 0.1})) == (
        "MoCo(beta=0.5, gamma=0.1, rho=0.1, source='shared')")
    assert str(build_strategy("graddrop", {"leak": 0.2})) == "graddrop(leak=0.2)"
    assert str(build_strategy("config", {"source": "rep"})) == "config(source=rep)"
    assert build_strategy("graddrop", {}).grad_source == "rep"


def test_config_name_works_with_set(capsys, runs_dir):
    # `config` is also a word of the command line (run --config FILE): --set must still reach
    # the strategy of that name
    assert parse_assignments(["config.source=rep"]) == {"config": {"source": ["rep"]}}
    code = main(["run", "--strategy", "config", "--set", "config.source=rep", "--dry-run",
                 "--runs-dir", str(runs_dir)])
    out = capsys.readouterr()
    assert code == 0 and "config(source=rep)" in out.out
    code = main(["run", "--strategy", "config", "--set", "config.source=last", "--dry-run",
                 "--runs-dir", str(runs_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "Parameter `source`" in err


# -- DualProj ----------------------------------------------------------------------------------
def test_dualproj_hand_value():
    # g1 = (1, 0), g2 = (-2, 1): mean (-0.5, 0.5) conflicts with g1 (inner product -0.5).
    # The closest point of {x1 >= 0, -2 x1 + x2 >= 0} to the mean is (0, 0.5) (only the first
    # constraint is active), = 1 g1 + 0.5 g2.
    g = [[1.0, 0.0], [-2.0, 1.0]]
    u = _update(_setup("dualproj", 2), g)
    np.testing.assert_allclose(u.weights.numpy(), [1.0, 0.5], atol=1e-9)
    np.testing.assert_allclose(_direction(u, g), [0.0, 0.5], atol=1e-9)


def test_dualproj_is_the_mean_without_conflict():
    g = [[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.3, 0.1, 1.0]]
    np.testing.assert_allclose(_update(_setup("dualproj", 3), g).weights.numpy(),
                               np.full(3, 1 / 3), atol=1e-9)


def _closest_non_conflicting(g, target):
    """argmin ||x - target||^2 subject to g_j . x >= 0, by SLSQP in the gradient space."""
    res = minimize(lambda x: float((x - target) @ (x - target)), target.copy(),
                   jac=lambda x: 2 * (x - target),
                   constraints=[{"type": "ineq", "fun": lambda x: g @ x, "jac": lambda x: g}],
                   method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    return res.x


@pytest.mark.parametrize("t,p,seed", [(2, 3, 0), (3, 5, 1), (3, 2, 2), (5, 8, 3), (4, 3, 4)])
def test_dualproj_is_the_closest_non_conflicting_vector_to_the_mean(t, p, seed):
    g = _random(t, p, seed)
    g[0] = -g[1:].sum(0) - 0.3 * g[0]  # make a conflict with the mean likely
    d = _direction(_update(_setup("dualproj", t), g), g)
    assert (g @ d >= -1e-8 * np.abs(g).max() ** 2).all()
    reference = _closest_non_conflicting(g, g.mean(0))
    np.testing.assert_allclose(d, reference, atol=1e-6)


# -- ConFIG ------------------------------------------------------------------------------------
def test_config_hand_value():
    # unit gradients e1, e2: U x = 1 gives x = (1, 1), g_u = (1, 1) / sqrt 2; the projections
    # are 1 / sqrt 2 and 2 / sqrt 2, so d = 3 / sqrt 2 g_u = (1.5, 1.5) = 1.5 g1 + 0.75 g2
    g = [[1.0, 0.0], [0.0, 2.0]]
    u = _update(_setup("config", 2), g)
    np.testing.assert_allclose(u.weights.numpy(), [1.5, 0.75], atol=1e-12)
    np.testing.assert_allclose(_direction(u, g), [1.5, 1.5], atol=1e-12)


def _config_reference(g):
    units = g / np.linalg.norm(g, axis=1, keepdims=True)
    x = np.linalg.lstsq(units, np.ones(len(g)), rcond=None)[0]
    g_u = x / np.linalg.norm(x)
    return (g @ g_u).sum() * g_u


@pytest.mark.parametrize("t,p,seed", [(2, 2, 0), (2, 6, 1), (3, 6, 2), (5, 9, 3), (3, 3, 4)])
def test_config_matches_least_squares_and_has_equal_cosines(t, p, seed):
    g = _random(t, p, seed) * np.logspace(-1, 1, t)[:, None]
    d = _direction(_update(_setup("config", t), g), g)
    np.testing.assert_allclose(d, _config_reference(g), rtol=1e-8, atol=1e-10)
    cosines = g @ d / (np.linalg.norm(g, axis=1) * np.linalg.norm(d))
    assert cosines.min() > 0
    np.testing.assert_allclose(cosines, cosines[0], rtol=1e-8)


def test_config_more_tasks_than_dimensions():
    # rank-deficient: the pseudo-inverse gives the least-squares direction of the reference
    g = _random(4, 2, seed=7)
    d = _direction(_update(_setup("config", 4), g), g)
    np.testing.assert_allclose(d, _config_reference(g), rtol=1e-8, atol=1e-10)


def test_config_zero_gradient_task_is_left_out():
    g = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    u = _update(_setup("config", 3), g)
    np.testing.assert_allclose(u.weights.numpy(), [1.5, 0.0, 0.75], atol=1e-12)


# -- DB-MTL ------------------------------------------------------------------------------------
def test_db_mtl_hand_value():
    # log-loss gradients g_i / L_i: (3, 0) and (0, 2). First step: h = (1 - 0.9) of them =
    # (0.3, 0), (0, 0.2); alpha = max norm / norm = (1, 1.5); d = (0.3, 0.3)
    g = [[3.0, 0.0], [0.0, 1.0]]
    u = _update(_setup("db_mtl", 2), g, losses=[1.0, 0.5])
    np.testing.assert_allclose(u.weights.numpy(), [1.0, 1.5], rtol=1e-6)
    np.testing.assert_allclose(_direction(u, g), [0.3, 0.3], rtol=1e-6)


def test_db_mtl_matches_a_reference_over_steps():
    beta, sigma, t, p = 0.7, 0.4, 3, 5
    s = _setup("db_mtl", t, beta=beta, beta_sigma=sigma)
    h = np.zeros((t, p))
    rng = np.random.default_rng(0)
    for step in range(1, 7):
        g, losses = rng.standard_normal((t, p)), rng.uniform(0.1, 3.0, t)
        rate = beta / step**sigma
        h = rate * h + (1 - rate) * g / (losses[:, None] + 1e-8)
        norms = np.linalg.norm(h, axis=1)
        alpha = norms.max() / (norms + 1e-8)
        u = _update(s, g, losses)
        np.testing.assert_allclose(u.weights.numpy(), alpha, rtol=1e-9)
        np.testing.assert_allclose(_direction(u, g), alpha @ h, rtol=1e-9, atol=1e-12)
        # gradient-magnitude balance: every task's tracked gradient enters with the same norm
        np.testing.assert_allclose(np.linalg.norm(alpha[:, None] * h, axis=1), norms.max(),
                                   rtol=1e-6)


def test_db_mtl_ignores_the_scale_of_a_loss():
    # loss-scale balance: L_i -> c L_i scales g_i by c too; the log removes both
    rng = np.random.default_rng(1)
    a, b = _setup("db_mtl", 2), _setup("db_mtl", 2)
    for _ in range(4):
        g, losses = rng.standard_normal((2, 4)), rng.uniform(0.5, 2.0, 2)
        scale = np.array([100.0, 0.1])
        da = _direction(_update(a, g, losses), g)
        db = _direction(_update(b, g * scale[:, None], losses * scale), g)
        np.testing.assert_allclose(da, db, rtol=1e-5)  # up to the eps added to each loss


# -- MoCo --------------------------------------------------------------------------------------
def test_moco_hand_value():
    # beta = 1: y = g. Y Y^T = diag(1, 4), lambda = (0.5, 0.5): step (0.5, 2);
    # lambda - 0.1 step = (0.45, 0.3), projected onto the simplex by adding 0.125 to both
    g = [[1.0, 0.0], [0.0, 2.0]]
    u = _update(_setup("moco", 2, beta=1.0, gamma=0.1), g)
    np.testing.assert_allclose(u.weights.numpy(), [0.575, 0.425], atol=1e-12)
    np.testing.assert_allclose(_direction(u, g), [0.575, 0.85], atol=1e-12)


def _simplex_by_bisection(v):
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if np.clip(v - tau, 0, None).sum() > 1 else (lo, tau)
    return np.clip(v - (lo + hi) / 2, 0, None)


def test_moco_matches_a_reference_over_steps():
    beta, gamma, rho, t, p = 0.6, 0.05, 0.2, 3, 4
    s = _setup("moco", t, beta=beta, gamma=gamma, rho=rho)
    y, lam = np.zeros((t, p)), np.full(t, 1 / t)
    rng = np.random.default_rng(3)
    for _ in range(8):
        g = rng.standard_normal((t, p))
        y = (1 - beta) * y + beta * g
        lam = _simplex_by_bisection(lam - gamma * (y @ y.T + rho * np.eye(t)) @ lam)
        u = _update(s, g)
        np.testing.assert_allclose(u.weights.numpy(), lam, atol=1e-10)
        np.testing.assert_allclose(_direction(u, g), lam @ y, atol=1e-10)


def test_moco_converges_to_the_min_norm_weights():
    # fixed gradients: lambda tends to MGDA's min-norm point of conv{g1, g2},
    # alpha_1 = (g2 - g1) . g2 / ||g1 - g2||^2 = 4 / 5
    g = [[1.0, 0.0], [0.0, 2.0]]
    s = _setup("moco", 2, beta=0.5, gamma=0.2)
    for _ in range(400):
        u = _update(s, g)
    np.testing.assert_allclose(u.weights.numpy(), [0.8, 0.2], atol=1e-6)


# -- GradDrop ----------------------------------------------------------------------------------
def test_graddrop_keeps_everything_when_signs_agree():
    g = np.array([[1.0, -2.0, 0.5], [3.0, -0.1, 0.0]])
    u = _update(_setup("graddrop", 2), g)
    np.testing.assert_allclose(_direction(u, g), g.sum(0))
    np.testing.assert_allclose(u.weights.numpy(), [1.0, 1.0])


def test_graddrop_matches_the_sign_rule_with_the_same_draws():
    g = np.array([[1.0, -1.0, 2.0, 0.5, -3.0], [-3.0, -1.0, 2.0, -0.5, 1.0],
                  [0.5, 2.0, -1.0, 0.0, 1.0]])
    seed = 11
    d = _direction(_update(_setup("graddrop", 3, seed=seed, leak=0.25), g), g)
    # the same uniform draws, from a generator seeded like the strategy's
    u = torch.rand(5, generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64).numpy()
    purity = 0.5 * (1 + g.sum(0) / (np.abs(g).sum(0) + 1e-7))
    mask = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))
    np.testing.assert_allclose(d, (0.25 * g + 0.75 * mask * g).sum(0), atol=1e-12)


def test_graddrop_keeps_the_positive_sign_with_probability_purity():
    # every element: g1 = +1, g2 = -3, so P = (1 + (1 - 3) / 4) / 2 = 1/4
    n = 20000
    g = np.stack([np.ones(n), -3 * np.ones(n)])
    d = _direction(_update(_setup("graddrop", 2, seed=3), g), g)
    assert set(np.unique(d)) <= {1.0, -3.0}
    positive = float((d > 0).mean())
    assert abs(positive - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_graddrop_with_full_leak_is_the_sum():
    g = _random(3, 6, seed=5)
    u = _update(_setup("graddrop", 3, leak=1.0), g)
    np.testing.assert_allclose(_direction(u, g), g.sum(0), atol=1e-12)
