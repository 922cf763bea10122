"""Hand-checkable fixtures for the analysis: paired differences, Holm, learning-rate choice, errors, files."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from soap.analysis import ESTIMATES_COLUMNS, AnalysisError, analyze, run_analysis
from soap.analysis.inputs import choose_fixed_lr, snap_to_grid
from soap.analysis.multiplicity import holm_adjust
from soap.analysis.paired import paired_contrast, t_interval
from soap.analysis.summary import Summary
from soap.synthetic import SyntheticSpec, generate_runs


def make_runs(records):
    """A contract-shaped runs table from (phase, method, seed, lr, test_loss[, diverged]) tuples."""
    rows = []
    for i, rec in enumerate(records):
        phase, method, seed, lr, loss = rec[:5]
        diverged = rec[5] if len(rec) > 5 else False
        rows.append({
            "run_id": f"r{i}", "phase": phase, "dataset": "toy", "method": method, "seed": seed, "lr": lr,
            "feedback_gain": 1.0, "diverged": diverged, "final_train_loss": loss, "val_loss": loss,
            "val_acc": 0.9, "test_loss": np.nan if diverged else loss, "test_acc": 0.9,
            "examples_to_target": 100.0 * (seed + 1), "reached_target": True,
        })
    return pd.DataFrame(rows)


# Seeds 0, 1, 2: bp losses 1.0, 2.0, 3.0; fa losses 1.5, 2.1, 3.4 -> differences 0.5, 0.1, 0.4.
BP = [1.0, 2.0, 3.0]
FA = [1.5, 2.1, 3.4]
TOY = make_runs([("tuned", "bp", s, 0.1, x) for s, x in enumerate(BP)]
                + [("tuned", "fa", s, 0.2, x) for s, x in enumerate(FA)])


def test_paired_difference_by_hand():
    out = paired_contrast(TOY, "fa", "test_loss")
    assert out["estimate"] == pytest.approx((0.5 + 0.1 + 0.4) / 3)
    assert out["n"] == 3
    # Paired t by hand: mean 1/3, sample sd of (0.5, 0.1, 0.4) = 0.2082, 2 degrees of freedom,
    # t_{0.975, 2} = 4.3027: half-width 4.3027 * 0.2082 / sqrt(3) = 0.5172.
    diffs = np.array([0.5, 0.1, 0.4])
    se = diffs.std(ddof=1) / np.sqrt(3)
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(diffs.mean() / se, df=2))
    assert out["ci_low"] == pytest.approx(1 / 3 - 0.5172, abs=1e-4)
    assert out["ci_high"] == pytest.approx(1 / 3 + 0.5172, abs=1e-4)
    assert "only 3 pairs" in out["note"]  # fewer than MIN_PAIRS


def test_paired_contrast_drops_pairs_with_a_diverged_member_and_counts_them():
    runs = make_runs([("tuned", "bp", s, 0.1, x) for s, x in enumerate(BP)]
                     + [("tuned", "fa", 0, 0.2, 1.5), ("tuned", "fa", 1, 0.2, np.nan, True),
                        ("tuned", "fa", 2, 0.2, 3.4)])
    out = paired_contrast(runs, "fa", "test_loss")
    assert out["n"] == 2
    assert out["estimate"] == pytest.approx((0.5 + 0.4) / 2)
    assert out["excluded"] == {"diverged": 1, "non-finite test_loss": 0, "partner run excluded": 1}


def test_t_interval_of_identical_values_is_a_point():
    out = t_interval(np.full(5, 0.25))
    assert (out["ci_low"], out["ci_high"], out["p_value"]) == (0.25, 0.25, 0.0)


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


def test_run_analysis_writes_contract_files_from_csv(tmp_path):
    runs = generate_runs(SyntheticSpec(grid_seeds=4, tuned_seeds=4), seed=0)
    runs_path = tmp_path / "runs.csv"
    runs.to_csv(runs_path, index=False)
    out = tmp_path / "analysis"
    result = run_analysis(runs_path, out, seed=1, n_boot=100)

    estimates = pd.read_csv(out / "estimates.csv")
    assert tuple(estimates.columns) == ESTIMATES_COLUMNS
    assert len(estimates) == len(result.estimates)
    text = (out / "summary.json").read_text()
    json.loads(text, parse_constant=pytest.fail)  # strict JSON: no NaN or Infinity
    summary = Summary.from_json(text)
    assert summary == Summary.from_json(result.summary.to_json())  # what was written is what is read
    assert summary.n_runs == len(runs)
    assert summary.n_seeds == {"synthetic": {"grid": 4, "tuned": 4}}
    diverged = sum(e.n for e in summary.exclusions if e.estimand == "effective_lr" and e.reason == "diverged")
    assert diverged == int(runs.query("phase == 'grid'")["diverged"].sum())
    assert summary.mediation["synthetic"].design == "pooled"
    assert summary.mediation["synthetic"].lr is None and len(summary.mediation["synthetic"].lrs) > 1
    assert {r.unit for r in summary.estimates if r.estimand == "tuned"} == {"pairs"}
    assert {r.holm_family for r in summary.estimates if r.estimand == "tuned"} == {"test_loss", "test_acc"}
    km = pd.read_csv(out / "km.csv")
    assert list(km.columns) == ["dataset", "method", "examples", "survival", "ci_low", "ci_high"]
    assert km["survival"].between(0, 1).all()
    models = (out / "models.txt").read_text()
    assert "bs(log_elr, df=4)" in models and "bs(log_lr, df=4)" in models and "ACME" in models


def test_same_seed_same_results():
    runs = generate_runs(SyntheticSpec(grid_lrs=(1e-3, 1e-2, 1e-1), grid_seeds=3, tuned_seeds=3), seed=0)
    a = analyze(runs, seed=5, n_boot=100).estimates
    b = analyze(runs, seed=5, n_boot=100).estimates
    pd.testing.assert_frame_equal(a, b)


def test_dataset_without_sign_methods_skips_mediation():
    runs = generate_runs(SyntheticSpec(grid_seeds=4, tuned_seeds=4), seed=0)
    runs = runs[runs["method"].isin(["bp", "fa"])]
    result = analyze(runs, n_boot=100)
    assert result.summary.mediation == {}
    assert "no sign and sign_scaled" in result.summary.skipped_reason("mediation", "synthetic")
    assert not result.estimates["estimand"].str.startswith("mediation").any()
    assert set(result.estimates["method"]) == {"fa"}


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


def test_expected_best_validation_loss_by_hand():
    from soap.analysis.tuning_budget import expected_best

    # Best of k draws with replacement from {1, 2, 3}: k = 1 the mean; k = 2: P(min = 1) = 1 - (2/3)^2,
    # P(min = 2) = (2/3)^2 - (1/3)^2, P(min = 3) = (1/3)^2, so 5/9 + 2 * 3/9 + 3 * 1/9 = 14/9.
    assert expected_best(np.array([3.0, 1.0, 2.0]), 1) == pytest.approx(2.0)
    assert expected_best(np.array([3.0, 1.0, 2.0]), 2) == pytest.approx(14 / 9)
    assert expected_best(np.array([3.0, 1.0, 2.0]), 200) == pytest.approx(1.0)


def test_iid_trials_are_the_random_ones_or_tpe_startup():
    from soap.analysis.tuning_budget import at_edge, iid_trials

    trials = pd.DataFrame({"dataset": "mnist", "method": "fa", "repeat": "0", "number": range(8),
                           "value": np.arange(8.0), "state": "COMPLETE"})
    chosen, which = iid_trials(trials, startup=4)
    assert list(chosen["number"]) == [0, 1, 2, 3] and "startup" in which
    flagged = trials.assign(origin=["random", "tpe"] * 4)  # as soap.tuning.study.trials_frame writes it
    chosen, which = iid_trials(flagged, startup=4)
    assert list(chosen["number"]) == [0, 2, 4, 6] and "recorded origin" in which
    assert at_edge(1.05e-3, 1e-3, 3.0) == "low" and at_edge(2.9, 1e-3, 3.0) == "high"
    assert at_edge(0.05, 1e-3, 3.0) is None


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
