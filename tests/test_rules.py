"""Feedback rules (soap.rules) in the single layer against hand-derived gradients and B matrices."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soap.config import ConfigError, TrainConfig
from soap.models import mlp
from soap.nn import FeedbackLinear, initial_parameters
from soap.rules import RULES, get_rule, refresh_due
from soap.seeding import stream_seed

from helpers import TINY_SIZES, TINY_X, TINY_Y

W = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
FA = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
X = torch.tensor([[1.0, 1.0]])
GRAD_Y = torch.tensor([[1.0, 2.0]])

# B after one refresh, worked out by hand for W above (FA before the first refresh).
B_AFTER_REFRESH = {
    "bp": W,
    "fa": FA,
    "sign": torch.tensor([[1.0, -1.0], [1.0, -1.0]]),
    "sign_scaled": torch.tensor([[2.5, -2.5], [2.5, -2.5]]),  # mean|W| = (1+2+3+4)/4
    "stale_bp": W,
}
# grad_x = grad_y B with grad_y = [1, 2]: row 0 of B plus twice row 1.
GRAD_X_AFTER_REFRESH = {
    "bp": [7.0, -10.0],
    "fa": [2.0, 1.0],
    "sign": [3.0, -3.0],
    "sign_scaled": [7.5, -7.5],
    "stale_bp": [7.0, -10.0],
}
FA_SIGNED = torch.tensor([[0.5, -1.0], [2.0, 0.25]])  # a signed R, for the sign-concordant rules


def hand_layer(rule: str, feedback: torch.Tensor = FA, decay: float = 0.0) -> FeedbackLinear:
    """A 2x2 layer with W above, b = [0.5, -0.5] and B (and frsf's R) = `feedback`."""
    layer = FeedbackLinear(2, 2, rule=rule, decay=decay)
    with torch.no_grad():
        layer.weight.copy_(W)
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
        layer.feedback.copy_(feedback)
        if hasattr(layer, "fa_matrix"):
            layer.fa_matrix.copy_(feedback)
    return layer


def test_registry_holds_the_study_rules():
    assert set(RULES) >= {"bp", "fa", "sign", "sign_scaled", "stale_bp"}
    with pytest.raises(ValueError, match="unknown feedback rule 'nope'.*bp"):
        get_rule("nope")


@pytest.mark.parametrize("rule", sorted(B_AFTER_REFRESH))
def test_gradients_match_hand_computation(rule):
    layer = hand_layer(rule)
    layer.refresh_feedback()
    x = X.clone().requires_grad_()
    y = layer(x)
    assert torch.equal(y, torch.tensor([[1.0 - 2.0 + 0.5, 3.0 - 4.0 - 0.5]]))
    y.backward(GRAD_Y)
    assert torch.equal(x.grad, torch.tensor([GRAD_X_AFTER_REFRESH[rule]]))
    assert torch.equal(layer.weight.grad, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))  # grad_y^T x
    assert torch.equal(layer.bias.grad, torch.tensor([1.0, 2.0]))  # sum over the batch
    if not get_rule(rule).uses_weight:
        assert torch.equal(layer.feedback, B_AFTER_REFRESH[rule])


@pytest.mark.parametrize("rule", ["sign", "sign_scaled", "stale_bp"])
def test_refreshing_rules_use_the_fa_matrix_until_the_first_refresh(rule):
    layer = hand_layer(rule)
    x = X.clone().requires_grad_()
    layer(x).backward(GRAD_Y)
    assert torch.equal(x.grad, torch.tensor([GRAD_X_AFTER_REFRESH["fa"]]))


def test_refresh_due_at_multiples_of_the_period():
    period, batch = 100, 48  # 48 does not divide 100
    seen, fired = 0, []
    for _ in range(12):
        if refresh_due(seen, seen + batch, period):
            fired.append(seen + batch)
        seen += batch
    # counts 48, 96, 144, 192, 240, 288, 336, 384, 432, 480, 528, 576: each first count past 100k
    assert fired == [144, 240, 336, 432, 528]
    assert refresh_due(0, 64, 64) and not refresh_due(64, 127, 64) and refresh_due(64, 128, 64)


@pytest.mark.parametrize("rule", sorted(B_AFTER_REFRESH))
def test_feedback_scale_multiplies_only_the_error_sent_down(rule):
    layer = hand_layer(rule)
    layer.feedback_scale = 2.5
    layer.refresh_feedback()
    x = X.clone().requires_grad_()
    layer(x).backward(GRAD_Y)
    assert torch.equal(x.grad, 2.5 * torch.tensor([GRAD_X_AFTER_REFRESH[rule]]))  # alpha grad_y B
    assert torch.equal(layer.weight.grad, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))  # grad_W unscaled
    if not get_rule(rule).uses_weight:
        assert torch.equal(layer.feedback, B_AFTER_REFRESH[rule])  # B itself stays the rule's
    with pytest.raises(ValueError, match="feedback_scale must be a positive number"):
        FeedbackLinear(2, 2, rule=rule, feedback_scale=0.0)


def test_every_rule_but_dfa_has_a_second_order_variant():
    plain = [name for name, rule in RULES.items() if not rule.second_order]
    assert set(plain) >= {"bp", "fa", "sign", "sign_scaled", "stale_bp", "usf", "frsf", "brsf", "kolen_pollack", "dfa"}
    for name in plain:
        assert (f"so_{name}" in RULES) == (name != "dfa")
    assert get_rule("so_sign").base == "sign" and get_rule("so_sign").form is get_rule("sign").form


@pytest.mark.parametrize("rule, grad_x", [
    ("usf", [3.0 / math.sqrt(6), -3.0 / math.sqrt(6)]),  # sign(W) / sqrt(3 * fan_in 2): rows [1,-1], [1,-1]
    ("frsf", [0.5 + 4.0, -1.0 - 0.5]),  # |FA_SIGNED| sign(W) = [[0.5, -1], [2, -0.25]]
])
def test_sign_concordant_feedback_by_hand(rule, grad_x):
    layer = hand_layer(rule, FA_SIGNED)
    x = X.clone().requires_grad_()
    layer(x).backward(GRAD_Y)
    assert torch.allclose(x.grad, torch.tensor([grad_x]), atol=1e-6)
    assert torch.equal(layer.weight.grad, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))


def test_step_rules_form_feedback_only_in_training_forward_passes():
    layer = hand_layer("brsf", FA_SIGNED)
    layer.eval()
    layer(X)
    with torch.no_grad():
        layer.train()(X)
    assert torch.equal(layer.feedback, FA_SIGNED)  # evaluation and no-grad passes neither form B nor draw R_t
    layer(X)
    assert torch.equal(torch.sign(layer.feedback), torch.sign(W))


@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf"])
def test_step_rules_track_sign_of_w_every_step_with_their_magnitudes(rule):
    """B_t of every layer over 4 SGD steps against numpy; brsf's R_t redrawn from the seed's stream."""
    seed = 3
    model = mlp(TINY_SIZES, rule, seed=seed)
    twin = mlp(TINY_SIZES, rule, seed=seed)
    linears = [m for m in model if isinstance(m, FeedbackLinear)]
    twins = [m for m in twin if isinstance(m, FeedbackLinear)]
    fa = [init.feedback.numpy() for init in initial_parameters(TINY_SIZES, seed)]
    redraws = torch.Generator().manual_seed(stream_seed(seed, "feedback_redraw"))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, twin)]
    previous = None
    for step in range(4):
        weights = [layer.weight.detach().numpy().copy() for layer in linears]
        losses = [F.cross_entropy(m(TINY_X), TINY_Y) for m in (model, twin)]
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
        other, again = mlp(TINY_SIZES, rule, seed=seed + 1), mlp(TINY_SIZES, rule, seed=seed)
        other(TINY_X), again(TINY_X)
        assert not torch.equal(other[2].feedback.abs(), again[2].feedback.abs())


def test_kolen_pollack_one_step_by_hand():
    lr, decay = 0.5, 0.1
    layer = hand_layer("kolen_pollack", FA_SIGNED, decay=decay)
    assert "feedback" in dict(layer.named_parameters())  # trained alongside W
    x = X.clone().requires_grad_()
    layer(x).backward(GRAD_Y)
    assert torch.allclose(x.grad, GRAD_Y @ FA_SIGNED)  # B starts as the FA_SIGNED matrix
    torch.optim.SGD(layer.parameters(), lr=lr).step()
    grad_w = torch.tensor([[1.0, 1.0], [2.0, 2.0]])  # grad_y^T x
    assert torch.allclose(layer.weight, W - lr * (grad_w + decay * W))
    assert torch.allclose(layer.feedback, FA_SIGNED - lr * (grad_w + decay * FA_SIGNED))
    assert torch.allclose(layer.bias, torch.tensor([0.5 - lr * 1.0, -0.5 - lr * 2.0]))  # no decay on b


def test_kolen_pollack_distance_between_b_and_w_decays_geometrically():
    lr, decay = 0.2, 0.5
    model = mlp(TINY_SIZES, "kolen_pollack", seed=2, decay=decay)
    linears = [m for m in model if isinstance(m, FeedbackLinear)]
    start = [(layer.feedback - layer.weight).norm().item() for layer in linears]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for t in range(1, 16):
        optimizer.zero_grad()
        F.cross_entropy(model(TINY_X), TINY_Y).backward()
        optimizer.step()
        for layer, d0 in zip(linears, start):
            distance = (layer.feedback - layer.weight).norm().item()
            assert distance == pytest.approx(d0 * (1 - lr * decay) ** t, rel=1e-5)


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
