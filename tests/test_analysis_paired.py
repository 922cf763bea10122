"""soap.analysis.paired: paired contrasts by hand, and the rows of the paired estimands."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from soap.analysis.core import analyze
from soap.analysis.paired import grid_lr_rows, paired_contrast, paired_rows, t_interval, trained_at_repeat_lrs
from soap.analysis.rows import Collector
from soap.synthetic import SyntheticSpec, generate_runs
from study_results import BP, FA, SMALL, TOY, make_runs


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


def test_tuned_comparison_at_the_grid_training_length_from_the_curves():
    # Tuned runs train twice the grid's examples. Curves whose validation loss at the grid's budget is
    # the run's test loss + 0.05 for fa only: the like-with-like contrast moves by exactly 0.05.
    spec = replace(SMALL, tuned_seeds=6)
    runs = generate_runs(spec, seed=6)
    tuned = runs["phase"] == "tuned"
    runs.loc[tuned, "examples_seen"] = 2 * spec.budget_examples
    rows = runs[tuned & ~runs["diverged"]]
    grid_budget = spec.budget_examples
    at_grid_length = rows["test_loss"].to_numpy() + np.where(rows["method"] == "fa", 0.05, 0)
    curves = pd.DataFrame({"run_id": np.repeat(rows["run_id"].to_numpy(), 2),
                           "examples": np.tile([grid_budget, 2 * grid_budget], len(rows)),
                           "train_loss": np.nan, "train_loss_ema": np.nan, "val_acc": np.nan,
                           "val_loss": np.repeat(at_grid_length, 2) + np.tile([0.0, 1.0], len(rows))})
    result = analyze(runs, n_boot=50, outcomes=("test_loss",), curves=curves)
    at = result.estimates.query("estimand == 'tuned_at_grid_length'").set_index("method")
    full = result.estimates.query("estimand == 'tuned'").set_index("method")
    assert at.loc["fa", "estimate"] == pytest.approx(full.loc["fa", "estimate"] + 0.05)
    assert at.loc["sign", "estimate"] == pytest.approx(full.loc["sign", "estimate"])
    assert (at["outcome"] == "val_loss_at_grid_length").all()


def test_grid_lr_rows_by_hand():
    # At lr 0.1 fa - bp is (0.5, 0.1, 0.4) (TOY's); at lr 0.01 it is 1.0 at every seed: a point interval.
    runs = make_runs([("grid", "bp", s, 0.1, x) for s, x in enumerate(BP)]
                     + [("grid", "fa", s, 0.1, x) for s, x in enumerate(FA)]
                     + [("grid", "bp", s, 0.01, x) for s, x in enumerate(BP)]
                     + [("grid", "fa", s, 0.01, x + 1.0) for s, x in enumerate(BP)])
    out = Collector()
    grid_lr_rows(out, runs, "toy", ["fa"], "test_loss")
    rows = out.table().set_index("lr")
    assert (rows["estimand"] == "grid_lr").all() and (rows["n"] == 3).all() and (rows["reference"] == "bp").all()
    assert rows.loc[0.1, "estimate"] == pytest.approx(1 / 3)
    assert rows.loc[0.01, ["estimate", "ci_low", "ci_high"]].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_paired_rows_give_a_contrast_and_a_probability_of_improvement_per_method():
    out = Collector()
    paired_rows(out, "tuned", TOY, "toy", ["fa", "sign"], "test_loss", n_boot=50, seed=0, count=True)
    table = out.table().set_index(["estimand", "method"])
    fa = table.loc[("tuned", "fa")]
    assert fa["estimate"] == pytest.approx(1 / 3) and fa["unit"] == "pairs" and np.isnan(fa["lr"])
    sign = table.loc[("tuned", "sign")]
    assert sign["n"] == 0 and sign["note"] == "no sign runs here" and np.isnan(sign["estimate"])
    # P(a fa run beats a bp run), lower loss better: of the 9 (fa, bp) pairs, 1.5 < 2, 1.5 < 3 and 2.1 < 3.
    assert table.loc[("poi_tuned", "fa"), "estimate"] == pytest.approx(3 / 9)
    assert out.exclusions == []  # nothing diverged


def test_the_tuned_interval_is_over_repeats_only_with_two_repeats_or_more():
    assert not trained_at_repeat_lrs(TOY)  # no tune_repeat column
    assert trained_at_repeat_lrs(TOY.assign(tune_repeat=[0, 1, 0, 0, 1, 0]))
    assert not trained_at_repeat_lrs(TOY.assign(tune_repeat=0))
    assert not trained_at_repeat_lrs(TOY.assign(tune_repeat=[-1, 1, 0, 0, 1, 0]))  # -1: the aggregate lr
