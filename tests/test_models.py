"""Model builders (soap.models)."""

import pytest
from torch import nn

from soap.models import mlp
from soap.nn import FeedbackLinear


def test_mlp_builds_the_architecture():
    model = mlp([784, 256, 256, 10], "sign", activation="tanh")
    linears = [m for m in model if isinstance(m, FeedbackLinear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 256), (256, 10)]
    assert all(m.rule.name == "sign" for m in linears)
    assert sum(isinstance(m, nn.Tanh) for m in model) == 2
    with pytest.raises(ValueError, match="unknown activation"):
        mlp([3, 2], "fa", activation="softplusx")
