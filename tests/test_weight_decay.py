"""train.weight_decay: the stacked optimizers' L2 against torch.optim.SGD(weight_decay=...) on models
trained alone (soap.models.mlp, autograd), for a rule with a trained B (kolen_pollack) and two without."""

import pytest
import torch
import torch.nn.functional as F

from soap.config import ConfigError, Member, TrainConfig
from soap.models import mlp
from soap.population.model import PopulationMLP

SIZES = [12, 16, 16, 3]
RULES = ["bp", "fa", "kolen_pollack"]


def train(weight_decay: float, optimizer: str, steps: int = 4):
    """A population of RULES and each member alone (float64) over the same batches: (population, singles)."""
    members = [Member(rule, 0.05 * (i + 1), 3) for i, rule in enumerate(RULES)]
    extra = {"momentum": 0.9} if optimizer == "momentum" else {}
    population = PopulationMLP(SIZES, members, "tanh", torch.device("cpu"), optimizer=optimizer,
                               dtype=torch.float64, weight_decay=weight_decay, **extra)
    singles = [mlp(SIZES, m.method, seed=m.seed).double() for m in members]
    optimizers = [torch.optim.SGD(s.parameters(), lr=m.lr, weight_decay=weight_decay, **extra)
                  for s, m in zip(singles, members)]
    gen = torch.Generator().manual_seed(1)
    lr = torch.tensor([m.lr for m in members], dtype=torch.float64)
    for _ in range(steps):
        x = torch.randn(1, 8, 12, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (1, 8), generator=gen)
        population.train_step(x, y, lr)
        for single, opt in zip(singles, optimizers):
            opt.zero_grad()
            F.cross_entropy(single(x[0]), y[0]).backward()
            opt.step()
    return population, singles


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_weight_decay_matches_torch_optim_sgd(optimizer):
    population, singles = train(0.3, optimizer)
    undecayed, _ = train(0.0, optimizer)
    population.complete_feedback()
    for i, single in enumerate(singles):
        layers = [m for m in single.modules() if hasattr(m, "feedback")]
        for l, layer in enumerate(layers):
            torch.testing.assert_close(population.weights[l][i], layer.weight.detach(), rtol=0, atol=1e-10)
            torch.testing.assert_close(population.biases[l][i], layer.bias.detach(), rtol=0, atol=1e-10)
            if not layer.rule.uses_weight:  # fa's B is a buffer and keeps still; kolen_pollack's decays
                torch.testing.assert_close(population.feedback[l][i], layer.feedback.detach(), rtol=0, atol=1e-10)
            # the decay moved every weight: the comparison has teeth
            assert (population.weights[l][i] - undecayed.weights[l][i]).abs().max() > 1e-4


def test_weight_decay_is_a_non_negative_number():
    assert TrainConfig().weight_decay == 0.0
    with pytest.raises(ConfigError, match=r"weight_decay: -0.1 is less than the minimum of 0"):
        TrainConfig(weight_decay=-0.1)
