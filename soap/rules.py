"""Feedback rules: how each method forms the matrix B that carries errors backwards.

A linear layer computes y = x W^T + b and sends grad_x = grad_y B backwards (soap.nn). Rules differ
only in B. Every refresh function takes a weight of shape (out, in) or a stacked population
(pop, out, in), so the single layer and the population trainer share one implementation of each rule.
Adding a rule is one `register(...)` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class FeedbackRule:
    name: str
    summary: str
    # New B from the current W, applied every `refresh_period` examples; None: B never changes.
    refresh: Callable[[Tensor], Tensor] | None = None
    # B is W at every step (exact backprop): no stored matrix is consulted.
    uses_weight: bool = False


RULES: dict[str, FeedbackRule] = {}


def register(rule: FeedbackRule) -> FeedbackRule:
    if rule.name in RULES:
        raise ValueError(f"feedback rule {rule.name!r} is already registered")
    RULES[rule.name] = rule
    return rule


def get_rule(name: str) -> FeedbackRule:
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown feedback rule {name!r}; known rules: {', '.join(RULES)}") from None


def refresh_due(seen_before: int, seen_after: int, period):
    """True when the example count crosses a multiple of `period` (t = T, 2T, ...) during this step.

    Works for batch sizes that do not divide the period: the refresh fires on the step whose examples
    include the T-th one. `period` may be a NumPy array of per-member periods (then so is the answer).
    """
    return seen_after // period > seen_before // period


def _sign(weight: Tensor) -> Tensor:
    return torch.sign(weight)


def _sign_scaled(weight: Tensor) -> Tensor:
    # One scalar per layer (per member): B keeps sign(W) but takes W's average magnitude, which removes
    # the 1/mean|W| (10-30x) amplification that unscaled sign feedback applies to the hidden error.
    return weight.abs().mean(dim=(-2, -1), keepdim=True) * torch.sign(weight)


def _copy(weight: Tensor) -> Tensor:
    return weight.clone()


register(FeedbackRule("bp", "exact backpropagation: B = W", uses_weight=True))
register(FeedbackRule("fa", "feedback alignment: fixed random B drawn like W"))
register(FeedbackRule("sign", "sign-tracking FA: B <- sign(W) every T examples", refresh=_sign))
register(
    FeedbackRule(
        "sign_scaled",
        "magnitude-controlled sign tracking: B <- mean|W| sign(W) every T examples",
        refresh=_sign_scaled,
    )
)
register(FeedbackRule("stale_bp", "periodic weight transport: B <- W every T examples", refresh=_copy))
