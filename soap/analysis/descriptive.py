"""Descriptive summaries of runs (means with t-intervals over seeds, the runs overview), shared by the
analysis stage's tables and the figures' bands, so a band and a table cell are one computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from soap.metrics import feedback_gain


def finite(x) -> bool:
    """Whether x is a number that is neither NaN nor infinite (None and strings are not)."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def mean_ci(table: pd.DataFrame, by: list[str], value: str, level: float = 0.95) -> pd.DataFrame:
    """Mean of ``value`` per group with a t-interval over the group's finite rows.

    Returns columns ``by + [mean, ci_low, ci_high, n]``; a group with one row has a zero-width interval.
    """
    finite = table[np.isfinite(table[value].astype(float))]
    grouped = finite.groupby(by, observed=True)[value].agg(["mean", "std", "count"]).reset_index()
    half = stats.t.ppf(0.5 + level / 2, np.maximum(grouped["count"] - 1, 1)) * grouped["std"] / np.sqrt(
        grouped["count"])
    half = half.fillna(0.0).where(grouped["count"] > 1, 0.0)
    return grouped.assign(ci_low=grouped["mean"] - half, ci_high=grouped["mean"] + half).rename(
        columns={"count": "n"}).drop(columns="std")


def runs_overview(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, phase, method, lr): how many runs, how many diverged, the geometric means of the
    feedback gain and the effective lr over runs, and the mean outcomes (tables/runs_overview.csv)."""
    grouped = runs.groupby(["dataset", "phase", "method", "lr"], observed=True)
    # feedback_gain: the geometric mean over the positive finite values, as over layers and time
    return grouped.agg(n_runs=("run_id", "size"), n_diverged=("diverged", "sum"),
                       feedback_gain_gmean=("feedback_gain", feedback_gain),
                       effective_lr_gmean=("effective_lr", feedback_gain),
                       test_loss_mean=("test_loss", "mean"), test_acc_mean=("test_acc", "mean")).reset_index()
