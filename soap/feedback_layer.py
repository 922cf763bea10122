"""A feedback layer's B: the state and hooks that every layer with a feedback rule shares.

soap.nn's FeedbackLinear and soap.conv's FeedbackConv2d are their torch module (nn.Linear, nn.Conv2d)
plus `FeedbackMixin`; only the product that sends errors down differs between them. Every rule's B
comes from the registry (soap.rules), whose functions see W as an (out, fan_in) matrix: `as_matrix`
views a conv kernel (out, in, kh, kw) that way, so one implementation serves both layers.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from soap.rules import FeedbackRule, draw_like_weight


def as_matrix(weight: Tensor) -> Tensor:
    """A layer's weight as the registry's (out, fan_in) matrix: a kernel (out, in, kh, kw) viewed as
    (out, in * kh * kw); a dense (out, in) weight is unchanged."""
    return weight.view(weight.shape[0], -1)


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
        fa_matrix = as_matrix(self.fa_matrix) if self.rule.random == "fa" else None
        formed = self.rule.formed(as_matrix(self.weight), fa_matrix,
                                  lambda: as_matrix(self._draw_like_weight(self.generator)))
        self.feedback.copy_(formed.view_as(self.weight))

    def _draw_like_weight(self, generator: torch.Generator | None) -> Tensor:
        """A tensor shaped like W from W's initial distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        return draw_like_weight(as_matrix(self.weight).shape, generator).view_as(self.weight).to(self.weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule.name}, feedback_scale={self.feedback_scale:g}"
