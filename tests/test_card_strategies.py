"""Hand-computed checks of the four card strategies."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mtl_bench.errors import UserError
from mtl_bench.strategy import CLASSIFICATION, REGRESSION, TaskInfo
from mtl_bench.task import MultiTaskNet, Task
from mtl_bench.train import build_strategy, make_optimizer, train_step

REG2 = [TaskInfo("a", REGRESSION), TaskInfo("b", REGRESSION)]


def test_fixed_default_is_equal_and_custom_weights_apply():
    s = build_strategy("fixed", {})
    s.setup(REG2)
    u = s.combine(torch.tensor([2.0, 3.0]))
    assert u.weights.tolist() == [1.0, 1.0] and u.loss.item() == 5.0
    s = build_strategy("fixed", {"weights": [1, 0.5]})
    s.setup(REG2)
    assert s.combine(torch.tensor([2.0, 3.0])).loss.item() == pytest.approx(3.5)


@pytest.mark.parametrize("weights", [[-1, 1], ["a", 1], [0, 0], []])
def test_fixed_rejects_bad_weights(weights):
    with pytest.raises(UserError, match="Parameter `weights` should be"):
        build_strategy("fixed", {"weights": weights})


def test_fixed_rejects_wrong_count_at_setup():
    s = build_strategy("fixed", {"weights": [1, 2, 3]})
    with pytest.raises(UserError, match="list of 2 numbers"):
        s.setup(REG2)


def test_dwa_weights_from_loss_history_by_hand():
    s = build_strategy("dwa", {"temperature": 2.0})
    s.setup(REG2)
    losses = torch.tensor([1.0, 1.0])
    assert s.combine(losses).weights.tolist() == [1.0, 1.0]  # epoch 1
    s.on_epoch_end(1, torch.tensor([1.0, 4.0]))
    assert s.combine(losses).weights.tolist() == [1.0, 1.0]  # epoch 2: still 1
    s.on_epoch_end(2, torch.tensor([0.5, 3.0]))
    # w = (0.5/1, 3/4) = (0.5, 0.75); lambda = 2 exp(w/2) / sum exp(w/2)
    e = np.exp(np.array([0.5, 0.75]) / 2)
    expected = 2 * e / e.sum()
    np.testing.assert_allclose(s.combine(losses).weights.numpy(), expected, rtol=1e-6)
    s.on_epoch_end(3, torch.tensor([0.25, 3.0]))  # only the last two epochs matter
    e = np.exp(np.array([0.25 / 0.5, 3.0 / 3.0]) / 2)
    np.testing.assert_allclose(s.combine(losses).weights.numpy(), 2 * e / e.sum(), rtol=1e-6)


@pytest.mark.parametrize("kind,factor", [(REGRESSION, 1.0), (CLASSIFICATION, 2.0)])
def test_uncertainty_optimum_sigma2_equals_loss(kind, factor):
    """d/ds [c e^{-s} L + s/2] = 0  =>  sigma^2 = e^s = 2 c L: L (regression, c=1/2) or 2L
    (classification, c=1)."""
    s = build_strategy("uncertainty", {})
    s.setup([TaskInfo("t", kind)])
    opt = torch.optim.Adam(s.parameters(), lr=0.05)
    loss_value = torch.tensor([0.3])
    for _ in range(2000):
        opt.zero_grad()
        s.combine(loss_value).loss.backward()
        opt.step()
    assert math.exp(s.log_vars.item()) == pytest.approx(factor * 0.3, rel=1e-3)


def test_uncertainty_forms_by_hand():
    s = build_strategy("uncertainty", {"init": 0.5})
    s.setup([TaskInfo("r", REGRESSION), TaskInfo("c", CLASSIFICATION)])
    u = s.combine(torch.tensor([2.0, 3.0]))
    expected = 0.5 * math.exp(-0.5) * 2 + math.exp(-0.5) * 3 + 0.5 * 0.5 * 2
    assert u.loss.item() == pytest.approx(expected, rel=1e-6)
    assert u.weights.tolist() == pytest.approx([0.5 * math.exp(-0.5), math.exp(-0.5)])


def _two_layer(seed=0):
    """x (4x3) -> W (2x3, last shared layer, no bias) -> two scalar heads h_i (1x2)."""
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(3, 2, bias=False))
    heads = [nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)]
    model = MultiTaskNet(trunk, heads)
    tasks = [Task("a", REGRESSION, 1, ("mae",)), Task("b", REGRESSION, 1, ("mae",))]
    x = torch.randn(4, 3)
    ys = [torch.randn(4), 3 * torch.randn(4)]
    return model, tasks, x, ys


def _hand_gradnorm_step(W, H, x, ys, w, L0, alpha, lr):
    """Everything in numpy: L_i = mean((x W^T h_i - y_i)^2)."""
    norms, losses = [], []
    for h, y in zip(H, ys):
        r = x @ W.T @ h - y
        losses.append(np.mean(r**2))
        g_w = 2 / len(y) * np.outer(h, r @ x)  # dL/dW = (2/N) h r^T x
        norms.append(np.linalg.norm(g_w))
    norms, losses = np.array(norms), np.array(losses)
    if L0 is None:
        L0 = losses
    G = w * norms
    ratio = losses / L0
    target = G.mean() * (ratio / ratio.mean()) ** alpha
    grad_w = np.sign(G - target) * norms
    w_new = w - lr * grad_w
    return w_new * len(w) / w_new.sum(), losses


def test_gradnorm_weight_update_matches_hand_computation():
    model, tasks, x, ys = _two_layer()
    s = build_strategy("gradnorm", {"alpha": 0.5, "lr": 0.01})
    s.setup([t.info for t in tasks])
    opt = make_optimizer(model, s, lr=0.05, weight_decay=0.0)
    # plain SGD so one step is easy to write by hand
    opt = torch.optim.SGD(opt.param_groups, lr=0.05)
    w = np.ones(2)
    L0 = None
    for _ in range(3):
        W = model.trunk[0].weight.detach().double().numpy().copy()
        H = [h.weight.detach().double().numpy()[0] for h in model.heads]
        xs, yss = x.double().numpy(), [y.double().numpy() for y in ys]
        expected_w, losses = _hand_gradnorm_step(W, H, xs, yss, w, L0, 0.5, 0.01)
        L0 = losses if L0 is None else L0
        train_step(model, tasks, s, (x,), ys, opt)
        np.testing.assert_allclose(s.w.detach().numpy(), expected_w, rtol=1e-4)
        w = expected_w
    assert s.w.sum().item() == pytest.approx(2.0)


def test_gradnorm_model_gradient_is_weighted_sum_of_task_gradients():
    """The harness reuses task gradients for the last layer; the result must equal a plain
    backward of sum_i w_i L_i."""
    model, tasks, x, ys = _two_layer(1)
    s = build_strategy("gradnorm", {})
    s.setup([t.info for t in tasks])
    with torch.no_grad():
        s.w.copy_(torch.tensor([0.7, 1.3]))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, tasks, s, (x,), ys, opt)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = [h(model.trunk(x)).squeeze(-1) for h in model.heads]
    total = sum(w * ((o - y) ** 2).mean() for w, o, y in zip([0.7, 1.3], out, ys))
    total.backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("params", [{"alpha": -1}, {"layer": "middle"}, {"initial": "x"},
                                    {"lr": 0}])
def test_gradnorm_rejects_bad_params(params):
    with pytest.raises(UserError, match="Parameter `"):
        build_strategy("gradnorm", params)


def test_dwa_and_uncertainty_reject_bad_params():
    with pytest.raises(UserError, match="Parameter `temperature` should be a positive float"):
        build_strategy("dwa", {"temperature": 0})
    with pytest.raises(UserError, match="Parameter `lr`"):
        build_strategy("uncertainty", {"lr": -1.0})
