"""Golden values of the loss-weighting strategies on fixed inputs.

Every expected number is worked out by hand from the paper's equations; the arithmetic is in
the comments next to it (rounded to the digits shown, tolerances match). The second half checks
the card-four options the issue asks for (GradNorm ``layer`` / ``initial``, own learning rates,
DWA temperature, the fixed-weight simplex sweep).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from mtl_bench.errors import UserError
from mtl_bench.strategy import CLASSIFICATION, REGRESSION, TaskGradients, TaskInfo
from mtl_bench.sweep import SweepSpec, expand, parse_assignments
from mtl_bench.task import MultiTaskNet, Task
from mtl_bench.train import RunConfig, build_strategy, make_optimizer, train_step

REG2 = [TaskInfo("a", REGRESSION), TaskInfo("b", REGRESSION)]
REG3 = [*REG2, TaskInfo("c", REGRESSION)]


def _strategy(name, tasks=REG2, seed=0, **params):
    s = build_strategy(name, params)
    s.setup(tasks, seed=seed)
    return s


# -- RLW ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_rlw_weights_lie_on_the_simplex_and_weight_the_losses(distribution):
    s = _strategy("rlw", REG3, distribution=distribution)
    for _ in range(20):
        u = s.combine(torch.tensor([1.0, 2.0, 4.0]))
        assert (u.weights > 0).all() and u.weights.sum().item() == pytest.approx(1.0)
        w = u.weights.tolist()
        assert u.loss.item() == pytest.approx(1 * w[0] + 2 * w[1] + 4 * w[2], rel=1e-6)


def test_rlw_seed_fixes_the_draws():
    def first(seed):
        return _strategy("rlw", seed=seed).combine(torch.ones(2)).weights

    assert torch.equal(first(0), first(0)) and not torch.equal(first(0), first(1))


def _uniform_ratio_cdf(t):
    # w = u1 / (u1 + u2) <= t  <=>  u1 <= r u2 with r = t / (1 - t); on the unit square the
    # area below that line is r/2 for r <= 1 (t <= 1/2) and 1 - 1/(2r) otherwise.
    t = np.asarray(t)
    r = t / (1 - t)
    return np.where(r <= 1, r / 2, 1 - 1 / (2 * r))


@pytest.mark.parametrize("distribution,cdf", [
    # normal: w1 = softmax(z)_1 = sigmoid(z1 - z2) and z1 - z2 ~ N(0, 2), so
    # P(w1 <= t) = Phi(logit(t) / sqrt 2)
    ("normal", lambda t: stats.norm.cdf(np.log(t / (1 - t)) / math.sqrt(2))),
    # Dirichlet(1, 1) on two tasks: w1 ~ Uniform(0, 1)
    ("dirichlet", lambda t: t),
    ("uniform", _uniform_ratio_cdf),
])
def test_rlw_two_task_weight_follows_its_distribution(distribution, cdf):
    """Kolmogorov-Smirnov against the distribution the definition implies (fixed seed, so the
    outcome is deterministic; a wrong normalisation gives p < 1e-10)."""
    s = _strategy("rlw", seed=3, distribution=distribution)
    w1 = np.array([s.draw()[0].item() for _ in range(3000)])
    assert stats.kstest(w1, cdf).pvalue > 1e-3


def test_rlw_rejects_unknown_distribution():
    with pytest.raises(UserError, match="Parameter `distribution` should be one of"):
        build_strategy("rlw", {"distribution": "cauchy"})


# -- DTP ---------------------------------------------------------------------------------------
def test_dtp_focal_weights_by_hand():
    s = _strategy("dtp", gamma=2.0, alpha=0.5)
    # step 1, L = (0.5, 2): k = exp(-L) = (0.606531, 0.135335), kbar = k (no history)
    # w = -(1-k)^2 log k = (0.393469^2 * 0.5, 0.864665^2 * 2) = (0.077409, 1.495290)
    u = s.combine(torch.tensor([0.5, 2.0]))
    assert u.weights.tolist() == pytest.approx([0.077409, 1.495290], abs=2e-6)
    # loss = 0.077409 * 0.5 + 1.495290 * 2 = 3.029285
    assert u.loss.item() == pytest.approx(3.029285, abs=1e-5)
    # step 2, L = (0.5, 0.5): k = (0.606531, 0.606531)
    # kbar = 0.5 k + 0.5 kbar_prev = (0.606531, 0.5 * 0.606531 + 0.5 * 0.135335 = 0.370933)
    # w_2 = -(1 - 0.370933)^2 log 0.370933 = 0.395725 * 0.991734 = 0.392454
    u = s.combine(torch.tensor([0.5, 0.5]))
    assert u.weights.tolist() == pytest.approx([0.077409, 0.392454], abs=2e-6)


def test_dtp_gamma_zero_weights_equal_losses_on_the_first_step():
    # gamma = 0: w = -log kbar = -log exp(-L) = L
    u = _strategy("dtp", gamma=0.0).combine(torch.tensor([0.3, 1.7]))
    assert u.weights.tolist() == pytest.approx([0.3, 1.7], rel=1e-6)


def test_dtp_relative_kpi_puts_tasks_on_one_scale():
    s = _strategy("dtp", kpi="relative", alpha=0.5)
    # step 1: k = exp(-L / L(0)) = exp(-1) = 0.367879 for both tasks, whatever their scale
    # w = -(1 - 0.367879)^2 * (-1) = 0.399576
    u = s.combine(torch.tensor([0.5, 200.0]))
    assert u.weights.tolist() == pytest.approx([0.399576, 0.399576], abs=2e-6)
    # step 2, L = (0.25, 200): k = (exp(-0.5), exp(-1)) = (0.606531, 0.367879)
    # kbar_1 = 0.5 * 0.606531 + 0.5 * 0.367879 = 0.487205
    # w_1 = -(0.512795)^2 * log 0.487205 = 0.262959 * 0.719070 = 0.189086
    u = s.combine(torch.tensor([0.25, 200.0]))
    assert u.weights.tolist() == pytest.approx([0.189086, 0.399576], abs=2e-6)


@pytest.mark.parametrize("params", [{"gamma": -1}, {"alpha": 0}, {"alpha": 1.5},
                                    {"kpi": "accuracy"}])
def test_dtp_rejects_bad_params(params):
    with pytest.raises(UserError, match="Parameter `"):
        build_strategy("dtp", params)


# -- GLS ---------------------------------------------------------------------------------------
def test_gls_geometric_mean_and_effective_weights_by_hand():
    # T = 2, L = (1, 4): L = sqrt(4) = 2; w_i = L / (T L_i) = (2/2, 2/8) = (1, 0.25)
    u = _strategy("gls").combine(torch.tensor([1.0, 4.0]))
    assert u.loss.item() == pytest.approx(2.0, rel=1e-6)
    assert u.weights.tolist() == pytest.approx([1.0, 0.25], rel=1e-6)
    # T = 3, L = (1, 2, 4): L = 8^(1/3) = 2; w = (2/3, 2/6, 2/12) = (0.666667, 0.333333, 0.166667)
    u = _strategy("gls", REG3).combine(torch.tensor([1.0, 2.0, 4.0]))
    assert u.loss.item() == pytest.approx(2.0, rel=1e-6)
    assert u.weights.tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 6], rel=1e-6)


def test_gls_update_direction_ignores_loss_scale():
    # scaling L_2 by 100 scales L by 10 = sqrt(100); the contributions w_i L_i = L / T stay
    # equal across tasks, so each task's share of the update is unchanged
    s = _strategy("gls")
    a = s.combine(torch.tensor([0.5, 2.0]))
    b = s.combine(torch.tensor([0.5, 200.0]))
    assert b.loss.item() == pytest.approx(10 * a.loss.item(), rel=1e-6)
    contrib = b.weights * torch.tensor([0.5, 200.0])
    assert contrib.tolist() == pytest.approx([b.loss.item() / 2] * 2, rel=1e-6)


# -- IMTL-L ------------------------------------------------------------------------------------
def test_imtl_l_loss_and_scale_gradient_by_hand():
    s = _strategy("imtl_l")
    with torch.no_grad():
        s.log_scales.copy_(torch.tensor([math.log(2.0), -math.log(4.0)]))
    u = s.combine(torch.tensor([1.0, 4.0]))
    # e^s = (2, 0.25): loss = 2*1 + 0.25*4 - (log 2 - log 4) = 3 + log 2 = 3.693147
    assert u.loss.item() == pytest.approx(3.693147, abs=1e-6)
    assert u.weights.tolist() == pytest.approx([2.0, 0.25], rel=1e-6)
    # dL/ds_i = e^{s_i} L_i - 1 = (2 - 1, 1 - 1) = (1, 0)
    (grad,) = torch.autograd.grad(u.loss, s.log_scales)
    assert grad.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_imtl_l_drives_every_scaled_loss_to_one():
    s = _strategy("imtl_l")
    # plain gradient descent: d^2L/ds^2 = e^s L = 1 at the optimum, so step 0.5 halves the error
    losses = torch.tensor([0.5, 8.0])
    for _ in range(100):
        (grad,) = torch.autograd.grad(s.combine(losses).loss, s.log_scales)
        with torch.no_grad():
            s.log_scales -= 0.5 * grad
    # zero of e^s L - 1: e^s = 1/L = (2, 0.125)
    assert torch.exp(s.log_scales).tolist() == pytest.approx([2.0, 0.125], rel=1e-5)


# -- FAMO --------------------------------------------------------------------------------------
def test_famo_first_step_weights_by_hand():
    u = _strategy("famo").combine(torch.tensor([1.0, 4.0]))
    # xi = 0 -> z = (0.5, 0.5); c = 1 / (0.5/1 + 0.5/4) = 1 / 0.625 = 1.6
    # weights c z_i / L_i = (0.8, 0.2), summing to 1
    assert u.weights.tolist() == pytest.approx([0.8, 0.2], rel=1e-6)
    # loss = c sum z_i log L_i = 1.6 * 0.5 * log 4 = 0.8 * 1.386294 = 1.109035
    assert u.loss.item() == pytest.approx(1.109035, abs=1e-6)


def test_famo_logit_update_sgd_by_hand():
    s = _strategy("famo", beta=0.1, gamma=0.0, update="sgd")
    s.combine(torch.tensor([1.0, 4.0]))
    u = s.combine(torch.tensor([0.5, 4.0]))
    # delta = log L(t) - log L(t+1) = (log 2, 0) = (0.693147, 0); z . delta = 0.346574
    # g = z * (delta - z . delta) = (0.173287, -0.173287); xi = -0.1 g = (-0.017329, 0.017329)
    assert s.logits.tolist() == pytest.approx([-0.017329, 0.017329], abs=1e-6)
    # z = softmax(xi) = (0.491337, 0.508663); c = 1 / (0.491337/0.5 + 0.508663/4) = 0.901139
    # weights = c z / L = (0.885420, 0.114580): the task that improved most loses weight
    assert u.weights.tolist() == pytest.approx([0.885420, 0.114580], abs=1e-6)


def test_famo_logit_update_adam_by_hand():
    s = _strategy("famo", beta=0.1, gamma=0.0)
    s.combine(torch.tensor([1.0, 4.0]))
    assert s.logits.tolist() == [0.0, 0.0]  # no previous losses yet: no update
    u = s.combine(torch.tensor([0.5, 4.0]))
    # first Adam step: m_hat = g, v_hat = g^2, so xi = -beta g / (|g| + 1e-8) = (-0.1, 0.1)
    assert s.logits.tolist() == pytest.approx([-0.1, 0.1], abs=1e-6)
    # z = softmax(-0.1, 0.1) = (0.450166, 0.549834); weights c z / L = (0.867547, 0.132453)
    assert u.weights.tolist() == pytest.approx([0.867547, 0.132453], abs=1e-6)


def test_famo_decay_pulls_logits_back_when_losses_do_not_move():
    s = _strategy("famo", beta=0.5, gamma=0.1, update="sgd")
    with torch.no_grad():
        s.logits.copy_(torch.tensor([1.0, -1.0]))
    s.combine(torch.tensor([1.0, 2.0]))
    s.combine(torch.tensor([1.0, 2.0]))
    # delta = 0, so the step is -beta gamma xi: xi (1 - 0.05) = (0.95, -0.95)
    assert s.logits.tolist() == pytest.approx([0.95, -0.95], rel=1e-6)


@pytest.mark.parametrize("params", [{"beta": 0}, {"gamma": -0.1}, {"update": "rmsprop"}])
def test_famo_rejects_bad_params(params):
    with pytest.raises(UserError, match="Parameter `"):
        build_strategy("famo", params)


# -- card four: GradNorm `layer` and `initial` -------------------------------------------------
def _net():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU())
    model = MultiTaskNet(trunk, [nn.Linear(5, 1), nn.Linear(5, 1)])
    tasks = [Task("a", REGRESSION, 1, ("mae",)), Task("b", REGRESSION, 1, ("mae",))]
    x = torch.randn(6, 3)
    return model, tasks, x, [torch.randn(6), 5 * torch.randn(6)]


def _expected_norms(model, x, ys, layer):
    rep = model.trunk(x)
    losses = [((h(rep).squeeze(-1) - y) ** 2).mean() for h, y in zip(model.heads, ys)]
    at = {"last": list(model.trunk[2].parameters()), "all": list(model.trunk.parameters()),
          "rep": [rep]}[layer]
    norms = []
    for loss in losses:
        g = torch.autograd.grad(loss, at, retain_graph=True)
        norms.append(torch.sqrt(sum((gi**2).sum() for gi in g)))
    return torch.stack(norms)


def test_gradnorm_layer_decides_where_norms_are_taken():
    seen = {}
    for layer in ("last", "all", "rep"):
        model, tasks, x, ys = _net()
        s = _strategy("gradnorm", [t.info for t in tasks], layer=layer)
        original = s.combine

        def spy(losses, grads=None, _original=original, _layer=layer):
            seen[_layer] = (grads.source, grads.norms.clone())
            return _original(losses, grads)

        s.combine = spy
        train_step(model, tasks, s, (x,), ys, torch.optim.SGD(model.parameters(), lr=0.0))
        source, norms = seen[layer]
        assert source == {"last": "last", "all": "shared", "rep": "rep"}[layer]
        torch.testing.assert_close(norms, _expected_norms(model, x, ys, layer))
    a, b, c = (seen[k][1] for k in ("last", "all", "rep"))
    assert not torch.allclose(a, b) and not torch.allclose(a, c) and not torch.allclose(b, c)


def test_gradnorm_first_epoch_freezes_initial_loss_at_epoch_one_mean():
    s = _strategy("gradnorm", alpha=1.0, initial="first_epoch")
    ones = TaskGradients(torch.eye(2), "last")  # ||g_i|| = 1 for both tasks
    s.combine(torch.tensor([2.0, 4.0]), ones)
    s.combine(torch.tensor([4.0, 8.0]), ones)
    # during epoch 1, L_i(0) is the running mean: ((2+4)/2, (4+8)/2) = (3, 6)
    assert s.initial_losses.tolist() == [3.0, 6.0]
    s.on_epoch_end(1, torch.tensor([3.0, 6.0]))
    u = s.combine(torch.tensor([1.0, 1.0]), ones)
    assert s.initial_losses.tolist() == [3.0, 6.0]  # frozen, not updated by this step
    # w = (1, 1), G = (1, 1), G_bar = 1; ratio L/L(0) = (1/3, 1/6), mean 1/4, r = (4/3, 2/3)
    # target = 1 * r^1 = (4/3, 2/3); L_grad = |1 - 4/3| + |1 - 2/3| = 2/3
    # loss = sum w L + L_grad = 2 + 2/3
    assert u.loss.item() == pytest.approx(2 + 2 / 3, rel=1e-6)
    s.on_epoch_end(2, torch.tensor([9.0, 9.0]))
    assert s.initial_losses.tolist() == [3.0, 6.0]


def test_gradnorm_first_step_keeps_the_first_losses():
    s = _strategy("gradnorm", initial="first_step")
    ones = TaskGradients(torch.eye(2), "last")
    s.combine(torch.tensor([2.0, 4.0]), ones)
    s.combine(torch.tensor([4.0, 8.0]), ones)
    s.on_epoch_end(1, torch.tensor([3.0, 6.0]))
    assert s.initial_losses.tolist() == [2.0, 4.0]


# -- card four: own learning rate, no weight decay ---------------------------------------------
@pytest.mark.parametrize("name,attr", [("uncertainty", "log_vars"), ("imtl_l", "log_scales"),
                                       ("gradnorm", "w")])
@pytest.mark.parametrize("lr", [0.05, None])
def test_learnable_weights_get_own_lr_and_no_weight_decay(name, attr, lr):
    model = nn.Linear(3, 2)
    s = _strategy(name, [TaskInfo("a", REGRESSION), TaskInfo("b", CLASSIFICATION)], lr=lr)
    opt = make_optimizer(model, s, lr=1e-3, weight_decay=0.1)
    model_group, own_group = opt.param_groups
    assert model_group["lr"] == 1e-3 and model_group["weight_decay"] == 0.1
    assert own_group["params"] == [getattr(s, attr)]
    assert own_group["lr"] == (lr if lr is not None else 1e-3)
    assert own_group["weight_decay"] == 0.0


# -- card four: DWA temperature ----------------------------------------------------------------
@pytest.mark.parametrize("temperature,expected", [
    # ratios w = (0.5/1, 3/4) = (0.5, 0.75); lambda = 2 exp(w/T) / sum exp(w/T)
    # T = 0.5: exp(1), exp(1.5) -> 2 / (1 + e^0.5) = 2 / 2.648721 = 0.755081, 1.244919
    (0.5, [0.755081, 1.244919]),
    # T = 100: exp(0.005), exp(0.0075) -> 2 / (1 + e^0.0025) = 0.998750, 1.001250
    (100.0, [0.998750, 1.001250]),
])
def test_dwa_temperature_by_hand(temperature, expected):
    s = _strategy("dwa", temperature=temperature)
    s.on_epoch_end(1, torch.tensor([1.0, 4.0]))
    s.on_epoch_end(2, torch.tensor([0.5, 3.0]))
    assert s.combine(torch.ones(2)).weights.tolist() == pytest.approx(expected, abs=2e-6)


# -- card four: fixed-weight simplex sweep -----------------------------------------------------
def test_fixed_sweep_two_tasks_is_the_grid_0_1_to_0_9():
    from mtl_bench.strategies.fixed import Fixed

    grid = [v["weights"] for v in Fixed.variants({"sweep": 9}, 2)]
    # fractions 1/10 .. 9/10 of the first task, scaled to sum to T = 2
    np.testing.assert_allclose(grid, [[0.2 * i, 2 - 0.2 * i] for i in range(1, 10)])
    assert [1.0, 1.0] in grid  # equal weighting is a grid point for odd K


def test_fixed_sweep_three_tasks_covers_the_simplex():
    from mtl_bench.strategies.fixed import Fixed

    grid = np.array([v["weights"] for v in Fixed.variants({"sweep": 9}, 3)])
    # positive compositions of 10 into 3 parts: C(9, 2) = 36 points, spacing 3/10
    assert grid.shape == (36, 3)
    assert len({tuple(row) for row in grid.tolist()}) == 36
    np.testing.assert_allclose(grid.sum(axis=1), 3.0)
    np.testing.assert_allclose(grid / 0.3, np.round(grid / 0.3), atol=1e-5)
    assert grid.min() == pytest.approx(0.3) and grid.max() == pytest.approx(2.4)
    assert [1.0, 1.0, 1.0] not in grid.tolist()  # 10 is not divisible by 3
    small = [v["weights"] for v in Fixed.variants({"sweep": 3}, 3)]
    # compositions of 4 into 3 parts, times 3/4
    assert small == [[0.75, 0.75, 1.5], [0.75, 1.5, 0.75], [1.5, 0.75, 0.75]]


def test_fixed_sweep_option_expands_into_one_run_per_grid_point():
    spec = SweepSpec(["clsreg"], ["fixed"], [0], parse_assignments(["fixed.sweep=9"]),
                     RunConfig())
    configs = expand(spec)
    assert len(configs) == 9
    assert sorted(c.strategy_params["weights"][0] for c in configs) == pytest.approx(
        [0.2 * i for i in range(1, 10)])
