"""soap.analysis.refresh_period: the estimands at one refresh period T, the others a sensitivity analysis."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from soap.analysis.core import analyze
from soap.analysis.refresh_period import at_refresh_period, main_refresh_period
from soap.synthetic import SyntheticSpec, generate_runs
from study_results import SMALL, make_runs


def test_refresh_period_axis_gives_the_estimands_at_one_period_and_a_sensitivity_table():
    # sign run at two refresh periods; at T = 64000 its direct effect is 0.1 worse (bp, fa at one T).
    runs = generate_runs(replace(SMALL, grid_seeds=6, tuned_seeds=6), seed=3).assign(refresh_period=6400.0)
    slow = runs[runs["method"] == "sign"].assign(refresh_period=64000.0)
    slow = slow.assign(run_id=slow["run_id"] + "-T64000", test_loss=slow["test_loss"] + 0.1)
    both = pd.concat([runs, slow], ignore_index=True)
    result = analyze(both, n_boot=50, outcomes=("test_loss",))
    assert result.summary.refresh_period == 6400.0  # ties: the smaller T
    main = analyze(runs, n_boot=50, outcomes=("test_loss",)).estimates
    tuned = result.estimates.query("estimand == 'tuned' and method == 'sign'")["estimate"].item()
    assert tuned == pytest.approx(main.query("estimand == 'tuned' and method == 'sign'")["estimate"].item())
    table = pd.DataFrame(result.summary.refresh_sensitivity["synthetic"])
    sign = table[(table["method"] == "sign") & (table["estimand"] == "tuned")].set_index("refresh_period")
    assert sign.loc[64000.0, "estimate"] - sign.loc[6400.0, "estimate"] == pytest.approx(0.1)
    assert set(table["method"]) == {"fa", "sign", "sign_scaled"}


def test_the_main_period_is_the_most_frequent_among_the_other_methods_ties_the_smaller():
    runs = pd.DataFrame({"method": ["bp"] * 5 + ["sign"] * 4 + ["fa"] * 2,
                         "refresh_period": [100.0] * 5 + [640.0, 640.0, 6400.0, 6400.0] + [6400.0, 640.0]})
    assert main_refresh_period(runs) == 640.0  # bp's five at 100 do not count; 640 and 6400 tie at 3
    assert main_refresh_period(runs.assign(refresh_period=640.0)) is None  # one T: no axis
    assert main_refresh_period(runs.drop(columns="refresh_period")) is None


def test_a_method_never_run_at_a_period_keeps_all_its_runs():
    runs = pd.DataFrame({"method": ["bp", "sign", "sign", "fa"], "refresh_period": [100.0, 640.0, 6400.0, np.nan]})
    at = at_refresh_period(runs, 640.0)
    assert at.index.tolist() == [0, 1, 3]  # bp and fa never ran at 640; sign's 6400 run is left out
