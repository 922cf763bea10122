"""Second-order activity propagation (SOAP), the idea that named the original soap package.

A SOAP point sits after a hidden linear layer, before its nonlinearity (Linear -> SOAP -> tanh), on
the pre-activation a (batch, units). Each training step makes two passes with the weights unchanged:

1. forward and backward as usual: g1 = dL/da, L the batch-mean loss (under the method's feedback);
2. forward again with a replaced by a - eps g1, eps = eta_ap / (batch * units); backward: g2 = dL/da
   at the perturbed point. The layers above every SOAP point take their weight gradients from this pass;
   below a SOAP point the backward carries, instead of g2, elementwise

       n = eps g1^2 / d,   d = (g1 - g2) + 2c sign(g1 - g2),   d = c where g1 == g2 exactly,

   a diagonal secant-Newton step in activity space (g1 - g2 is the curvature along the step eps g1);
   c (`curvature_bias`) keeps d away from 0. Then the optimizer steps once.

With several SOAP points, all are perturbed in pass 2 and each g2 is the plain pass-2 signal at that
point (the n of a point above replaces the signal only for the weights between the two points), so
every n is a secant step of the same loss. The SOAP gain |n| / |g2| is logged like the feedback gain.
`newton_step` is the one implementation of the maths, for this module and the population trainer.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from soap.config import ActivityPropagation  # the so_ settings, with the rest of the training config
from soap.nn import FeedbackLinear


def perturbation_scale(eta: float, activity: Tensor) -> float:
    """eps = eta_ap / (batch * units) for a (..., batch, units) activity."""
    return eta / (activity.shape[-2] * activity.shape[-1])


def newton_step(g1: Tensor, g2: Tensor, eps: float, curvature_bias: float) -> Tensor:
    """n = eps g1^2 / d, d = (g1 - g2) + 2c sign(g1 - g2), and d = c where g1 == g2 (elementwise)."""
    diff = g1 - g2
    d = torch.where(diff == 0, curvature_bias, diff + 2 * curvature_bias * torch.sign(diff))
    return eps * g1 * g1 / d


def forward_backward_passes(examples, batch_size, two_pass_from):
    """Forward-backward passes over one batch that a run makes to see `examples` examples: one a step,
    two a step once an so_ run's warm-up is over. two_pass_from: the examples seen when its two-pass
    steps begin (warmup x batch size); NaN for one-pass runs. NumPy arrays or pandas columns."""
    start = np.nan_to_num(np.asarray(two_pass_from, dtype=float), nan=np.inf)
    examples = np.asarray(examples, dtype=float)
    return (examples + np.clip(examples - start, 0, None)) / np.asarray(batch_size, dtype=float)


def soap_gain(n: Tensor, g2: Tensor) -> Tensor:
    """|n| / |g2| per member over (batch, units): (..., batch, units) -> (...)."""
    return n.flatten(-2).norm(dim=-1) / g2.flatten(-2).norm(dim=-1).clamp_min(1e-30)


class SecondOrderActivity(nn.Module):
    """The SOAP point: an identity in the forward pass, except in pass 2 of `two_pass_backward`."""

    def __init__(self, settings: ActivityPropagation):
        super().__init__()
        self.settings = settings
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps taken
        self.gain = math.nan  # |n| / |g2| of the last two-pass step
        self.shift: Tensor | None = None  # eps g1, subtracted from a during pass 2
        self.recording = False  # keep this pass's (perturbed) activity in `activity`
        self.activity: Tensor | None = None

    def forward(self, a: Tensor) -> Tensor:
        if self.shift is not None:
            a = a - self.shift
        if self.recording:
            self.activity = a
        return a


def two_pass_backward(model: nn.Module, loss_of: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """One training step's gradients for a model with SecondOrderActivity points; returns pass 1's loss.

    Replaces `loss_of(model(x)).backward()`: afterwards every parameter's .grad holds the step's
    learning signal (pass 2 above the points, n below them); call the optimizer's step once. During
    the first `warmup` steps it is that plain backward.
    """
    points = [m for m in model.modules() if isinstance(m, SecondOrderActivity)]
    settings = points[0].settings
    warm = int(points[0].steps) < settings.warmup
    for point in points:
        point.steps += 1
    if warm:
        loss = loss_of(model(x))
        loss.backward()
        return loss.detach()

    for point in points:
        point.recording = True
    loss = loss_of(model(x))
    g1 = torch.autograd.grad(loss, [p.activity for p in points])
    # pass 2 reuses the step's feedback (brsf must not draw R_t twice in one step)
    linears = [m for m in model.modules() if isinstance(m, FeedbackLinear)]
    try:
        for layer in linears:
            layer.hold_feedback = True
        for point, g in zip(points, g1):
            point.shift = perturbation_scale(settings.eta, g) * g
        perturbed = loss_of(model(x))
        activities = [p.activity for p in points]
        g2 = torch.autograd.grad(perturbed, activities, retain_graph=True)
        for point, activity, first, second in zip(points, activities, g1, g2):
            n = newton_step(first, second, perturbation_scale(settings.eta, first), settings.curvature_bias)
            point.gain = soap_gain(n, second).item()
            activity.register_hook(lambda _, n=n: n)  # replaces the signal sent below the point
        perturbed.backward()
    finally:
        for layer in linears:
            layer.hold_feedback = False
        for point in points:
            point.shift, point.activity, point.recording = None, None, False
    return loss.detach()
