"""Bad values in a runs table, and estimands that cannot be computed: one clear line, or a counted
exclusion, or a row with its reason; never a traceback, a silent drop, or one estimand taking the rest down."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from soap import cli
import soap.analysis.core as core
from soap.analysis.errors import AnalysisError
from soap.analysis.core import analyze
from soap.analysis.outputs import run_analysis
from soap.synthetic import SyntheticSpec, generate_runs
from soap.tables import TableError, read_table
from study_results import SMALL


@pytest.fixture
def runs():
    return generate_runs(SMALL, seed=0)


def _excluded(result, estimand, method, reason):
    return sum(e.n for e in result.summary.exclusions
               if (e.estimand, e.method, e.reason) == (estimand, method, reason))


@pytest.mark.parametrize("bad", [0.0, -0.01, np.nan, np.inf])
def test_learning_rate_must_be_positive_and_finite(runs, bad):
    runs.loc[5, "lr"] = bad
    run_id = runs.loc[5, "run_id"]
    with pytest.raises(AnalysisError, match=rf"lr must be positive and finite; 1 run\(s\), e.g. {run_id}"):
        analyze(runs, n_boot=50)


def test_bp_gain_other_than_one_is_an_error(runs):
    # A gain of 1.3 for bp would shift every effective-lr coefficient by log 1.3 on the lr axis.
    bp = runs.index[runs["method"] == "bp"][:2]
    runs.loc[bp, "feedback_gain"] = 1.3
    with pytest.raises(AnalysisError, match=r"bp's feedback_gain must be 1 \(within 0.001\); 2 run\(s\)"):
        analyze(runs, n_boot=50)
    runs.loc[bp, "feedback_gain"] = 1 + 1e-5  # measurement noise in a measured ratio is fine
    analyze(runs, n_boot=50, outcomes=("test_loss",))


def test_a_file_that_is_not_a_table_is_one_line(tmp_path, caplog):
    bad = tmp_path / "runs.parquet"
    bad.write_text("run_id,phase\nnot really parquet\n")
    with pytest.raises(TableError, match=r"runs.parquet: not a readable parquet table"):
        read_table(bad)
    assert cli.main(["analyze", "--runs", str(bad), "--out", str(tmp_path / "out")]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None
    message = errors[0].getMessage()
    assert "not a readable parquet table" in message and "\n" not in message


def test_nan_outcome_and_nan_gain_of_healthy_runs_are_counted_not_dropped(runs):
    grid_sign = runs.index[(runs["phase"] == "grid") & (runs["method"] == "sign") & ~runs["diverged"]
                           & np.isclose(runs["lr"], 1e-3)]
    runs.loc[grid_sign[0], "test_loss"] = np.nan
    runs.loc[grid_sign[1], "feedback_gain"] = np.nan
    result = analyze(runs, fixed_lr=1e-3, n_boot=50)
    assert _excluded(result, "fixed_lr", "sign", "non-finite test_loss") == 1
    assert _excluded(result, "fixed_lr", "sign", "partner run excluded") == 1  # bp's run of that seed
    assert _excluded(result, "effective_lr", "sign", "non-finite test_loss") == 1
    assert _excluded(result, "effective_lr", "sign", "non-finite feedback_gain") == 1
    fixed = result.estimates.query("estimand == 'fixed_lr' and method == 'sign' and outcome == 'test_loss'")
    assert fixed["n"].item() == SMALL.grid_seeds - 1


def test_one_diverged_bp_seed_keeps_effective_lr_with_its_cell_counted(runs):
    cell = runs.index[(runs["phase"] == "grid") & (runs["method"] == "bp") & np.isclose(runs["lr"], 1e-2)]
    runs.loc[cell[0], ["diverged", "test_loss", "test_acc"]] = [True, np.nan, np.nan]
    result = analyze(runs, n_boot=50, outcomes=("test_loss",))
    rows = result.estimates.query("estimand == 'effective_lr'")
    assert set(rows["method"]) == {"fa", "sign", "sign_scaled"}
    assert _excluded(result, "effective_lr", "bp", "cell with a diverged seed") == len(cell) - 1


def test_method_with_no_run_in_bp_support_gets_a_row_with_its_reason():
    # sign's gain of 1e4 puts every healthy sign run far above bp's effective-lr range.
    spec = replace(SMALL, gain={**SMALL.gain, "sign": (1e4, 0.1)}, diverge_elr=1e9)
    result = analyze(generate_runs(spec, seed=1), n_boot=50, outcomes=("test_loss",))
    sign = result.estimates.query("estimand == 'effective_lr' and method == 'sign'")
    assert len(sign) == 1 and np.isnan(sign["estimate"].item())
    assert "no healthy run inside bp's effective-lr range" in sign["note"].item()
    assert _excluded(result, "effective_lr", "sign", "outside bp's effective-lr range") == 3 * spec.grid_seeds


def test_one_healthy_grid_lr_for_both_mediation_arms_is_not_a_crash():
    # sign (gain 20) diverges at lr 0.1 and 1; sign_scaled survives everywhere: the pooled design has
    # exactly one lr. This raised "Unable to coerce to Series" and wrote nothing.
    spec = replace(SMALL, grid_lrs=(1e-3, 1e-1, 1.0), diverge_elr=1.5, grid_seeds=8)
    result = analyze(generate_runs(spec, seed=2), n_boot=50, outcomes=("test_loss",))
    med = result.summary.mediation["synthetic"]
    assert med.lrs == [1e-3] and med.design == "pooled"
    assert {"tuned", "effective_lr", "time_to_target_ratio"} <= set(result.estimates["estimand"])
    # With 4 seeds the seed effects leave too few runs: a reason, and still every other estimand.
    result = analyze(generate_runs(replace(spec, grid_seeds=4), seed=2), n_boot=50, outcomes=("test_loss",))
    assert "too few runs (8) for the outcome model's 7 terms" in result.summary.skipped_reason("mediation",
                                                                                              "synthetic")
    assert {"tuned", "effective_lr", "time_to_target_ratio"} <= set(result.estimates["estimand"])


def test_an_estimand_that_fails_gets_a_reason_and_the_others_are_computed(runs, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("Unable to coerce to Series")

    monkeypatch.setattr(core.mediation, "fit_mediation", broken)
    result = analyze(runs, n_boot=50)
    assert "ValueError: Unable to coerce to Series" in result.summary.skipped_reason("mediation", "synthetic")
    assert not result.estimates["estimand"].str.startswith("mediation").any()
    assert {"fixed_lr", "small_lr", "tuned", "effective_lr", "grid_lr", "poi_tuned",
            "time_to_target_ratio"} <= set(result.estimates["estimand"])


def test_mediation_design_from_the_command_line(tmp_path):
    path = tmp_path / "runs.parquet"
    generate_runs(replace(SMALL, grid_seeds=8), seed=0).to_parquet(path)
    assert cli.main(["analyze", "--runs", str(path), "--out", str(tmp_path / "a"), "--n-boot", "50",
                     "--mediation-design", "fixed_lr", "--fixed-lr", "0.001"]) == 0
    from soap.analysis.summary import Summary

    summary = Summary.from_json((tmp_path / "a" / "summary.json").read_text())
    assert summary.mediation["synthetic"].design == "fixed_lr"
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--runs", str(path), "--out", str(tmp_path / "b"), "--mediation-design", "nope"])


def test_run_analysis_names_the_file_of_a_bad_table(tmp_path):
    path = tmp_path / "runs.csv"
    generate_runs(SMALL, seed=0).drop(columns="lr").to_csv(path, index=False)
    with pytest.raises(TableError, match=r"runs.csv is missing required column\(s\): lr"):
        run_analysis(path, tmp_path / "out")


def test_target_sensitivity_reads_other_targets_off_the_curves():
    # Curves built so that run r's smoothed loss is target * t_r / x: it crosses the target at its own
    # examples_to_target t_r, and m x target at t_r / m. Every time scales by 1 / m, so the ratio of
    # medians is the same at every target, up to the 500-example logging grid.
    spec = replace(SMALL, budget_examples=2e6)
    runs = generate_runs(spec, seed=4)
    tuned = runs[runs["phase"] == "tuned"]
    examples = np.arange(500.0, 2e6 + 1, 500.0)
    curves = pd.concat([pd.DataFrame({"run_id": r.run_id, "examples": examples, "train_loss": np.nan,
                                      "train_loss_ema": spec.target_loss * r.examples_to_target / examples,
                                      "val_loss": np.nan, "val_acc": np.nan})
                        for r in tuned.itertuples()], ignore_index=True)
    result = analyze(runs, n_boot=50, outcomes=("test_loss",), curves=curves)
    ttt = result.summary.time_to_target["synthetic"]
    table = pd.DataFrame(ttt.target_sensitivity)
    assert sorted(table["multiplier"].unique()) == [0.8, 0.9, 1.0, 1.1, 1.25]
    np.testing.assert_allclose(table["target_loss"].unique(), spec.target_loss * np.array([0.8, 0.9, 1.0, 1.1, 1.25]))
    for method, rows in table.groupby("method"):
        np.testing.assert_allclose(rows["estimate"], ttt.ratio[method].estimate, rtol=0.03)
