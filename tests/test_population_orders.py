"""Data orders (soap.population.orders): groups, blocks and per-seed epoch orders, against hand lists."""

import torch

from soap.config import Member
from soap.population.orders import DataOrders, by_data_order, epoch_orders
from soap.seeding import generator


def members(seeds):
    return [Member("bp", 0.1, seed) for seed in seeds]


def test_by_data_order_puts_one_seed_side_by_side_and_equal_groups_together():
    # seeds 7 (x1), 3 (x2), 5 (x2): groups by size (the lone one first), then seed, stable within a seed
    crowd = members([3, 7, 5, 3, 5])
    assert by_data_order(crowd) == [1, 0, 3, 2, 4]


def test_groups_blocks_and_member_groups_follow_consecutive_seeds():
    orders = DataOrders(members([3, 3, 5, 5, 7]), torch.device("cpu"))
    assert orders.group_seeds == [3, 5, 7]
    assert orders.blocks == [(slice(0, 4), slice(0, 2)), (slice(4, 5), slice(2, 3))]
    assert orders.member_group.tolist() == [0, 0, 1, 1, 2]


def test_a_seed_met_again_later_is_a_group_of_its_own():
    # groups are runs of consecutive members: an unsorted population still trains correctly, in more GEMMs
    orders = DataOrders(members([3, 5, 3]), torch.device("cpu"))
    assert orders.group_seeds == [3, 5, 3]
    assert orders.member_group.tolist() == [0, 1, 2]


def test_each_epoch_is_the_seeds_own_permutation_stream():
    stream = epoch_orders([4, 9], 10, torch.device("cpu"))
    first, second = next(stream), next(stream)
    for row, seed in enumerate([4, 9]):
        gen = generator(seed, "data")
        assert first[row].tolist() == torch.randperm(10, generator=gen).tolist()
        assert second[row].tolist() == torch.randperm(10, generator=gen).tolist()
    assert first[0].tolist() != second[0].tolist()  # a new order each epoch
