"""The intervention arms' pure parts: the factorial, dose-response and optimizer designs, and the checks
of the `interventions` block."""

import math
from pathlib import Path

import pandas as pd
import pytest

from soap.config import ConfigError, TrainConfig
from soap.interventions import dose_members, enabled, factorial_members, optimizer_lrs
from soap.study_config import load_study_config

REPO = Path(__file__).resolve().parents[1]


def test_factorial_trains_only_the_crossed_cells_when_the_rule_is_in_the_main_grid():
    members = factorial_members(["sign"], [0.01, 0.1], range(3), trained=["bp", "fa", "sign"])
    cells = sorted({(m["method"], m.get("step_rule", m["method"])) for m in members})
    assert cells == [("bp", "sign"), ("sign", "bp")]  # bp and sign are the main grid's runs
    assert len(members) == 2 * 2 * 3
    # every cell at every lr x seed: the grid's seeds 0..2, so each pairs with the grid's bp by seed
    for cell in cells:
        part = [m for m in members if (m["method"], m["step_rule"]) == cell]
        assert sorted((m["lr"], m["seed"]) for m in part) == [(lr, s) for lr in (0.01, 0.1) for s in range(3)]
    assert {"method": "bp", "lr": 0.01, "seed": 0, "step_rule": "sign"} in members


def test_factorial_trains_a_rules_plain_cell_when_the_main_grid_lacks_it_and_shares_bp():
    members = factorial_members(["sign", "usf"], [0.1], [0, 1], trained=["bp", "sign"])
    cells = [(m["method"], m.get("step_rule")) for m in members]
    assert set(cells) == {("bp", "sign"), ("sign", "bp"), ("bp", "usf"), ("usf", "bp"), ("usf", None)}
    assert len(cells) == 5 * 2  # no cell twice; bp (the main grid's) not at all
    # without the main grid, bp's cell is trained once for both rules
    alone = factorial_members(["sign", "usf"], [0.1], [0], trained=[])
    assert [(m["method"], m.get("step_rule")) for m in alone].count(("bp", None)) == 1


def test_bp_dose_runs_keep_the_runs_table_contract_but_plain_bp_with_a_gain_does_not():
    """bp at feedback scale alpha (the dose arm's calibration) has gain alpha^k: validate_runs exempts it."""
    from soap.tables import TableError, validate_runs

    row = {"run_id": "bp-a4", "phase": "grid", "dataset": "mnist", "method": "bp", "seed": 0, "lr": 0.1,
           "feedback_gain": 4.0, "diverged": False, "final_train_loss": 0.3, "val_loss": 0.3, "val_acc": 90.0,
           "test_loss": 0.3, "test_acc": 90.0, "effective_lr": 0.4, "examples_to_target": 10.0,
           "reached_target": True, "examples_seen": 100, "target_loss": 0.5, "feedback_scale": 4.0}
    runs = pd.DataFrame([row])
    assert validate_runs(runs)["feedback_gain"].tolist() == [4.0]
    with pytest.raises(TableError, match="bp's feedback_gain must be 1"):
        validate_runs(runs.assign(feedback_scale=1.0))


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
    assert cfg["interventions"]["alphas"] == [] and cfg["interventions"]["factorial"] == []
    assert cfg["analysis"]["equivalence_margin"] == {"test_loss": 0.02, "test_acc": 0.5, "log_lr": 0.25}
    cfg = load_study_config(values={"interventions": {"factorial": ["sign"], "optimizers": [{"name": "adam"}]}})
    assert cfg["interventions"]["optimizers"] == [{"name": "adam", "lr_low": 1e-5, "lr_high": 0.1, "n_lrs": 5}]


ON = {"factorial": ["sign"]}  # any arm on needs the primary rule's factorial


@pytest.mark.parametrize("values,message", [
    ({"interventions": {"alphas": [0]}}, "interventions.alphas.0: 0 is less than or equal to the minimum of 0"),
    ({"interventions": {"optimizers": [{"name": "rmsprop"}]}}, "interventions.optimizers.0.name: 'rmsprop' is not one of"),
    ({"interventions": {"bp_match": True}}, "interventions: Additional properties are not allowed ('bp_match'"),
    ({"interventions": {**ON, "optimizers": [{"name": "adam", "lr_low": 1, "lr_high": 0.1}]}},
     "interventions.optimizers.0.lr_low must be below its lr_high"),
    ({"interventions": {"alpha_methods": ["sgn"]}}, "interventions.alpha_methods: unknown method"),
    ({"interventions": {"bp_matched": True}}, "interventions: Additional properties are not allowed ('bp_matched'"),
    ({"interventions": {"factorial": ["sign"], "seeds": 4}},
     "interventions.seeds must not exceed grid.seeds (3) when interventions.factorial is on"),
    ({"interventions": {"factorial": ["sign", "sgn"]}}, "interventions.factorial: unknown rule sgn"),
    ({"interventions": {"factorial": ["sign", "so_sign"]}}, "interventions.factorial: so_sign: so_ rules take no"),
    ({"interventions": {"factorial": ["sign", "kolen_pollack"]}},
     "interventions.factorial: kolen_pollack: kolen_pollack cannot be a step rule: its B is trained by its own update"),
    ({"interventions": {"factorial": ["bp"]}}, "interventions.factorial.0: 'bp' should not be valid"),
    ({"interventions": {"factorial": ["fa"]}}, "analysis.primary.rule sign must be in interventions.factorial ['fa']"),
    ({"interventions": {"alphas": [4]}}, "analysis.primary.rule sign must be in interventions.factorial []"),
    ({"analysis": {"primary": {"rule": "fa"}}, "interventions": ON},
     "analysis.primary.rule fa must be in interventions.factorial ['sign']"),
    ({"analysis": {"equivalence_margin": {"test_loss": -1}}}, "analysis.equivalence_margin.test_loss"),
])
def test_a_bad_interventions_value_gives_one_line_naming_the_key(values, message):
    with pytest.raises(ConfigError) as error:
        load_study_config(values=values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bp_may_join_the_dose_arm_as_its_calibration_and_factorial_rules_may_be_any_plain_rule():
    cfg = load_study_config(values={"interventions": {"factorial": ["sign", "fa", "dfa", "usf"], "alphas": [4],
                                                      "alpha_methods": ["bp", "fa"]}})
    assert cfg["interventions"]["alpha_methods"] == ["bp", "fa"]
    assert load_study_config(values={"interventions": {"factorial": []}})["interventions"]["factorial"] == []


def test_the_workflow_declares_every_verdict_figure_by_its_caption_file():
    """workflow/rules/common.smk names the verdict rule's figures by their caption files (it imports no
    figure module): those must be the figures the verdict step writes."""
    from soap.plots.verdict import FIGURES

    assert {p.stem for p in (REPO / "workflow" / "report").glob("verdict_*.rst")} == set(FIGURES)



def test_the_factorial_alone_switches_the_interventions_on():
    """The default study runs only the factorial: its verdict (and so the report's answer) must be planned."""
    cfg = load_study_config(values={"interventions": {"factorial": ["sign"]}})
    assert enabled(cfg)
    assert not enabled(load_study_config(values={}))
