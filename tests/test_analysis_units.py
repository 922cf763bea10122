"""Hand-checkable fixtures for the analysis: paired differences, Holm, learning-rate choice, errors, files."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from soap.analysis.core import ESTIMATES_COLUMNS, analyze
from soap.analysis.errors import AnalysisError
from soap.analysis.outputs import run_analysis
from soap.analysis.inputs import choose_fixed_lr, snap_to_grid
from soap.analysis.multiplicity import holm_adjust
from soap.analysis.paired import paired_contrast, t_interval
from soap.analysis.summary import Summary
from soap.synthetic import SyntheticSpec, generate_runs
from study_results import BP, TOY, make_runs


def test_holm_by_hand_within_families():
    estimates = pd.DataFrame({
        "estimand": ["fixed_lr", "tuned", "effective_lr", "time_to_target_ratio", "tuned", "mediation_acme",
                     "grid_lr", "grid_lr", "poi_tuned"],
        "outcome": ["test_loss", "test_loss", "test_loss", "examples_to_target", "test_acc", "test_loss",
                    "test_loss", "test_loss", "test_loss"],
        "p_value": [0.01, 0.04, 0.03, 0.2, 0.04, 0.001, 0.02, 0.03, 0.001],
    })
    adjusted = holm_adjust(estimates, primary_outcome="test_loss")
    # test_loss family (time to target joins the primary one): sorted 0.01, 0.03, 0.04, 0.2 times
    # 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.2.
    np.testing.assert_allclose(adjusted[:4], [0.04, 0.09, 0.09, 0.2])
    assert adjusted[4] == pytest.approx(0.04)  # alone in the test_acc family
    assert np.isnan(adjusted[5]) and np.isnan(adjusted[8])  # mediation, PoI: not method-vs-bp tests
    np.testing.assert_allclose(adjusted[6:8], [0.04, 0.04])  # grid_lr/test_loss: 0.02 x 2, 0.03 x 1


def test_snap_to_grid_on_a_log_scale():
    grid = np.array([0.01, 0.1, 1.0])
    # 0.04 is nearer 0.1 in log distance (log 2.5 < log 4) but nearer 0.01 arithmetically (0.03 < 0.06).
    assert snap_to_grid(0.04, grid) == 0.1
    assert snap_to_grid(0.02, grid) == 0.01


def test_fixed_lr_defaults_to_bp_tuned_lr_snapped_to_the_grid():
    runs = generate_runs(SyntheticSpec(), seed=0)
    # bp's tuned lr is 0.05; grid neighbours 10**-1.5 (log distance 0.46) and 0.1 (0.69).
    assert choose_fixed_lr(runs, None, "test_loss") == pytest.approx(10 ** -1.5)
    assert choose_fixed_lr(runs, 1.2e-3, "test_loss") == pytest.approx(1e-3)


def test_fixed_lr_without_tuned_runs_is_bp_best_grid_lr():
    runs = make_runs([("grid", "bp", s, lr, loss) for s in range(2)
                      for lr, loss in [(0.01, 0.9), (0.1, 0.3), (1.0, 0.7)]])
    assert choose_fixed_lr(runs, None, "test_loss") == pytest.approx(0.1)


def test_missing_columns_are_named():
    with pytest.raises(AnalysisError, match="feedback_gain.*reached_target|reached_target.*feedback_gain"):
        analyze(TOY.drop(columns=["feedback_gain", "reached_target"]))


def test_method_without_bp_pair_is_an_error():
    runs = TOY[~((TOY["method"] == "bp") & (TOY["seed"] == 2))]
    with pytest.raises(AnalysisError, match=r"'fa' has no 'bp' pair.*seed\(s\) 2"):
        analyze(runs)


def test_fewer_than_two_seeds_is_an_error():
    with pytest.raises(AnalysisError, match="fewer than 2 seeds"):
        analyze(TOY[TOY["seed"] == 0])


def test_every_run_diverged_is_an_error():
    runs = TOY.assign(diverged=True, test_loss=np.nan)
    with pytest.raises(AnalysisError, match="every run diverged"):
        analyze(runs)


def test_analysis_error_is_a_value_error():
    assert issubclass(AnalysisError, ValueError)


def test_same_seed_same_results():
    runs = generate_runs(SyntheticSpec(grid_lrs=(1e-3, 1e-2, 1e-1), grid_seeds=3, tuned_seeds=3), seed=0)
    a = analyze(runs, seed=5, n_boot=100).estimates
    b = analyze(runs, seed=5, n_boot=100).estimates
    pd.testing.assert_frame_equal(a, b)


def test_method_diverged_everywhere_at_the_shared_lr_is_reported_not_fatal():
    # At lr 0.1, sign's effective lr is ~2 > diverge_elr = 1.5: every sign run there diverges.
    spec = SyntheticSpec(grid_seeds=4, tuned_seeds=4)
    runs = generate_runs(spec, seed=0)
    at_shared = runs[(runs["phase"] == "grid") & np.isclose(runs["lr"], 0.1)]
    assert at_shared.loc[at_shared["method"] == "sign", "diverged"].all()
    result = analyze(runs, fixed_lr=0.1, n_boot=100, mediation_design="fixed_lr")
    sign = result.estimates.query("estimand == 'fixed_lr' and method == 'sign' and outcome == 'test_loss'")
    assert sign["n"].item() == 0 and np.isnan(sign["estimate"].item())
    assert "0 complete pair" in sign["note"].item()
    excluded = {(e.method, e.reason): e.n for e in result.summary.exclusions if e.estimand == "fixed_lr"}
    assert excluded[("sign", "diverged")] == int(at_shared.loc[at_shared["method"] == "sign", "diverged"].sum())
    assert "fewer than 3 usable runs" in result.summary.skipped_reason("mediation", "synthetic")
    json.loads(result.summary.to_json())  # still strict JSON
    # The pooled design uses the lrs where both arms are healthy, so it still runs, without lr 0.1.
    pooled = analyze(runs, fixed_lr=0.1, n_boot=100).summary.mediation["synthetic"]
    assert pooled.design == "pooled" and all(lr < 0.1 for lr in pooled.lrs)


def test_unknown_mediation_design_is_an_error():
    with pytest.raises(AnalysisError, match="mediation_design"):
        analyze(TOY, mediation_design="nope")


def test_weighted_km_median_matches_statsmodels_on_the_expanded_sample():
    from statsmodels.duration.survfunc import SurvfuncRight

    from soap.analysis.time_to_target import km_median_weighted

    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(3, 15))
        # Censorings tied with events (the last run's time is the first's).
        time = np.round(rng.lognormal(0, 1, n), 6)
        event = (rng.random(n) < 0.7).astype(int)
        time[-1] = time[0]
        weights = rng.integers(0, 3, (1, n)).astype(float)
        rows = np.repeat(np.arange(n), weights[0].astype(int))
        if not len(rows):
            continue
        fit = SurvfuncRight(time[rows], event[rows])
        if np.isclose(fit.surv_prob, 0.5, rtol=0, atol=1e-9).any():
            continue  # S = 1/2 exactly: statsmodels' grouped product may land a hair either side
        ours, theirs = km_median_weighted(time, event, weights)[0], fit.quantile(0.5)
        assert (np.isnan(ours) and np.isnan(theirs)) or ours == pytest.approx(theirs), (time, event, weights)


def test_median_ratio_interval_uses_the_runs_the_estimate_uses():
    # Unbalanced seeds: fa ran seeds 0-7 and 16-23, bp seeds 0-15. The estimate uses every run, so
    # must the interval (the seeds both arms share gave a ratio outside its own interval).
    from soap.analysis.time_to_target import median_ratio

    rng = np.random.default_rng(5)
    fa_seeds = np.r_[0:8, 16:24]
    fa_time = np.where(fa_seeds >= 16, 4.0, 1.4) * 50_000 * np.exp(0.2 * rng.standard_normal(16))
    surv = pd.DataFrame({"method": ["bp"] * 16 + ["fa"] * 16, "seed": np.r_[np.arange(16), fa_seeds],
                         "time": np.r_[50_000 * np.exp(0.2 * rng.standard_normal(16)), fa_time], "event": 1})
    out = median_ratio(surv, "fa", 500, np.random.default_rng(0))
    assert out["n"] == 24
    assert out["ci_low"] <= out["estimate"] <= out["ci_high"]


def test_an_so_runs_soap_gain_enters_its_effective_lr():
    # sign's gain of ~20, moved from feedback_gain to soap_gain as an so_ run would log it: the run's
    # hidden step is the same, so its effective lr and coefficient at matched effective lr must be too
    from soap.analysis.effective_lr import fit_lr_model
    from soap.tables import effective_lr
    grid = generate_runs(SyntheticSpec(), seed=3).query("phase == 'grid' and dataset == 'synthetic'")
    as_so = grid.copy()
    sign = as_so["method"] == "sign"
    as_so.loc[sign, "method"] = "so_sign"
    as_so["soap_gain"] = np.where(sign, as_so["feedback_gain"], np.nan)
    as_so.loc[sign, "feedback_gain"] = 1.0
    assert np.allclose(effective_lr(as_so), grid["lr"] * grid["feedback_gain"], rtol=1e-12)
    plain, so = fit_lr_model(grid, "test_loss"), fit_lr_model(as_so, "test_loss")
    assert so.coef["so_sign"]["estimate"] == pytest.approx(plain.coef["sign"]["estimate"], rel=1e-9)
    assert so.coef["fa"]["estimate"] == pytest.approx(plain.coef["fa"]["estimate"], rel=1e-9)


def test_an_effective_lr_contrast_does_not_depend_on_other_methods_runs():
    # A method whose outcome does not follow bp's curve (flat in effective lr, like an so_ rule whose
    # hidden layers barely move) must not bend bp's curve for the other contrasts: fa's and sign's
    # coefficients are the same with it in the table or not.
    from soap.analysis.effective_lr import fit_lr_model
    grid = generate_runs(SyntheticSpec(), seed=4).query("phase == 'grid'")
    flat = grid[grid["method"] == "fa"].assign(method="flat", feedback_gain=0.5)
    flat["test_loss"] = 0.4 + 0.01 * np.random.default_rng(0).standard_normal(len(flat))
    alone, with_flat = fit_lr_model(grid, "test_loss"), fit_lr_model(pd.concat([grid, flat]), "test_loss")
    assert with_flat.coef["flat"]["n"] > 0  # the flat method is in the support
    for method in ("fa", "sign"):
        for key in ("estimate", "ci_low", "ci_high"):
            assert with_flat.coef[method][key] == pytest.approx(alone.coef[method][key], rel=1e-9)
    assert with_flat.n > alone.n  # the pooled description does include it
    # and its contrast says that one difference does not describe it: its slope is not bp's
    assert with_flat.coef["flat"]["parallel"]["p_value"] < 1e-3
