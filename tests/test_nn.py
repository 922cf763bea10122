"""The layer maths (soap.nn) against torch.nn.Linear, autograd and per-member calls."""

import pytest
import torch
from torch import nn

from soap.nn import ACTIVATIONS, FeedbackLinear, FeedbackLinearFunction, linear_forward, sgd_update_


def test_bp_matches_torch_linear_under_autograd():
    torch.manual_seed(0)
    reference = nn.Linear(30, 20)
    layer = FeedbackLinear(30, 20, rule="bp")
    layer.load_state_dict({**reference.state_dict(), "feedback": layer.feedback})
    x = torch.randn(5, 7, 30)  # extra leading dimension, as nn.Linear accepts
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = reference(x1), layer(x2)
    torch.testing.assert_close(y2, y1, atol=1e-6, rtol=1e-6)
    upstream = torch.randn_like(y1)
    y1.backward(upstream)
    y2.backward(upstream)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, atol=1e-6, rtol=1e-6)


def test_initialisation_matches_torch_linear_distribution():
    torch.manual_seed(1)
    layer = FeedbackLinear(400, 300)
    bound = 400 ** -0.5
    for tensor in (layer.weight, layer.bias, layer.feedback):
        assert tensor.abs().max() <= bound
        assert tensor.abs().max() > 0.98 * bound  # uniform on the whole interval, not a narrower one
    # U(-a, a) has variance a^2 / 3.
    assert abs(layer.weight.var().item() / (bound**2 / 3) - 1) < 0.02
    assert "feedback" in layer.state_dict() and "feedback" not in dict(layer.named_parameters())


def test_population_call_equals_per_member_calls():
    torch.manual_seed(2)
    pop_x, pop_w, pop_b, pop_fb = torch.randn(3, 5, 4), torch.randn(3, 6, 4), torch.randn(3, 6), torch.randn(3, 6, 4)
    upstream = torch.randn(3, 5, 6)
    leaves = [t.clone().requires_grad_() for t in (pop_x, pop_w, pop_b)]
    FeedbackLinearFunction.apply(*leaves, pop_fb).backward(upstream)
    for p in range(3):
        x, w, b = (t[p].clone().requires_grad_() for t in (pop_x, pop_w, pop_b))
        out = FeedbackLinearFunction.apply(x, w, b, pop_fb[p])
        out.backward(upstream[p])
        # independent expectation for this member, written with explicit sums
        torch.testing.assert_close(x.grad, torch.einsum("no,oi->ni", upstream[p], pop_fb[p]))
        torch.testing.assert_close(w.grad, torch.einsum("no,ni->oi", upstream[p], pop_x[p]))
        for leaf, single in zip(leaves, (x, w, b)):
            torch.testing.assert_close(leaf.grad[p], single.grad)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_its_torch_module_under_autograd(name):
    activation = ACTIVATIONS[name]
    a = torch.linspace(-6, 6, 241).requires_grad_()  # float32, the trainer's dtype; includes 0
    expected_h = activation.module()(a)
    grad_h = torch.randn(241, generator=torch.Generator().manual_seed(0))
    (expected_grad_a,) = torch.autograd.grad(expected_h, a, grad_h)
    h = activation.forward_(a.detach().clone())
    # CPU tanh is 2 sigmoid(2a) - 1 (soap.nn): 2a and the doubling are exact, the subtraction rounds by at
    # most 2^-25, so |h - tanh| <= 2 err(sigmoid) + err(torch.tanh) + 2^-25. With each vectorised
    # function within 2 ulps of a value below 1 (ulp 2^-24) that is 6.5 * 2^-24 = 3.9e-7. An AMD EPYC
    # measures 1.79e-7 = 3 * 2^-24 (the 1-ulp case), 0.9 of the former atol 2e-7: too close for any x86.
    torch.testing.assert_close(h, expected_h.detach(), atol=6.5 * 2**-24, rtol=0)
    torch.testing.assert_close(activation.backward(grad_h, h), expected_grad_a, atol=1e-6, rtol=1e-5)
    # the trainer's in-place backward: the same dL/da, written over dL/dh; h is read again (alignment)
    kept_h, overwritten = h.clone(), grad_h.clone()
    grad_a = activation.backward_(overwritten, h)
    assert grad_a.data_ptr() == overwritten.data_ptr()
    torch.testing.assert_close(grad_a, activation.backward(grad_h, h), atol=0, rtol=0)
    torch.testing.assert_close(h, kept_h, atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_from_its_scaled_input_equals_its_forward(name):
    # the GEMM writes s (x W^T + b) for the activation's s = input_scale: h must be f(x W^T + b) to the bit
    activation, generator = ACTIVATIONS[name], torch.Generator().manual_seed(5)
    x, w, b = torch.randn(3, 70, 9, generator=generator), torch.randn(3, 20, 9, generator=generator), torch.randn(3, 20)
    scale = activation.input_scale(x.device)
    expected = activation.forward_(linear_forward(x, w, b))
    torch.testing.assert_close(activation.from_scaled_(linear_forward(x, w, b, scale)), expected, atol=0, rtol=0)


def test_fused_sgd_update_equals_subtracting_the_gradients():
    torch.manual_seed(3)
    w, b = torch.randn(4, 6, 5), torch.randn(4, 6)
    grad_out, x = torch.randn(4, 8, 6), torch.randn(4, 8, 5)
    expected_w = w - torch.einsum("pbo,pbi->poi", grad_out, x)
    expected_b = b - grad_out.sum(1)
    sgd_update_(w, b, grad_out, x)
    torch.testing.assert_close(w, expected_w)
    torch.testing.assert_close(b, expected_b)


def test_members_sharing_an_input_equal_per_member_calls():
    # 6 members in 2 groups of 3; each group feeds its 3 members one input (one batched GEMM per group)
    torch.manual_seed(4)
    x, w, b, fb = torch.randn(2, 5, 4), torch.randn(6, 7, 4), torch.randn(6, 7), torch.randn(6, 7, 4)
    upstream = torch.randn(6, 5, 7)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = FeedbackLinearFunction.apply(*leaves, fb)
    out.backward(upstream)
    expected_grad_x = torch.zeros_like(x)
    for p in range(6):
        g = p // 3
        torch.testing.assert_close(out[p], x[g] @ w[p].T + b[p])
        torch.testing.assert_close(leaves[1].grad[p], upstream[p].T @ x[g])
        torch.testing.assert_close(leaves[2].grad[p], upstream[p].sum(0))
        expected_grad_x[g] += upstream[p] @ fb[p]  # a shared input collects every member's error
    torch.testing.assert_close(leaves[0].grad, expected_grad_x)
    # a scaled forward (an activation's input_scale, in the GEMM), for a layer wider and one narrower
    # than the batch (out 7 < batch 9: computed as (W x^T)^T)
    for inputs in (x, torch.randn(2, 9, 4)):
        scaled = linear_forward(inputs, w, b, 2.0)
        for p in range(6):
            torch.testing.assert_close(scaled[p], 2 * (inputs[p // 3] @ w[p].T + b[p]))
    # the fused update takes the same grouped input
    expected_w, expected_b = w - leaves[1].grad, b - leaves[2].grad
    sgd_update_(w, b, upstream, x)
    torch.testing.assert_close(w, expected_w)
    torch.testing.assert_close(b, expected_b)
