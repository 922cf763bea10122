"""The intervention arms' pure parts: bp_matched's per-layer lr multipliers from a grid runs table, and
the dose-response and optimizer designs."""

import math
from pathlib import Path

import pandas as pd
import pytest

from soap.config import ConfigError, TrainConfig
from soap.interventions import dose_members, matched_lr_scales, matched_members, optimizer_lrs
from soap.study_config import load_study_config

REPO = Path(__file__).resolve().parents[1]


def _run(method, seed, lr, g1, g2, **extra):
    row = {"run_id": f"{method}-{seed}-{lr}-{extra}", "phase": "grid", "dataset": "mnist", "method": method,
           "seed": seed, "lr": lr, "feedback_gain_l1": g1, "feedback_gain_l2": g2, "diverged": False,
           "optimizer": "sgd", "feedback_scale": 1.0, "refresh_period": 6400,
           "lr_scale_l1": 1.0, "lr_scale_l2": 1.0, "lr_scale_l3": 1.0}
    row.update(extra)
    return row


def test_matched_multipliers_are_signs_per_layer_gains_at_the_same_seed_and_lr():
    runs = pd.DataFrame([
        _run("sign", 0, 0.1, 20.0, 4.0),
        _run("sign", 1, 0.1, 18.0, 5.0),
        _run("sign", 0, 0.01, 30.0, 6.0),
        _run("sign", 1, 0.01, 25.0, 5.5, diverged=True),  # diverged: no matched run
        _run("sign", 1, 1.0, float("nan"), 3.0),  # no gain at layer 1: none either
        _run("fa", 0, 0.1, 2.0, 1.5),  # another rule
        _run("sign", 0, 0.1, 99.0, 9.0, feedback_scale=4.0),  # the dose arm, not the plain grid
        _run("sign", 0, 0.1, 99.0, 9.0, optimizer="adam"),  # another optimizer
        _run("sign", 0, 0.1, 99.0, 9.0, phase="tuned"),
        _run("sign", 0, 0.1, 99.0, 9.0, refresh_period=640),  # a sensitivity period
        _run("sign", 2, 0.1, 99.0, 9.0, refresh_period=640),
    ])
    scales = matched_lr_scales(runs)
    expected = pd.DataFrame({"dataset": "mnist", "seed": [0, 0, 1], "lr": [0.01, 0.1, 0.1],
                             "lr_scale_l1": [30.0, 20.0, 18.0], "lr_scale_l2": [6.0, 4.0, 5.0],
                             "lr_scale_l3": 1.0})
    pd.testing.assert_frame_equal(scales, expected)
    members = matched_members(scales, "mnist", seeds=[0])
    assert members == [{"method": "bp", "lr": [pytest.approx(0.3), pytest.approx(0.06), 0.01], "seed": 0},
                       {"method": "bp", "lr": [pytest.approx(2.0), pytest.approx(0.4), 0.1], "seed": 0}]
    # they are valid members, and the trainer reads them back as nominal lr x the multipliers
    config = TrainConfig(dataset="synthetic", members=members)
    assert [(m.lr, m.lr_scale) for m in config.population()] == [
        (0.01, pytest.approx((30.0, 6.0, 1.0))), (0.1, pytest.approx((20.0, 4.0, 1.0)))]


def test_matched_multipliers_need_per_layer_gains():
    runs = pd.DataFrame([_run("sign", 0, 0.1, 2.0, 2.0)]).drop(columns=["feedback_gain_l1", "feedback_gain_l2"])
    with pytest.raises(ValueError, match="feedback_gain_l"):
        matched_lr_scales(runs)


def test_dose_design_crosses_scales_lrs_and_seeds_without_the_main_grids_alpha_one():
    members = dose_members(["sign_scaled", "fa"], [0.25, 1.0, 4.0], [0.01, 0.1], range(2))
    assert len(members) == 2 * 2 * 2 * 2
    assert {m["feedback_scale"] for m in members} == {0.25, 4.0}
    assert members[0] == {"method": "sign_scaled", "lr": 0.01, "seed": 0, "feedback_scale": 0.25}


def test_optimizer_grid_is_log_spaced_over_its_own_range():
    lrs = optimizer_lrs({"lr_low": 1e-4, "lr_high": 1e-2, "n_lrs": 3})
    assert lrs == [1e-4, 1e-3, 1e-2]
    assert all(math.isclose(b / a, 10) for a, b in zip(lrs, lrs[1:]))


def test_interventions_are_off_by_default_and_filled_in():
    cfg = load_study_config(values={})
    assert cfg["interventions"]["alphas"] == [] and cfg["interventions"]["bp_matched"] is False
    assert cfg["analysis"]["equivalence_margin"] == {"test_loss": 0.02, "test_acc": 0.5, "log_lr": 0.25}
    cfg = load_study_config(values={"interventions": {"optimizers": [{"name": "adam"}]}})
    assert cfg["interventions"]["optimizers"] == [{"name": "adam", "lr_low": 1e-5, "lr_high": 0.1, "n_lrs": 5}]


@pytest.mark.parametrize("values,message", [
    ({"interventions": {"alphas": [0]}}, "interventions.alphas.0: 0 is less than or equal to the minimum of 0"),
    ({"interventions": {"optimizers": [{"name": "rmsprop"}]}}, "interventions.optimizers.0.name: 'rmsprop' is not one of"),
    ({"interventions": {"bp_match": True}}, "interventions: Additional properties are not allowed ('bp_match'"),
    ({"interventions": {"optimizers": [{"name": "adam", "lr_low": 1, "lr_high": 0.1}]}},
     "interventions.optimizers.0.lr_low must be below its lr_high"),
    ({"interventions": {"alpha_methods": ["sgn"]}}, "interventions.alpha_methods: unknown method"),
    ({"methods": ["bp", "fa"], "interventions": {"bp_matched": True}}, "interventions.bp_matched needs sign"),
    ({"interventions": {"alpha_methods": ["bp", "fa"]}}, "interventions.alpha_methods: bp with a feedback scale"),
    ({"interventions": {"bp_matched": True, "seeds": 9}}, "interventions.seeds must not exceed grid.seeds"),
    ({"analysis": {"equivalence_margin": {"test_loss": -1}}}, "analysis.equivalence_margin.test_loss"),
])
def test_a_bad_interventions_value_gives_one_line_naming_the_key(values, message):
    with pytest.raises(ConfigError) as error:
        load_study_config(values=values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_workflow_declares_every_verdict_figure_by_its_caption_file():
    """workflow/rules/common.smk names the verdict rule's figures by their caption files (it imports no
    figure module): those must be the figures the verdict step writes."""
    from soap.plots.verdict import FIGURES

    assert {p.stem for p in (REPO / "workflow" / "report").glob("verdict_*.rst")} == set(FIGURES)

