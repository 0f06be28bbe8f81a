"""Golden values of fairgrad, stch, excess_mtl, log_ls and uw_so on fixed inputs.

Each expected value is either worked out by hand (the arithmetic is in the comment next to it)
or computed by a direct numpy implementation of the paper's formula written here, independently
of the strategy module.
"""

import math

import numpy as np
import pytest
import torch

from mtl_bench import registry
from mtl_bench.errors import UserError
from mtl_bench.strategy import REGRESSION, TaskGradients, TaskInfo
from mtl_bench.train import build_strategy

NEW = ("fairgrad", "stch", "excess_mtl", "log_ls", "uw_so")


def _tasks(n):
    return [TaskInfo(f"t{i}", REGRESSION) for i in range(n)]


def _strategy(name, n_tasks=2, **params):
    s = build_strategy(name, params)
    s.setup(_tasks(n_tasks), seed=0)
    return s


def _combine(s, losses, matrix=None):
    """combine on a leaf copy of the losses; returns (weights, loss, d loss / d losses)."""
    leaf = torch.tensor(losses, dtype=torch.float64, requires_grad=True)
    grads = None
    if s.grad_source is not None:
        grads = TaskGradients(torch.tensor(matrix, dtype=torch.float64), s.grad_source)
    u = s.combine(leaf, grads)
    d = None
    if u.loss is not None:
        (d,) = torch.autograd.grad(u.loss, [leaf])
    return u.weights.double().numpy(), u.loss, d


def test_new_strategies_are_registered_from_their_modules():
    registry.load_builtins()
    for name in NEW:
        cls = registry.strategies.get(name)
        assert cls.__module__ == f"mtl_bench.strategies.{name}"


@pytest.mark.parametrize("name,params", [
    ("fairgrad", {"alpha": 0}), ("fairgrad", {"alpha": -1.0}), ("fairgrad", {"source": "x"}),
    ("stch", {"mu": 0}), ("stch", {"warmup_epochs": 0}), ("stch", {"warmup_epochs": 1.5}),
    ("excess_mtl", {"robust_step_size": 0}), ("excess_mtl", {"source": "rep"}),
    ("log_ls", {"eps": -1e-3}), ("uw_so", {"temperature": 0}),
])
def test_bad_hyper_parameters_are_rejected(name, params):
    with pytest.raises(UserError, match="Parameter `"):
        build_strategy(name, params)


# -- log_ls ------------------------------------------------------------------------------------
def test_log_ls_weights_are_inverse_losses():
    s = _strategy("log_ls", 3, eps=0.0)
    w, loss, d = _combine(s, [0.5, 2.0, 4.0])
    # d/dL_i sum_j log L_j = 1 / L_i = (2, 0.5, 0.25); loss = log(0.5 * 2 * 4) = log 4
    assert w.tolist() == pytest.approx([2.0, 0.5, 0.25], rel=1e-12)
    assert loss.item() == pytest.approx(math.log(4.0), rel=1e-12)
    assert d.tolist() == pytest.approx(w.tolist(), rel=1e-12)


def test_log_ls_is_invariant_to_the_scale_of_a_loss():
    # a task's loss (and hence its gradient) multiplied by c: the weight is divided by c, so
    # the weighted gradient w_i grad L_i does not change: w_i L_i = 1 whatever the scale
    s = _strategy("log_ls", 2)
    w1, _, _ = _combine(s, [0.3, 1.2])
    w2, _, _ = _combine(s, [0.3 * 1000, 1.2])
    assert (w1 * [0.3, 1.2]).tolist() == pytest.approx([1.0, 1.0], rel=1e-6)
    assert w2[0] * 300.0 == pytest.approx(w1[0] * 0.3, rel=1e-6)


# -- uw_so -------------------------------------------------------------------------------------
def test_uw_so_weights_by_hand():
    s = _strategy("uw_so", 3, temperature=1.0)
    w, loss, d = _combine(s, [0.5, 1.0, 2.0])
    # 1/L = (2, 1, 0.5); exp = (7.389056, 2.718282, 1.648721), sum 11.756059
    # softmax = (0.628532, 0.231224, 0.140244)
    assert w.tolist() == pytest.approx([0.628532, 0.231224, 0.140244], abs=2e-6)
    # loss = 0.628532 * 0.5 + 0.231224 * 1 + 0.140244 * 2 = 0.825978
    assert loss.item() == pytest.approx(0.825978, abs=3e-6)
    assert d.tolist() == pytest.approx(w.tolist(), rel=1e-12)  # losses detached in weights


@pytest.mark.parametrize("temperature", [0.1, 0.5, 3.0, 1e4])
def test_uw_so_matches_the_formula(temperature):
    losses = np.array([0.2, 0.9, 3.0, 1.5])
    z = np.exp((1 / losses) / temperature - ((1 / losses) / temperature).max())
    expected = z / z.sum()
    w, _, _ = _combine(_strategy("uw_so", 4, temperature=temperature), losses.tolist())
    assert w == pytest.approx(expected, rel=1e-10, abs=1e-300)
    if temperature == 1e4:  # a hot softmax tends to equal weights 1/K
        assert w == pytest.approx(np.full(4, 0.25), abs=1e-4)


# -- fairgrad ----------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_orthogonal_gradients_closed_form(alpha):
    # orthogonal g_1 = (2, 0), g_2 = (0, 0.5): M = diag(4, 0.25) and M w = w^(-1/alpha) gives
    # a_i w_i = w_i^(-1/alpha), i.e. w_i = a_i^(-alpha / (1 + alpha)); alpha = 1: (1/2, 2)
    s = _strategy("fairgrad", alpha=alpha)
    w, loss, _ = _combine(s, [1.0, 1.0], [[2.0, 0.0], [0.0, 0.5]])
    expected = np.array([4.0, 0.25]) ** (-alpha / (1 + alpha))
    assert loss is None
    assert w == pytest.approx(expected, rel=1e-6)
    if alpha == 1.0:
        assert w.tolist() == pytest.approx([0.5, 2.0], rel=1e-6)


def _newton_fair(gram, alpha, iters=200):
    """Independent solve of M w = w^(-1/alpha): damped Newton in log w (keeps w > 0)."""
    u = np.zeros(len(gram))
    for _ in range(iters):
        w = np.exp(u)
        f = gram @ w - w ** (-1 / alpha)
        jac = (gram + np.diag(w ** (-1 / alpha - 1) / alpha)) * w[None, :]
        step = np.linalg.solve(jac, -f)
        u += np.clip(step, -1.0, 1.0)
    return np.exp(u)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_fairgrad_three_tasks_against_a_direct_solve(alpha):
    g = np.array([[1.0, 0.4, 0.0, -0.3], [-0.5, 1.2, 0.3, 0.0], [0.2, -0.1, 0.8, 0.9]])
    gram = g @ g.T
    expected = _newton_fair(gram, alpha)
    assert gram @ expected == pytest.approx(expected ** (-1 / alpha), rel=1e-9)
    w, _, _ = _combine(_strategy("fairgrad", 3, alpha=alpha), [1.0, 1.0, 1.0], g.tolist())
    assert w == pytest.approx(expected, rel=1e-5)
    # alpha-fairness of the update d = w @ G: (g_i . d) w_i^(1/alpha) = 1 for every task
    d = w @ g
    assert (g @ d) * w ** (1 / alpha) == pytest.approx(np.ones(3), rel=1e-5)


def test_fairgrad_weights_scale_with_the_gradients():
    # G -> c G multiplies M by c^2; w -> c^(-2 alpha / (1 + alpha)) w solves the new system
    g = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]])
    s = _strategy("fairgrad", alpha=2.0)
    w1, _, _ = _combine(s, [1.0, 1.0], g.tolist())
    w10, _, _ = _combine(s, [1.0, 1.0], (10 * g).tolist())
    assert w10 == pytest.approx(w1 * 10 ** (-4 / 3), rel=1e-5)


# -- stch --------------------------------------------------------------------------------------
def test_stch_warm_up_then_smooth_tchebycheff_by_hand():
    s = _strategy("stch", mu=1.0, warmup_epochs=1)
    # warm-up: L = log L_1 + log L_2, weights 1 / L = (2, 0.5)
    w, loss, d = _combine(s, [0.5, 2.0])
    assert w.tolist() == pytest.approx([2.0, 0.5], rel=1e-6)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # log 0.5 + log 2
    s.on_epoch_end(1, torch.tensor([1.0, 4.0]))  # nadir (1, 4)
    # f = (log 1/1, log 2/4) = (0, -log 2); softmax(f) = (1, 0.5) / 1.5 = (2/3, 1/3)
    # L = T mu log(e^0 + e^{-log 2}) = 2 log 1.5 = 0.810930
    # weights T softmax_i / L_i = (2 * 2/3 / 1, 2 * 1/3 / 2) = (4/3, 1/3)
    w, loss, d = _combine(s, [1.0, 2.0])
    assert loss.item() == pytest.approx(2 * math.log(1.5), abs=1e-6)
    assert w.tolist() == pytest.approx([4 / 3, 1 / 3], rel=1e-6)
    assert d.tolist() == pytest.approx(w.tolist(), rel=1e-6)


@pytest.mark.parametrize("mu", [0.05, 0.3, 2.0])
def test_stch_matches_the_formula_and_tends_to_the_max(mu):
    nadir = np.array([2.0, 0.5, 1.0])
    losses = np.array([1.0, 0.6, 0.3])
    s = _strategy("stch", 3, mu=mu, warmup_epochs=2)
    s.on_epoch_end(1, torch.tensor([9.0, 9.0, 9.0]))  # not the last warm-up epoch: ignored
    s.on_epoch_end(2, torch.tensor(nadir))
    s.on_epoch_end(3, torch.tensor([7.0, 7.0, 7.0]))  # after the warm-up: nadir kept
    f = np.log(losses / nadir)
    expected = 3 * mu * np.log(np.exp(f / mu).sum())
    w, loss, d = _combine(s, losses.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert d.tolist() == pytest.approx(w.tolist(), rel=1e-6)
    # mu log sum exp(f / mu) lies in [max f, max f + mu log T]
    assert f.max() * 3 <= loss.item() <= 3 * (f.max() + mu * math.log(3)) + 1e-9
    if mu == 0.05:  # nearly all the weight on the worst normalised task (task 2: f = log 1.2)
        assert w[1] * losses[1] / 3 == pytest.approx(1.0, abs=0.03)


# -- excess_mtl --------------------------------------------------------------------------------
def test_excess_mtl_by_hand():
    s = _strategy("excess_mtl", robust_step_size=0.5)
    # step 1: g = ((1, 0), (0, 2)); S = ((1, 0), (0, 4)); e = (1 / 1, 4 / 2) = (1, 2)
    # (1e-7 under the root ignored); first step: weights stay 1, e(0) = (1, 2)
    w, loss, d = _combine(s, [0.7, 0.2], [[1.0, 0.0], [0.0, 2.0]])
    assert w.tolist() == pytest.approx([1.0, 1.0])
    assert loss.item() == pytest.approx(0.9)
    # step 2: g = ((2, 0), (0, 2)); S = ((5, 0), (0, 8)); e = (4 / sqrt 5, 4 / sqrt 8)
    # = (1.788854, 1.414214); r = e / e(0) = (1.788854, 0.707107)
    # lam = 2 softmax(0.5 r) = 2 softmax(0.894427, 0.353553)
    #     = 2 (1 / (1 + e^{-0.540874}), ...) = 2 (0.632016, 0.367984) = (1.264031, 0.735969)
    w, loss, d = _combine(s, [0.7, 0.2], [[2.0, 0.0], [0.0, 2.0]])
    assert w.tolist() == pytest.approx([1.264031, 0.735969], abs=2e-6)
    assert d.tolist() == pytest.approx(w.tolist(), rel=1e-12)


def _excess_reference(grads_per_step, eta):
    """The paper's rule, step by step in numpy (multiplicative form, renormalised to sum T)."""
    t = grads_per_step[0].shape[0]
    lam = np.ones(t)
    sq = np.zeros_like(grads_per_step[0])
    first = None
    out = []
    for g in grads_per_step:
        sq = sq + g**2
        e = np.array([g[i] @ (g[i] / np.sqrt(sq[i] + 1e-7)) for i in range(t)])
        if first is None:
            first = e
        else:
            lam = lam * np.exp(eta * e / first)
            lam = lam / lam.sum() * t
        out.append(lam.copy())
    return out


def test_excess_mtl_matches_a_direct_implementation():
    rng = np.random.default_rng(0)
    steps = [rng.normal(size=(3, 6)) * np.array([[0.1], [1.0], [5.0]]) for _ in range(8)]
    expected = _excess_reference(steps, eta=0.3)
    s = _strategy("excess_mtl", 3, robust_step_size=0.3)
    for g, lam in zip(steps, expected):
        w, _, _ = _combine(s, [1.0, 1.0, 1.0], g.tolist())
        assert w == pytest.approx(lam, rel=1e-6)  # the log-weights are float32 state
    # the accumulated squares resume from a state_dict
    resumed = _strategy("excess_mtl", 3, robust_step_size=0.3)
    resumed.load_state_dict(s.state_dict())
    g = rng.normal(size=(3, 6))
    assert _combine(resumed, [1.0] * 3, g.tolist())[0] == pytest.approx(
        _combine(s, [1.0] * 3, g.tolist())[0], rel=0, abs=0)


def test_fairgrad_zero_gradient_task_gets_zero_weight():
    # task 2 has no gradient: (M w)_2 = 0 can never equal w_2^(-1) > 0; the other task alone
    # solves 4 w_1 = w_1^(-1), w_1 = 1/2
    w, _, _ = _combine(_strategy("fairgrad"), [1.0, 1.0], [[2.0, 0.0], [0.0, 0.0]])
    assert w.tolist() == pytest.approx([0.5, 0.0], rel=1e-6)
    w, _, _ = _combine(_strategy("fairgrad"), [1.0, 1.0], [[0.0, 0.0], [0.0, 0.0]])
    assert w.tolist() == [0.5, 0.5]
