"""Step rules: a member of method r with step_rule q sends r's error direction down at q's per-layer size.

At every hidden layer l, on the member's own weights and batch, delta_l = delta_l^r |delta_l^q| / |delta_l^r|,
norms per member over (batch, units): the ratio that defines feedback_gain, so the member's logged
per-layer gains are q's on its own states. The output layer's error is every rule's, so it is never
rescaled. This is issue 19's factorial: bp@sign is bp's direction at sign's steps, sign@bp the converse.

q's B is kept by q's own hooks and refresh schedule (a PopulationFeedback of these members under their
step rules) from the members' own weights: bp's is W, sign's the FA matrix until the first refresh and
sign(W) after each, usf's formed every step, dfa's its direct matrices. Its chain runs from the same
output error through q's B and is used only for its norms. r's chain continues from the rescaled
delta: a positive number per member turns no direction below, and the next layer's ratio divides it
out again, so one r chain serves (an unscaled one beside it would cost a product per layer more).

Cost, for the members with a step rule only: q's chain (one feedback product per hidden layer), their
hidden activations and weights gathered (none when they are consecutive: views), and two norms per layer.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from soap.config import Member
from soap.nn import Activation, LayerInit
from soap.population.feedback import PopulationFeedback


@dataclasses.dataclass(frozen=True)
class LayerSizes:
    """|delta_l^q| per hidden layer l for the members at `index`: what `rescale_` brings r's delta to."""

    index: slice | Tensor
    norms: list[Tensor]  # per hidden layer, (members,)

    def rescale_(self, hidden: int, delta: Tensor) -> Tensor:
        """delta (pop, batch, units) of hidden layer `hidden`, its members' rows brought to q's norm."""
        chosen = delta[self.index]
        size = torch.linalg.vector_norm(chosen, dim=(-2, -1))
        # a member with no signal (a frozen one: its lr and weights are zero) keeps none
        gain = torch.where(size > 0, self.norms[hidden] / size, 0.0).view(-1, 1, 1)
        if isinstance(self.index, slice):
            chosen.mul_(gain)  # a view: in place
        else:
            delta[self.index] = chosen * gain
        return delta


class StepRules:
    """The members whose step rule is not their method, addressed as one group, with q's B for each.

    weights: the population's W stacks (read here, never written); inits: each seed's LayerInit, for
    the initial B (the seed's FA matrix) and DFA's direct matrices.
    """

    def __init__(self, members: list[Member], weights: list[Tensor], inits: dict[int, list[LayerInit]],
                 member_group: Tensor, decay: float):
        chosen = [i for i, m in enumerate(members) if m.step_rule != m.method]
        self.chosen = np.array(chosen)
        device = weights[0].device
        consecutive = chosen[-1] - chosen[0] == len(chosen) - 1
        self.index = slice(chosen[0], chosen[-1] + 1) if consecutive else torch.as_tensor(chosen, device=device)
        # consecutive members' weights are views that every in-place update reaches; others are gathered
        # after each step (`refresh`). The first layer's W is gathered once: its B sends nothing down.
        self.gathered = not consecutive
        self.weights = weights
        self.own_weights = [w[self.index] for w in weights]
        under_step_rule = [dataclasses.replace(members[i], method=members[i].step_rule) for i in chosen]
        matrices = [torch.stack([inits[m.seed][l].feedback for m in under_step_rule]).to(w)
                    for l, w in enumerate(weights)]
        self.feedback = PopulationFeedback(under_step_rule, self.own_weights, matrices, inits,
                                           member_group[self.index], decay)

    def sizes(self, acts: list[Tensor], output_error: Tensor, activation: Activation,
              scale: float | Tensor) -> LayerSizes:
        """q's per-layer sizes on these states: its chain from `output_error` (pop, batch, classes)
        through q's B times the members' feedback scale, down the hidden activations `acts`."""
        index = self.index
        path = self.feedback.path(scale=scale if isinstance(scale, float) else scale[index])
        error = output_error[index]
        delta, norms = error, [None] * (len(self.weights) - 1)
        for layer in reversed(range(1, len(self.weights))):
            delta = activation.backward(path.upstream(delta, error, layer), acts[layer][index])
            norms[layer - 1] = torch.linalg.vector_norm(delta, dim=(-2, -1))
        return LayerSizes(index, norms)

    @torch.no_grad()
    def refresh(self, due: np.ndarray) -> None:
        """After each step, as the population's own feedback: q's B from the W the next step uses (B = W
        copied, every-step B formed, periodic B refreshed where `due`, per member of the population)."""
        layers = range(1, len(self.weights))
        if self.gathered:
            for layer in layers:
                torch.index_select(self.weights[layer], 0, self.index, out=self.own_weights[layer])
        self.feedback.sync_tracking(layers)
        self.feedback.refresh(due[self.chosen])

    @torch.no_grad()
    def freeze(self, members: Tensor) -> None:
        """Zero q's B of the frozen members among these (population indices)."""
        local = np.flatnonzero(np.isin(self.chosen, members.cpu().numpy()))
        if local.size:
            for tensor in [*self.own_weights, *self.feedback.matrices]:
                tensor[torch.as_tensor(local, device=tensor.device)] = 0.0


def step_rules(members: list[Member], weights: list[Tensor], inits: dict[int, list[LayerInit]],
               member_group: Tensor, decay: float) -> StepRules | None:
    """The population's step rules; None when every member steps at its own rule's sizes (no cost)."""
    if all(m.step_rule == m.method for m in members):
        return None
    return StepRules(members, weights, inits, member_group, decay)
