"""LeNet-5 of feedback layers, BioTorch's `le_net_mnist` layout, for single-model use:

    (N, C, 32, 32) -conv 6@5x5, f, max-pool 2->   (N, 6, 14, 14)
                   -conv 16@5x5, f, max-pool 2->  (N, 16, 5, 5)
                   -conv 120@5x5, f, flatten->    (N, 120)
                   -fc 84, f->                    (N, 84)
                   -fc classes->                  logits (N, classes)

The conv layers are soap.conv.FeedbackConv2d and the fc layers soap.nn.FeedbackLinear, all with one rule.
It takes 32x32 inputs: MNIST's 28x28 images zero-padded by 2 pixels on each side (`pad_to_32`), as
LeCun et al. (1998) did, rather than resized.

DFA (`rule="dfa"`) is a property of the network: the output of each hidden block l (the maps after its
pooling, flattened, and the fc 84 units) receives the output error e = dL/dlogits directly, as
dL/dh_l = alpha e D_l with a fixed random D_l (classes, size_l) drawn like a weight of that shape, and
no error passes between blocks; the output layer keeps its true gradient and its FA matrix is the top
hidden block's D (it gets exactly fa's signal), as in soap.direct_feedback's MLP.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soap.conv import FeedbackConv2d, as_matrix
from soap.direct_feedback import _DirectFeedback
from soap.nn import ACTIVATIONS, FeedbackLinear
from soap.rules import KOLEN_POLLACK_DECAY, draw_like_weight, get_rule, init_bound
from soap.seeding import generator

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
    """LeNet-5 (module docstring); build it with `lenet5`. `loss.backward()` and any optimizer work as
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
                             "pad 28x28 images with soap.lenet.pad_to_32")
        hidden = []
        for block in self.blocks:
            # under dfa each block reads a detached input, so no error passes down between blocks
            x = block(x.detach() if self.direct else x)
            hidden.append(x)
        logits = self.output(x.detach() if self.direct else x)
        if not self.direct:
            return logits
        # flattened views of the maps: e D_l arrives as (N, size_l) and flows back into the maps
        return _DirectFeedback.apply(logits, self.direct_matrices(), self.feedback_scale,
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
        _draw_from_seed(model, seed)
    return model


@torch.no_grad()
def _draw_from_seed(model: LeNet5, seed: int) -> None:
    """W and b like nn.Linear/nn.Conv2d, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from the 'init' stream; the
    FA matrices drawn like W from the 'feedback' stream, then the hidden blocks' D after them, so adding
    them shifts no FA matrix."""
    init_gen, feedback_gen = generator(seed, "init"), generator(seed, "feedback")
    redraws = generator(seed, "feedback_redraw")  # one stream, drawn layer after layer each step
    for layer in model.feedback_layers():
        weight = as_matrix(layer.weight)  # (out, fan_in)
        weight.copy_(draw_like_weight(weight.shape, init_gen))
        bound = init_bound(weight.shape[1])
        layer.bias.copy_(torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=init_gen))
        feedback = draw_like_weight(weight.shape, feedback_gen)
        as_matrix(layer.feedback).copy_(feedback)
        if layer.rule.random == "fa":
            as_matrix(layer.fa_matrix).copy_(feedback)
        layer.generator = redraws
    if model.direct:
        for matrix in model.direct_matrices()[:-1]:
            matrix.copy_(draw_like_weight(matrix.shape, feedback_gen))
