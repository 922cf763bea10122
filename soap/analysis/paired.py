"""Paired method-vs-bp contrasts by seed: the `fixed_lr` and `tuned` estimands.

Data convention: `rows` is the runs of one dataset and phase (for `fixed_lr`, already restricted to
the shared learning rate). Seed s of a method is paired with seed s of `bp`; several runs of one
method at one seed (repeats) are averaged first. A pair with a diverged member is excluded (its loss
is undefined); the caller reports how many diverged runs that removed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from soap.analysis.inputs import REFERENCE


def paired_outcomes(rows: pd.DataFrame, method: str, outcome: str) -> pd.DataFrame:
    """Columns (method, bp) of per-seed mean `outcome`, indexed by seed, complete pairs only."""
    usable = rows.loc[rows["method"].isin([method, REFERENCE]) & ~rows["diverged"], ["seed", "method", outcome]]
    wide = usable.pivot_table(index="seed", columns="method", values=outcome, aggfunc="mean")
    return wide.reindex(columns=[method, REFERENCE]).dropna()


def expanded_tail(n: int, level: float = 0.95) -> float:
    """Tail probability of the expanded percentile interval for a mean of n values (Hesterberg 2015).

    A plain percentile bootstrap of a mean is too narrow for few values (it behaves like a z-interval
    with a divide-by-n SD: ~91% coverage for 10 seeds). Taking the percentiles at
    Phi(-sqrt(n / (n - 1)) * t_{n-1}) restores the t-interval's width while keeping the bootstrap's shape.
    Hesterberg, "What teachers should know about the bootstrap", The American Statistician 69 (2015).
    """
    t = stats.t.ppf(0.5 + level / 2, df=n - 1)
    return float(stats.norm.cdf(-np.sqrt(n / (n - 1)) * t))


def bootstrap_mean_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator,
                      level: float = 0.95) -> tuple[float, float]:
    """Expanded percentile bootstrap interval of the mean, resampling the values (seeds) with replacement."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return np.nan, np.nan
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    tail = expanded_tail(len(values), level)
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_contrast(rows: pd.DataFrame, method: str, outcome: str, n_boot: int,
                    rng: np.random.Generator) -> dict:
    """Mean paired difference method - bp, its bootstrap 95% interval over seeds and paired-t p-value."""
    pairs = paired_outcomes(rows, method, outcome)
    diffs = (pairs[method] - pairs[REFERENCE]).to_numpy()
    low, high = bootstrap_mean_ci(diffs, n_boot, rng)
    p_value = stats.ttest_rel(pairs[method], pairs[REFERENCE]).pvalue if len(diffs) >= 2 else np.nan
    return {
        "estimate": float(diffs.mean()) if len(diffs) else np.nan,
        "ci_low": low,
        "ci_high": high,
        "p_value": float(p_value),
        "n": len(diffs),
    }
