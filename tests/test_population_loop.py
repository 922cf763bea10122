"""train_population: a member trained in a population against the same run trained alone (soap.models.mlp,
torch.optim), seeding, isolation, divergence, refresh timing and step capture."""

import numpy as np
import pandas as pd
import pytest
import torch

from soap.config import ConfigError, Member, TrainConfig
from soap.population import PopulationMLP, loop, population_model, train_population
from soap.population.feedback import REDRAW_BLOCK_STEPS
from soap.rules import RULES, draw_like_weight, get_rule
from soap.seeding import generator
from soap.tables import validate_runs

from helpers import DATA, NEW_RULES, PLAIN, RULES_BASE, SIZES, reference_run, train, train_rules


# the plain rules on the plain schedule; the newer rules on theirs (a Kolen-Pollack decay, so_ settings)
@pytest.mark.parametrize("method, base", [(m, PLAIN) for m in ["bp", "fa", "sign", "sign_scaled", "stale_bp"]]
                         + [(m, RULES_BASE) for m in NEW_RULES])
def test_population_of_one_equals_single_model_training(method, base):
    result = train(base=base, members=[{"method": method, "lr": 0.3, "seed": 7}])
    val, test_acc = reference_run(method, 0.3, 7, base=base)
    run = result.runs.iloc[0]
    assert run["val_loss"] == pytest.approx(val, rel=1e-4)
    assert run["test_acc"] == pytest.approx(test_acc, abs=1e-6)
    assert np.isnan(run["soap_gain"])


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


def test_same_seed_same_numbers_different_seed_different_numbers():
    first = train(methods=["fa", "sign"], lrs=[0.1], seeds=[0, 1])
    again = train(methods=["fa", "sign"], lrs=[0.1], seeds=[0, 1])
    pd.testing.assert_frame_equal(first.runs, again.runs)
    pd.testing.assert_frame_equal(first.curves, again.curves)
    by_seed = first.runs.set_index(["method", "seed"])["val_loss"]
    assert by_seed[("fa", 0)] != by_seed[("fa", 1)]


def test_paired_seeds_share_initial_weights_fa_matrix_and_data_order():
    members = [dict(method=m, lr=0.1, seed=4) for m in ("bp", "fa", "sign")]
    config = TrainConfig.from_dict({**PLAIN, "members": members})
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


def test_a_captured_step_trains_exactly_as_an_uncaptured_one():
    # CPU keeps a CUDA graph's contract (fixed inputs and output buffers): whatever capture breaks shows
    members = [{"method": "bp", "lr": 0.2, "seed": 0}, {"method": "sign", "lr": 50.0, "seed": 0},
               {"method": "fa", "lr": 0.1, "seed": 1}]
    config = TrainConfig.from_dict({**PLAIN, "members": members})
    plain = train_population(config, DATA, progress=False)
    captured = train_population(config, DATA, progress=False, capture=True)
    assert plain.runs["diverged"].tolist() == [False, True, False]
    pd.testing.assert_frame_equal(captured.runs, plain.runs)
    pd.testing.assert_frame_equal(captured.curves, plain.curves)


def test_per_layer_learning_rates_must_match_the_layers():
    members = [{"method": "bp", "lr": [0.1, 0.1], "seed": 0}]
    with pytest.raises(ConfigError, match="2 learning rates for 3 layers"):
        train(members=members)


def test_every_rule_in_one_crowd_trains_as_alone():
    # one member per rule, mixed seeds and lrs, plain and so_ members interleaved (two step shapes)
    # plus an so_ member with a seed of its own, so the two groups' data-order batches differ
    members = [{"method": rule, "lr": [0.3, 0.1][i % 2], "seed": i % 3} for i, rule in enumerate(RULES)]
    members.append({"method": "so_sign", "lr": 0.2, "seed": 9})
    crowd = train_rules(members=members)
    assert crowd.runs["method"].tolist() == [*RULES, "so_sign"]
    for member, (_, run) in zip(members, crowd.runs.iterrows()):
        alone = train_rules(members=[member]).runs.iloc[0]
        for column in ["val_loss", "test_loss", "final_train_loss", "feedback_gain"]:
            assert run[column] == pytest.approx(alone[column], rel=1e-4), (member, column)
        if get_rule(member["method"]).second_order:
            assert run["soap_gain"] == pytest.approx(alone["soap_gain"], rel=1e-4), member


CAPTURABLE = ["bp", "fa", "sign", "sign_scaled", "stale_bp", "usf", "frsf", "brsf", "kolen_pollack", "dfa"]


def spy_on_capture(monkeypatch) -> list[bool]:
    """Whether each StepGraph the loop makes from now on is enabled, in order."""
    enabled = []

    class Spy(loop.StepGraph):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            enabled.append(self.enabled)

    monkeypatch.setattr(loop, "StepGraph", Spy)
    return enabled


def test_a_captured_step_trains_every_capturable_rule_as_an_uncaptured_one(monkeypatch):
    # brsf's draws and the every-step B are formed outside the step that a CUDA graph would replay.
    # Every rule but the so_ ones, two seeds (two data orders, members of a rule apart), one member
    # diverging (its lr is zeroed in place mid-run): the population is captured, and trains bit for bit
    # as the uncaptured one.
    members = [{"method": m, "lr": 0.2, "seed": s} for m in CAPTURABLE for s in (0, 1)]
    members.append({"method": "bp", "lr": 200.0, "seed": 1})
    config = TrainConfig.from_dict({**RULES_BASE, "members": members, "epochs": 0.5, "refresh_period": 96})
    capturable = population_model(SIZES, config.population(), "tanh", torch.device("cpu")).capturable
    assert capturable
    enabled = spy_on_capture(monkeypatch)
    plain = train_population(config, DATA, progress=False)
    captured = train_population(config, DATA, progress=False, capture=True)
    assert enabled == [False, True]
    assert plain.runs["diverged"].tolist() == [False] * (len(members) - 1) + [True]
    pd.testing.assert_frame_equal(captured.runs, plain.runs, check_exact=True)
    pd.testing.assert_frame_equal(captured.curves, plain.curves, check_exact=True)


def test_capture_true_on_an_so_population_is_an_error_and_auto_trains_it_uncaptured(monkeypatch):
    # so_ members change their step's computation after the warm-up, which a replayed graph cannot
    members = [{"method": "fa", "lr": 0.2, "seed": 0}, {"method": "so_fa", "lr": 0.2, "seed": 0}]
    config = TrainConfig.from_dict({**RULES_BASE, "members": members, "epochs": 0.2})
    assert not population_model(SIZES, config.population(), "tanh", torch.device("cpu")).capturable
    with pytest.raises(ConfigError, match="capture: true, but so_ members"):
        train_population(TrainConfig.from_dict({**config.to_dict(), "capture": True}), DATA, progress=False)
    enabled = spy_on_capture(monkeypatch)
    train_population(config, DATA, progress=False)  # capture: auto
    assert enabled == [False]


def test_capture_auto_is_on_for_capturable_cuda_populations_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert loop.step_capture("auto", cuda, True) and not loop.step_capture("auto", cuda, False)
    assert not loop.step_capture("auto", cpu, True)
    assert loop.step_capture(True, cpu, True) and not loop.step_capture(False, cuda, True)


def test_meta_records_the_device_and_the_matmul_precision_it_ran_at():
    before = torch.get_float32_matmul_precision()
    result = train(members=[{"method": "bp", "lr": 0.1, "seed": 0}], epochs=0.1, matmul_precision="high")
    assert result.meta["device_type"] == "cpu" and result.meta["device_model"]
    assert result.meta["float32_matmul_precision"] == "high"
    assert torch.get_float32_matmul_precision() == before  # set for the run only
    assert train(members=[{"method": "bp", "lr": 0.1, "seed": 0}], epochs=0.1).meta[
        "float32_matmul_precision"] == "highest"


def test_brsf_draws_made_in_blocks_are_the_one_draw_per_step_stream():
    # Blocks of steps are drawn at once (one copy to the device per block); each step's R must still be
    # the seed stream drawn one step at a time, layer after layer, across block boundaries.
    members = [Member("brsf", 0.1, 0), Member("bp", 0.1, 0), Member("brsf", 0.2, 7)]
    model = PopulationMLP(SIZES, members, "tanh", torch.device("cpu"))
    streams = {seed: generator(seed, "feedback_redraw") for seed in (0, 7)}
    no_refresh = np.zeros(len(members), dtype=bool)
    for step in range(2 * REDRAW_BLOCK_STEPS + 3):
        if step:
            model.refresh(no_refresh)
        for seed, stream in streams.items():
            for layer, w in enumerate(model.weights):
                expected = draw_like_weight(tuple(w.shape[1:]), stream)
                assert torch.equal(model.hooks.redraws[seed][layer], expected), (step, seed, layer)
