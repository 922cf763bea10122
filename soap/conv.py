"""Convolutional layers whose backward pass sends errors through a feedback kernel B instead of W.

A conv layer y = conv2d(x, W) + b (W: (out, in, kh, kw)) is a linear map, so a feedback rule replaces W
by B in the error it sends down and nothing else (STUDY.md conventions, as soap.nn's linear layer):

    grad_x = alpha conv2d_input(x.shape, B, grad_y)    grad_W = conv2d_weight(x, grad_y)    grad_b = sum grad_y

over batch and positions, with the conv's stride and padding. `FeedbackConv2dFunction` is that maths.

Every rule's B comes from the registry (soap.rules), whose `form(W, R)` functions treat W as
(out, fan_in). A kernel is that matrix viewed as (out, in * kh * kw) (`as_matrix`), so each rule carries
over unchanged: sign_scaled's mean|W| is one scalar per layer, usf's scale is 1/sqrt(3 in kh kw)
(BioTorch's uSF), and fa, frsf and brsf draw R like W with bound 1/sqrt(in kh kw), which is also
torch.nn.Conv2d's default bound for W and b (kaiming_uniform_ with a = sqrt(5): gain sqrt(1/3) times
sqrt(3 / fan_in)).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soap.feedback_layer import FeedbackMixin
from soap.rules import KOLEN_POLLACK_DECAY, get_rule


class FeedbackConv2dFunction(torch.autograd.Function):
    """y = conv2d(x, W) + b, with grad_x = scale * conv2d_input(x.shape, B, grad_y).

    x: (batch, in, H, W); weight and feedback: (out, in, kh, kw). `coupling` (optional): for a B trained
    alongside W (Kolen-Pollack), a function (grad_W, W, B) -> (signal for W, signal for B); B must then
    require grad.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, stride: tuple[int, int],
                padding: tuple[int, int], scale: float = 1.0,
                coupling: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None) -> Tensor:
        return F.conv2d(x, weight, bias, stride, padding)  # exactly nn.Conv2d's forward (zero padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, feedback, stride, padding, scale, coupling = inputs
        ctx.save_for_backward(x, weight, feedback)
        ctx.has_bias = bias is not None
        ctx.stride, ctx.padding, ctx.scale, ctx.coupling = stride, padding, float(scale), coupling

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, feedback = ctx.saved_tensors
        coupled = ctx.coupling is not None and ctx.needs_input_grad[3]
        grad_x = grad_w = grad_b = grad_fb = None
        if ctx.needs_input_grad[0]:
            # conv2d_input takes the input's shape, so a stride that leaves rows or columns unread gets
            # zeros there (the transposed conv's output padding)
            grad_x = torch.nn.grad.conv2d_input(x.shape, feedback, grad_out, ctx.stride, ctx.padding)
            if ctx.scale != 1.0:
                grad_x.mul_(ctx.scale)
        if ctx.needs_input_grad[1] or coupled:
            grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, ctx.stride, ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        if coupled:
            grad_w, grad_fb = ctx.coupling(grad_w, weight, feedback)
        return grad_x, grad_w, grad_b, grad_fb, None, None, None, None


def feedback_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, stride: tuple[int, int],
                    padding: tuple[int, int], scale: float = 1.0, coupling=None) -> Tensor:
    return FeedbackConv2dFunction.apply(x, weight, bias, feedback, stride, padding, scale, coupling)


class FeedbackConv2d(FeedbackMixin, nn.Conv2d):
    """Drop-in for torch.nn.Conv2d (same weight, bias, initialisation, forward) with a feedback rule.

    B (`feedback`, shaped like W) as FeedbackMixin describes; errors go down as
    feedback_scale * conv2d_input(B). soap.models.lenet5(seed=...) gives brsf's `generator` the seed's
    feedback_redraw stream. dfa acts on a whole network (soap.models.lenet5 builds it); a lone layer with it
    sends its errors like fa. so_ rules are refused: their activity step is defined per unit of a dense
    hidden layer (soap.activity_propagation), and a conv layer's maps have no such units without a
    further choice (channels, or every position).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], rule: str = "fa",
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, bias: bool = True,
                 device=None, dtype=None, feedback_scale: float = 1.0, decay: float = KOLEN_POLLACK_DECAY):
        if isinstance(padding, str):
            raise ValueError(f"FeedbackConv2d takes padding as numbers, got {padding!r}")
        spec = get_rule(rule)
        if spec.second_order:
            raise ValueError(f"{spec.name}: second-order activity propagation is defined for dense hidden layers, "
                             "not FeedbackConv2d")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
                         device=device, dtype=dtype)
        self._init_feedback(spec, feedback_scale, decay)

    def forward(self, x: Tensor) -> Tensor:
        return feedback_conv2d(x, self.weight, self.bias, self._step_feedback(), self.stride, self.padding,
                               self.feedback_scale, self.coupling)
