"""FeedbackConv2d against a NumPy convolution written tap by tap and against torch.nn.Conv2d.

Hand computations are float64. A value here is a sum of at most 72 products of O(1) numbers (batch 2
times 6x6 output positions for grad_W, C_out k_h k_w = 24 for grad_x), so any summation order (MKL,
oneDNN or NumPy's, on AMD or Intel) agrees within 72 * 2.2e-16 * max|term| < 1e-13: hence rtol = atol =
1e-12, four orders above rounding and far below any real error (a wrong tap or stride moves values by O(1)).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from soap.nn import FeedbackConv2d
from soap.rules import RULES

PLAIN_RULES = [name for name, rule in RULES.items() if not rule.second_order]
SECOND_ORDER_RULES = [name for name, rule in RULES.items() if rule.second_order]
C_IN, C_OUT, KERNEL = 3, 4, (3, 2)  # a non-square kernel: a transposed or flipped tap is caught
FAN_IN = C_IN * KERNEL[0] * KERNEL[1]  # 18
TOL = dict(rtol=1e-12, atol=1e-12)

GEN = torch.Generator().manual_seed(7)
W = torch.randn(C_OUT, C_IN, *KERNEL, dtype=torch.float64, generator=GEN) * 0.3
BIAS = torch.randn(C_OUT, dtype=torch.float64, generator=GEN)
FA = torch.randn(C_OUT, C_IN, *KERNEL, dtype=torch.float64, generator=GEN) * 0.3
X = torch.randn(2, C_IN, 8, 7, dtype=torch.float64, generator=GEN)  # 8 - 3 is odd: stride 2 leaves a row unread


def hand_layer(rule: str, stride: int = 1, padding: int = 0, feedback_scale: float = 1.0,
               decay: float = 0.0) -> FeedbackConv2d:
    layer = FeedbackConv2d(C_IN, C_OUT, KERNEL, rule=rule, stride=stride, padding=padding, dtype=torch.float64,
                           feedback_scale=feedback_scale, decay=decay)
    with torch.no_grad():
        layer.weight.copy_(W)
        layer.bias.copy_(BIAS)
        layer.feedback.copy_(FA)
        if hasattr(layer, "fa_matrix"):
            layer.fa_matrix.copy_(FA)
    return layer


def numpy_conv(x, weight, bias, feedback, grad_y, stride, padding):
    """y, grad_x (through `feedback`), grad_W and grad_b, one kernel tap (i, j) at a time: tap (i, j)
    reads the padded input at rows i, i + s, ..., i + s (H_out - 1), and likewise columns."""
    n, c, h, w = x.shape
    out, _, kh, kw = weight.shape
    ho, wo = grad_y.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = np.zeros((n, out, ho, wo)) + bias[None, :, None, None]
    grad_xp, grad_w = np.zeros_like(xp), np.zeros_like(weight)
    for i in range(kh):
        for j in range(kw):
            rows, cols = slice(i, i + stride * ho, stride), slice(j, j + stride * wo, stride)
            window = xp[:, :, rows, cols]  # (n, c, ho, wo)
            y += np.einsum("ncyx,oc->noyx", window, weight[:, :, i, j])
            grad_w[:, :, i, j] = np.einsum("noyx,ncyx->oc", grad_y, window)
            grad_xp[:, :, rows, cols] += np.einsum("noyx,oc->ncyx", grad_y, feedback[:, :, i, j])
    return y, grad_xp[:, :, padding:padding + h, padding:padding + w], grad_w, grad_y.sum((0, 2, 3))


def expected_feedback(rule: str, w: np.ndarray, fa: np.ndarray, redraw: np.ndarray) -> np.ndarray:
    """Each plain rule's B for a kernel, from the rules' definitions (periodic rules just refreshed)."""
    return {
        "bp": w, "fa": fa, "kolen_pollack": fa, "dfa": fa,  # a lone dfa layer sends errors like fa
        "sign": np.sign(w), "stale_bp": w,
        "sign_scaled": np.abs(w).mean() * np.sign(w),  # one scalar for the whole layer
        "usf": np.sign(w) / math.sqrt(3 * FAN_IN),  # the init std 1 / sqrt(3 C_in k_h k_w)
        "frsf": np.abs(fa) * np.sign(w), "brsf": np.abs(redraw) * np.sign(w),
    }[rule]


def test_every_plain_rule_has_a_hand_expectation():
    assert set(PLAIN_RULES) == {"bp", "fa", "sign", "sign_scaled", "stale_bp", "usf", "frsf", "brsf",
                                "kolen_pollack", "dfa"}


@pytest.mark.parametrize("feedback_scale", [1.0, 2.5])
@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("rule", PLAIN_RULES)
def test_gradients_match_a_hand_convolution_for_every_rule(rule, stride, padding, feedback_scale):
    layer = hand_layer(rule, stride, padding, feedback_scale)
    layer.generator = torch.Generator().manual_seed(5)
    redraw = torch.empty(C_OUT, FAN_IN).uniform_(-FAN_IN**-0.5, FAN_IN**-0.5,
                                                 generator=torch.Generator().manual_seed(5)).view(W.shape)
    layer.refresh_feedback()
    x = X.clone().requires_grad_()
    y = layer(x)
    grad_y = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y.backward(grad_y)

    b = expected_feedback(rule, W.numpy(), FA.numpy(), redraw.double().numpy())
    if not layer.rule.uses_weight:
        np.testing.assert_allclose(layer.feedback.detach().numpy(), b, **TOL)
    hand_y, grad_x, grad_w, grad_b = numpy_conv(X.numpy(), W.numpy(), BIAS.numpy(), b, grad_y.numpy(), stride, padding)
    np.testing.assert_allclose(y.detach().numpy(), hand_y, **TOL)
    np.testing.assert_allclose(x.grad.numpy(), feedback_scale * grad_x, **TOL)
    np.testing.assert_allclose(layer.weight.grad.numpy(), grad_w, **TOL)  # W's own gradient, whatever B
    np.testing.assert_allclose(layer.bias.grad.numpy(), grad_b, **TOL)
    # the same grad_x from torch's own transposed convolution with B
    by_torch = torch.nn.grad.conv2d_input(X.shape, torch.from_numpy(b), grad_y, stride, padding)
    torch.testing.assert_close(x.grad, feedback_scale * by_torch, **TOL)


@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_bp_is_conv2d(stride, padding):
    torch.manual_seed(0)
    reference = nn.Conv2d(C_IN, C_OUT, KERNEL, stride=stride, padding=padding, dtype=torch.float64)
    torch.manual_seed(0)
    layer = FeedbackConv2d(C_IN, C_OUT, KERNEL, rule="bp", stride=stride, padding=padding, dtype=torch.float64)
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    outputs, grads = [], []
    for module in (reference, layer):
        x = X.clone().requires_grad_()
        y = module(x)
        y.backward(torch.cos(y.detach()))
        outputs.append(y)
        grads.append((x.grad, module.weight.grad, module.bias.grad))
    assert torch.equal(outputs[0], outputs[1])  # the same F.conv2d call
    for expected, got in zip(*grads):
        torch.testing.assert_close(got, expected, **TOL)


def test_initialisation_is_conv2ds_and_fa_is_drawn_like_it():
    torch.manual_seed(1)
    reference = nn.Conv2d(16, 32, 5)
    torch.manual_seed(1)
    layer = FeedbackConv2d(16, 32, 5, rule="fa")
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    # Conv2d's bound is 1/sqrt(C_in k k); B is drawn from U(-bound, bound) too. With 12,800 draws
    # the largest |value| lies above 0.999 bound but with probability 0.999^12800 < 3e-6.
    bound = 1 / math.sqrt(16 * 5 * 5)
    for matrix in (reference.weight, layer.feedback):
        assert 0.999 * bound < matrix.abs().max().item() <= bound
    assert not torch.equal(layer.feedback, layer.weight)
    assert "feedback" in layer.state_dict() and "feedback" not in dict(layer.named_parameters())


def test_sign_feedback_is_the_fa_matrix_until_the_first_refresh_then_held_between_refreshes():
    layer = hand_layer("sign")
    optimizer = torch.optim.SGD(layer.parameters(), lr=2.0)

    def step():
        optimizer.zero_grad()
        layer(X).pow(2).mean().backward()
        optimizer.step()

    step()
    assert torch.equal(layer.feedback, FA)  # W moved, B is still the FA matrix
    layer.refresh_feedback()
    assert torch.equal(layer.feedback, torch.sign(layer.weight.detach()))
    held = layer.feedback.clone()
    for _ in range(3):
        step()
    assert not torch.equal(torch.sign(layer.weight.detach()), held)  # signs flipped: B could have followed
    assert torch.equal(layer.feedback, held)
    layer.refresh_feedback()
    assert torch.equal(layer.feedback, torch.sign(layer.weight.detach()))


@pytest.mark.parametrize("rule", ["usf", "frsf"])
def test_step_rules_follow_sign_of_w_every_training_step_with_fixed_magnitudes(rule):
    layer = hand_layer(rule)
    optimizer = torch.optim.SGD(layer.parameters(), lr=2.0)
    magnitude = 1 / math.sqrt(3 * FAN_IN) if rule == "usf" else FA.abs()  # usf: 1/sqrt(54), not 1/sqrt(3 C_in)
    flipped = False
    for _ in range(4):
        weight = layer.weight.detach().clone()
        optimizer.zero_grad()
        layer(X).pow(2).mean().backward()
        torch.testing.assert_close(layer.feedback, magnitude * torch.sign(weight), rtol=1e-15, atol=0)
        optimizer.step()
        flipped |= not torch.equal(torch.sign(layer.weight.detach()), torch.sign(weight))
    assert flipped  # B had a changed sign(W) to follow


def test_brsf_redraws_its_magnitudes_in_each_training_forward_only():
    layer = hand_layer("brsf")
    layer.generator = torch.Generator().manual_seed(9)
    twin = torch.Generator().manual_seed(9)
    bound = FAN_IN**-0.5
    for _ in range(3):
        layer(X)
        redraw = torch.empty(C_OUT, FAN_IN).uniform_(-bound, bound, generator=twin).view(W.shape).double()
        torch.testing.assert_close(layer.feedback, redraw.abs() * torch.sign(W), rtol=0, atol=0)
    formed = layer.feedback.clone()
    layer.eval()(X)
    with torch.no_grad():
        layer.train()(X)
    assert torch.equal(layer.feedback, formed)  # evaluation and no-grad passes neither form B nor draw R_t


def test_kolen_pollack_distance_between_b_and_w_shrinks_by_one_minus_lr_lambda_each_step():
    lr, decay = 0.2, 0.5
    layer = hand_layer("kolen_pollack", decay=decay)
    assert "feedback" in dict(layer.named_parameters())  # trained alongside W
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr)
    start = FA - W
    for t in range(1, 11):
        optimizer.zero_grad()
        layer(X).pow(2).mean().backward()
        optimizer.step()
        torch.testing.assert_close(layer.feedback - layer.weight, (1 - lr * decay) ** t * start, **TOL)
    assert not torch.allclose(layer.weight, W, atol=1e-3)  # W itself learned: B took its updates


@pytest.mark.parametrize("rule", SECOND_ORDER_RULES)
def test_second_order_rules_are_refused(rule):
    message = f"{rule}: second-order activity propagation is defined for dense hidden layers, not FeedbackConv2d"
    with pytest.raises(ValueError, match=f"^{message}$"):
        FeedbackConv2d(C_IN, C_OUT, KERNEL, rule=rule)


@pytest.mark.parametrize("options, message", [
    (dict(padding="same"), "FeedbackConv2d takes padding as numbers, got 'same'"),
    (dict(feedback_scale=0.0), "feedback_scale must be a positive number, got 0.0"),
    (dict(feedback_scale=math.nan), "feedback_scale must be a positive number, got nan"),
    (dict(rule="fba"), "unknown feedback rule 'fba'"),
])
def test_bad_arguments_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        FeedbackConv2d(C_IN, C_OUT, KERNEL, **options)
