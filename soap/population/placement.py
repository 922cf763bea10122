"""Which stacked model trains which members: one PopulationMLP, or one per step shape (plain, so_'s two
passes) behind the same interface."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from soap.config import Member
from soap.models import INPUT_SIZE
from soap.population.conv_model import PopulationLeNet
from soap.population.model import PopulationMLP
from soap.rules import get_rule


class PopulationGroups:
    """Members whose steps have different shapes (plain, so_'s two passes) as one PopulationMLP per
    shape, each batched, behind PopulationMLP's interface: per-member tensors in and out in the
    members' order; the training input holds each group's data-order batches one after the other."""

    def __init__(self, sizes: list[int], members: list[Member], activation: str, device: torch.device,
                 **hooks):
        self.members, self.device = members, device
        second = np.array([get_rule(m.method).second_order for m in members])
        self.indices = [np.flatnonzero(second == kind) for kind in (False, True)]
        self.groups = [PopulationMLP(sizes, [members[i] for i in index], activation, device, **hooks)
                       for index in self.indices]
        self._index = [torch.as_tensor(index, device=device) for index in self.indices]
        self.group_seeds = [seed for group in self.groups for seed in group.group_seeds]
        ends = np.cumsum([len(group.group_seeds) for group in self.groups])
        self._rows = [slice(end - len(group.group_seeds), end) for group, end in zip(self.groups, ends)]
        self.capturable = all(group.capturable for group in self.groups)

    def _join(self, parts: list[Tensor]) -> Tensor:
        out = torch.empty((len(self.members), *parts[0].shape[1:]), dtype=parts[0].dtype, device=self.device)
        for index, part in zip(self._index, parts):
            out[index] = part
        return out

    def train_step(self, x: Tensor, y: Tensor, lr: Tensor) -> Tensor:
        return self._join([g.train_step(x[rows], y[rows], lr[index])
                           for g, rows, index in zip(self.groups, self._rows, self._index)])

    def refresh(self, due: np.ndarray) -> None:
        for group, index in zip(self.groups, self.indices):
            group.refresh(due[index])

    def freeze(self, members: Tensor) -> None:
        chosen = set(members.tolist())
        for group, index in zip(self.groups, self.indices):
            local = [i for i, member in enumerate(index) if member in chosen]
            if local:
                group.freeze(torch.as_tensor(local, device=self.device))

    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        losses, accuracies = zip(*(g.evaluate(x, y) for g in self.groups))
        return self._join(list(losses)), self._join(list(accuracies))

    def alignment(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        rows = [g.alignment(x[r], y[r]) for g, r in zip(self.groups, self._rows)]
        keys = list(dict.fromkeys(k for row in rows for k in row))  # so_ groups add soap_gain_l*
        return {k: self._join([row.get(k, torch.full((len(g.members),), math.nan, device=self.device))
                               for g, row in zip(self.groups, rows)]) for k in keys}


def population_model(sizes: list[int], members: list[Member], activation: str, device: torch.device,
                     architecture: str = "mlp", **hooks) -> PopulationMLP | PopulationGroups | PopulationLeNet:
    """One PopulationMLP, or one per step shape when plain and so_ members are mixed; for architecture
    lenet5 one PopulationLeNet (sizes: its layers' flattened inputs, then the classes). `hooks`:
    PopulationMLP's keyword arguments (optimizer and its hyperparameters, decay, second_order)."""
    if architecture == "lenet5":
        hooks.pop("second_order", None)  # so_ rules are refused for lenet5
        return PopulationLeNet(members, activation, device, num_classes=sizes[-1],
                               in_channels=sizes[0] // INPUT_SIZE**2, **hooks)
    if len({get_rule(m.method).second_order for m in members}) > 1:
        return PopulationGroups(sizes, members, activation, device, **hooks)
    return PopulationMLP(sizes, members, activation, device, **hooks)
