"""Linear layers whose backward pass sends errors through a feedback matrix B instead of W.

`FeedbackLinearFunction` is the one implementation of the backward maths (STUDY.md conventions):

    grad_x = alpha grad_y B        grad_W = grad_y^T x        grad_b = sum_batch grad_y

alpha is the feedback scale (default 1), a factor on every rule's B (bp's too: B = alpha W). It sets
the size of the error a rule sends down apart from its direction, the knob behind the question whether
a rule's advantage is only a larger effective learning rate.

It is built from three functions, `linear_forward`, `feedback_grad_input` and `weight_grad`, that accept a
single layer (W: (out, in), x: (batch, in)) or a stacked population (W: (pop, out, in),
x: (pop, batch, in)). `FeedbackLinear` calls them through autograd; the population trainer calls them
directly in its hand-written backward pass (soap.population), with the SGD step fused into grad_W.

Members may share their input: x (groups, batch, in) with pop = groups * size feeds each run of `size`
consecutive members one input (members trained on the same data order). The input is then read, never
copied, by one batched product per group (`member_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the layers' package: FeedbackConv2d is defined beside its conv maths and named here with FeedbackLinear
from soap.conv import FeedbackConv2d as FeedbackConv2d
from soap.feedback_layer import FeedbackMixin
from soap.rules import KOLEN_POLLACK_DECAY, draw_like_weight, get_rule, init_bound
from soap.seeding import generator


@dataclass(frozen=True)
class Activation:
    # h = f(a) from s a, overwriting it, where s = input_scale(device): the population trainer applies it
    # to a fresh GEMM output, which the GEMM writes as s a at no cost (baddbmm's alpha and beta)
    from_scaled_: Callable[[Tensor], Tensor]
    # dL/da from dL/dh and the output h (kept by the forward pass anyway), as one fused kernel
    backward: Callable[[Tensor, Tensor], Tensor]
    # the same, written over dL/dh: the trainer's dL/dh is a fresh product that nothing else reads
    backward_: Callable[[Tensor, Tensor], Tensor]
    module: type[nn.Module]
    cpu_scale: float = 1.0  # s on CPU: a power of two, so s a is exact (1 on every other device)

    def input_scale(self, device: torch.device) -> float:
        return self.cpu_scale if device.type == "cpu" else 1.0

    def forward_(self, a: Tensor) -> Tensor:
        """h = f(a), overwriting a."""
        scale = self.input_scale(a.device)
        return self.from_scaled_(a if scale == 1.0 else a.mul_(scale))


def _tanh_from_scaled_(a: Tensor) -> Tensor:
    if a.is_cpu:
        # 2 sigmoid(2a) - 1, from 2a: PyTorch's vectorised CPU tanh is about 3.5x slower than its
        # sigmoid, and tanh was the costliest non-GEMM op of a training step. Absolute error below 2e-7.
        return torch.sigmoid(a, out=a).mul_(2.0).sub_(1.0)
    return a.tanh_()


def _tanh_backward_(grad: Tensor, h: Tensor) -> Tensor:
    return torch.ops.aten.tanh_backward.grad_input(grad, h, grad_input=grad)


def _sigmoid_backward_(grad: Tensor, h: Tensor) -> Tensor:
    return torch.ops.aten.sigmoid_backward.grad_input(grad, h, grad_input=grad)


def _relu_backward(grad: Tensor, h: Tensor) -> Tensor:
    return torch.ops.aten.threshold_backward(grad, h, 0.0)


def _relu_backward_(grad: Tensor, h: Tensor) -> Tensor:
    return torch.ops.aten.threshold_backward.grad_input(grad, h, 0.0, grad_input=grad)


ACTIVATIONS = {
    "tanh": Activation(_tanh_from_scaled_, torch.ops.aten.tanh_backward, _tanh_backward_, nn.Tanh, cpu_scale=2.0),
    "sigmoid": Activation(torch.sigmoid_, torch.ops.aten.sigmoid_backward, _sigmoid_backward_, nn.Sigmoid),
    "relu": Activation(torch.relu_, _relu_backward, _relu_backward_, nn.ReLU),
}


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None, scale: float = 1.0) -> Tensor:
    """y = scale (x W^T + b) for (batch, in) x (out, in), or (groups, batch, in) x (pop, out, in) ->
    (pop, batch, out); for stacked weights `scale` rides in the GEMM (an activation's input_scale).

    A stacked weight takes one input per member (groups = pop), one per group of members that share
    it, or a (batch, in) input shared by every member.
    """
    if weight.dim() == 2:
        y = F.linear(x, weight, bias)  # exactly nn.Linear's forward
        return y if scale == 1.0 else y.mul_(scale)
    x = x if x.dim() == 3 else x.unsqueeze(0)
    pop, out = weight.shape[:2]
    batch = x.shape[1]
    # The bias rides in the GEMM (baddbmm), saving a pass over the output. A layer narrower than the
    # batch (the 10 logits) is computed as (W x^T)^T: the same product, about twice as fast on CPU.
    narrow = out < batch
    y = x.new_empty((pop, out, batch) if narrow else (pop, batch, out))
    for members, inputs in member_inputs(x, pop):
        w, b = weight[members], None if bias is None else bias[members]
        if narrow:
            _product(w, inputs.mT, None if b is None else b.unsqueeze(-1), scale, y[members])
        else:
            _product(inputs, w.mT, None if b is None else b.unsqueeze(-2), scale, y[members])
    return y.mT if narrow else y


def _product(a: Tensor, b: Tensor, bias: Tensor | None, scale: float, out: Tensor) -> None:
    """out = scale (a b + bias), in the GEMM."""
    if bias is not None:
        torch.baddbmm(bias, a, b, beta=scale, alpha=scale, out=out)
    elif scale == 1.0:
        torch.bmm(a, b, out=out)
    else:
        torch.baddbmm(out, a, b, beta=0.0, alpha=scale, out=out)  # beta 0: out's old values are ignored


def feedback_grad_input(grad_out: Tensor, feedback: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """grad_x = scale * grad_y B: the only place where a feedback rule enters learning.

    scale: the feedback scale alpha, a number or one per member, (pop, 1, 1).
    """
    grad_x = grad_out @ feedback
    return grad_x if isinstance(scale, float) and scale == 1.0 else grad_x.mul_(scale)


def weight_grad(grad_out: Tensor, x: Tensor) -> Tensor:
    """grad_W = grad_y^T x, summed over the batch: (pop, batch, out), (groups, batch, in) -> (pop, out, in)."""
    if grad_out.dim() == 2:
        return grad_out.T @ x
    x = x if x.dim() == 3 else x.unsqueeze(0)
    pop, _, out = grad_out.shape
    grad = x.new_empty(pop, out, x.shape[-1])
    for members, inputs in member_inputs(x, pop):
        torch.bmm(grad_out[members].mT, inputs, out=grad[members])
    return grad


@torch.no_grad()
def sgd_update_(weight: Tensor, bias: Tensor | None, scaled_grad_out: Tensor, x: Tensor) -> None:
    """W -= grad_W, b -= grad_b for a grad_y already multiplied by each member's learning rate.

    Equal to subtracting weight_grad(scaled_grad_out, x), fused into one batched GEMM so the weight
    gradient is never materialised (the update is memory-bound otherwise).
    """
    if weight.dim() == 2:
        weight.addmm_(scaled_grad_out.T, x, alpha=-1.0)
    else:
        x = x if x.dim() == 3 else x.unsqueeze(0)
        for members, inputs in member_inputs(x, weight.shape[0]):
            weight[members].baddbmm_(scaled_grad_out[members].mT, inputs, alpha=-1.0)
    if bias is not None:
        bias.sub_(scaled_grad_out.sum(-2))


def member_inputs(x: Tensor, pop: int) -> list[tuple[slice, Tensor]]:
    """Each group's members (a slice of the population) and their input (members, batch, in), from one
    input per group x (groups, batch, in). A shared input is expanded over its members, a view: the
    products read it in place. (Side by side in one wide GEMM per group, the members' weights would
    make fewer, larger products, but MKL runs the wide forward 1.45-1.65x slower than these batched
    ones on an AMD EPYC, and no faster on an Intel Xeon; and its operands and output need reshaping
    copies.)"""
    groups = x.shape[0]
    if groups == pop:
        return [(slice(None), x)]
    if pop % groups:
        raise ValueError(f"{pop} members do not split into {groups} equal groups")
    size = pop // groups
    return [(slice(g * size, (g + 1) * size), x[g].expand(size, *x.shape[1:])) for g in range(groups)]


class FeedbackLinearFunction(torch.autograd.Function):
    """y = x W^T + b, with grad_x = scale * grad_y B. Leading population dimension optional.

    `coupling` (optional): for a B trained alongside W (Kolen-Pollack), a function
    (grad_W, W, B) -> (signal for W, signal for B); B must then require grad.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, scale: float = 1.0,
                coupling: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None) -> Tensor:
        return linear_forward(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, feedback, *options = inputs
        ctx.save_for_backward(x, weight, feedback)
        ctx.has_bias = bias is not None
        ctx.scale = float(options[0]) if options else 1.0
        ctx.coupling = options[1] if len(options) > 1 else None
        ctx.n_inputs = len(inputs)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, feedback = ctx.saved_tensors
        coupled = ctx.coupling is not None and ctx.needs_input_grad[3]
        grad_x = feedback_grad_input(grad_out, feedback, ctx.scale) if ctx.needs_input_grad[0] else None
        if grad_x is not None and x.dim() == 3 and x.shape[0] < grad_x.shape[0]:  # a shared input
            grad_x = grad_x.view(x.shape[0], -1, *grad_x.shape[1:]).sum(1)
        grad_w = weight_grad(grad_out, x) if ctx.needs_input_grad[1] or coupled else None
        grad_b = grad_out.sum(-2) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_fb = None
        if coupled:
            grad_w, grad_fb = ctx.coupling(grad_w, weight, feedback)
        return (grad_x, grad_w, grad_b, grad_fb, None, None)[:ctx.n_inputs]


def feedback_linear(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, scale: float = 1.0,
                    coupling=None) -> Tensor:
    return FeedbackLinearFunction.apply(x, weight, bias, feedback, scale, coupling)


@dataclass
class LayerInit:
    weight: Tensor  # (out, in)
    bias: Tensor  # (out,)
    feedback: Tensor  # (out, in): the FA matrix, from its own seed stream
    # DFA's D for this layer's input, (classes, in): the output layer's is its FA matrix; None for layer 0
    direct: Tensor | None = None


def initial_parameters(sizes: Sequence[int], seed: int) -> list[LayerInit]:
    """Initial weights, biases, FA matrices and DFA matrices of an MLP for one seed.

    Distribution as torch.nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b; the FA matrices are
    drawn from W's distribution with the 'feedback' stream, so they are the same for every method. The
    DFA matrices of the hidden layers' outputs follow them in that stream, drawn like a W of shape
    (classes, units), so adding them shifts no FA matrix.
    """
    init_gen, feedback_gen = generator(seed, "init"), generator(seed, "feedback")
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = init_bound(fan_in)
        weight = draw_like_weight((fan_out, fan_in), init_gen)
        bias = torch.empty(fan_out).uniform_(-bound, bound, generator=init_gen)
        layers.append(LayerInit(weight, bias, draw_like_weight((fan_out, fan_in), feedback_gen)))
    for layer in range(1, len(layers) - 1):
        layers[layer].direct = draw_like_weight((sizes[-1], sizes[layer]), feedback_gen)
    if len(layers) > 1:
        layers[-1].direct = layers[-1].feedback  # the top hidden layer gets the same signal under fa and dfa
    return layers


class FeedbackLinear(FeedbackMixin, nn.Linear):
    """Drop-in for torch.nn.Linear (same weight, bias, initialisation, forward) with a feedback rule.

    B (`feedback`, shaped like W) as soap.feedback_layer.FeedbackMixin describes;
    `soap.models.mlp(seed=...)` gives brsf's `generator` the seed's feedback_redraw stream. Errors go
    down as feedback_scale * grad_y B. dfa and the so_ part of a rule act on a whole network
    (soap.models.mlp builds it); a lone layer with them sends grad_y B like fa, or like the so_ rule's base rule.
    """

    def __init__(self, in_features: int, out_features: int, rule: str = "fa", bias: bool = True,
                 device=None, dtype=None, feedback_scale: float = 1.0, decay: float = KOLEN_POLLACK_DECAY):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_feedback(get_rule(rule), feedback_scale, decay)

    def forward(self, x: Tensor) -> Tensor:
        leading = x.shape[:-1]
        out = feedback_linear(x.reshape(-1, self.in_features), self.weight, self.bias, self._step_feedback(),
                              self.feedback_scale, self.coupling)
        return out.reshape(*leading, self.out_features)
