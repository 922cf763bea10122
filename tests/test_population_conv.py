"""The LeNet-5 population (soap.population.conv_model) against LeNets trained alone (soap.models.lenet5,
torch.optim, autograd through FeedbackConv2d), its alignment metrics, its refusals, and a run on MNIST."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soap.config import ConfigError, Member, TrainConfig
from soap.data import Splits, load_dataset
from soap.metrics import angle_degrees
from soap.models import lenet5, pad_to_32
from soap.population import train_population
from soap.population.conv_model import PopulationLeNet
from soap.rules import RULES, refresh_due

PLAIN_RULES = [name for name, rule in RULES.items() if not rule.second_order]
CPU = torch.device("cpu")
BATCH = 4


@pytest.fixture
def one_thread():
    """Small convolutions on a shared 2-core machine run far faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batches(steps: int, groups: int, seed: int = 0):
    """Synthetic MNIST-sized batches, one per data-order group: x (groups, batch, 784), y (groups, batch)."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(groups, BATCH, 784, generator=gen, dtype=torch.float64),
             torch.randint(0, 10, (groups, BATCH), generator=gen)) for _ in range(steps)]


def train_both(members: list[Member], steps: int, optimizer: str = "sgd", weight_decay: float = 0.0,
               **hyperparameters):
    """The population and each member alone, in float64 (so sign(W) of the two never differs by a
    rounding), over the same batches; returns (population, singles, per-step losses of both)."""
    seeds = sorted({m.seed for m in members})
    population = PopulationLeNet(members, "relu", CPU, optimizer=optimizer, dtype=torch.float64,
                                 weight_decay=weight_decay, **hyperparameters)
    singles = [lenet5(m.method, seed=m.seed, feedback_scale=m.feedback_scale).double() for m in members]
    optimizers = [torch.optim.SGD(s.parameters(), lr=m.lr, weight_decay=weight_decay, **hyperparameters)
                  for s, m in zip(singles, members)]
    lr = torch.tensor([m.lr for m in members], dtype=torch.float64)
    periods = np.array([m.refresh_period for m in members])
    losses, seen = [], 0
    for x, y in batches(steps, len(seeds)):
        population_loss = population.train_step(x, y, lr)
        before, seen = seen, seen + BATCH
        population.refresh(refresh_due(before, seen, periods))
        alone = []
        for single, opt, member in zip(singles, optimizers, members):
            group = seeds.index(member.seed)
            loss = F.cross_entropy(single(pad_to_32(x[group])), y[group])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if refresh_due(before, seen, member.refresh_period):
                single.refresh_feedback()
            alone.append(loss.item())
        losses.append((population_loss.numpy(), np.array(alone)))
    return population, singles, losses


def assert_same_parameters(population: PopulationLeNet, singles, start: list[torch.Tensor]) -> None:
    population.complete_feedback()
    for i, single in enumerate(singles):
        for layer, module in enumerate(single.feedback_layers()):
            name = f"{module.rule.name} member {i} layer {layer}"
            torch.testing.assert_close(population.weights[layer][i], module.weight.detach(), rtol=0, atol=1e-10,
                                       msg=name)
            torch.testing.assert_close(population.biases[layer][i], module.bias.detach(), rtol=0, atol=1e-10,
                                       msg=name)
            # the every-step rules' B alone is formed from the W of the next forward, not yet taken; bp's
            # layer never reads its buffer
            if module.rule.when != "step" and not module.rule.uses_weight:
                torch.testing.assert_close(population.feedback[layer][i], module.feedback.detach(), rtol=0,
                                           atol=1e-10, msg=name)
            # the comparison has teeth: every layer moved by far more than atol
            assert (population.weights[layer][i] - start[layer][i]).abs().max() > 1e-5, name


def test_every_plain_rule_mixed_in_one_population_equals_each_trained_alone(one_thread):
    """Ten rules x two seeds (two data orders, so the first layer runs as two GEMMs of ten members), lrs
    from 0.002 to 0.04, a feedback scale on two members, and a refresh period of two steps (sign,
    sign_scaled and stale_bp refresh at steps 2 and 4)."""
    members = [Member(rule, 0.002 * (1 + i + 10 * s), seed, refresh_period=2 * BATCH,
                      feedback_scale=2.0 if rule in ("fa", "usf") and s == 1 else 1.0)
               for seed, s in ((3, 0), (8, 1)) for i, rule in enumerate(PLAIN_RULES)]
    start = [w.clone() for w in PopulationLeNet(members, "relu", CPU, dtype=torch.float64).weights]
    population, singles, losses = train_both(members, steps=4)
    for population_loss, alone in losses:
        np.testing.assert_allclose(population_loss, alone, rtol=0, atol=1e-10)
    assert_same_parameters(population, singles, start)


@pytest.mark.parametrize("rule, optimizer, weight_decay", [
    ("bp", "momentum", 0.0), ("kolen_pollack", "momentum", 0.0), ("sign", "momentum", 0.0),
    ("kolen_pollack", "momentum", 0.2), ("kolen_pollack", "sgd", 0.2)])
def test_optimizers_and_weight_decay_match_torch_optim_member_by_member(rule, optimizer, weight_decay, one_thread):
    """torch.optim.SGD(momentum, weight_decay) over each model's parameters: W, b, and kolen_pollack's B
    decay; fa's B, a buffer, does not."""
    members = [Member(rule, 0.01, 5, refresh_period=BATCH), Member("fa", 0.02, 5)]
    start = [w.clone() for w in PopulationLeNet(members, "relu", CPU, dtype=torch.float64).weights]
    extra = {"momentum": 0.9} if optimizer == "momentum" else {}
    population, singles, losses = train_both(members, steps=3, optimizer=optimizer, weight_decay=weight_decay,
                                             **extra)
    for population_loss, alone in losses:
        np.testing.assert_allclose(population_loss, alone, rtol=0, atol=1e-10)
    assert_same_parameters(population, singles, start)


def pre_activation_grads(model, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """dL/da of every layer's output (its pre-activation), by autograd through the single model."""
    outputs = []

    def keep(module, inputs, out):
        out.retain_grad()
        outputs.append(out)

    hooks = [layer.register_forward_hook(keep) for layer in model.feedback_layers()]
    F.cross_entropy(model(pad_to_32(x)), y).backward()
    for hook in hooks:
        hook.remove()
    return [out.grad.flatten(1) for out in outputs]


@pytest.mark.parametrize("rule", ["fa", "sign_scaled", "dfa"])
def test_alignment_against_autograd_through_single_models(rule, one_thread):
    """angle(B, W) of each flattened kernel, and every hidden layer's error-signal cosine and norm ratio
    against the bp signal computed by autograd through a bp copy of the same weights."""
    members = [Member("bp", 0.01, 4), Member(rule, 0.01, 4, refresh_period=BATCH)]
    population, singles, _ = train_both(members, steps=2)
    (x, y), = batches(1, 1, seed=9)
    metrics = population.alignment(x, y)
    single = singles[1]
    reference = lenet5("bp", seed=4).double()
    reference.load_state_dict({k: v for k, v in single.state_dict().items() if "direct" not in k}, strict=False)
    rule_grads = pre_activation_grads(single, x[0], y[0])
    bp_grads = pre_activation_grads(reference, x[0], y[0])
    for layer, module in enumerate(single.feedback_layers()):
        expected_angle = angle_degrees(module.feedback.detach()[None], module.weight.detach()[None])[0]
        if rule == "dfa" and layer < 4:
            assert np.isnan(metrics[f"angle_l{layer}"][1].item())
        else:
            assert metrics[f"angle_l{layer}"][1].item() == pytest.approx(expected_angle.item(), abs=1e-8)
        assert metrics[f"angle_l{layer}"][0].item() == pytest.approx(0.0, abs=1e-6)
    for layer in range(4):
        r, b = rule_grads[layer], bp_grads[layer]
        cosine = (r * b).sum() / (r.norm() * b.norm())
        assert metrics[f"cos_l{layer}"][1].item() == pytest.approx(cosine.item(), abs=1e-8)
        assert metrics[f"norm_ratio_l{layer}"][1].item() == pytest.approx((r.norm() / b.norm()).item(), rel=1e-8)
        assert metrics[f"cos_l{layer}"][0].item() == pytest.approx(1.0, abs=1e-10)
        assert abs(metrics[f"cos_l{layer}"][1].item()) < 0.99  # not bp's signal


def test_second_order_rules_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^so_fa: second-order activity propagation is defined for dense hidden "
                                         r"layers, not lenet5$"):
        PopulationLeNet([Member("so_fa", 0.1, 0)], "relu", CPU)
    with pytest.raises(ConfigError, match=r"methods: so_bp \(second-order activity propagation\) .* lenet5$"):
        TrainConfig(architecture="lenet5", methods=["bp", "so_bp"], dataset="synthetic")
    with pytest.raises(ConfigError, match=r"architecture: 'lenet' is not one of \['mlp', 'lenet5'\]"):
        TrainConfig.from_dict({"architecture": "lenet"})


def test_train_population_on_mnist_records_the_architecture_and_conv_alignment(data_root, one_thread):
    full = load_dataset("mnist", data_root, download=False)
    data = Splits("mnist", 10, full.train_x[:640], full.train_y[:640], full.val_x[:128], full.val_y[:128],
                  full.test_x[:128], full.test_y[:128])
    config = TrainConfig(dataset="mnist", architecture="lenet5", methods=["bp", "fa", "dfa"], lrs=[0.05],
                         seeds=[0, 1], batch_size=32, epochs=1.0, log_every=64, eval_every=320, eval_subset=64,
                         device="cpu")
    result = train_population(config, data, progress=False)
    runs, curves = result.runs, result.curves
    assert set(runs["architecture"]) == {"lenet5"}
    assert set(runs["layers"]) == {"1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu"}
    assert runs["diverged_at"].isna().all()
    curves = curves.merge(runs[["run_id", "method"]], on="run_id")
    evals = curves.dropna(subset=["val_acc"])
    for layer in range(4):
        assert evals[f"cos_l{layer}"].notna().all()
    bp = evals[evals["method"] == "bp"]
    np.testing.assert_allclose(bp[[f"cos_l{l}" for l in range(4)]].to_numpy(), 1.0, atol=1e-5)
    fa = evals[evals["method"] == "fa"]
    assert (fa["angle_l1"] > 45).all()  # a random kernel, far from W after 20 steps
    first, last = curves.groupby("run_id")["train_loss"].first(), curves.groupby("run_id")["train_loss"].last()
    assert (last[runs.loc[runs.method == "bp", "run_id"]] < first[runs.loc[runs.method == "bp", "run_id"]]).all()
    # the MLP's description is unchanged, under its new column
    mlp = TrainConfig(dataset="mnist", methods=["bp"], hidden=[8], batch_size=64, epochs=0.2, device="cpu",
                      eval_subset=64)
    mlp_runs = train_population(mlp, data, progress=False).runs
    assert list(mlp_runs["architecture"]) == ["mlp"] and list(mlp_runs["layers"]) == ["784-8-10 tanh"]
