"""usf, frsf, brsf, Kolen-Pollack, DFA and second-order activity propagation in the single layer / mlp,
against hand and numpy computations that never call soap's rule code."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soap.activity_propagation import ActivityPropagation, SecondOrderActivity, newton_step, two_pass_backward
from soap.direct_feedback import DirectFeedbackMLP
from soap.nn import FeedbackLinear, initial_parameters, mlp
from soap.rules import RULES, get_rule
from soap.seeding import stream_seed

W = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
FA = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
X = torch.tensor([[1.0, 1.0]])
GRAD_Y = torch.tensor([[1.0, 2.0]])

SIZES = [6, 5, 4, 3]
GEN = torch.Generator().manual_seed(11)
DATA_X = torch.randn(8, 6, generator=GEN)
DATA_Y = torch.randint(0, 3, (8,), generator=GEN)


def hand_layer(rule: str, decay: float = 0.0) -> FeedbackLinear:
    layer = FeedbackLinear(2, 2, rule=rule, decay=decay)
    with torch.no_grad():
        layer.weight.copy_(W)
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
        layer.feedback.copy_(FA)
        if hasattr(layer, "fa_matrix"):
            layer.fa_matrix.copy_(FA)
    return layer


def test_every_rule_but_dfa_has_a_second_order_variant():
    plain = [name for name, rule in RULES.items() if not rule.second_order]
    assert set(plain) >= {"bp", "fa", "sign", "sign_scaled", "stale_bp", "usf", "frsf", "brsf", "kolen_pollack", "dfa"}
    for name in plain:
        assert (f"so_{name}" in RULES) == (name != "dfa")
    assert get_rule("so_sign").base == "sign" and get_rule("so_sign").form is get_rule("sign").form


@pytest.mark.parametrize("rule, grad_x", [
    ("usf", [3.0 / math.sqrt(6), -3.0 / math.sqrt(6)]),  # sign(W) / sqrt(3 * fan_in 2): rows [1,-1], [1,-1]
    ("frsf", [0.5 + 4.0, -1.0 - 0.5]),  # |FA| sign(W) = [[0.5, -1], [2, -0.25]]
])
def test_sign_concordant_feedback_by_hand(rule, grad_x):
    layer = hand_layer(rule)
    x = X.clone().requires_grad_()
    layer(x).backward(GRAD_Y)
    assert torch.allclose(x.grad, torch.tensor([grad_x]), atol=1e-6)
    assert torch.equal(layer.weight.grad, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))


def test_step_rules_form_feedback_only_in_training_forward_passes():
    layer = hand_layer("brsf")
    layer.eval()
    layer(X)
    with torch.no_grad():
        layer.train()(X)
    assert torch.equal(layer.feedback, FA)  # evaluation and no-grad passes neither form B nor draw R_t
    layer(X)
    assert torch.equal(torch.sign(layer.feedback), torch.sign(W))


@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf"])
def test_step_rules_track_sign_of_w_every_step_with_their_magnitudes(rule):
    """B_t of every layer over 4 SGD steps against numpy; brsf's R_t redrawn from the seed's stream."""
    seed = 3
    model = mlp(SIZES, rule, seed=seed)
    twin = mlp(SIZES, rule, seed=seed)
    linears = [m for m in model if isinstance(m, FeedbackLinear)]
    twins = [m for m in twin if isinstance(m, FeedbackLinear)]
    fa = [init.feedback.numpy() for init in initial_parameters(SIZES, seed)]
    redraws = torch.Generator().manual_seed(stream_seed(seed, "feedback_redraw"))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, twin)]
    previous = None
    for step in range(4):
        weights = [layer.weight.detach().numpy().copy() for layer in linears]
        losses = [F.cross_entropy(m(DATA_X), DATA_Y) for m in (model, twin)]
        for l, (layer, w) in enumerate(zip(linears, weights)):
            fan_out, fan_in = w.shape
            if rule == "usf":
                expected = np.sign(w) / np.sqrt(3 * fan_in)
            elif rule == "frsf":
                expected = np.abs(fa[l]) * np.sign(w)
            else:  # layer after layer, step after step, like W's init distribution
                r = torch.empty(fan_out, fan_in).uniform_(-fan_in**-0.5, fan_in**-0.5, generator=redraws)
                expected = np.abs(r.numpy()) * np.sign(w)
            np.testing.assert_allclose(layer.feedback.numpy(), expected, rtol=1e-6, atol=0)
        assert all(torch.equal(a.feedback, b.feedback) for a, b in zip(linears, twins))  # reproducible
        current = [layer.feedback.clone() for layer in linears]
        if previous is not None and rule == "brsf":  # redrawn: the magnitudes change every step
            assert not torch.equal(current[1].abs(), previous[1].abs())
        previous = current
        for optimizer, loss in zip(optimizers, losses):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if rule != "usf":  # another seed, other magnitudes
        other, again = mlp(SIZES, rule, seed=seed + 1), mlp(SIZES, rule, seed=seed)
        other(DATA_X), again(DATA_X)
        assert not torch.equal(other[2].feedback.abs(), again[2].feedback.abs())


def test_kolen_pollack_one_step_by_hand():
    lr, decay = 0.5, 0.1
    layer = hand_layer("kolen_pollack", decay=decay)
    assert "feedback" in dict(layer.named_parameters())  # trained alongside W
    x = X.clone().requires_grad_()
    layer(x).backward(GRAD_Y)
    assert torch.allclose(x.grad, GRAD_Y @ FA)  # B starts as the FA matrix
    torch.optim.SGD(layer.parameters(), lr=lr).step()
    grad_w = torch.tensor([[1.0, 1.0], [2.0, 2.0]])  # grad_y^T x
    assert torch.allclose(layer.weight, W - lr * (grad_w + decay * W))
    assert torch.allclose(layer.feedback, FA - lr * (grad_w + decay * FA))
    assert torch.allclose(layer.bias, torch.tensor([0.5 - lr * 1.0, -0.5 - lr * 2.0]))  # no decay on b


def test_kolen_pollack_distance_between_b_and_w_decays_geometrically():
    lr, decay = 0.2, 0.5
    model = mlp(SIZES, "kolen_pollack", seed=2, decay=decay)
    linears = [m for m in model if isinstance(m, FeedbackLinear)]
    start = [(layer.feedback - layer.weight).norm().item() for layer in linears]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for t in range(1, 16):
        optimizer.zero_grad()
        F.cross_entropy(model(DATA_X), DATA_Y).backward()
        optimizer.step()
        for layer, d0 in zip(linears, start):
            distance = (layer.feedback - layer.weight).norm().item()
            assert distance == pytest.approx(d0 * (1 - lr * decay) ** t, rel=1e-5)


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_dfa_gradients_match_a_hand_written_backward(alpha):
    seed = 4
    model = mlp(SIZES, "dfa", seed=seed, feedback_scale=alpha)
    assert isinstance(model, DirectFeedbackMLP)
    inits = initial_parameters(SIZES, seed)
    w = [init.weight for init in inits]
    b = [init.bias for init in inits]
    d = [None, inits[1].direct, inits[2].direct]  # D for the inputs of layers 1 and 2
    assert d[1].shape == (3, 5) and d[2].shape == (3, 4)
    assert torch.equal(d[2], inits[2].feedback)  # the output layer's D is its FA matrix
    assert d[1].abs().max() <= 5**-0.5  # drawn like a W with fan_in 5
    loss = F.cross_entropy(model(DATA_X), DATA_Y)
    loss.backward()

    h1 = torch.tanh(DATA_X @ w[0].T + b[0])
    h2 = torch.tanh(h1 @ w[1].T + b[1])
    logits = h2 @ w[2].T + b[2]
    e = (torch.softmax(logits, 1) - F.one_hot(DATA_Y, 3)) / len(DATA_Y)
    delta1 = (1 - h2**2) * (alpha * e @ d[2])  # alpha scales the error sent down, as for every rule
    delta0 = (1 - h1**2) * (alpha * e @ d[1])  # straight from the output error, not through layer 1
    expected = [(delta0.T @ DATA_X, delta0.sum(0)), (delta1.T @ h1, delta1.sum(0)), (e.T @ h2, e.sum(0))]
    for layer, (grad_w, grad_b) in zip(model.layers, expected):
        torch.testing.assert_close(layer.weight.grad, grad_w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer.bias.grad, grad_b, atol=1e-6, rtol=1e-5)
    # paired with fa: same weights and FA matrices, so the output layer's (true) gradient is fa's too
    fa = mlp(SIZES, "fa", seed=seed, feedback_scale=alpha)
    F.cross_entropy(fa(DATA_X), DATA_Y).backward()
    torch.testing.assert_close(fa[4].weight.grad, model.layers[2].weight.grad)
    torch.testing.assert_close(fa[2].weight.grad, model.layers[1].weight.grad)  # top hidden: fa's signal


def test_newton_step_formula_against_numpy():
    g1 = np.array([0.3, -0.2, 0.5, 0.0, 0.1])
    g2 = np.array([0.1, -0.2, 0.7, 0.4, 0.1000001])
    eps, c = 0.01, 1e-3
    diff = g1 - g2
    d = np.where(g1 == g2, c, diff + 2 * c * np.sign(diff))
    expected = eps * g1**2 / d
    n = newton_step(torch.tensor(g1), torch.tensor(g2), eps, c)
    np.testing.assert_allclose(n.numpy(), expected, rtol=1e-12)
    assert n[1] == pytest.approx(eps * 0.04 / c)  # the g1 == g2 branch divides by c, not 2c


def test_second_order_step_is_the_exact_newton_step_when_the_loss_is_quadratic_in_the_activity():
    """L = mean_batch sum_i k_i (a_i - t_i)^2 / 2: dL/da = k (a - t) / batch, Hessian diag(k / batch),
    so the Newton step in activity space is a - t whatever k and eta_ap; the secant is exact."""
    torch.manual_seed(0)
    layer = FeedbackLinear(4, 3, rule="so_bp", dtype=torch.float64)
    point = SecondOrderActivity(ActivityPropagation(eta=0.7, curvature_bias=1e-300, warmup=0))
    model = torch.nn.Sequential(layer, point)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    k, target = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)

    def loss_of(a):
        return (0.5 * k * (a - target) ** 2).sum(1).mean()

    two_pass_backward(model, loss_of, x)
    with torch.no_grad():
        newton = layer(x) - target  # the exact Newton step H^-1 g
    torch.testing.assert_close(layer.weight.grad, newton.T @ x.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x.grad, newton @ layer.weight.detach(), rtol=1e-9, atol=1e-12)


def test_two_pass_backward_matches_a_hand_written_two_pass_step():
    """so_fa, SOAP on both hidden layers, float64, every pass written out without autograd."""
    settings = ActivityPropagation(eta=3.0, curvature_bias=1e-4, warmup=2)
    model = mlp(SIZES, "so_fa", seed=6, second_order=settings).double()
    x, y = DATA_X.double(), DATA_Y
    inits = initial_parameters(SIZES, 6)
    w = [i.weight.double() for i in inits]
    b = [i.bias.double() for i in inits]
    fb = [i.feedback.double() for i in inits]

    def loss_of(logits):
        return F.cross_entropy(logits, y)

    def forward(shifts):
        a0 = x @ w[0].T + b[0] - shifts[0]
        h1 = torch.tanh(a0)
        a1 = h1 @ w[1].T + b[1] - shifts[1]
        h2 = torch.tanh(a1)
        e = (torch.softmax(h2 @ w[2].T + b[2], 1) - F.one_hot(y, 3)) / len(y)
        return h1, h2, e

    def plain_backward(h1, h2, e):  # FA signals at the two SOAP points
        g_upper = (1 - h2**2) * (e @ fb[2])
        g_lower = (1 - h1**2) * (g_upper @ fb[1])
        return g_lower, g_upper

    h1, h2, e = forward([0.0, 0.0])
    g1 = plain_backward(h1, h2, e)
    eps = [settings.eta / (8 * 5), settings.eta / (8 * 4)]
    shifts = [eps[0] * g1[0], eps[1] * g1[1]]
    h1p, h2p, ep = forward(shifts)
    g2 = plain_backward(h1p, h2p, ep)

    def newton(first, second, scale):
        diff = first - second
        return scale * first**2 / torch.where(diff == 0, 1e-4, diff + 2e-4 * torch.sign(diff))

    n = [newton(g1[i], g2[i], eps[i]) for i in range(2)]
    expected = [n[0].T @ x, n[1].T @ h1p, ep.T @ h2p]

    linears = [m for m in model if isinstance(m, FeedbackLinear)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights stay at the init
    for step in range(3):
        optimizer.zero_grad()
        loss = two_pass_backward(model, loss_of, x)
        if step < 2:  # warm-up: plain FA gradients
            torch.testing.assert_close(linears[0].weight.grad, g1[0].T @ x)
            torch.testing.assert_close(linears[1].weight.grad, g1[1].T @ h1)
            assert math.isnan([m for m in model if isinstance(m, SecondOrderActivity)][0].gain)
        optimizer.step()
    assert loss.item() == pytest.approx(loss_of(h2 @ w[2].T + b[2]).item())  # pass 1's loss
    for layer, grad in zip(linears, expected):
        torch.testing.assert_close(layer.weight.grad, grad, rtol=1e-9, atol=1e-14)
    points = [m for m in model if isinstance(m, SecondOrderActivity)]
    assert points[0].gain == pytest.approx((n[0].norm() / g2[0].norm()).item())


@pytest.mark.parametrize("key, value, message", [
    ("kp_decay", -0.1, "kp_decay: -0.1 is less than the minimum of 0"),
    ("soap_eta", 0.0, "soap_eta: 0.0 is less than or equal to the minimum of 0"),
    ("soap_curvature_bias", -1e-3, "soap_curvature_bias: -0.001 is less than or equal to the minimum of 0"),
    ("soap_warmup", -1, "soap_warmup: -1 is less than the minimum of 0"),
    ("soap_layers", [0, 2], r"soap_layers: .*hidden layers \[2\] do not exist \(the network has 2\)"),
])
def test_config_rejects_bad_rule_settings_in_one_line(key, value, message):
    from soap.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=message) as error:
        TrainConfig.from_dict({"methods": ["so_fa", "kolen_pollack"], key: value})
    assert "\n" not in str(error.value)
    assert TrainConfig.from_dict({"methods": ["so_fa"], "soap_layers": [1]}).second_order().layers == (1,)
