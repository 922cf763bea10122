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
