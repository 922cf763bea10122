"""Data orders: members with one seed share one order of the training set, hence every batch.

Consecutive members with one seed form a data-order group: a step's training input is one batch per
group, x (groups, batch, in). Consecutive groups of one size form a block, whose first layer is one
batched GEMM (soap.nn.member_inputs). Any order of members is correct; `by_data_order` gives
the fastest.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Iterator

import torch
from torch import Tensor

from soap.config import Member
from soap.seeding import generator


class DataOrders:
    """The data-order groups of members in their given order: the groups' seeds, the blocks of equal
    groups as (members, groups) slices, and each member's group (pop,) on `device`."""

    def __init__(self, members: list[Member], device: torch.device):
        self.group_seeds = [seed for seed, _ in itertools.groupby(m.seed for m in members)]
        group_sizes = [len(list(run)) for _, run in itertools.groupby(m.seed for m in members)]
        self.blocks = _blocks(group_sizes)
        # member -> its group, to give each member its group's labels
        self.member_group = torch.arange(len(group_sizes)).repeat_interleave(torch.tensor(group_sizes)).to(device)


def by_data_order(members: list[Member]) -> list[int]:
    """An order of the members (indices) that puts members sharing a seed side by side, and groups of
    equal size side by side, so the first layer runs as few batched GEMMs as possible."""
    counts = Counter(m.seed for m in members)
    return sorted(range(len(members)), key=lambda i: (counts[members[i].seed], members[i].seed, i))


def epoch_orders(seeds: list[int], n: int, device: torch.device) -> Iterator[Tensor]:
    """Yield, per epoch, each seed's permutation of the training set: (len(seeds), n)."""
    generators = [generator(seed, "data") for seed in seeds]
    while True:
        yield torch.stack([torch.randperm(n, generator=gen) for gen in generators]).to(device)


def _blocks(group_sizes: list[int]) -> list[tuple[slice, slice]]:
    """Runs of consecutive groups of equal size, as (members, groups) slices: [2, 2, 1] ->
    [(members 0:4, groups 0:2), (members 4:5, groups 2:3)]."""
    blocks, member, group = [], 0, 0
    for size, run in itertools.groupby(group_sizes):
        count = len(list(run))
        blocks.append((slice(member, member + size * count), slice(group, group + count)))
        member, group = member + size * count, group + count
    return blocks
