"""Descriptive summaries of runs (means with t-intervals over seeds), shared by the analysis stage's
tables and the figures' bands, so a band and a table cell are one computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


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
