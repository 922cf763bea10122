"""Direct feedback alignment (soap.direct_feedback) against a hand-written backward."""

import pytest
import torch
import torch.nn.functional as F

from soap.direct_feedback import DirectFeedbackMLP
from soap.models import mlp
from soap.nn import initial_parameters

from helpers import TINY_SIZES, TINY_X, TINY_Y


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_dfa_gradients_match_a_hand_written_backward(alpha):
    seed = 4
    model = mlp(TINY_SIZES, "dfa", seed=seed, feedback_scale=alpha)
    assert isinstance(model, DirectFeedbackMLP)
    inits = initial_parameters(TINY_SIZES, seed)
    w = [init.weight for init in inits]
    b = [init.bias for init in inits]
    d = [None, inits[1].direct, inits[2].direct]  # D for the inputs of layers 1 and 2
    assert d[1].shape == (3, 5) and d[2].shape == (3, 4)
    assert torch.equal(d[2], inits[2].feedback)  # the output layer's D is its FA_SIGNED matrix
    assert d[1].abs().max() <= 5**-0.5  # drawn like a W with fan_in 5
    loss = F.cross_entropy(model(TINY_X), TINY_Y)
    loss.backward()

    h1 = torch.tanh(TINY_X @ w[0].T + b[0])
    h2 = torch.tanh(h1 @ w[1].T + b[1])
    logits = h2 @ w[2].T + b[2]
    e = (torch.softmax(logits, 1) - F.one_hot(TINY_Y, 3)) / len(TINY_Y)
    delta1 = (1 - h2**2) * (alpha * e @ d[2])  # alpha scales the error sent down, as for every rule
    delta0 = (1 - h1**2) * (alpha * e @ d[1])  # straight from the output error, not through layer 1
    expected = [(delta0.T @ TINY_X, delta0.sum(0)), (delta1.T @ h1, delta1.sum(0)), (e.T @ h2, e.sum(0))]
    for layer, (grad_w, grad_b) in zip(model.layers, expected):
        torch.testing.assert_close(layer.weight.grad, grad_w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer.bias.grad, grad_b, atol=1e-6, rtol=1e-5)
    # paired with fa: same weights and FA_SIGNED matrices, so the output layer's (true) gradient is fa's too
    fa = mlp(TINY_SIZES, "fa", seed=seed, feedback_scale=alpha)
    F.cross_entropy(fa(TINY_X), TINY_Y).backward()
    torch.testing.assert_close(fa[4].weight.grad, model.layers[2].weight.grad)
    torch.testing.assert_close(fa[2].weight.grad, model.layers[1].weight.grad)  # top hidden: fa's signal
