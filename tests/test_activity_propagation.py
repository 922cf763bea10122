"""Second-order activity propagation (soap.activity_propagation) against numpy and hand-written two-pass steps."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soap.activity_propagation import ActivityPropagation, SecondOrderActivity, newton_step, two_pass_backward
from soap.models import mlp
from soap.nn import FeedbackLinear, initial_parameters

from helpers import TINY_SIZES, TINY_X, TINY_Y


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
    model = mlp(TINY_SIZES, "so_fa", seed=6, second_order=settings).double()
    x, y = TINY_X.double(), TINY_Y
    inits = initial_parameters(TINY_SIZES, 6)
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

    def plain_backward(h1, h2, e):  # FA_SIGNED signals at the two SOAP points
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
        if step < 2:  # warm-up: plain FA_SIGNED gradients
            torch.testing.assert_close(linears[0].weight.grad, g1[0].T @ x)
            torch.testing.assert_close(linears[1].weight.grad, g1[1].T @ h1)
            assert math.isnan([m for m in model if isinstance(m, SecondOrderActivity)][0].gain)
        optimizer.step()
    assert loss.item() == pytest.approx(loss_of(h2 @ w[2].T + b[2]).item())  # pass 1's loss
    for layer, grad in zip(linears, expected):
        torch.testing.assert_close(layer.weight.grad, grad, rtol=1e-9, atol=1e-14)
    points = [m for m in model if isinstance(m, SecondOrderActivity)]
    assert points[0].gain == pytest.approx((n[0].norm() / g2[0].norm()).item())
