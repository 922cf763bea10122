"""The refresh-period axis: when the grid varies how often a rule redraws or refreshes its feedback
(refresh period T, in examples), the estimands are taken at one T and the others are a sensitivity
analysis.

Data convention: a runs table with a `refresh_period` column (NaN or absent: T does not apply). bp
and fa ignore T, and a study may run them at one T only: a method never run at a period keeps all
its runs there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import soap.analysis.paired as paired
from soap.analysis.inputs import at_lr, choose_fixed_lr
from soap.rules import REFERENCE


def main_refresh_period(runs: pd.DataFrame) -> float | None:
    """The refresh period T of the main estimands when the runs hold several (a T axis in the grid):
    the most frequent among the non-bp runs (ties: the smaller T). None when there is one T or none."""
    if "refresh_period" not in runs or runs["refresh_period"].dropna().nunique() < 2:
        return None
    counts = runs.loc[runs["method"] != REFERENCE, "refresh_period"].value_counts()
    return float(counts[counts == counts.max()].index.min())


def at_refresh_period(runs: pd.DataFrame, period: float) -> pd.DataFrame:
    """Each method's runs at refresh period `period`; a method never run at it keeps all its runs (bp
    and fa ignore T, and a study may run them at one T only)."""
    at = np.isclose(runs["refresh_period"].astype(float), period)
    has = runs.assign(at=at).groupby("method")["at"].transform("any")
    return runs[at | ~has]


def refresh_sensitivity(ds_runs: pd.DataFrame, fixed_lr, outcome: str) -> list[dict]:
    """The paired estimands (fixed_lr, small_lr, tuned) at every refresh period T in the runs."""
    rows = []
    for period in sorted(ds_runs["refresh_period"].dropna().unique()):
        at = at_refresh_period(ds_runs, float(period))
        grid, tuned = at[at["phase"] == "grid"], at[at["phase"] == "tuned"]
        shared = choose_fixed_lr(at, fixed_lr, outcome)
        subsets = {"fixed_lr": at_lr(grid, shared) if shared else grid.iloc[:0],
                   "small_lr": at_lr(grid, grid["lr"].min()) if len(grid) else grid, "tuned": tuned}
        for estimand, subset in subsets.items():
            for method in sorted(set(subset["method"]) - {REFERENCE}):
                contrast = paired.paired_contrast(subset, method, outcome)
                rows.append({"refresh_period": float(period), "estimand": estimand, "method": method,
                             **{k: contrast[k] for k in ("estimate", "ci_low", "ci_high", "p_value", "n")}})
    return rows
