"""The rule comparison (issue 12): its table against independent computations, its figure against the
estimates it draws; an MLP's and a LeNet-5's runs as separate rows (issue 20)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from soap import plots
from soap.analysis.core import analyze
from soap.analysis.errors import AnalysisError
from soap.analysis.rule_comparison import reference_levels, rule_comparison_table
from soap.synthetic import SyntheticSpec, generate_runs
from soap.tables import TableError

# so_fa's runs are fa's, copied: the analysis's interaction test is then rank-deficient, which is the
# fixture's doing; the models' warnings on few runs are the analysis tests' concern
pytestmark = [pytest.mark.filterwarnings("ignore:Maximum Likelihood optimization failed"),
              pytest.mark.filterwarnings("ignore:omni_normtest is not valid"),
              pytest.mark.filterwarnings("ignore:covariance of constraints does not have full rank")]


@pytest.fixture(scope="module")
def study():
    runs = generate_runs(SyntheticSpec(tuned_seeds=8), seed=5)
    # an so_ rule: fa's runs with activity propagation's two passes per step after a 640-example warm-up
    so = runs[runs["method"] == "fa"].assign(method="so_fa", soap_gain=2.0e-3)
    runs = pd.concat([runs.assign(soap_gain=np.nan), so], ignore_index=True)
    runs["run_id"] = [f"r{i}" for i in range(len(runs))]
    two_pass = np.where(runs["method"] == "so_fa", 640.0, np.nan)
    steps = runs["examples_to_target"] / 64
    runs["passes_to_target"] = np.where(np.isnan(two_pass), steps, 10 + 2 * (steps - 10))
    return runs, analyze(runs, n_boot=200).estimates


def test_table_matches_the_runs_and_the_estimates(study):
    runs, estimates = study
    table = rule_comparison_table(runs, estimates).set_index(["dataset", "method"])
    assert list(table.index.get_level_values("method")[:5]) == ["bp", "fa", "sign", "sign_scaled", "so_fa"]
    tuned = runs[(runs["phase"] == "tuned") & (runs["method"] == "sign")]
    row = table.loc[("synthetic", "sign")]
    acc = tuned["test_acc"].dropna()
    half = stats.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / np.sqrt(len(acc))
    assert row["test_acc_mean"] == pytest.approx(acc.mean(), rel=1e-12)
    assert row["test_acc_ci_high"] - row["test_acc_ci_low"] == pytest.approx(2 * half, rel=1e-9)
    for outcome in ("test_loss", "test_acc"):
        for estimand in ("tuned", "effective_lr"):
            source = estimates.query("estimand == @estimand and method == 'sign' and outcome == @outcome").iloc[0]
            assert row[f"{outcome}_{estimand}_ci_low"] == source["ci_low"]
    ratio = estimates.query("estimand == 'time_to_target_ratio' and method == 'sign'").iloc[0]
    assert row["time_to_target_ratio_estimate"] == ratio["estimate"]
    assert table.loc[("synthetic", "bp"), "time_to_target_ratio_estimate"] == 1.0
    assert np.isnan(row["soap_gain"]) and table.loc[("synthetic", "so_fa"), "soap_gain"] == pytest.approx(2e-3)


def test_time_to_target_is_the_kaplan_meier_median_in_examples_and_in_passes(study):
    runs, estimates = study
    table = rule_comparison_table(runs, estimates).set_index("method")
    for method in ("fa", "so_fa"):
        arm = runs[(runs["phase"] == "tuned") & (runs["method"] == method)]
        assert arm["reached_target"].all() and len(arm) == 8
        # no censoring: S(t) first drops below 1/2 at the (n/2 + 1)-th smallest time
        assert table.loc[method, "median_examples_to_target"] == np.sort(arm["examples_to_target"])[4]
        assert table.loc[method, "median_passes_to_target"] == np.sort(arm["passes_to_target"])[4]
    # the same runs in passes: an so_ step after the warm-up costs two
    assert table.loc["so_fa", "median_passes_to_target"] == pytest.approx(
        2 * table.loc["fa", "median_passes_to_target"] - 10)


def test_figure_draws_each_estimate_at_its_value_with_accuracy_in_points(study):
    runs, estimates = study
    fig, axes = plots.plot_rule_comparison(estimates, {"synthetic": {"test_loss": 0.3, "test_acc": 0.95}})
    assert axes.shape == (1, 2)
    for ax, (outcome, factor) in zip(axes[0], (("test_loss", 1), ("test_acc", 100))):
        drawn = sorted(round(float(c.lines[0].get_xdata()[0]), 9) for c in ax.containers)
        rows = estimates.query("estimand in ('tuned', 'effective_lr') and outcome == @outcome")
        assert drawn == sorted(round(v * factor, 9) for v in rows["estimate"].dropna())
        assert [t.get_text() for t in ax.get_yticklabels()][:1] in (["fa"], [""])
    assert "95%" in axes[0, 1].get_title()


def test_reference_levels_are_bps_means_at_its_tuned_lr(study):
    runs, _ = study
    levels = reference_levels(runs).set_index(["dataset", "outcome"])["level"]
    bp = runs[(runs["phase"] == "tuned") & (runs["method"] == "bp")]
    assert levels.to_dict() == pytest.approx({("synthetic", "test_loss"): bp["test_loss"].mean(),
                                              ("synthetic", "test_acc"): bp["test_acc"].mean()})


def test_the_slopes_differ_flag_is_carried_from_the_estimates(study):
    runs, estimates = study
    flagged = estimates.assign(slopes_differ=(estimates["estimand"] == "effective_lr") & (estimates["method"] == "sign")
                               & (estimates["outcome"] == "test_loss"))
    table = rule_comparison_table(runs, flagged).set_index("method")
    assert table.loc["sign", "test_loss_effective_lr_slopes_differ"]
    assert not table.loc["sign", "test_acc_effective_lr_slopes_differ"]
    assert not table.loc["fa", "test_loss_effective_lr_slopes_differ"]
    assert "test_loss_tuned_slopes_differ" not in table  # a paired contrast has no slope test
    # tuned lr: the geometric mean over the method's tuned runs
    tuned = runs[(runs["phase"] == "tuned") & (runs["method"] == "sign")]
    assert table.loc["sign", "tuned_lr"] == pytest.approx(stats.gmean(tuned["lr"]))



LENET = dict(architecture="lenet5", layers="1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu")


def two_networks() -> tuple[pd.DataFrame, pd.DataFrame]:
    """An MLP's and a LeNet-5's runs of one dataset, the LeNet's losses 1 nat higher (pooling would show)."""
    small = dict(grid_lrs=(1e-3, 1e-2, 1e-1), grid_seeds=3, tuned_seeds=4)
    mlp = generate_runs(SyntheticSpec(**small), seed=1)
    lenet = generate_runs(SyntheticSpec(**small, **LENET), seed=2)
    lenet = lenet.assign(run_id="lenet-" + lenet["run_id"], test_loss=lenet["test_loss"] + 1.0)
    return mlp, lenet


def test_two_architectures_get_their_own_rows_and_levels_never_pooled():
    mlp, lenet = two_networks()
    runs = pd.concat([mlp, lenet], ignore_index=True)
    table = rule_comparison_table(runs, None).set_index(["architecture", "method"])
    levels = reference_levels(runs).set_index(["architecture", "outcome"])["level"]
    methods = sorted(mlp["method"].unique())
    assert len(table) == 2 * len(methods) and set(table.index.get_level_values(0)) == {"mlp", "lenet5"}
    for architecture, part in (("mlp", mlp), ("lenet5", lenet)):
        tuned = part[part["phase"] == "tuned"]
        for method, arm in tuned.groupby("method"):
            row = table.loc[(architecture, method)]
            assert row["dataset"] == "synthetic" and row["n_runs"] == len(arm)
            assert row["test_loss_mean"] == pytest.approx(arm["test_loss"].mean(), rel=1e-12)
        bp = tuned[tuned["method"] == "bp"]
        assert levels[(architecture, "test_loss")] == pytest.approx(bp["test_loss"].mean(), rel=1e-12)


def test_per_dataset_estimates_cannot_serve_two_architectures_and_the_analysis_refuses_them():
    mlp, lenet = two_networks()
    runs = pd.concat([mlp, lenet], ignore_index=True)
    estimates = pd.DataFrame({"estimand": ["tuned"], "dataset": ["synthetic"], "method": ["fa"], "outcome": ["test_loss"],
                              "reference": ["bp"], "estimate": [0.1]})
    with pytest.raises(AnalysisError, match="several architectures"):
        rule_comparison_table(runs, estimates)
    with pytest.raises(AnalysisError, match="dataset 'synthetic' holds runs of architectures lenet5, mlp"):
        analyze(runs, n_boot=10)
    with pytest.raises(TableError, match="no architecture or layers column"):
        rule_comparison_table(mlp.drop(columns=["architecture", "layers"]), None)
