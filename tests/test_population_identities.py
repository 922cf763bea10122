"""Identities of the population trainer that the study once counted as evidence (issue 19 items 1 and 5):
under sgd a feedback scale is a set of per-layer learning rates, and sign is sign_scaled at per-layer
learning rates; under signsgd the two are one rule. Float64, in the trainer itself (PopulationMLP with
members given a feedback_scale or one lr per layer), against each other."""

import numpy as np
import pytest
import torch

from soap.config import Member
from soap.data import synthetic_dataset
from soap.population import PopulationMLP
from soap.rules import refresh_due

DATA = synthetic_dataset(n_train=1920, n_val=64, n_test=64, dim=20, num_classes=5, seed=3)
# sign-of-gradient steps need 10 classes: a hidden unit whose column of sign(W_out) is constant gets an
# error that sums softmax - onehot over the classes, zero but for rounding (1 unit in 16 with 5 classes)
DATA10 = synthetic_dataset(n_train=1920, n_val=64, n_test=64, dim=20, num_classes=10, seed=3)
BATCH, PERIOD, LR = 32, 480, 0.05  # a refresh every 15 steps


def population(members, data=DATA, optimizer="sgd"):
    sizes = [data.input_dim, 16, 16, data.num_classes]
    return PopulationMLP(sizes, members, "tanh", torch.device("cpu"), optimizer=optimizer, dtype=torch.float64)


def train(model, steps, data=DATA, start=0, after_step=None):
    """`steps` sgd steps of every member on the same batches (one seed), refreshing as train_population
    does; after_step(step) is called after each step, before its refresh."""
    lr = torch.tensor([m.lr for m in model.members], dtype=torch.float64)
    periods = np.array([m.refresh_period for m in model.members])
    for step in range(start, start + steps):
        rows = slice(step * BATCH, (step + 1) * BATCH)
        model.train_step(data.train_x[rows].double()[None], data.train_y[rows][None], lr)
        if after_step is not None:
            after_step(step)
        model.refresh(refresh_due(step * BATCH, (step + 1) * BATCH, periods))


def member_weights(model, member):
    return [w[member] for w in model.weights]


@pytest.mark.parametrize("method", ["fa", "sign", "sign_scaled", "stale_bp", "usf", "frsf", "bp"])
def test_a_feedback_scale_is_per_layer_learning_rates_under_sgd(method):
    # alpha multiplies the error once per feedback product it passes through, so layer l steps as at
    # lr * alpha^k_l, k_l the products above it: k = (2, 1, 0) from input to output. alpha = 4 and its
    # powers are exact in binary, so every product is the same; on this CPU the weights agree bit for bit
    # after 60 steps and four refreshes of B. The tolerance, 1e-13 (some 1e3 ulps of weights of size
    # 0.1), is for members in the first layer's batched GEMM, whose positions may round
    # differently on other kernels (two identical members differ by 3e-17 in the test below).
    alpha = 4.0
    model = population([Member(method, LR, 7, PERIOD, feedback_scale=alpha),
                        Member(method, LR, 7, PERIOD, lr_scale=(alpha**2, alpha, 1.0)),
                        Member(method, LR, 7, PERIOD)])
    start = [w.clone() for w in member_weights(model, 0)]
    train(model, 60)
    scaled, per_layer, plain = (member_weights(model, m) for m in range(3))
    for layer in range(3):
        torch.testing.assert_close(scaled[layer], per_layer[layer], rtol=0, atol=1e-13)
        assert (scaled[layer] - start[layer]).abs().max() > 0.05  # the weights moved
        # and the scale is no no-op: at alpha = 1 the hidden layers end elsewhere
        if layer < 2:
            assert (scaled[layer] - plain[layer]).abs().max() > 0.05, (method, layer)


def test_sign_is_sign_scaled_at_per_layer_learning_rates_between_refreshes():
    # sign_scaled's B_l is m_l sign(W_l), m_l = mean|W_l| at its last refresh, so its hidden deltas are
    # sign's times m_3 (layer 2) and m_2 m_3 (layer 1): at lrs (1/(m_2 m_3), 1/m_3, 1) * lr it steps as
    # sign at lr. The lrs change with m at every refresh, so the identity holds over one interval: after
    # the first refresh (before it both have B = the FA matrix and are one rule), up to the next. Not bit
    # for bit: m * (1/m) rounds, about 1e-16 a step on weights of size 1, so atol 1e-12 over 15 steps.
    model = population([Member("sign", LR, 7, PERIOD), Member("sign_scaled", LR, 7, PERIOD)])
    train(model, 15)  # the 15th step crosses 480 examples: its refresh forms sign(W) and m sign(W)
    for sign, scaled in zip(*(member_weights(model, m) for m in range(2))):
        # one rule so far, but two members of the first layer's batched GEMM: 3e-17 apart on this CPU
        torch.testing.assert_close(scaled, sign, rtol=0, atol=1e-15)
    m = [w[1].abs().mean().item() for w in model.weights]  # sign_scaled's m_l at the refresh
    matched = population([Member("sign", LR, 7, PERIOD),
                          Member("sign_scaled", LR, 7, PERIOD, lr_scale=(1 / (m[1] * m[2]), 1 / m[2], 1.0))])
    for tensors, fresh in [(model.weights, matched.weights), (model.biases, matched.biases),
                           (model.feedback, matched.feedback)]:
        for source, target in zip(tensors, fresh):
            target.copy_(source)
    start = [w.clone() for w in member_weights(matched, 0)]

    def agree(step):
        for sign, scaled in zip(*(member_weights(matched, member) for member in range(2))):
            torch.testing.assert_close(scaled, sign, rtol=0, atol=1e-12)

    train(matched, 15, start=15, after_step=agree)  # steps 16..30; the 30th's refresh starts a new interval
    train(model, 15, start=15)
    moved = max((w - s).abs().max().item() for w, s in zip(member_weights(matched, 0), start))
    assert moved > 0.02
    # at one lr the two differ by much more than the tolerance: the per-layer lrs carry the identity
    differ = max((a - b).abs().max().item() for a, b in zip(*(member_weights(model, m) for m in range(2))))
    assert differ > 1e-3


def test_sign_and_sign_scaled_are_one_rule_under_signsgd():
    # signsgd steps by sign(grad_W), and sign_scaled's gradient is sign's times a positive number per
    # layer, so the two take the same step at every step, across refreshes (exact equality).
    model = population([Member("sign", 0.002, 7, PERIOD), Member("sign_scaled", 0.002, 7, PERIOD)],
                       data=DATA10, optimizer="signsgd")
    start = [w.clone() for w in member_weights(model, 0)]

    def same(step):
        for sign, scaled in zip(*(member_weights(model, member) for member in range(2))):
            assert torch.equal(sign, scaled), step

    train(model, 60, data=DATA10, after_step=same)
    assert all((w - s).abs().max() > 0.05 for w, s in zip(member_weights(model, 0), start))
    # B differs between them after the first refresh (by m): the identity is not that of two equal B
    assert not torch.equal(model.feedback[1][0], model.feedback[1][1])
