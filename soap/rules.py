"""Feedback rules: how each method forms the matrix B that carries errors backwards.

A linear layer computes y = x W^T + b and sends grad_x = grad_y B backwards (soap.nn). Rules differ in
B, and a rule is one `register(FeedbackRule(...))` whose fields are the generic hooks that both the
single layer (soap.nn) and the population trainer (soap.population) call:

- `form(W, R)`: B from the current W (and a random matrix R where `random` names one), run `when`
  "period" (after the step that crosses each multiple of the refresh period; B is the FA matrix until
  then) or "step" (from the W of every step, before its backward);
- `random`: R is "fa", the run's fixed FA matrix, or "redraw", a fresh draw like W from the seed's
  feedback_redraw stream every time B is formed;
- `uses_weight`: B is W itself (exact backprop);
- `coupled`: B is trained alongside W (Kolen-Pollack): `coupled(grad_W, W, B, decay)` gives the
  learning signals of W and B;
- `direct`: the hidden layers receive the output error through fixed matrices (DFA,
  soap.direct_feedback) instead of through the layers above.

Every function takes a single layer (out, in) or a stacked population (pop, out, in), so each rule's
maths exists once. Every rule except `dfa` also exists as `so_<rule>`: the same feedback plus the
original soap package's second-order activity propagation (soap.activity_propagation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

REFERENCE = "bp"  # the rule every contrast is taken against: exact backprop
SECOND_ORDER_PREFIX = "so_"
KOLEN_POLLACK_DECAY = 1e-3  # lambda: per step, B - W shrinks by (1 - lr * lambda)


@dataclass(frozen=True)
class FeedbackRule:
    name: str
    summary: str
    form: Callable[[Tensor, Tensor | None], Tensor] | None = None  # B from (W, R)
    when: str | None = None  # "period" | "step": when `form` runs (None: B is never formed from W)
    random: str | None = None  # "fa" | "redraw": the R passed to `form`
    uses_weight: bool = False  # B is W (exact backprop): no stored matrix is consulted
    coupled: Callable[[Tensor, Tensor, Tensor, Tensor | float], tuple[Tensor, Tensor]] | None = None
    direct: bool = False  # DFA: hidden layers get the output error through fixed matrices
    second_order: bool = False  # so_ variant: two passes per step with activity propagation

    def __post_init__(self) -> None:
        if (self.form is None) != (self.when is None) or self.when not in (None, "period", "step"):
            raise ValueError(f"rule {self.name!r}: `form` needs `when` = 'period' or 'step', and vice versa")
        if self.random not in (None, "fa", "redraw") or (self.random is not None and self.form is None):
            raise ValueError(f"rule {self.name!r}: `random` is 'fa' or 'redraw' and needs `form`")

    @property
    def refresh(self) -> Callable[[Tensor], Tensor] | None:
        """B <- form(W), every refresh period (sign, sign_scaled, stale_bp); None for other rules."""
        if self.when != "period":
            return None
        return lambda weight: self.form(weight, None)

    def formed(self, weight: Tensor, fa_matrix: Tensor | None, redraw: Callable[[], Tensor]) -> Tensor:
        """B = form(W, R), R as `random` names it: the run's FA matrix, or `redraw()` (called only
        for "redraw", so no other rule consumes a draw). The single layer and the trainer both form B here."""
        random = fa_matrix if self.random == "fa" else redraw() if self.random == "redraw" else None
        return self.form(weight, random)

    @property
    def base(self) -> str:
        """The rule without its so_ prefix: the feedback that the second-order variant sends."""
        return self.name.removeprefix(SECOND_ORDER_PREFIX) if self.second_order else self.name


RULES: dict[str, FeedbackRule] = {}


def register(rule: FeedbackRule) -> FeedbackRule:
    """Add a rule and, unless it is direct (DFA sends no error through the layers below a hidden
    layer, so there is nothing to replace there), its so_ variant."""
    variants = [rule]
    if not rule.direct and not rule.second_order:
        variants.append(dataclasses.replace(
            rule, name=SECOND_ORDER_PREFIX + rule.name, second_order=True,
            summary=f"{rule.summary}, plus second-order activity propagation"))
    for variant in variants:
        if variant.name in RULES:
            raise ValueError(f"feedback rule {variant.name!r} is already registered")
    # every plain rule before every so_ variant, so listings (errors, schema enums) read plainly
    ordered = {**{n: r for n, r in RULES.items() if not r.second_order}, rule.name: rule,
               **{n: r for n, r in RULES.items() if r.second_order}, **{v.name: v for v in variants[1:]}}
    RULES.clear()
    RULES.update(ordered)
    return rule


def get_rule(name: str) -> FeedbackRule:
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown feedback rule {name!r}; known rules: {', '.join(RULES)}") from None


def in_registry_order(methods: Iterable[str]) -> list[str]:
    """The given methods with the registered rules first, in registry order (plain rules, then so_
    variants), then any others alphabetically: the one method order of every table and figure."""
    methods = set(methods)
    return [name for name in RULES if name in methods] + sorted(methods - set(RULES))


def refresh_due(seen_before: int, seen_after: int, period):
    """True when the example count crosses a multiple of `period` (t = T, 2T, ...) during this step.

    Works for batch sizes that do not divide the period: the refresh fires on the step whose examples
    include the T-th one. `period` may be a NumPy array of per-member periods (then so is the answer).
    """
    return seen_after // period > seen_before // period


def init_bound(fan_in: int) -> float:
    """1/sqrt(fan_in): torch.nn.Linear draws W and b from U(-bound, bound), so W's std is bound / sqrt(3)."""
    return 1.0 / math.sqrt(fan_in)


def draw_like_weight(shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """A (..., out, in) matrix from torch.nn.Linear's weight distribution U(-1/sqrt(in), 1/sqrt(in))."""
    bound = init_bound(shape[-1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def _sign(weight: Tensor, _: Tensor | None) -> Tensor:
    return torch.sign(weight)


def _sign_scaled(weight: Tensor, _: Tensor | None) -> Tensor:
    # One scalar per layer (per member): B keeps sign(W) but takes W's average magnitude, which removes
    # the 1/mean|W| (10-30x) amplification that unscaled sign feedback applies to the hidden error.
    return weight.abs().mean(dim=(-2, -1), keepdim=True) * torch.sign(weight)


def _copy(weight: Tensor, _: Tensor | None) -> Tensor:
    return weight.clone()


def _uniform_sign(weight: Tensor, _: Tensor | None) -> Tensor:
    # s = the init std 1/sqrt(3 fan_in): B has W's initial scale, whatever W's scale becomes
    return torch.sign(weight) * (init_bound(weight.shape[-1]) / math.sqrt(3.0))


def _random_magnitude_sign(weight: Tensor, magnitudes: Tensor) -> Tensor:
    return magnitudes.abs() * torch.sign(weight)


def kolen_pollack_grads(grad_weight: Tensor, weight: Tensor, feedback: Tensor,
                        decay: Tensor | float) -> tuple[Tensor, Tensor]:
    """Learning signals of W and B (Akrout et al. 2019): both take W's gradient, both decay by lambda.

    Under SGD at lr: W <- W - lr (grad_W + lambda W), B <- B - lr (grad_W + lambda B), so
    B - W <- (1 - lr lambda)(B - W) and B converges to W. Linear in (grad_W, decay): the population
    trainer passes lr * grad_W and lr * lambda and subtracts the results.
    """
    return grad_weight + decay * weight, grad_weight + decay * feedback


register(FeedbackRule("bp", "exact backpropagation: B = W", uses_weight=True))
register(FeedbackRule("fa", "feedback alignment: fixed random B drawn like W"))
register(FeedbackRule("sign", "sign-tracking FA: B <- sign(W) every T examples", form=_sign, when="period"))
register(FeedbackRule("sign_scaled", "magnitude-controlled sign tracking: B <- mean|W| sign(W) every T examples",
                      form=_sign_scaled, when="period"))
register(FeedbackRule("stale_bp", "periodic weight transport: B <- W every T examples", form=_copy, when="period"))
register(FeedbackRule("usf", "uniform sign-concordant feedback: B = sign(W) / sqrt(3 fan_in) every step",
                      form=_uniform_sign, when="step"))
register(FeedbackRule("frsf", "fixed random-magnitude sign-concordant feedback: B = |R| sign(W), R the FA matrix",
                      form=_random_magnitude_sign, when="step", random="fa"))
register(FeedbackRule("brsf", "batchwise random-magnitude sign-concordant feedback: B = |R_t| sign(W), R_t redrawn "
                      "every step", form=_random_magnitude_sign, when="step", random="redraw"))
register(FeedbackRule("kolen_pollack", "Kolen-Pollack: B starts as the FA matrix and takes W's updates; both decay",
                      coupled=kolen_pollack_grads))
register(FeedbackRule("dfa", "direct feedback alignment: each hidden layer gets the output error through a fixed "
                      "random matrix", direct=True))
