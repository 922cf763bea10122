"""Optimizers of the population trainer: one update for every member at once, state stacked like the
parameters (pop, ...), each member with its own learning rate.

Plain SGD is not here: the trainer fuses it into the weight-gradient GEMM (soap.nn.sgd_update_). The
others follow torch.optim member by member (the tests hold them to it on a population of one):
  momentum  torch.optim.SGD(momentum=mu): buf <- mu buf + g (buf = g at the first step); W -= lr buf
  adam      torch.optim.Adam(betas, eps): bias-corrected moments; W -= lr m_hat / (sqrt(v_hat) + eps)
  signsgd   W -= lr sign(g), "Batch Manhattan" (Liao et al. 2016): the step ignores the gradient's size,
            so it removes the scale a feedback rule puts on the error.
"""

from __future__ import annotations

import torch
from torch import Tensor

STATEFUL = ("momentum", "adam", "signsgd")


class StackedOptimizer:
    """Updates stacked parameters in place from their gradients; `slot` names a parameter's state."""

    def __init__(self, kind: str, momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if kind not in STATEFUL:
            raise ValueError(f"unknown optimizer {kind!r}; known: sgd (fused in the trainer), {', '.join(STATEFUL)}")
        self.kind, self.momentum, self.betas, self.eps = kind, momentum, betas, eps
        self.weight_decay = weight_decay  # L2 in the gradient, as torch.optim's weight_decay
        self.state: dict[int, dict] = {}

    @torch.no_grad()
    def step_(self, slot: int, param: Tensor, grad: Tensor, lr: Tensor) -> None:
        """param (pop, ...) -= its step, from grad (pop, ...) and lr (pop,)."""
        lr = lr.view(-1, *[1] * (param.dim() - 1))
        if self.weight_decay:
            grad = grad.add(param, alpha=self.weight_decay)
        # The count is a device tensor advanced in place: a CUDA graph replays the step's tensor program
        # only, so a Python counter would stay at its value when the graph was recorded (and with it
        # Adam's bias corrections). Float64: exact for any count, and (1 - beta^t) as the host computes it.
        state = self.state.setdefault(slot, {"steps": torch.zeros((), dtype=torch.float64, device=param.device)})
        state["steps"].add_(1)
        if self.kind == "signsgd":
            param.sub_(grad.sign().mul_(lr))
        elif self.kind == "momentum":
            if "buf" not in state:
                state["buf"] = grad.clone()
            else:
                state["buf"].mul_(self.momentum).add_(grad)
            param.sub_(state["buf"] * lr)
        else:
            beta1, beta2 = self.betas
            if "m" not in state:
                state["m"], state["v"] = torch.zeros_like(param), torch.zeros_like(param)
            m, v, steps = state["m"], state["v"], state["steps"]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            # one scratch tensor, reused in place: a (pop, out, in) allocation per op costs as much as the op
            step = v.sqrt().div_(torch.pow(beta2, steps).neg_().add_(1).sqrt_()).add_(self.eps)
            param.sub_(torch.div(m, step, out=step).mul_(lr / torch.pow(beta1, steps).neg_().add_(1)))

    @torch.no_grad()
    def freeze(self, members: Tensor) -> None:
        """Zero diverged members' state, so no non-finite value reaches later arithmetic."""
        for state in self.state.values():
            for key in ("buf", "m", "v"):
                if key in state:
                    state[key][members] = 0.0
