"""PopulationMLP's stacked step: optimizers, feedback scales, per-layer learning rates and the so_ two-pass step
against the single-model path, and shared first-layer GEMMs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soap.activity_propagation import ActivityPropagation, SecondOrderActivity, two_pass_backward
from soap.config import Member
from soap.models import mlp
from soap.nn import FeedbackLinear
from soap.population import PopulationMLP, by_data_order

from helpers import DATA, DATA10, SIZES, reference_rules, reference_run, train, train_rules


def test_members_sharing_a_seed_share_first_layer_gemms():
    # configured out of order; trained seed by seed, groups of equal size in one batched GEMM
    members = [Member(m, lr, s) for s, lrs in [(3, [0.1]), (1, [0.1, 0.2]), (2, [0.1, 0.2]), (5, [0.3])]
               for m in ("bp", "fa") for lr in lrs]
    placed = [members[i] for i in by_data_order(members)]
    assert [m.seed for m in placed] == [3, 3, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2]
    model = PopulationMLP([12, 16, 16, 3], placed, "tanh", torch.device("cpu"))
    assert model.group_seeds == [3, 5, 1, 2]
    assert model.blocks == [(slice(0, 4), slice(0, 2)), (slice(4, 12), slice(2, 4))]
    # the forward pass on one batch per group equals each member's own layers on its group's batch
    x = torch.randn(4, 6, 12)
    logits = model.forward(x)[-1]
    for p, member in enumerate(placed):
        single = mlp([12, 16, 16, 3], member.method, seed=member.seed)
        torch.testing.assert_close(logits[p], single(x[model.group_seeds.index(member.seed)]), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("optimizer,lrs", [("momentum", [0.1, 0.03]), ("adam", [0.01, 0.003]),
                                           ("signsgd", [0.003, 0.001])])
def test_each_optimizer_matches_torch_optim_member_by_member(optimizer, lrs):
    # three members with their own rules, lrs and seeds, trained as one population with stacked state
    members = [{"method": "bp", "lr": lrs[0], "seed": 7}, {"method": "sign", "lr": lrs[1], "seed": 7},
               {"method": "fa", "lr": lrs[1], "seed": 2}]
    runs = train(DATA10, members=members, optimizer=optimizer).runs
    assert (runs["optimizer"] == optimizer).all() and runs["run_id"].str.endswith(f"-{optimizer}").all()
    for member, run in zip(members, runs.itertuples()):
        val, test_acc = reference_run(member["method"], member["lr"], member["seed"], optimizer=optimizer, data=DATA10)
        assert run.val_loss == pytest.approx(val, rel=1e-4), run.run_id
        assert run.test_acc == pytest.approx(test_acc, abs=1e-6), run.run_id


def test_under_signsgd_sign_and_sign_scaled_follow_one_trajectory():
    # B differs by one positive scalar per layer (mean|W| at each refresh); sign() of the gradient drops it
    def losses(optimizer, lr):
        result = train(DATA10, methods=["sign", "sign_scaled"], lrs=[lr], seeds=[3], optimizer=optimizer,
                       log_every=48)
        curves = result.curves.merge(result.runs[["run_id", "method"]]).dropna(subset=["train_loss"])
        return [curves[curves.method == m]["train_loss"].to_numpy() for m in ("sign", "sign_scaled")]

    sign, scaled = losses("signsgd", 0.003)
    np.testing.assert_allclose(scaled, sign, rtol=1e-6)
    sign, scaled = losses("sgd", 0.1)  # the contrast: under sgd the scale is a learning rate
    assert np.abs(scaled / sign - 1).max() > 0.01


@pytest.mark.parametrize("method", ["fa", "sign_scaled"])
def test_feedback_scale_in_a_population_equals_the_scaled_layer(method):
    members = [{"method": method, "lr": 0.2, "seed": 7, "feedback_scale": 4.0},
               {"method": method, "lr": 0.2, "seed": 7}]
    runs = train(members=members).runs
    assert runs["feedback_scale"].tolist() == [4.0, 1.0]
    assert runs["run_id"].tolist()[0].endswith("-a4") and runs["run_id"].nunique() == 2
    val, test_acc = reference_run(method, 0.2, 7,
                                  feedback_scale=4.0)
    assert runs["val_loss"].iloc[0] == pytest.approx(val, rel=1e-4)
    assert runs["val_loss"].iloc[0] != pytest.approx(runs["val_loss"].iloc[1], rel=1e-3)


def test_bp_with_feedback_scale_is_bp_with_per_layer_learning_rates():
    # Exact identity: alpha multiplies the error once per feedback product it passes through, so layer l
    # of bp with scale alpha steps like plain bp at lr * alpha^k_l, k = (2, 1, 0) from input to output.
    alpha, lr = 1.7, 0.1
    runs = train(members=[{"method": "bp", "lr": lr, "seed": 5, "feedback_scale": alpha}]).runs
    val, test_acc = reference_run("bp", lr, 5,
                                  layer_lrs=[lr * alpha**2, lr * alpha, lr])
    assert runs["val_loss"].iloc[0] == pytest.approx(val, rel=1e-4)
    assert runs["test_acc"].iloc[0] == pytest.approx(test_acc, abs=1e-6)
    # bp's gain is the scale itself, compounded per layer: alpha^2 at hidden layer 1, alpha at 2, and
    # feedback_gain their geometric mean
    assert runs["feedback_gain_l1"].iloc[0] == pytest.approx(alpha**2, rel=1e-5)
    assert runs["feedback_gain_l2"].iloc[0] == pytest.approx(alpha, rel=1e-5)
    assert runs["feedback_gain"].iloc[0] == pytest.approx(alpha**1.5, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_population_bp_with_feedback_scale_equals_its_bp_with_per_layer_learning_rates(optimizer):
    # The same identity inside one population: a member with scale alpha beside a member given one lr per
    # layer (lr * alpha^k_l), which the trainer reaches by another road (sgd: a rescaled delta per layer;
    # momentum: a per-layer lr in the stacked step). Linear optimizers only: adam and signsgd undo scale.
    alpha, lr = 1.7, 0.05
    members = [{"method": "bp", "lr": lr, "seed": 5, "feedback_scale": alpha},
               {"method": "bp", "lr": [lr * alpha**2, lr * alpha, lr], "seed": 5},
               {"method": "bp", "lr": lr, "seed": 5}]
    result = train(members=members, optimizer=optimizer)
    runs = result.runs
    curves = result.curves.dropna(subset=["train_loss"])
    loss = [curves[curves.run_id == r]["train_loss"].to_numpy() for r in runs["run_id"]]
    np.testing.assert_allclose(loss[1], loss[0], rtol=2e-5)
    assert runs["val_loss"].iloc[1] == pytest.approx(runs["val_loss"].iloc[0], rel=2e-5)
    assert np.abs(loss[2] / loss[0] - 1).max() > 1e-3  # the plain member: the scale is not a no-op
    # the nominal lr is the output layer's; the multipliers are recorded per layer
    assert runs["lr"].tolist() == pytest.approx([lr] * 3)
    assert runs.loc[1, ["lr_scale_l1", "lr_scale_l2", "lr_scale_l3"]].tolist() == pytest.approx([alpha**2, alpha, 1])
    assert runs.loc[0, ["lr_scale_l1", "lr_scale_l2", "lr_scale_l3"]].tolist() == [1.0, 1.0, 1.0]
    assert runs["run_id"].nunique() == 3
    # and against torch.optim with one param group per layer
    val, _ = reference_run("bp", lr, 5,
                           optimizer=optimizer, layer_lrs=[lr * alpha**2, lr * alpha, lr])
    assert runs["val_loss"].iloc[1] == pytest.approx(val, rel=1e-4)


@pytest.mark.parametrize("method, optimizer, alpha, lr", [
    ("kolen_pollack", "adam", 1.0, 0.01), ("kolen_pollack", "momentum", 2.5, 0.05), ("dfa", "adam", 2.5, 0.01),
    ("dfa", "sgd", 3.0, 0.2), ("brsf", "momentum", 1.0, 0.05), ("usf", "sgd", 3.0, 0.2)])
def test_population_of_one_with_an_optimizer_or_a_feedback_scale_equals_single_model_training(method, optimizer,
                                                                                             alpha, lr):
    result = train_rules(members=[{"method": method, "lr": lr, "seed": 3, "feedback_scale": alpha}],
                         optimizer=optimizer)
    val, test_acc = reference_rules(method, lr, 3, optimizer=optimizer, feedback_scale=alpha)
    assert result.runs.iloc[0]["val_loss"] == pytest.approx(val, rel=1e-4)
    assert result.runs.iloc[0]["test_acc"] == pytest.approx(test_acc, abs=1e-6)


@pytest.mark.parametrize("method, optimizer", [("dfa", "sgd"), ("dfa", "momentum"), ("kolen_pollack", "sgd"),
                                               ("kolen_pollack", "momentum"), ("usf", "sgd")])
def test_per_layer_learning_rates_reach_every_rules_path(method, optimizer):
    """A member with one lr per layer (the bp_matched arm's kind) equals torch.optim with one param group
    per layer, for rules whose signal takes another path: DFA's hidden deltas come straight from the
    output error, Kolen-Pollack's B takes W's step and decays at the layer's lr."""
    layer_lrs = [0.05, 0.2, 0.1]
    result = train_rules(members=[{"method": method, "lr": layer_lrs, "seed": 3}], optimizer=optimizer)
    val, test_acc = reference_rules(method, layer_lrs[-1], 3, optimizer=optimizer, layer_lrs=layer_lrs)
    assert result.runs.iloc[0]["val_loss"] == pytest.approx(val, rel=1e-4)
    assert result.runs.iloc[0]["test_acc"] == pytest.approx(test_acc, abs=1e-6)


@pytest.mark.parametrize("method", ["so_bp", "so_fa", "so_brsf", "so_kolen_pollack"])
@pytest.mark.parametrize("layers, alpha", [((0,), 1.0), (None, 1.0), (None, 2.0)])
def test_second_order_population_step_equals_two_pass_backward(method, layers, alpha):
    """Float64, in a regime where n moves the weights (gain 40-70) and the secant is well conditioned.

    n = eps g1^2 / d with |d| >= c wherever g1 != g2, so an absolute error e in g1 - g2 (a few ulps of
    |g1|; it differs between BLAS kernels, and between tanh and the CPU's 2 sigmoid(2a) - 1) is at
    most a relative error e / c in n: the conditioning is kappa = max|g1| / c. Here max|g1| is 0.033
    (measured over every case) and c = 1e-5, so kappa <= 3.3e3, and each step's n agrees to about
    1e-16 * 3e3 * (a few ulps) ~ 1e-12 relative; weights that move by about 1 then agree to ~1e-12
    (measured worst case 3.2e-12 on an AMD EPYC). atol 1e-10 keeps a factor 30 for the kernels of
    other x86 machines. At c = 1e-7, eta = 20 kappa reached 7e5 and weights differed by 1.4e-8 on the
    EPYC (not on an Intel Xeon): a tolerance that held on one machine only."""
    settings = ActivityPropagation(eta=200.0, curvature_bias=1e-5, layers=layers, warmup=1)
    model = mlp(SIZES, method, seed=7, decay=0.05, second_order=settings, feedback_scale=alpha).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    population = PopulationMLP(SIZES, [Member(method, 0.1, 7, feedback_scale=alpha)], "tanh", torch.device("cpu"), decay=0.05,
                               second_order=settings, dtype=torch.float64)
    linears = [m for m in model if isinstance(m, FeedbackLinear)]
    start = [layer.weight.detach().clone() for layer in linears]
    x, y = DATA.train_x[:48].double(), DATA.train_y[:48]
    for _ in range(3):
        optimizer.zero_grad()
        two_pass_backward(model, lambda out: F.cross_entropy(out, y), x)
        optimizer.step()
        population.train_step(x[None], y[None], torch.tensor([0.1], dtype=torch.float64))
        population.refresh(np.zeros(1, dtype=bool))
        for l, layer in enumerate(linears):
            torch.testing.assert_close(population.weights[l][0], layer.weight.detach(), rtol=0, atol=1e-10)
            if method in ("so_fa", "so_kolen_pollack"):  # (brsf's population B is already next step's)
                torch.testing.assert_close(population.feedback[l][0], layer.feedback.detach(), rtol=0, atol=1e-10)
    # n moved the weights by O(0.1) at least: nine orders above atol, so the comparison has teeth
    assert (linears[0].weight - start[0]).abs().max() > 0.1
    points = [m for m in model if isinstance(m, SecondOrderActivity)]
    for point, (layer, gain) in zip(points, population.soap_gains.items()):
        assert gain.item() == pytest.approx(point.gain, rel=1e-6) and gain.item() > 10


@pytest.mark.parametrize("architecture", ["mlp", "lenet5"])
def test_evaluation_in_chunks_equals_each_member_alone_on_the_whole_set(architecture):
    # two full CPU chunks and a partial one; each member's loss and accuracy against its own model
    from soap.models import lenet5, pad_to_32
    from soap.population.conv_model import PopulationLeNet
    from soap.population.model import CPU_EVAL_CHUNK

    n = 2 * CPU_EVAL_CHUNK + 76
    members = [Member("bp", 0.1, 3), Member("fa", 0.1, 4)]
    torch.manual_seed(0)
    if architecture == "mlp":
        x, classes = torch.randn(n, 12), 3
        model = PopulationMLP([12, 16, 16, classes], members, "tanh", torch.device("cpu"))
        singles = [mlp([12, 16, 16, classes], m.method, seed=m.seed) for m in members]
    else:
        x, classes = torch.randn(n, 784), 10
        model = PopulationLeNet(members, "relu", torch.device("cpu"))
        singles = [lambda images, m=m, net=lenet5(m.method, seed=m.seed): net(pad_to_32(images)) for m in members]
    y = torch.randint(0, classes, (n,))
    loss, accuracy = model.evaluate(x, y)
    for p, single in enumerate(singles):
        with torch.no_grad():
            logits = single(x).double()
        assert loss[p].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
        # float32 division; one example of 1,100 is 9e-4
        assert accuracy[p].item() == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=1e-6)
