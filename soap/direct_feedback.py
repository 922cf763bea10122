"""Direct feedback alignment (DFA; Nokland 2016): every hidden layer receives the output error directly.

With e = dL/dlogits (batch, classes), the hidden layer whose output h_l is the input of layer l gets
dL/dh_l = e D_l, D_l a fixed random (classes, units_l) matrix drawn like a W of that shape, and so
delta_l = f'(a_l) * (e D_l). No error passes through the layers above. The output layer keeps its
true gradient, and its D is its FA matrix (soap.nn.initial_parameters), so the top hidden layer gets
exactly fa's signal.

e D_l is grad_y B of soap.nn with B = D_l: `feedback_grad_input` is the one implementation, here and
in the population trainer.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from soap.nn import ACTIVATIONS, FeedbackLinear, feedback_grad_input
from soap.rules import draw_like_weight


class DirectFeedbackFunction(torch.autograd.Function):
    """logits -> logits; backward: e to the logits and alpha e D_l to each hidden output h_l."""

    @staticmethod
    def forward(ctx, logits: Tensor, matrices: list[Tensor], scale: float, *hidden: Tensor) -> Tensor:
        ctx.matrices, ctx.scale = matrices, scale
        return logits.clone()

    @staticmethod
    def backward(ctx, error: Tensor):
        return (error, None, None, *(feedback_grad_input(error, matrix, ctx.scale) for matrix in ctx.matrices))


class DirectFeedbackMLP(nn.Module):
    """An MLP of FeedbackLinear layers trained by DFA: `loss.backward()` and any optimizer work as usual.

    Each layer reads a detached copy of the layer below's output, so nothing is sent down through the
    layers (their B is never used); the hidden outputs receive e D_l through `DirectFeedbackFunction`.
    Buffers `direct{l}` hold D_l for the inputs of layers 1 .. L-2; the output layer's `feedback` is
    D_{L-1}.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "tanh", bias: bool = True, feedback_scale: float = 1.0):
        super().__init__()
        self.layers = nn.ModuleList(FeedbackLinear(i, o, rule="dfa", bias=bias, feedback_scale=feedback_scale)
                                    for i, o in zip(sizes[:-1], sizes[1:]))
        self.feedback_scale = float(feedback_scale)  # alpha, on e D_l as on every rule's grad_y B
        self.activation = ACTIVATIONS[activation].module()
        for layer in range(1, len(sizes) - 2):
            self.register_buffer(f"direct{layer}", draw_like_weight((sizes[-1], sizes[layer])))

    def direct_matrices(self) -> list[Tensor]:
        """D_l for the inputs of layers 1 .. L-1, each (classes, units_l)."""
        hidden = [getattr(self, f"direct{layer}") for layer in range(1, len(self.layers) - 1)]
        return hidden + ([self.layers[-1].feedback] if len(self.layers) > 1 else [])

    def forward(self, x: Tensor) -> Tensor:
        hidden = []
        for layer in self.layers[:-1]:
            x = self.activation(layer(x.detach()))
            hidden.append(x)
        logits = self.layers[-1](x.detach())
        return DirectFeedbackFunction.apply(logits, self.direct_matrices(), self.feedback_scale, *hidden)
