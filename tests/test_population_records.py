"""The runs and curves tables of a population: gains, alignment, time to target."""

import math

import numpy as np
import pandas as pd
import pytest

from soap.metrics import time_to_target

from helpers import train, train_rules


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


def test_second_order_on_one_hidden_layer_in_the_runs_and_curves():
    result = train_rules(members=[{"method": "so_fa", "lr": 0.3, "seed": 2}, {"method": "fa", "lr": 0.3, "seed": 2}],
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


def test_passes_to_target_follow_the_pipelines_target_too():
    from soap.pipeline import fill_targets

    result = train_rules(members=[{"method": "so_fa", "lr": 0.3, "seed": 2}, {"method": "fa", "lr": 0.3, "seed": 2}])
    runs = fill_targets(result.runs, result.curves, 1.13)  # the pipeline sets the target after training
    so_fa, fa = runs.iloc[0], runs.iloc[1]
    assert fa["passes_to_target"] == fa["examples_to_target"] / 48
    steps = so_fa["examples_to_target"] / 48
    assert steps > 3 and so_fa["passes_to_target"] == 3 + 2 * (steps - 3)


def test_time_to_target_reads_the_first_logged_hit_in_the_order_asked():
    curves = pd.DataFrame({"run_id": ["a", "a", "a", "b", "b", "c"], "examples": [10, 20, 30, 10, 20, 10],
                           "train_loss_ema": [2.0, 0.9, 0.5, 3.0, np.nan, 0.1]})
    examples, reached = time_to_target(curves, ["b", "c", "a", "missing"], 1.0)
    np.testing.assert_array_equal(examples, [np.nan, 10.0, 20.0, np.nan])  # b never reached: censored
    assert reached.dtype == bool and reached.tolist() == [False, True, True, False]
