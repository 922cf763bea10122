"""The population trainer against single-model training, and its seeding, isolation and divergence."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from soap.config import ConfigError, Member, TrainConfig
from soap.data import synthetic_dataset
from soap.nn import FeedbackLinear, mlp
from soap.population import PopulationMLP, by_data_order, train_population
from soap.rules import RULES
from soap.seeding import generator
from soap.tables import validate_runs

DATA = synthetic_dataset(n_train=960, n_val=256, n_test=256, dim=12, num_classes=3, seed=5)
# For sign-of-gradient steps: with sign(W) feedback at the output, a hidden unit whose column of signs
# is constant gets an error that sums softmax - onehot over classes, exactly zero, so sign() of it is a
# coin flip on rounding. Likely with 3 classes (1 column in 4), rare with 10 (1 in 512).
DATA10 = synthetic_dataset(n_train=960, n_val=256, n_test=256, dim=12, num_classes=10, seed=5)
BASE = dict(dataset="synthetic", hidden=[16, 16], batch_size=48, epochs=2.5, refresh_period=500,
            log_every=96, eval_every=480, eval_subset=128, device="cpu")


def train(data=DATA, **overrides):
    return train_population(TrainConfig.from_dict({**BASE, **overrides}), data, progress=False)


def reference_run(method: str, lr: float, seed: int, epochs: float, batch: int, period: int,
                  optimizer: str = "sgd", feedback_scale: float = 1.0, layer_lrs: list[float] | None = None,
                  data=DATA):
    """One run trained the conventional way: nn.Sequential of FeedbackLinear, a torch.optim optimizer
    (signsgd, which torch.optim lacks, written out: W -= lr sign(grad)). layer_lrs: one lr per layer."""
    model = mlp([12, 16, 16, data.num_classes], method, seed=seed, feedback_scale=feedback_scale)
    linears = [m for m in model if isinstance(m, FeedbackLinear)]
    groups = [{"params": list(layer.parameters()), "lr": layer_lr}
              for layer, layer_lr in zip(linears, layer_lrs or [lr] * len(linears))]
    optimizer = {"sgd": lambda: torch.optim.SGD(groups, lr=lr),
                 "momentum": lambda: torch.optim.SGD(groups, lr=lr, momentum=0.9),
                 "adam": lambda: torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8),
                 "signsgd": lambda: SignSGD(groups, lr=lr)}[optimizer]()
    order_gen = generator(seed, "data")
    n = len(data.train_y)
    steps, seen = int(epochs * n) // batch, 0
    for step in range(steps):
        epoch, offset = divmod(step, n // batch)
        if offset == 0:
            order = torch.randperm(n, generator=order_gen)
        index = order[offset * batch:(offset + 1) * batch]
        loss = F.cross_entropy(model(data.train_x[index]), data.train_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += batch
        if seen // period != (seen - batch) // period:
            for layer in model:
                if isinstance(layer, FeedbackLinear):
                    layer.refresh_feedback()
    with torch.no_grad():
        val = F.cross_entropy(model(data.val_x), data.val_y).item()
        test_acc = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
    return val, test_acc


class SignSGD(torch.optim.SGD):
    """W -= lr sign(grad): plain SGD on the gradient's sign."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for param in group["params"]:
                param.grad.sign_()
        super().step()


@pytest.mark.parametrize("method", ["bp", "fa", "sign", "sign_scaled", "stale_bp"])
def test_population_of_one_equals_single_model_training(method):
    result = train(members=[{"method": method, "lr": 0.3, "seed": 7}])
    val, test_acc = reference_run(method, 0.3, 7, BASE["epochs"], BASE["batch_size"], BASE["refresh_period"])
    run = result.runs.iloc[0]
    assert run["val_loss"] == pytest.approx(val, rel=1e-4)
    assert run["test_acc"] == pytest.approx(test_acc, abs=1e-6)


def test_refresh_fires_when_the_example_count_crosses_a_multiple_of_the_period(monkeypatch):
    fired = []
    original = PopulationMLP.refresh
    monkeypatch.setattr(PopulationMLP, "refresh", lambda self, due: (fired.append(due.copy()), original(self, due)))
    train(members=[{"method": "sign", "lr": 0.1, "seed": 0}])
    # batch 48 does not divide 500; 50 steps see 48, 96, ..., 2400 examples. The refresh fires on the
    # first count at or past each multiple of 500: 528, 1008, 1536, 2016 (worked out by hand).
    counts_fired = [48 * (step + 1) for step, due in enumerate(fired) if due[0]]
    assert counts_fired == [528, 1008, 1536, 2016]
    assert len(fired) == 50


def test_every_rule_trains_in_a_crowd_exactly_as_alone():
    # Every registered rule, five members each at different lrs: two on seed 1, two on seed 4, one on
    # seed 6. Members sharing a seed share a data order and initial weights, so the trainer shares
    # their first layer's GEMMs: seeds 1 and 4 (equal groups) in one batched GEMM, seed 6 in another.
    # Members of one rule are refreshed together, as one stack, so a refresh that mixed members (a mean
    # over the stack, say) shows up here.
    members = [{"method": rule, "lr": lr, "seed": seed}
               for rule in RULES for lr, seed in [(0.3, 1), (0.1, 1), (0.2, 4), (0.05, 4), (0.15, 6)]]
    crowd = train(members=members[::-1]).runs.set_index("run_id")  # reversed: order must not matter
    for member in members:
        alone = train(members=[member]).runs.iloc[0]
        run = crowd.loc[alone["run_id"]]
        for column in ["val_loss", "test_loss", "final_train_loss", "feedback_gain"]:
            assert run[column] == pytest.approx(alone[column], rel=1e-4), (alone["run_id"], column)
        assert run["test_acc"] == pytest.approx(alone["test_acc"], abs=1e-6), alone["run_id"]


def test_training_loss_ema_is_pandas_ewm_of_the_per_step_loss():
    # logged every step (log_every = batch), with a beta far from the default so ignoring it shows
    result = train(methods=["fa", "bp"], lrs=[0.2], seeds=[0, 1], log_every=48, ema_beta=0.9)
    logged = result.curves.dropna(subset=["train_loss"])
    assert logged.groupby("run_id").size().eq(50).all()  # 2.5 epochs of 960 at batch 48: every step
    for run_id, curve in logged.groupby("run_id"):
        expected = curve["train_loss"].ewm(alpha=1 - 0.9, adjust=False).mean()
        np.testing.assert_allclose(curve["train_loss_ema"], expected, rtol=1e-5, err_msg=run_id)
        final = result.runs.set_index("run_id").loc[run_id, "final_train_loss"]
        assert final == pytest.approx(expected.iloc[-1], rel=1e-5)


def test_bp_members_feedback_equals_weights_after_every_step(monkeypatch):
    # B = W must hold after each step itself (not only after alignment(), which syncs): layers >= 1
    # send errors down through B at the next step. The first layer's B sends nothing down.
    checked = []
    original = PopulationMLP.train_step

    def checked_step(self, *args):
        loss = original(self, *args)
        bp = torch.tensor([rule.uses_weight for rule in self.rules])
        for layer in range(1, len(self.weights)):
            assert torch.equal(self.feedback[layer][bp], self.weights[layer][bp]), layer
            assert not torch.equal(self.feedback[layer][~bp], self.weights[layer][~bp])
        checked.append(True)
        return loss

    monkeypatch.setattr(PopulationMLP, "train_step", checked_step)
    train(members=[{"method": "bp", "lr": 0.3, "seed": 1}, {"method": "fa", "lr": 0.3, "seed": 1},
                   {"method": "bp", "lr": 0.1, "seed": 2}, {"method": "sign", "lr": 0.1, "seed": 1}])
    assert len(checked) == 50


def test_bp_members_apart_in_a_population_train_as_alone_and_stay_aligned():
    # bp members at positions 0 and 2 keep B = W through two separate copies each step
    members = [{"method": "bp", "lr": 0.3, "seed": 1}, {"method": "fa", "lr": 0.3, "seed": 1},
               {"method": "bp", "lr": 0.1, "seed": 2}]
    crowd = train(members=members)
    for position in (0, 2):
        alone = train(members=[members[position]]).runs.iloc[0]
        assert crowd.runs.iloc[position]["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-4)
    bp = crowd.curves[crowd.curves.run_id.isin(crowd.runs.run_id[[0, 2]])].dropna(subset=["angle_l0"])
    assert (bp[["angle_l0", "angle_l1", "angle_l2"]] == 0).all().all()


def test_same_seed_same_numbers_different_seed_different_numbers():
    first = train(methods=["fa", "sign"], lrs=[0.1], seeds=[0, 1])
    again = train(methods=["fa", "sign"], lrs=[0.1], seeds=[0, 1])
    pd.testing.assert_frame_equal(first.runs, again.runs)
    pd.testing.assert_frame_equal(first.curves, again.curves)
    by_seed = first.runs.set_index(["method", "seed"])["val_loss"]
    assert by_seed[("fa", 0)] != by_seed[("fa", 1)]


def test_paired_seeds_share_initial_weights_fa_matrix_and_data_order():
    members = [dict(method=m, lr=0.1, seed=4) for m in ("bp", "fa", "sign")]
    config = TrainConfig.from_dict({**BASE, "members": members})
    model = PopulationMLP([12, 16, 16, 3], config.population(), "tanh", torch.device("cpu"))
    for layer in range(3):
        assert torch.equal(model.weights[layer][0], model.weights[layer][1])
        assert torch.equal(model.weights[layer][1], model.weights[layer][2])
        assert torch.equal(model.feedback[layer][1], model.feedback[layer][2])  # the FA matrix
        assert torch.equal(model.feedback[layer][0], model.weights[layer][0])  # bp's B is W
    # the first step's loss depends on weights and batch only: equal across the paired methods
    curves = train(members=members, log_every=48).curves
    first = curves[curves.examples == 48].set_index("run_id")["train_loss"]
    assert first.nunique() == 1


def test_diverging_member_is_marked_and_others_are_unaffected():
    mixed = train(members=[{"method": "bp", "lr": 0.1, "seed": 0}, {"method": "bp", "lr": 50.0, "seed": 0},
                           {"method": "sign", "lr": 50.0, "seed": 1}])
    alone = train(members=[{"method": "bp", "lr": 0.1, "seed": 0}]).runs.iloc[0]
    assert mixed.runs["diverged"].tolist() == [False, True, True]
    diverged = mixed.runs[mixed.runs.diverged]
    assert diverged[["val_loss", "test_loss", "test_acc"]].isna().all().all()
    assert (diverged["diverged_at"] > 0).all()
    healthy = mixed.runs.iloc[0]
    for column in ["val_loss", "test_loss", "test_acc", "final_train_loss"]:
        assert healthy[column] == pytest.approx(alone[column], rel=1e-4)
    validate_runs(mixed.runs)  # diverged rows still follow the contract


def test_bp_gain_is_one_and_sign_amplifies():
    runs = train(methods=["bp", "sign", "sign_scaled"], lrs=[0.05], seeds=[0]).runs.set_index("method")
    assert runs.loc["bp", "feedback_gain"] == pytest.approx(1.0)
    assert runs.loc["sign", "feedback_gain"] > 3 * runs.loc["sign_scaled", "feedback_gain"]
    assert runs.loc["sign", "effective_lr"] == pytest.approx(0.05 * runs.loc["sign", "feedback_gain"])


def test_curves_log_alignment_and_bp_is_aligned():
    result = train(methods=["bp", "fa"], lrs=[0.1], seeds=[0])
    curves = result.curves.merge(result.runs[["run_id", "method"]], on="run_id")
    evals = curves.dropna(subset=["val_loss"])
    assert set(evals.examples) == {0, 480, 960, 1440, 1920, 2400}  # the start and every eval_every (2400 is also the end)
    bp, fa = evals[evals.method == "bp"], evals[evals.method == "fa"]
    assert np.allclose(bp[["angle_l0", "angle_l1", "angle_l2"]], 0.0, atol=1e-3)
    assert np.allclose(bp[["cos_l0", "cos_l1", "norm_ratio_l0", "norm_ratio_l1"]], 1.0, atol=1e-5)
    assert (fa["angle_l2"] > 30).all() and (fa["cos_l1"] < 0.99).all()
    assert result.runs.loc[result.runs.method == "fa", "feedback_gain"].iloc[0] != 1.0


def test_examples_to_target_reported_when_a_target_is_given():
    runs = train(methods=["bp"], lrs=[0.5, 0.001], seeds=[0], target_loss=1.0).runs.set_index("lr")
    assert runs.loc[0.5, "reached_target"] and not runs.loc[0.001, "reached_target"]
    assert 0 < runs.loc[0.5, "examples_to_target"] <= runs.loc[0.5, "examples_seen"]
    assert math.isnan(runs.loc[0.001, "examples_to_target"])


def test_refresh_period_is_per_member(monkeypatch):
    fired = []
    original = PopulationMLP.refresh
    monkeypatch.setattr(PopulationMLP, "refresh", lambda self, due: (fired.append(due.copy()), original(self, due)))
    result = train(members=[{"method": "sign", "lr": 0.1, "seed": 0},
                            {"method": "sign", "lr": 0.1, "seed": 0, "refresh_period": 960}])
    counts = lambda member: [48 * (step + 1) for step, due in enumerate(fired) if due[member]]  # noqa: E731
    assert counts(0) == [528, 1008, 1536, 2016]  # period 500
    assert counts(1) == [960, 1920]  # period 960, a multiple of the batch: fires exactly at 960k
    assert result.runs["refresh_period"].tolist() == [500, 960]
    assert result.runs["run_id"].nunique() == 2


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


def test_a_captured_step_trains_exactly_as_an_uncaptured_one():
    # CPU keeps a CUDA graph's contract (fixed inputs and output buffers): whatever capture breaks shows
    members = [{"method": "bp", "lr": 0.2, "seed": 0}, {"method": "sign", "lr": 50.0, "seed": 0},
               {"method": "fa", "lr": 0.1, "seed": 1}]
    config = TrainConfig.from_dict({**BASE, "members": members})
    plain = train_population(config, DATA, progress=False)
    captured = train_population(config, DATA, progress=False, capture=True)
    assert plain.runs["diverged"].tolist() == [False, True, False]
    pd.testing.assert_frame_equal(captured.runs, plain.runs)
    pd.testing.assert_frame_equal(captured.curves, plain.curves)


@pytest.mark.parametrize("optimizer,lrs", [("momentum", [0.1, 0.03]), ("adam", [0.01, 0.003]),
                                           ("signsgd", [0.003, 0.001])])
def test_each_optimizer_matches_torch_optim_member_by_member(optimizer, lrs):
    # three members with their own rules, lrs and seeds, trained as one population with stacked state
    members = [{"method": "bp", "lr": lrs[0], "seed": 7}, {"method": "sign", "lr": lrs[1], "seed": 7},
               {"method": "fa", "lr": lrs[1], "seed": 2}]
    runs = train(DATA10, members=members, optimizer=optimizer).runs
    assert (runs["optimizer"] == optimizer).all() and runs["run_id"].str.endswith(f"-{optimizer}").all()
    for member, run in zip(members, runs.itertuples()):
        val, test_acc = reference_run(member["method"], member["lr"], member["seed"], BASE["epochs"],
                                      BASE["batch_size"], BASE["refresh_period"], optimizer=optimizer, data=DATA10)
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
    val, test_acc = reference_run(method, 0.2, 7, BASE["epochs"], BASE["batch_size"], BASE["refresh_period"],
                                  feedback_scale=4.0)
    assert runs["val_loss"].iloc[0] == pytest.approx(val, rel=1e-4)
    assert runs["val_loss"].iloc[0] != pytest.approx(runs["val_loss"].iloc[1], rel=1e-3)


def test_bp_with_feedback_scale_is_bp_with_per_layer_learning_rates():
    # Exact identity: alpha multiplies the error once per feedback product it passes through, so layer l
    # of bp with scale alpha steps like plain bp at lr * alpha^k_l, k = (2, 1, 0) from input to output.
    alpha, lr = 1.7, 0.1
    runs = train(members=[{"method": "bp", "lr": lr, "seed": 5, "feedback_scale": alpha}]).runs
    val, test_acc = reference_run("bp", lr, 5, BASE["epochs"], BASE["batch_size"], BASE["refresh_period"],
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
    val, _ = reference_run("bp", lr, 5, BASE["epochs"], BASE["batch_size"], BASE["refresh_period"],
                           optimizer=optimizer, layer_lrs=[lr * alpha**2, lr * alpha, lr])
    assert runs["val_loss"].iloc[1] == pytest.approx(val, rel=1e-4)


def test_per_layer_learning_rates_must_match_the_layers():
    members = [{"method": "bp", "lr": [0.1, 0.1], "seed": 0}]
    with pytest.raises(ConfigError, match="2 learning rates for 3 layers"):
        train(members=members)
