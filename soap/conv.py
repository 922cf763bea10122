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

import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soap.rules import KOLEN_POLLACK_DECAY, FeedbackRule, draw_like_weight, get_rule


def as_matrix(weight: Tensor) -> Tensor:
    """A layer's weight as the registry's (out, fan_in) matrix: a kernel (out, in, kh, kw) viewed as
    (out, in * kh * kw); a dense (out, in) weight is unchanged."""
    return weight.view(weight.shape[0], -1)


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


class FeedbackMixin:
    """A layer's feedback matrix B under a rule: the state and hooks that every feedback layer shares.

    For a module with `weight` (out, ...): `_init_feedback` (after the module's own __init__) makes
    `feedback`, B shaped like W. It is a buffer (saved in the state dict, never trained), except for
    rules whose B is trained alongside W (kolen_pollack), where it is a parameter: give it to the
    optimizer with W. It starts as the FA matrix, drawn like W. Rules formed every step (usf, frsf,
    brsf) form B in each forward pass made in training mode with grad enabled, as dropout draws its
    mask, unless `hold_feedback` is set (a second pass of the same step); periodic rules (sign,
    sign_scaled, stale_bp) form it when `refresh_feedback()` is called. brsf draws R_t with `generator`
    (torch's global RNG when None). Every rule sees W as the registry's (out, fan_in) matrix
    (`as_matrix`), so the layer holds no per-rule code.
    """

    def _init_feedback(self, rule: FeedbackRule, feedback_scale: float, decay: float) -> None:
        if not (math.isfinite(feedback_scale) and feedback_scale > 0):
            raise ValueError(f"feedback_scale must be a positive number, got {feedback_scale}")
        self.rule = rule
        self.feedback_scale = float(feedback_scale)
        feedback = self._draw_like_weight(None)
        if self.rule.coupled is not None:
            self.feedback = nn.Parameter(feedback)
            self.coupling = partial(self.rule.coupled, decay=decay)
        else:
            self.register_buffer("feedback", feedback)
            self.coupling = None
        if self.rule.random == "fa":  # the fixed R whose magnitudes B keeps
            self.register_buffer("fa_matrix", feedback.clone())
        self.generator: torch.Generator | None = None
        self.hold_feedback = False

    def _step_feedback(self) -> Tensor:
        """The B of this forward pass, formed first for the rules formed every training step."""
        if self.rule.when == "step" and self.training and torch.is_grad_enabled() and not self.hold_feedback:
            self._form_feedback()
        return self.weight.detach() if self.rule.uses_weight else self.feedback

    @torch.no_grad()
    def refresh_feedback(self) -> None:
        """Apply a periodic rule's refresh (sign, sign_scaled, stale_bp); a no-op for other rules."""
        if self.rule.when == "period":
            self._form_feedback()

    @torch.no_grad()
    def _form_feedback(self) -> None:
        random = None
        if self.rule.random == "fa":
            random = as_matrix(self.fa_matrix)
        elif self.rule.random == "redraw":
            random = as_matrix(self._draw_like_weight(self.generator))
        self.feedback.copy_(self.rule.form(as_matrix(self.weight), random).view_as(self.weight))

    def _draw_like_weight(self, generator: torch.Generator | None) -> Tensor:
        """A tensor shaped like W from W's initial distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        return draw_like_weight(as_matrix(self.weight).shape, generator).view_as(self.weight).to(self.weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule.name}, feedback_scale={self.feedback_scale:g}"


class FeedbackConv2d(FeedbackMixin, nn.Conv2d):
    """Drop-in for torch.nn.Conv2d (same weight, bias, initialisation, forward) with a feedback rule.

    B (`feedback`, shaped like W) as FeedbackMixin describes; errors go down as
    feedback_scale * conv2d_input(B). soap.lenet.lenet5(seed=...) gives brsf's `generator` the seed's
    feedback_redraw stream. dfa acts on a whole network (soap.lenet builds it); a lone layer with it
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
