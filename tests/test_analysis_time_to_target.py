"""soap.analysis.time_to_target: where a run that never reached the target is censored, by hand (the
estimand's recovery and coverage: tests/test_analysis.py and tests/test_analysis_worlds.py)."""

import numpy as np
import pandas as pd
import pytest

from soap.analysis.time_to_target import censoring_budget, censoring_times, survival_data


def _rows(**columns):
    base = {"method": ["bp", "fa", "fa"], "seed": [0, 0, 1], "reached_target": [True, True, False],
            "examples_to_target": [300.0, 500.0, np.nan]}
    return pd.DataFrame({**base, **columns})


def test_a_run_is_censored_at_the_examples_it_saw_else_at_the_dataset_budget():
    rows = _rows(examples_seen=[1000.0, 1000.0, np.nan])
    assert censoring_budget(rows) == 500.0  # the largest time to target observed
    assert censoring_times(rows, 900.0).tolist() == [1000.0, 1000.0, 900.0]
    assert censoring_times(rows.drop(columns="examples_seen"), 900.0).tolist() == [900.0] * 3
    # passes are not examples: examples_seen does not say where a pass count stops
    assert censoring_times(rows, 7.0, "passes_to_target").tolist() == [7.0] * 3
    assert np.isnan(censoring_budget(rows.assign(examples_to_target=np.nan)))


def test_survival_data_by_hand():
    surv = survival_data(_rows(examples_seen=[1000.0, 1000.0, 2000.0]), fallback_budget=np.nan)
    assert surv["time"].tolist() == [300.0, 500.0, 2000.0] and surv["event"].tolist() == [1, 1, 0]
