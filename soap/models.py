"""Model builders: whole networks of soap's layers for every rule, e.g. mlp([784, 256, 256, 10], "fa").

Above the layer modules (soap.nn, soap.direct_feedback, soap.activity_propagation), which it combines:
a rule's network shape (a plain stack, DFA's direct paths, so_'s SOAP points) is chosen here, so no
layer module imports a builder.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from soap.activity_propagation import ActivityPropagation, SecondOrderActivity
from soap.direct_feedback import DirectFeedbackMLP
from soap.nn import ACTIVATIONS, FeedbackLinear, initial_parameters
from soap.rules import KOLEN_POLLACK_DECAY, get_rule
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
        inits = initial_parameters(sizes, seed)
        redraws = generator(seed, "feedback_redraw")  # one stream, drawn layer after layer each step
        with torch.no_grad():
            for layer, init in zip(linears, inits):
                layer.weight.copy_(init.weight)
                if layer.bias is not None:
                    layer.bias.copy_(init.bias)
                layer.feedback.copy_(init.feedback)
                if layer.rule.random == "fa":
                    layer.fa_matrix.copy_(init.feedback)
                layer.generator = redraws
            if spec.direct:
                for matrix, init in zip(model.direct_matrices(), inits[1:]):
                    matrix.copy_(init.direct)
    return model
