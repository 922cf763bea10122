"""Placement: plain and so_ members in one population form one stacked model per step shape."""

import torch

from soap.config import Member
from soap.population import PopulationMLP, population_model

from helpers import SIZES


def test_mixed_shapes_form_groups_and_plain_populations_do_not():
    device = torch.device("cpu")
    plain = population_model(SIZES, [Member("fa", 0.1, 0), Member("dfa", 0.1, 0)], "tanh", device)
    assert isinstance(plain, PopulationMLP)
    mixed = population_model(SIZES, [Member("fa", 0.1, 0), Member("so_fa", 0.1, 0), Member("bp", 0.1, 1)],
                             "tanh", device)
    assert [[m.method for m in g.members] for g in mixed.groups] == [["fa", "bp"], ["so_fa"]]
