"""The synthetic generator: contract-shaped, reproducible, and its closed-form truth matches its draws."""

from dataclasses import replace

import numpy as np
import pytest

from soap.synthetic import SyntheticSpec, generate_runs
from soap.tables import RUNS_COLUMNS, validate_runs


def test_table_follows_the_runs_contract_and_design():
    spec = SyntheticSpec()
    runs = generate_runs(spec, seed=0)
    validate_runs(runs)  # raises if not
    assert set(RUNS_COLUMNS) <= set(runs.columns)
    grid = runs[runs["phase"] == "grid"]
    tuned = runs[runs["phase"] == "tuned"]
    assert len(grid) == len(spec.methods) * len(spec.grid_lrs) * spec.grid_seeds
    assert len(tuned) == len(spec.methods) * spec.tuned_seeds
    assert runs["run_id"].is_unique
    assert (runs.loc[runs["method"] == "bp", "feedback_gain"] == 1.0).all()
    np.testing.assert_allclose(runs["effective_lr"], runs["lr"] * runs["feedback_gain"])


def test_same_seed_same_table_other_seed_other_table():
    a, b, c = generate_runs(seed=3), generate_runs(seed=3), generate_runs(seed=4)
    assert a.equals(b)
    assert not np.allclose(a["test_loss"].fillna(0), c["test_loss"].fillna(0))


def test_divergence_is_above_the_effective_lr_threshold_and_has_no_losses():
    spec = SyntheticSpec()
    runs = generate_runs(spec, seed=0)
    assert runs["diverged"].any()
    assert (runs["diverged"] == (runs["effective_lr"] > spec.diverge_elr)).all()
    assert runs.loc[runs["diverged"], ["test_loss", "test_acc"]].isna().all().all()
    assert runs.loc[~runs["diverged"], ["test_loss", "test_acc"]].notna().all().all()


def test_expected_loss_matches_the_mean_of_many_draws():
    # Many seeds at one learning rate: the sample mean should sit within 4 standard errors of the
    # closed form (seed effects and noise both average out).
    spec = replace(SyntheticSpec(), grid_lrs=(1e-3,), grid_seeds=4000, tuned_seeds=2)
    runs = generate_runs(spec, seed=0)
    for method in spec.methods:
        losses = runs.loc[(runs["phase"] == "grid") & (runs["method"] == method), "test_loss"]
        se = losses.std() / np.sqrt(len(losses))
        assert losses.mean() == pytest.approx(spec.expected_loss(method, 1e-3), abs=4 * se)


def test_known_truths_by_hand():
    spec = SyntheticSpec()
    assert spec.tuned_lr("bp") == pytest.approx(0.05)
    assert spec.tuned_lr("sign") == pytest.approx(0.05 / 20)
    # At bp's optimum, bp's expected loss is the bottom of the U.
    assert spec.expected_loss("bp", 0.05) == pytest.approx(spec.min_loss)
    # sign vs sign_scaled differ in direct effect by 0 - 0.05; the rest is mediated by the gain.
    total = spec.expected_loss("sign", 1e-3) - spec.expected_loss("sign_scaled", 1e-3)
    assert spec.mediated_effect(1e-3) == pytest.approx(total + 0.05)
    assert spec.median_ratio("fa") == pytest.approx(2.0)


def test_censoring_is_at_the_budget_and_reached_runs_have_times():
    spec = replace(SyntheticSpec(), budget_examples=60_000.0)
    runs = generate_runs(spec, seed=0)
    reached = runs["reached_target"]
    assert (~reached).any() and reached.any()
    assert runs.loc[reached, "examples_to_target"].le(runs.loc[reached, "examples_seen"]).all()
    assert runs.loc[~reached, "examples_to_target"].isna().all()


# --- the factorial's worlds (soap.synthetic_factorial) -------------------------------------------------


def test_factorial_runs_follow_the_contract_and_the_design():
    from soap.synthetic_factorial import FACTORIAL_WORLDS, generate_factorial_runs

    spec = FACTORIAL_WORLDS["interaction"]
    runs = generate_factorial_runs(spec, seed=0)
    assert set(RUNS_COLUMNS) <= set(runs.columns) and runs["run_id"].is_unique
    assert len(runs) == 4 * len(spec.grid_lrs) * spec.seeds
    cells = {("bp", "bp"), ("sign", "sign"), ("bp", "sign"), ("sign", "bp")}
    assert set(zip(runs["method"], runs["step_rule"])) == cells
    assert (runs["phase"] == "grid").all() and (runs["optimizer"] == "sgd").all()
    assert (runs["feedback_scale"] == 1).all()
    bp_steps = runs["step_rule"] == "bp"
    assert (runs.loc[bp_steps, ["feedback_gain", "feedback_gain_l1", "feedback_gain_l2"]] == 1.0).all().all()
    # feedback_gain is the geometric mean of the per-layer gains; bp@sign's gains are sign's by construction
    np.testing.assert_allclose(runs["feedback_gain"], np.sqrt(runs["feedback_gain_l1"] * runs["feedback_gain_l2"]))
    gains = runs[~bp_steps].groupby("method")["feedback_gain_l1"].median()
    assert gains["bp"] == pytest.approx(gains["sign"], rel=0.1) and gains["sign"] == pytest.approx(30, rel=0.1)
    assert runs["diverged"].any() and runs.loc[runs["diverged"], ["test_loss", "val_loss"]].isna().all().all()
    assert generate_factorial_runs(spec, seed=0).equals(runs)


@pytest.mark.parametrize("world", ["pure_step", "interaction"])
def test_factorial_truth_matches_the_mean_of_many_draws(world):
    # 20,000 seeds: every effect's sample mean (over seeds healthy in its cells) within 4 SE of the exact
    # truth, at an lr without divergence and at one where about 20% of the runs at sign's steps diverge
    from soap.factorial import CELL_NAMES, EFFECTS, cell_key
    from soap.synthetic_factorial import FACTORIAL_WORLDS, generate_factorial_runs

    spec = replace(FACTORIAL_WORLDS[world], seeds=20_000, grid_lrs=(0.01, 0.1))
    runs = generate_factorial_runs(spec, seed=1)
    for lr in spec.grid_lrs:
        at = runs[runs["lr"] == lr]
        indexed = at.set_index(["method", "step_rule", "seed"])
        cells = {cell: indexed["test_loss"].xs(cell_key(cell, "sign"), level=[0, 1]) for cell in CELL_NAMES}
        for effect, needed in EFFECTS.items():
            diffs = sum(coef * cells[cell] for cell, coef in needed.items()).dropna()
            se = diffs.std() / np.sqrt(len(diffs))
            assert diffs.mean() == pytest.approx(spec.expected_effect(effect, lr), abs=4 * se), (world, lr, effect)
            acc = sum(coef * indexed["test_acc"].xs(cell_key(c, "sign"), level=[0, 1])
                      for c, coef in needed.items()).dropna() * 100
            assert acc.mean() == pytest.approx(spec.expected_effect(effect, lr, "test_acc"),
                                               abs=4 * acc.std() / np.sqrt(len(acc)))
    assert 0.1 < 1 - spec.survival("r", 0.1) < 0.3 and spec.survival("r", 0.01) > 0.999


def test_factorial_noise_is_skewed_and_the_seed_is_shared():
    from soap.synthetic_factorial import FACTORIAL_WORLDS, generate_factorial_runs

    spec = replace(FACTORIAL_WORLDS["pure_step"], seeds=4000, grid_lrs=(0.01,), seed_sd=0.0, seed_gain=0.0)
    runs = generate_factorial_runs(spec, seed=2)
    bp = runs[(runs["method"] == "bp") & (runs["step_rule"] == "bp")]["test_loss"]
    assert bp.skew() > 0.8  # centred Gamma(2): skewness 1.41, diluted by the normal evaluation noise
    shared = generate_factorial_runs(replace(spec, seed_sd=0.05), seed=2)
    wide = shared.pivot_table(index="seed", columns=["method", "step_rule"], values="test_loss")
    assert np.corrcoef(wide[("bp", "bp")], wide[("sign", "bp")])[0, 1] > 0.8
