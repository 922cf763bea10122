"""Holm correction across families of method-vs-bp tests.

Families, for each outcome separately (the label is written into estimates.csv's `holm_family` and
described in summary.json's `holm_families`):

- "{outcome}": every (estimand, dataset, method) comparison against `bp` of the estimands `fixed_lr`,
  `small_lr`, `tuned` and `effective_lr` on that outcome; the primary outcome's family (the first one
  analysed, test loss by default) also holds the `time_to_target_ratio` comparisons.
- "grid_lr/{outcome}": the method - bp contrasts at every grid learning rate (a descriptive map of
  where each method wins, adjusted among themselves so the figure's stars are honest).

Mediation rows decompose one contrast (sign vs sign_scaled) and probability-of-improvement rows
restate the paired contrasts; neither is a separate test, and they get no Holm-adjusted p-value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

FAMILY_ESTIMANDS = ("fixed_lr", "small_lr", "tuned", "effective_lr")
TIME_TO_TARGET = "time_to_target_ratio"
GRID_LR = "grid_lr"


def holm_family(estimates: pd.DataFrame, primary_outcome: str) -> pd.Series:
    """The family label of each estimates row (None where the row is in no family)."""
    family = pd.Series(None, index=estimates.index, dtype=object)
    in_main = estimates["estimand"].isin(FAMILY_ESTIMANDS)
    family[in_main] = estimates.loc[in_main, "outcome"]
    family[estimates["estimand"] == TIME_TO_TARGET] = primary_outcome
    grid = estimates["estimand"] == GRID_LR
    family[grid] = GRID_LR + "/" + estimates.loc[grid, "outcome"]
    return family


def describe_families(estimates: pd.DataFrame) -> dict[str, str]:
    """Each family label with its members in words, for summary.json and the report."""
    out = {}
    for label, rows in estimates.dropna(subset=["holm_family"]).groupby("holm_family"):
        tested = rows[rows["p_value"].notna()]
        members = ", ".join(f"{e} ({n})" for e, n in tested.groupby("estimand").size().items())
        out[str(label)] = f"{len(tested)} tests: {members}" if len(tested) else "no testable rows"
    return out


def holm_adjust(estimates: pd.DataFrame, primary_outcome: str) -> pd.Series:
    """Holm-adjusted p-values (p_holm) for an estimates table; NaN outside any family or where p is NaN.

    Tests whose p-value is NaN (too few pairs) are left out of the family rather than counted.
    """
    adjusted = pd.Series(np.nan, index=estimates.index)
    family = holm_family(estimates, primary_outcome)
    for label in family.dropna().unique():
        rows = family.index[(family == label) & estimates["p_value"].notna()]
        if len(rows):
            adjusted[rows] = multipletests(estimates.loc[rows, "p_value"].to_numpy(), method="holm")[1]
    return adjusted
