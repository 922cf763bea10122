"""Holm correction across the family of method-vs-bp tests.

The family, for each outcome separately: every (estimand, dataset, method) comparison against `bp`
from the estimands `fixed_lr`, `tuned` and `effective_lr` on that outcome; the primary outcome's
family (the first one analysed, test loss by default) also holds the `time_to_target_ratio`
comparisons. Mediation rows are an explanatory decomposition of one contrast (sign vs sign_scaled),
not a method-vs-bp test, and get no Holm-adjusted p-value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

FAMILY_ESTIMANDS = ("fixed_lr", "tuned", "effective_lr")
TIME_TO_TARGET = "time_to_target_ratio"


def holm_family(estimates: pd.DataFrame, primary_outcome: str) -> pd.Series:
    """The family label of each estimates row (None where the row is in no family)."""
    in_family = estimates["estimand"].isin(FAMILY_ESTIMANDS)
    family = pd.Series(np.where(in_family, estimates["outcome"], None), index=estimates.index, dtype=object)
    family[estimates["estimand"] == TIME_TO_TARGET] = primary_outcome
    return family


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
