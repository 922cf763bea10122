"""soap.analysis.descriptive: means with t intervals, the runs overview and `finite`, by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from soap.analysis.descriptive import finite, mean_ci, runs_overview


def test_finite():
    assert finite(1) and finite("2.5") and finite(np.float32(3))
    assert not any(finite(x) for x in (None, math.nan, math.inf, -math.inf, "x", [1]))


def test_mean_ci_by_hand():
    table = pd.DataFrame({"g": ["a"] * 3 + ["b"], "v": [1.0, 2.0, 3.0, np.nan]})
    ci = mean_ci(table.assign(v=table["v"].fillna(5.0)).iloc[:3], ["g"], "v").iloc[0]
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)  # sd of (1, 2, 3) is 1
    assert (ci["mean"], ci["n"]) == (2.0, 3) and (ci["ci_low"], ci["ci_high"]) == pytest.approx((2 - half, 2 + half))
    assert mean_ci(table, ["g"], "v")["g"].tolist() == ["a"]  # b's only value is NaN


def test_runs_overview_by_hand():
    runs = pd.DataFrame({"dataset": "toy", "phase": "grid", "method": ["fa", "fa", "fa"], "lr": [0.1, 0.1, 0.2],
                         "run_id": ["a", "b", "c"], "diverged": [False, True, False],
                         "feedback_gain": [1.0, 4.0, 2.0], "effective_lr": [0.1, 0.4, 0.4],
                         "test_loss": [1.0, np.nan, 3.0], "test_acc": [0.5, np.nan, 0.7]})
    overview = runs_overview(runs).set_index("lr")
    assert overview.loc[0.1, ["n_runs", "n_diverged"]].tolist() == [2, 1]
    # geometric means over runs: sqrt(1 * 4) = 2, sqrt(0.1 * 0.4) = 0.2; the NaN loss is skipped
    assert overview.loc[0.1, "feedback_gain_gmean"] == pytest.approx(2.0)
    assert overview.loc[0.1, "effective_lr_gmean"] == pytest.approx(0.2)
    assert overview.loc[0.1, "test_loss_mean"] == 1.0 and overview.loc[0.2, "test_acc_mean"] == 0.7
