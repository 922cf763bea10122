"""Model builders: whole networks of soap's layers for every rule, e.g. mlp([784, 256, 256, 10], "fa").

Above the layer modules (soap.nn, soap.direct_feedback, soap.activity_propagation), which it combines:
a rule's network shape (a plain stack, DFA's direct paths, so_'s SOAP points) is chosen here, so no
layer module imports a builder.

`lenet5` is LeNet-5 of feedback layers, BioTorch's `le_net_mnist` layout:

    (N, C, 32, 32) -conv 6@5x5, f, max-pool 2->   (N, 6, 14, 14)
                   -conv 16@5x5, f, max-pool 2->  (N, 16, 5, 5)
                   -conv 120@5x5, f, flatten->    (N, 120)
                   -fc 84, f->                    (N, 84)
                   -fc classes->                  logits (N, classes)

The conv layers are soap.nn.FeedbackConv2d and the fc layers soap.nn.FeedbackLinear, all with one rule.
It takes 32x32 inputs: MNIST's 28x28 images zero-padded by 2 pixels on each side (`pad_to_32`), as
LeCun et al. (1998) did, rather than resized.

DFA (`rule="dfa"`) is a property of the network: the output of each hidden block l (the maps after its
pooling, flattened, and the fc 84 units) receives the output error e = dL/dlogits directly, as
dL/dh_l = alpha e D_l with a fixed random D_l (classes, size_l) drawn like a weight of that shape, and
no error passes between blocks; the output layer keeps its true gradient and its FA matrix is the top
hidden block's D (it gets exactly fa's signal), as in soap.direct_feedback's MLP.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soap.activity_propagation import ActivityPropagation, SecondOrderActivity
from soap.direct_feedback import DirectFeedbackFunction, DirectFeedbackMLP
from soap.nn import ACTIVATIONS, FeedbackConv2d, FeedbackLinear, LayerInit, initial_parameters
from soap.rules import KOLEN_POLLACK_DECAY, draw_like_weight, get_rule, init_bound
from soap.seeding import generator


def mlp(sizes: Sequence[int], rule: str, activation: str = "tanh", bias: bool = True,
        seed: int | None = None, feedback_scale: float = 1.0, decay: float = KOLEN_POLLACK_DECAY,
        second_order=None) -> nn.Module:
    """An MLP of FeedbackLinear layers, e.g. mlp([784, 256, 256, 10], "fa").

    With `seed`, parameters, the FA (and DFA) matrices and brsf's redraws come from soap's seed streams
    (identical to the population trainer's member with that seed); without, from torch's global RNG like
    nn.Linear. `decay` is kolen_pollack's lambda. A `dfa` network is a soap.direct_feedback
    DirectFeedbackMLP; an `so_` rule inserts soap.activity_propagation.SecondOrderActivity modules
    (settings `second_order`, an ActivityPropagation) and trains with its `two_pass_backward`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
    spec = get_rule(rule)
    if spec.direct:
        model = DirectFeedbackMLP(sizes, activation, bias=bias, feedback_scale=feedback_scale)
    else:
        settings = (second_order or ActivityPropagation()) if spec.second_order else None
        carrying = settings.hidden_layers(len(sizes) - 2) if settings else ()
        modules: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            modules.append(FeedbackLinear(fan_in, fan_out, rule=rule, bias=bias, feedback_scale=feedback_scale,
                                          decay=decay))
            if i in carrying:
                modules.append(SecondOrderActivity(settings))
            if i < len(sizes) - 2:
                modules.append(ACTIVATIONS[activation].module())
        model = nn.Sequential(*modules)
    linears = [m for m in model.modules() if isinstance(m, FeedbackLinear)]
    if seed is not None:
        _load_initial(linears, initial_parameters(sizes, seed), seed, model.direct_matrices() if spec.direct else [])
    return model


INPUT_SIZE = 32  # pixels per side
MNIST_SIZE = 28
# units of each hidden block's output, the width of its D under dfa: 6x14x14, 16x5x5, 120, 84
BLOCK_OUTPUTS = (6 * 14 * 14, 16 * 5 * 5, 120, 84)


def pad_to_32(images: Tensor, fill: float = 0.0) -> Tensor:
    """(N, 784) or (N, C, 28, 28) images -> (N, C, 32, 32), with a 2-pixel border of value `fill`.

    soap.data's images are normalised, (pixel - mean) / std, so fill = 0 pads with the mean pixel; to
    pad with black, like the raw images' own background, pass fill = -mean / std of the dataset
    (soap.data.DATASETS[name]).
    """
    if images.dim() == 2 and images.shape[1] == MNIST_SIZE * MNIST_SIZE:
        images = images.view(-1, 1, MNIST_SIZE, MNIST_SIZE)
    if images.dim() != 4 or tuple(images.shape[-2:]) != (MNIST_SIZE, MNIST_SIZE):
        raise ValueError(f"pad_to_32 takes (N, 784) or (N, C, 28, 28) images, got shape {tuple(images.shape)}")
    border = (INPUT_SIZE - MNIST_SIZE) // 2
    return F.pad(images, (border,) * 4, value=fill)


class LeNet5(nn.Module):
    """LeNet-5 (the module docstring's layout); build it with `lenet5`. `loss.backward()` and any optimizer work as
    usual; call `refresh_feedback()` every refresh period for the periodic rules."""

    def __init__(self, rule: str, activation: str = "relu", feedback_scale: float = 1.0, num_classes: int = 10,
                 in_channels: int = 1, decay: float = KOLEN_POLLACK_DECAY):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[activation].module
        options = dict(rule=rule, feedback_scale=feedback_scale, decay=decay)
        conv, linear = partial(FeedbackConv2d, **options), partial(FeedbackLinear, **options)
        self.in_channels = in_channels
        self.blocks = nn.ModuleList([
            nn.Sequential(conv(in_channels, 6, 5), act(), nn.MaxPool2d(2)),  # (N, 6, 14, 14)
            nn.Sequential(conv(6, 16, 5), act(), nn.MaxPool2d(2)),  # (N, 16, 5, 5)
            nn.Sequential(conv(16, 120, 5), act(), nn.Flatten()),  # (N, 120)
            nn.Sequential(linear(120, 84), act()),  # (N, 84)
        ])
        self.output = linear(84, num_classes)
        self.direct = get_rule(rule).direct
        self.feedback_scale = float(feedback_scale)  # alpha, on e D_l as on every rule's error
        if self.direct:
            for block, size in enumerate(BLOCK_OUTPUTS[:-1]):
                self.register_buffer(f"direct{block}", draw_like_weight((num_classes, size)))

    def feedback_layers(self) -> list[FeedbackConv2d | FeedbackLinear]:
        """The five layers with weights, input to output."""
        return [block[0] for block in self.blocks] + [self.output]

    def direct_matrices(self) -> list[Tensor]:
        """DFA's D_l for the outputs of the four hidden blocks, each (classes, size_l); dfa only."""
        return [getattr(self, f"direct{block}") for block in range(len(self.blocks) - 1)] + [self.output.feedback]

    @torch.no_grad()
    def refresh_feedback(self) -> None:
        """Every layer's periodic refresh (sign, sign_scaled, stale_bp); a no-op for other rules."""
        for layer in self.feedback_layers():
            layer.refresh_feedback()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"lenet5 takes (N, {self.in_channels}, 32, 32) inputs, got shape {tuple(x.shape)}; "
                             "pad 28x28 images with soap.models.pad_to_32")
        hidden = []
        for block in self.blocks:
            # under dfa each block reads a detached input, so no error passes down between blocks
            x = block(x.detach() if self.direct else x)
            hidden.append(x)
        logits = self.output(x.detach() if self.direct else x)
        if not self.direct:
            return logits
        # flattened views of the maps: e D_l arrives as (N, size_l) and flows back into the maps
        return DirectFeedbackFunction.apply(logits, self.direct_matrices(), self.feedback_scale,
                                     *(h.flatten(1) for h in hidden))


def lenet5(rule: str, activation: str = "relu", seed: int | None = None, feedback_scale: float = 1.0,
           num_classes: int = 10, in_channels: int = 1, decay: float = KOLEN_POLLACK_DECAY) -> LeNet5:
    """LeNet-5 trained by `rule` on (N, in_channels, 32, 32) inputs, e.g. lenet5("fa", seed=0).

    With `seed`, parameters, the FA (and DFA) matrices and brsf's redraws come from soap's seed streams,
    layer after layer as soap.nn.mlp draws them, so every rule of a seed starts from the same weights and
    FA matrices; without, from torch's global RNG like nn.Conv2d and nn.Linear. `decay` is
    kolen_pollack's lambda. so_ rules are refused (FeedbackConv2d says why).
    """
    model = LeNet5(rule, activation, feedback_scale, num_classes, in_channels, decay)
    if seed is not None:
        _load_initial(model.feedback_layers(), lenet_initial_parameters(seed, num_classes, in_channels), seed,
                      model.direct_matrices() if model.direct else [])
    return model


def lenet_initial_parameters(seed: int, num_classes: int = 10, in_channels: int = 1) -> list[LayerInit]:
    """Initial weights, biases, FA matrices and DFA matrices of LeNet-5 for one seed, layer after layer
    as soap.nn.initial_parameters draws an MLP's: W and b like nn.Conv2d/nn.Linear, U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), from the 'init' stream; the FA matrices drawn like W from the 'feedback' stream, then
    the hidden blocks' D after them, so adding them shifts no FA matrix. Kernels are (out, in, kh, kw);
    `direct` is the D of each layer's input (classes, size), the output layer's its FA matrix."""
    init_gen, feedback_gen = generator(seed, "init"), generator(seed, "feedback")
    layers = []
    for shape in lenet_weight_shapes(num_classes, in_channels):
        fan_out, fan_in = shape[0], math.prod(shape[1:])
        weight = draw_like_weight((fan_out, fan_in), init_gen).view(shape)
        bound = init_bound(fan_in)
        bias = torch.empty(fan_out).uniform_(-bound, bound, generator=init_gen)
        layers.append(LayerInit(weight, bias, draw_like_weight((fan_out, fan_in), feedback_gen).view(shape)))
    for layer, size in enumerate(BLOCK_OUTPUTS[:-1], start=1):
        layers[layer].direct = draw_like_weight((num_classes, size), feedback_gen)
    layers[-1].direct = layers[-1].feedback
    return layers


def lenet_layout(num_classes: int = 10, in_channels: int = 1) -> str:
    """The layers as one string, e.g. "1x32x32-6c5-p2-16c5-p2-120c5-84-10" (conv: channels c kernel,
    p: max-pool), from lenet_weight_shapes."""
    convs = [f"{shape[0]}c{shape[-1]}" for shape in lenet_weight_shapes(num_classes, in_channels)[:3]]
    return "-".join([f"{in_channels}x{INPUT_SIZE}x{INPUT_SIZE}", convs[0], "p2", convs[1], "p2", convs[2], "84",
                     str(num_classes)])


def lenet_weight_shapes(num_classes: int = 10, in_channels: int = 1) -> list[tuple[int, ...]]:
    """W's shape of each of LeNet-5's five layers, input to output."""
    return [(6, in_channels, 5, 5), (16, 6, 5, 5), (120, 16, 5, 5), (84, 120), (num_classes, 84)]


@torch.no_grad()
def _load_initial(layers: Sequence[nn.Module], inits: Sequence[LayerInit], seed: int,
                  direct_matrices: Sequence[Tensor]) -> None:
    """Copy a seed's initial parameters, FA matrices and DFA matrices (for the inputs of layers 1 ..)
    into a network's feedback layers, and give them the seed's brsf redraw stream."""
    redraws = generator(seed, "feedback_redraw")  # one stream, drawn layer after layer each step
    for layer, init in zip(layers, inits):
        layer.weight.copy_(init.weight)
        if layer.bias is not None:
            layer.bias.copy_(init.bias)
        layer.feedback.copy_(init.feedback)
        if layer.rule.random == "fa":
            layer.fa_matrix.copy_(init.feedback)
        layer.generator = redraws
    for matrix, init in zip(direct_matrices, inits[1:]):
        matrix.copy_(init.direct)
