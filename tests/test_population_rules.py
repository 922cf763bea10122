"""usf, frsf, brsf, Kolen-Pollack, DFA and the so_ methods in the population trainer: against the
single-model path (soap.nn, soap.direct_feedback, soap.activity_propagation, tested by hand in
test_new_rules.py), against hand computations, and members in a crowd against each alone."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from soap.activity_propagation import ActivityPropagation, SecondOrderActivity, two_pass_backward
from soap.config import Member, TrainConfig
from soap.data import synthetic_dataset
from soap.nn import FeedbackLinear, initial_parameters, mlp
from soap.population import PopulationMLP, population_model, train_population
from soap.rules import RULES, get_rule
from soap.seeding import generator

DATA = synthetic_dataset(n_train=960, n_val=256, n_test=256, dim=12, num_classes=3, seed=5)
SIZES = [12, 16, 16, 3]
BASE = dict(dataset="synthetic", hidden=[16, 16], batch_size=48, epochs=1.5, refresh_period=500,
            log_every=96, eval_every=480, eval_subset=128, device="cpu", kp_decay=0.05,
            soap_eta=20.0, soap_curvature_bias=1e-6, soap_warmup=3)
NEW = ["usf", "frsf", "brsf", "kolen_pollack", "dfa"]


def train(**overrides):
    return train_population(TrainConfig.from_dict({**BASE, **overrides}), DATA, progress=False)


def reference_run(method: str, lr: float, seed: int, optimizer: str = "sgd", feedback_scale: float = 1.0,
                  layer_lrs: list[float] | None = None):
    """One run the conventional way: soap.nn's mlp, a torch.optim optimizer over model.parameters()
    (kolen_pollack's B among them), autograd. layer_lrs: one lr per layer, as torch.optim param groups."""
    model = mlp(SIZES, method, seed=seed, decay=BASE["kp_decay"], feedback_scale=feedback_scale)
    linears = [m for m in model.modules() if isinstance(m, FeedbackLinear)]
    params = [{"params": list(layer.parameters()), "lr": layer_lr}
              for layer, layer_lr in zip(linears, layer_lrs or [lr] * len(linears))]
    assert sum(len(g["params"]) for g in params) == len(list(model.parameters()))
    optimizer = {"sgd": lambda: torch.optim.SGD(params, lr=lr),
                 "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
                 "adam": lambda: torch.optim.Adam(params, lr=lr)}[optimizer]()
    order_gen, batch, period = generator(seed, "data"), BASE["batch_size"], BASE["refresh_period"]
    n = len(DATA.train_y)
    seen = 0
    for step in range(int(BASE["epochs"] * n) // batch):
        offset = step % (n // batch)
        if offset == 0:
            order = torch.randperm(n, generator=order_gen)
        index = order[offset * batch:(offset + 1) * batch]
        optimizer.zero_grad()
        F.cross_entropy(model(DATA.train_x[index]), DATA.train_y[index]).backward()
        optimizer.step()
        seen += batch
        if seen // period != (seen - batch) // period:
            for layer in model.modules():
                if isinstance(layer, FeedbackLinear):
                    layer.refresh_feedback()
    model.eval()
    with torch.no_grad():
        val = F.cross_entropy(model(DATA.val_x), DATA.val_y).item()
        test_acc = (model(DATA.test_x).argmax(1) == DATA.test_y).float().mean().item()
    return val, test_acc


@pytest.mark.parametrize("method", NEW)
def test_population_of_one_equals_single_model_training(method):
    result = train(members=[{"method": method, "lr": 0.3, "seed": 7}])
    val, test_acc = reference_run(method, 0.3, 7)
    run = result.runs.iloc[0]
    assert run["val_loss"] == pytest.approx(val, rel=1e-4)
    assert run["test_acc"] == pytest.approx(test_acc, abs=1e-6)
    assert np.isnan(run["soap_gain"])


@pytest.mark.parametrize("method, optimizer, alpha, lr", [
    ("kolen_pollack", "adam", 1.0, 0.01), ("kolen_pollack", "momentum", 2.5, 0.05), ("dfa", "adam", 2.5, 0.01),
    ("dfa", "sgd", 3.0, 0.2), ("brsf", "momentum", 1.0, 0.05), ("usf", "sgd", 3.0, 0.2)])
def test_population_of_one_with_an_optimizer_or_a_feedback_scale_equals_single_model_training(method, optimizer,
                                                                                             alpha, lr):
    result = train(members=[{"method": method, "lr": lr, "seed": 3, "feedback_scale": alpha}], optimizer=optimizer)
    val, test_acc = reference_run(method, lr, 3, optimizer=optimizer, feedback_scale=alpha)
    assert result.runs.iloc[0]["val_loss"] == pytest.approx(val, rel=1e-4)
    assert result.runs.iloc[0]["test_acc"] == pytest.approx(test_acc, abs=1e-6)


@pytest.mark.parametrize("method, optimizer", [("dfa", "sgd"), ("dfa", "momentum"), ("kolen_pollack", "sgd"),
                                               ("kolen_pollack", "momentum"), ("usf", "sgd")])
def test_per_layer_learning_rates_reach_every_rules_path(method, optimizer):
    """A member with one lr per layer (the bp_matched arm's kind) equals torch.optim with one param group
    per layer, for rules whose signal takes another path: DFA's hidden deltas come straight from the
    output error, Kolen-Pollack's B takes W's step and decays at the layer's lr."""
    layer_lrs = [0.05, 0.2, 0.1]
    result = train(members=[{"method": method, "lr": layer_lrs, "seed": 3}], optimizer=optimizer)
    val, test_acc = reference_run(method, layer_lrs[-1], 3, optimizer=optimizer, layer_lrs=layer_lrs)
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


def test_second_order_on_one_hidden_layer_in_the_runs_and_curves():
    result = train(members=[{"method": "so_fa", "lr": 0.3, "seed": 2}, {"method": "fa", "lr": 0.3, "seed": 2}],
                   soap_layers=[1], target_loss=1.13)
    assert "soap_gain_l1" in result.curves and "soap_gain_l0" not in result.curves
    so_fa, fa = result.runs.iloc[0], result.runs.iloc[1]
    assert so_fa["soap_gain"] > 0 and np.isnan(fa["soap_gain"])
    # an so_ run's hidden step is its base rule's times the SOAP gain: both enter its effective lr
    assert so_fa["effective_lr"] == pytest.approx(0.3 * so_fa["feedback_gain"] * so_fa["soap_gain"], rel=1e-12)
    assert fa["effective_lr"] == pytest.approx(0.3 * fa["feedback_gain"], rel=1e-12)
    # passes: one per step for fa; for so_fa one per warm-up step (3), then two
    assert fa["passes_to_target"] == fa["examples_to_target"] / 48
    steps = so_fa["examples_to_target"] / 48
    assert steps > 3 and so_fa["passes_to_target"] == 3 + 2 * (steps - 3)


def test_every_rule_in_one_crowd_trains_as_alone():
    # one member per rule, mixed seeds and lrs, plain and so_ members interleaved (two step shapes)
    # plus an so_ member with a seed of its own, so the two groups' data-order batches differ
    members = [{"method": rule, "lr": [0.3, 0.1][i % 2], "seed": i % 3} for i, rule in enumerate(RULES)]
    members.append({"method": "so_sign", "lr": 0.2, "seed": 9})
    crowd = train(members=members)
    assert crowd.runs["method"].tolist() == [*RULES, "so_sign"]
    for member, (_, run) in zip(members, crowd.runs.iterrows()):
        alone = train(members=[member]).runs.iloc[0]
        for column in ["val_loss", "test_loss", "final_train_loss", "feedback_gain"]:
            assert run[column] == pytest.approx(alone[column], rel=1e-4), (member, column)
        if get_rule(member["method"]).second_order:
            assert run["soap_gain"] == pytest.approx(alone["soap_gain"], rel=1e-4), member


def test_population_feedback_follows_the_rules_step_by_step():
    """B of every member after each of 4 steps against numpy, from the members' own W."""
    members = [Member("usf", 0.3, 1), Member("frsf", 0.2, 1), Member("brsf", 0.3, 1), Member("brsf", 0.1, 2),
               Member("kolen_pollack", 0.3, 1), Member("kolen_pollack", 0.1, 2)]
    decay = 0.5
    model = PopulationMLP(SIZES, members, "tanh", torch.device("cpu"), decay=decay)
    lr = torch.tensor([m.lr for m in members])
    fa = {seed: [i.feedback.numpy() for i in initial_parameters(SIZES, seed)] for seed in (1, 2)}
    redraws = {seed: generator(seed, "feedback_redraw") for seed in (1, 2)}
    kp = [4, 5]
    start = {p: [(model.feedback[l][p] - model.weights[l][p]).norm().item() for l in range(3)] for p in kp}
    groups = len(model.group_seeds)  # one batch per run of members with one seed (data order)
    x, y = DATA.train_x[:48].expand(groups, -1, -1), DATA.train_y[:48].expand(groups, -1)
    for t in range(5):
        draws = {seed: [torch.empty(o, i).uniform_(-i**-0.5, i**-0.5, generator=redraws[seed])
                        for i, o in zip(SIZES[:-1], SIZES[1:])] for seed in (1, 2)}
        model.complete_feedback()  # a step leaves the first layer's B stale: its readers bring it up to date
        for l in range(3):
            w = model.weights[l].numpy()
            b = model.feedback[l].numpy()
            fan_in = SIZES[l]
            np.testing.assert_allclose(b[0], np.sign(w[0]) / np.sqrt(3 * fan_in), rtol=1e-6)
            np.testing.assert_allclose(b[1], np.abs(fa[1][l]) * np.sign(w[1]), rtol=1e-6)
            np.testing.assert_allclose(b[2], np.abs(draws[1][l].numpy()) * np.sign(w[2]), rtol=1e-6)
            np.testing.assert_allclose(b[3], np.abs(draws[2][l].numpy()) * np.sign(w[3]), rtol=1e-6)
            for p in kp:  # (1 - lr lambda)^t, each member at its own lr
                distance = np.linalg.norm(b[p] - w[p])
                assert distance == pytest.approx(start[p][l] * (1 - members[p].lr * decay) ** t, rel=1e-5)
        model.train_step(x, y, lr)
        model.refresh(np.zeros(len(members), dtype=bool))  # forms the every-step B (no periodic rule here)


def test_alignment_reads_the_first_layers_feedback_formed_from_the_current_weights():
    # Steps leave layer 0's B stale (nothing reads it in training); the alignment metrics must still
    # see B = form(W) of the current W: the angle against a numpy computation after W's signs moved.
    members = [Member("usf", 3.0, 1), Member("frsf", 3.0, 1)]
    model = PopulationMLP(SIZES, members, "tanh", torch.device("cpu"))
    fa = initial_parameters(SIZES, 1)[0].feedback.numpy()
    x, y = DATA.train_x[:48].unsqueeze(0), DATA.train_y[:48].unsqueeze(0)
    start = np.sign(model.weights[0].numpy())
    for _ in range(3):
        model.train_step(x, y, torch.tensor([3.0, 3.0]))
        model.refresh(np.zeros(2, dtype=bool))
    w = model.weights[0].numpy()
    assert (np.sign(w) != start).any()  # signs moved, so a stale B would be another matrix
    angles = model.alignment(x, y)["angle_l0"].numpy()
    for p, formed in enumerate((np.sign(w[0]) / np.sqrt(3 * SIZES[0]), np.abs(fa) * np.sign(w[1]))):
        cos = (formed * w[p]).sum() / np.linalg.norm(formed) / np.linalg.norm(w[p])
        assert angles[p] == pytest.approx(np.degrees(np.arccos(cos)), abs=1e-3)


def test_dfa_error_signals_in_the_population_by_hand():
    members = [Member("dfa", 0.1, 3), Member("fa", 0.1, 3)]
    model = PopulationMLP(SIZES, members, "tanh", torch.device("cpu"))
    inits = initial_parameters(SIZES, 3)
    x, y = DATA.train_x[:20], DATA.train_y[:20]
    acts = model.forward(x)
    e = (torch.softmax(acts[-1], -1) - F.one_hot(y, 3)) / 20
    deltas = model.error_signals(acts, e, model.feedback)
    h1, h2 = acts[1][0], acts[2][0]
    torch.testing.assert_close(deltas[1][0], (1 - h2**2) * (e[0] @ inits[2].feedback))
    torch.testing.assert_close(deltas[0][0], (1 - h1**2) * (e[0] @ inits[1].direct))
    fa_delta1 = (1 - h2**2) * (e[1] @ inits[2].feedback)  # fa: the same at the top hidden layer ...
    torch.testing.assert_close(deltas[1][1], fa_delta1)
    torch.testing.assert_close(deltas[0][1], (1 - h1**2) * (fa_delta1 @ inits[1].feedback))  # ... through B below
    angles = model.alignment(x[None], y[None])  # one data order: both members have seed 3
    assert np.isnan(angles["angle_l1"][0].item()) and not np.isnan(angles["angle_l2"][0].item())


def test_mixed_shapes_form_groups_and_plain_populations_do_not():
    device = torch.device("cpu")
    plain = population_model(SIZES, [Member("fa", 0.1, 0), Member("dfa", 0.1, 0)], "tanh", device)
    assert isinstance(plain, PopulationMLP)
    mixed = population_model(SIZES, [Member("fa", 0.1, 0), Member("so_fa", 0.1, 0), Member("bp", 0.1, 1)],
                             "tanh", device)
    assert [[m.method for m in g.members] for g in mixed.groups] == [["fa", "bp"], ["so_fa"]]


def test_a_captured_step_trains_every_new_rule_as_an_uncaptured_one(caplog):
    # brsf's draws and the every-step B are formed outside the step that a CUDA graph would replay;
    # so_ members turn capture off (their step changes after the warm-up), with a warning
    members = [{"method": m, "lr": 0.2, "seed": s} for m, s in
               [("usf", 0), ("brsf", 0), ("brsf", 1), ("frsf", 1), ("kolen_pollack", 0), ("dfa", 1), ("so_fa", 0)]]
    config = TrainConfig.from_dict({**BASE, "members": members, "epochs": 0.5})
    plain = train_population(config, DATA, progress=False)
    captured = train_population(config, DATA, progress=False, capture=True)
    pd.testing.assert_frame_equal(captured.runs, plain.runs)
    pd.testing.assert_frame_equal(captured.curves, plain.curves)
    assert "step capture is off" in caplog.text
    capturable = config.population()[:-1]
    assert population_model(SIZES, capturable, "tanh", torch.device("cpu")).capturable


def test_passes_to_target_follow_the_pipelines_target_too():
    from soap.pipeline import fill_targets

    result = train(members=[{"method": "so_fa", "lr": 0.3, "seed": 2}, {"method": "fa", "lr": 0.3, "seed": 2}])
    runs = fill_targets(result.runs, result.curves, 1.13)  # the pipeline sets the target after training
    so_fa, fa = runs.iloc[0], runs.iloc[1]
    assert fa["passes_to_target"] == fa["examples_to_target"] / 48
    steps = so_fa["examples_to_target"] / 48
    assert steps > 3 and so_fa["passes_to_target"] == 3 + 2 * (steps - 3)
