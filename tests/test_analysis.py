"""The analysis recovers the synthetic generator's known truth (soap.synthetic), estimand by estimand.

Truths come from SyntheticSpec's closed forms, never from the analysis itself. Calibration (do 95%
intervals cover the truth 95% of the time?) is checked across many generated datasets. On a single
dataset the check is "estimate within 4 standard errors of the truth" (SE read off the 95% interval):
one dataset carries ~20 intervals, and asking all of them to cover would fail most seeds even for a
correct procedure (1 - 0.95**20 = 64%), while a 4-SE miss has probability ~6e-5 per check.
"""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from soap.analysis.core import analyze
from soap.analysis.effective_lr import fit_lr_model
from soap.analysis.inputs import at_lr
from soap.analysis.mediation import fit_mediation, mediation_rows, pooled_rows
from soap.analysis.paired import paired_contrast
import soap.analysis.time_to_target as time_to_target
from soap.analysis.time_to_target import km_median, survival_data
from soap.synthetic import SyntheticSpec, generate_runs

SPEC = SyntheticSpec()
SMALL_LR = 1e-3  # a grid value far below every method's optimum: sign's 20x gain helps here
NON_BP = ("fa", "sign", "sign_scaled")
# The same truth with the phase a coverage loop does not use cut to the minimum, for speed.
GRID_ONLY = replace(SPEC, tuned_seeds=2)
TUNED_ONLY = replace(SPEC, grid_lrs=(SMALL_LR,), grid_seeds=2)


@pytest.fixture(scope="module")
def result():
    return analyze(generate_runs(SPEC, seed=11), fixed_lr=SMALL_LR, seed=0, n_boot=300)


def rows(result, estimand, outcome="test_loss"):
    est = result.estimates
    return est[(est["estimand"] == estimand) & (est["outcome"] == outcome)].set_index("method")


def assert_inside(row, truth):
    assert row["ci_low"] <= truth <= row["ci_high"], f"{truth} not in [{row['ci_low']}, {row['ci_high']}]"


def assert_near(row, truth, z=4.0, log=False):
    """|estimate - truth| <= z standard errors, the SE being the 95% interval's half-width / 1.96."""
    scale = np.log if log else (lambda x: x)
    se = (scale(row["ci_high"]) - scale(row["ci_low"])) / (2 * 1.96)
    assert abs(scale(row["estimate"]) - scale(truth)) <= z * se, (row["estimate"], truth, se)


def test_effective_lr_recovers_direct_effects_on_loss_and_accuracy(result):
    loss, acc = rows(result, "effective_lr"), rows(result, "effective_lr", "test_acc")
    for method in NON_BP:
        assert_near(loss.loc[method], SPEC.direct_effect[method])
        assert_near(acc.loc[method], -SPEC.acc_per_loss * SPEC.direct_effect[method])
    # Diverged runs, runs of partly diverged cells and runs outside bp's support were excluded and
    # counted, not dropped silently.
    support = result.summary.effective_lr_model["synthetic"].support
    excluded = {(e.method, e.reason): e.n for e in result.summary.exclusions if e.estimand == "effective_lr"}
    assert sum(support["n_used"].values()) == SPEC.grid_seeds * len(SPEC.grid_lrs) * 4 - sum(excluded.values())
    # each contrast is fitted on bp's runs and its method's only
    assert loss.loc["fa", "n"] == support["n_used"]["bp"] + support["n_used"]["fa"]
    grid = generate_runs(SPEC, seed=11).query("phase == 'grid'")
    assert excluded[("sign", "diverged")] == grid.loc[grid["method"] == "sign", "diverged"].sum() > 0


def test_nominal_lr_adjustment_is_confounded_by_the_gain(result):
    # Adjusting for nominal lr leaves sign's 20x gain in its coefficient: the true direct effect (0)
    # falls outside that interval while the effective-lr model's covers it.
    nominal = result.summary.effective_lr_model["synthetic"].nominal_coef["sign"]
    assert nominal.ci_high < SPEC.direct_effect["sign"] - 0.1


def test_effective_lr_interval_coverage_across_datasets():
    # 100 datasets x 3 methods. For 100 intervals with true coverage 0.95, P(hits < 88) ~ 0.001 and
    # P(hits = 100) ~ 0.006, so [0.88, 0.99] fails a correct procedure rarely and catches SEs that
    # ignore the seed clustering or a misspecified curve.
    hits = {m: 0 for m in NON_BP}
    n_datasets = 100
    for seed in range(n_datasets):
        runs = generate_runs(GRID_ONLY, seed=1000 + seed)
        fit = fit_lr_model(runs[runs["phase"] == "grid"], "test_loss")
        for method in NON_BP:
            coef = fit.coef[method]
            hits[method] += coef["ci_low"] <= SPEC.direct_effect[method] <= coef["ci_high"]
    for method, n_hits in hits.items():
        assert 0.88 <= n_hits / n_datasets <= 0.99, (method, n_hits)


def test_tuned_paired_interval_coverage_across_datasets():
    # Same binomial band as above, for the paired t interval of the mean difference.
    hits = {m: 0 for m in NON_BP}
    n_datasets = 100
    for seed in range(n_datasets):
        tuned = generate_runs(TUNED_ONLY, seed=2000 + seed).query("phase == 'tuned'")
        for method in NON_BP:
            contrast = paired_contrast(tuned, method, "test_loss")
            hits[method] += contrast["ci_low"] <= SPEC.tuned_contrast(method) <= contrast["ci_high"]
    for method, n_hits in hits.items():
        assert 0.88 <= n_hits / n_datasets <= 0.99, (method, n_hits)


def test_fixed_small_lr_shows_the_confounded_advantage(result):
    assert result.summary.fixed_lr["synthetic"] == pytest.approx(SMALL_LR)
    fixed = rows(result, "fixed_lr")
    # sign beats bp on loss at a small shared lr, although its direct effect is 0: the gain does it.
    assert fixed.loc["sign", "ci_high"] < 0
    for method in NON_BP:
        assert_near(fixed.loc[method], SPEC.expected_loss(method, SMALL_LR) - SPEC.expected_loss("bp", SMALL_LR))


def test_tuned_comparison_recovers_the_truth_at_each_optimum(result):
    tuned = rows(result, "tuned")
    for method in NON_BP:
        truth = SPEC.expected_loss(method, SPEC.tuned_lr(method)) - SPEC.expected_loss("bp", SPEC.tuned_lr("bp"))
        assert_near(tuned.loc[method], truth)
    # Tuned, sign is no better than bp: the advantage at the small fixed lr is gone.
    assert tuned.loc["sign", "ci_high"] > 0


def test_holm_adjusted_p_values_are_no_smaller_and_monotone(result):
    family = result.estimates[result.estimates["p_holm"].notna()]
    assert (family["p_holm"] >= family["p_value"] - 1e-15).all()
    loss_family = family[family["holm_family"] == "test_loss"].sort_values("p_value")
    assert loss_family["p_holm"].is_monotonic_increasing
    # fixed_lr, small_lr, tuned, effective_lr, time to target; the grid-lr map is its own family
    assert len(loss_family) == 5 * len(NON_BP)
    assert set(loss_family["estimand"]) == {"fixed_lr", "small_lr", "tuned", "effective_lr", "time_to_target_ratio"}
    assert result.summary.holm_families["test_loss"].startswith(f"{5 * len(NON_BP)} tests")


def test_mediation_attributes_the_small_lr_advantage_to_the_gain():
    # Truth at lr 1e-3: ACME -0.434, ADE -0.05, total -0.484, proportion mediated 0.90. The gain
    # varies little within an arm, so the mediator's curvature needs ~30 seeds to be pinned down.
    spec = replace(SPEC, grid_seeds=30, tuned_seeds=2)
    true_acme = spec.mediated_effect(SMALL_LR)
    true_ade = spec.direct_effect["sign"] - spec.direct_effect["sign_scaled"]
    assert true_acme / (true_acme + true_ade) > 0.85
    for seed in range(3):
        runs = generate_runs(spec, seed=seed)
        fit = fit_mediation(mediation_rows(at_lr(runs[runs["phase"] == "grid"], SMALL_LR), "test_loss")[0],
                            "test_loss", 300, np.random.default_rng(seed), "fixed_lr")
        assert fit.effects["acme"]["ci_low"] <= true_acme <= fit.effects["acme"]["ci_high"]
        assert fit.effects["ade"]["ci_low"] <= true_ade <= fit.effects["ade"]["ci_high"]
        assert fit.effects["prop"]["estimate"] > 0.5


def pooled_truth(spec, lrs, kind):
    """True pooled-design ACME / total: the per-lr truths averaged with equal weight per lr."""
    if kind == "acme":
        return float(np.mean([spec.mediated_effect(lr) for lr in lrs]))
    return float(np.mean([spec.expected_loss("sign", lr) - spec.expected_loss("sign_scaled", lr) for lr in lrs]))


def test_mediation_rows_and_summary(result):
    med = result.summary.mediation["synthetic"]
    # Default design: pooled over the grid lrs where sign and sign_scaled are both healthy (sign
    # diverges from lr 0.1 up: effective lr 2 > 1.5).
    assert med.design == "pooled" and med.lr is None and med.n_seeds == SPEC.grid_seeds
    np.testing.assert_allclose(med.lrs, [lr for lr in SPEC.grid_lrs if lr < 0.1])
    assert "C(seed)" in med.mediator_model and "C(seed)" in med.outcome_model
    # The imprecision of the split is reported: ACME and ADE SDs dwarf the total's.
    assert med.acme.sd > 3 * med.total.sd and med.ade.sd > 3 * med.total.sd
    assert med.prop.p_value >= 1 / med.n_sims
    est = result.estimates[result.estimates["estimand"].str.startswith("mediation")]
    assert set(est["estimand"]) == {"mediation_acme", "mediation_ade", "mediation_total", "mediation_prop"}
    assert (est["method"] == "sign").all() and (est["reference"] == "sign_scaled").all()
    assert_near(rows(result, "mediation_total").loc["sign"], pooled_truth(SPEC, med.lrs, "total"))
    assert_near(rows(result, "mediation_acme").loc["sign"], pooled_truth(SPEC, med.lrs, "acme"))


def test_fixed_lr_mediation_design_is_still_available():
    fixed = analyze(generate_runs(GRID_ONLY, seed=11), fixed_lr=SMALL_LR, seed=0, n_boot=200,
                    outcomes=("test_loss",), mediation_design="fixed_lr")
    med = fixed.summary.mediation["synthetic"]
    assert med.design == "fixed_lr" and med.lr == pytest.approx(SMALL_LR) and med.lrs == [SMALL_LR]
    true_total = SPEC.expected_loss("sign", SMALL_LR) - SPEC.expected_loss("sign_scaled", SMALL_LR)
    assert_near(rows(fixed, "mediation_total").loc["sign"], true_total)


def test_pooled_mediation_recovers_the_known_split_with_few_seeds():
    # 8 seeds, as in the default study: the pooled design recovers ACME and ADE (the fixed-lr design
    # needs ~30 seeds for that, see the test above), with intervals that cover the truth.
    spec = replace(SPEC, grid_seeds=8, tuned_seeds=2)
    true_ade = spec.direct_effect["sign"] - spec.direct_effect["sign_scaled"]
    for seed in range(3):
        runs = generate_runs(spec, seed=seed)
        grid = runs[runs["phase"] == "grid"]
        fit = fit_mediation(pooled_rows(grid, "test_loss")[0], "test_loss", 300, np.random.default_rng(seed),
                            "pooled")
        assert fit.design == "pooled" and len(fit.lrs) == 6
        true_acme = pooled_truth(spec, fit.lrs, "acme")
        assert fit.effects["acme"]["ci_low"] <= true_acme <= fit.effects["acme"]["ci_high"]
        assert fit.effects["ade"]["ci_low"] <= true_ade <= fit.effects["ade"]["ci_high"]
        # Narrower than the fixed-lr design on the same runs.
        fixed = fit_mediation(mediation_rows(at_lr(grid, SMALL_LR), "test_loss")[0], "test_loss", 300,
                              np.random.default_rng(seed), "fixed_lr")
        width = {k: f.effects["acme"]["ci_high"] - f.effects["acme"]["ci_low"] for k, f in
                 (("pooled", fit), ("fixed", fixed))}
        assert width["pooled"] < width["fixed"] / 2, width


# sign's gain of 200 puts its effective lr at 0.02..6 on a grid where bp's healthy range is
# 1e-4..0.1: the supports only partly overlap. sign's lr 0.01 cell straddles the divergence edge.
PARTIAL = replace(SPEC, grid_lrs=tuple(np.logspace(-4, -1, 7)), gain={**SPEC.gain, "sign": (200.0, 0.15)},
                  diverge_elr=2.0, tuned_seeds=2)


def test_effective_lr_is_restricted_to_bp_support_and_recovers_the_truth_there():
    runs = generate_runs(PARTIAL, seed=5)
    grid = runs[runs["phase"] == "grid"]
    fit = fit_lr_model(grid, "test_loss")
    support = fit.support
    assert support["low"] == pytest.approx(1e-4) and support["high"] == pytest.approx(0.1)
    sign = grid[grid["method"] == "sign"]
    healthy = sign.groupby("lr")["diverged"].transform("any") == 0
    outside = healthy & ~sign["effective_lr"].between(1e-4, 0.1)
    assert support["n_dropped"]["sign"] == outside.sum() > 0
    assert support["n_unhealthy_cell"]["sign"] == ((~healthy) & ~sign["diverged"]).sum() > 0
    assert support["n_used"]["sign"] == (healthy & ~outside).sum() > 0
    lo, hi = support["used_range"]["sign"]
    assert 1e-4 <= lo <= hi <= 0.1
    for method in NON_BP:
        assert_near(fit.coef[method], PARTIAL.direct_effect[method])


def test_effective_lr_coverage_with_partial_overlap():
    hits, n_datasets = 0, 60
    for seed in range(n_datasets):
        runs = generate_runs(PARTIAL, seed=3000 + seed)
        coef = fit_lr_model(runs[runs["phase"] == "grid"], "test_loss").coef["sign"]
        hits += coef["ci_low"] <= PARTIAL.direct_effect["sign"] <= coef["ci_high"]
    # 60 intervals at 95%: P(hits < 52) ~ 0.005.
    assert 52 <= hits <= 60, hits


def test_time_to_target_recovers_median_ratios(result):
    ratio = rows(result, "time_to_target_ratio", "examples_to_target")
    for method in NON_BP:
        assert_near(ratio.loc[method], SPEC.median_ratio(method), log=True)
    ttt = result.summary.time_to_target["synthetic"]
    # A slower method (median ratio 2) reaches the target at a lower hazard than bp.
    assert ttt.hazard_ratio["fa"].ci_high < 1
    # The ratio row's p-value is the bootstrap test of the ratio (consistent with its interval), and
    # proportional hazards hold in this world (lognormal times with a common sd: nearly so).
    fa = ratio.loc["fa"]
    assert (fa["p_value"] < 0.05) == (fa["ci_low"] > 1 or fa["ci_high"] < 1)
    assert set(ttt.proportional_hazards) == set(NON_BP)


# One slow method whose runs are heavily censored: median 180,000 examples against a budget of
# 250,000, so ~30% of its runs never reach the target.
CENSORED = replace(SPEC, direct_effect={"bp": 0.0, "fa": 0.15}, gain={"bp": (1.0, 0.0), "fa": (1.0, 0.05)},
                   median_examples={"bp": 50_000.0, "fa": 180_000.0}, examples_sd_log=0.6,
                   grid_seeds=2, tuned_seeds=60)


def test_time_to_target_handles_heavy_censoring_without_bias():
    truth = np.log(CENSORED.median_ratio("fa"))
    km_logs, dropped_logs, censored = [], [], []
    for seed in range(20):
        tuned = generate_runs(CENSORED, seed=seed).query("phase == 'tuned'")
        surv = survival_data(tuned, fallback_budget=np.nan)
        fa, bp = surv[surv["method"] == "fa"], surv[surv["method"] == "bp"]
        km_logs.append(np.log(km_median(fa["time"].to_numpy(), fa["event"].to_numpy())
                              / km_median(bp["time"].to_numpy(), bp["event"].to_numpy())))
        reached = tuned[tuned["reached_target"]]
        dropped_logs.append(np.log(reached.loc[reached["method"] == "fa", "examples_to_target"].median()
                                   / reached.loc[reached["method"] == "bp", "examples_to_target"].median()))
        censored.append(1 - fa["event"].mean())
    assert np.mean(censored) > 0.2
    # The KM median ratio is unbiased to within its Monte Carlo error (~0.03 on the log scale here);
    # dropping censored runs takes the median of a truncated sample and lands ~0.25 low.
    assert abs(np.mean(km_logs) - truth) < 0.1
    assert np.mean(dropped_logs) < truth - 0.15


def test_arm_that_never_reaches_the_target_gets_no_cox_estimate_but_a_logrank_p():
    runs = generate_runs(CENSORED, seed=1)
    never = (runs["method"] == "fa") & (runs["phase"] == "tuned")
    runs.loc[never, "reached_target"] = False
    runs.loc[never, "examples_to_target"] = np.nan
    ttt = analyze(runs, seed=0, n_boot=200).summary.time_to_target["synthetic"]
    assert "not estimable for fa" in ttt.hazard_ratio_note
    hr = ttt.hazard_ratio["fa"]
    assert not hr.available and hr.ci_low is None
    assert 0 < hr.p_value < 1e-6  # 60 vs 0 events: overwhelming, but not the Wald p of 0
    ratio = ttt.ratio["fa"]
    # The median ratio is censored: reported as a lower bound (the budget over bp's median), with an
    # interval unbounded above.
    assert not ratio.available and ratio.ci_high is None  # infinite: null in summary.json
    bound = CENSORED.budget_examples / ttt.median_examples["bp"]
    assert ratio.ci_low == pytest.approx(bound, rel=0.3)
    assert "at least" in ratio.note and ttt.median_lower_bound["fa"] == CENSORED.budget_examples


def test_time_to_target_interval_under_heavy_censoring():
    result = analyze(generate_runs(CENSORED, seed=0), seed=0, n_boot=300)
    ttt = result.summary.time_to_target["synthetic"]
    assert ttt.n_censored["fa"] > 10 and ttt.n_censored["bp"] == 0
    ratio = ttt.ratio["fa"]
    assert ratio.ci_low <= CENSORED.median_ratio("fa") <= ratio.ci_high


def test_censoring_falls_back_without_examples_seen():
    runs = generate_runs(CENSORED, seed=0).drop(columns="examples_seen")
    tuned = runs[runs["phase"] == "tuned"]
    surv = survival_data(tuned, fallback_budget=runs["examples_to_target"].max())
    censored = surv[surv["event"] == 0]
    assert len(censored) == (~tuned["reached_target"]).sum()
    assert (censored["time"] == runs["examples_to_target"].max()).all()
    assert analyze(runs, n_boot=50).summary.time_to_target["synthetic"].n_censored["fa"] == len(censored)


def test_km_table_is_a_decreasing_step_function(result):
    km = result.km
    for _, curve in km.groupby("method"):
        assert curve["survival"].iloc[0] == 1.0
        assert curve["survival"].is_monotonic_decreasing
        assert (curve["ci_low"] <= curve["survival"] + 1e-12).all()
        assert (curve["survival"] <= curve["ci_high"] + 1e-12).all()
    assert isinstance(km, pd.DataFrame) and set(km["method"]) == {"bp", *NON_BP}


def test_cox_reports_a_monotone_likelihood_as_not_estimable_with_its_reason():
    # Every fa run reaches the target (median 90,000) after nearly every bp run (50,000, sd of log
    # 0.15), on a 640-example logging grid: the partial likelihood has no finite maximum for fa.
    spec = replace(SPEC, tuned_seeds=16, budget_examples=100_000.0, examples_sd_log=0.15,
                   median_examples={"bp": 50_000.0, "fa": 90_000.0, "sign": 45_000.0, "sign_scaled": 95_000.0})
    tuned = generate_runs(spec, seed=0).query("phase == 'tuned'").copy()
    tuned["examples_to_target"] = np.ceil(tuned["examples_to_target"] / 640) * 640
    cox = time_to_target.fit_cox(survival_data(tuned, 100_000))
    assert "monotone partial likelihood" in cox.reasons["fa"]
    assert np.isnan(cox.hazard_ratio["fa"]["estimate"]) and cox.hazard_ratio["fa"]["p_value"] < 1e-3  # log-rank
    sign = cox.hazard_ratio["sign"]  # interleaves with bp: estimated, faster than bp
    assert 1 < sign["ci_low"] < sign["estimate"] < sign["ci_high"] < 1e4
