"""Paired method-vs-bp contrasts by seed: the `fixed_lr`, `small_lr`, `tuned` and per-grid-lr estimands.

Data convention: `rows` is the runs of one dataset and phase (already restricted to one learning rate
where the estimand is at one). Seed s of a method is paired with seed s of `bp`; several runs of one
method at one seed (repeats) are averaged first. A pair with a diverged member, or with a non-finite
outcome, is excluded (its loss is undefined) and counted by reason.

Interval and test: the paired t interval of the mean difference and the paired t-test, one method for
both, so an interval excludes 0 exactly when p < 0.05. A percentile bootstrap of the same mean covers
51%, 75% and 87% at 2, 3 and 4 pairs (it behaves like a z-interval with a divide-by-n SD); the t
interval keeps 95% whenever the differences are roughly normal, which the tests check at 2-4 and 8-10
pairs on skewed and heavy-tailed worlds too. Below MIN_PAIRS pairs the row carries a warning.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from soap.analysis.inputs import REFERENCE

MIN_PAIRS = 6
INTERVAL = "paired t"
REPEAT_INTERVAL = "t over tuning repeats"


def paired_outcomes(rows: pd.DataFrame, method: str, outcome: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Columns (method, bp) of per-seed mean `outcome`, indexed by seed, complete pairs only; and the
    runs of the two arms left out, by reason."""
    arms = rows[rows["method"].isin([method, REFERENCE])]
    finite = np.isfinite(arms[outcome].to_numpy(dtype=float))
    usable = arms[~arms["diverged"] & finite]
    wide = usable.pivot_table(index="seed", columns="method", values=outcome, aggfunc="mean")
    wide = wide.reindex(columns=[method, REFERENCE])
    complete = wide.dropna()
    unpaired_seeds = set(wide.index) - set(complete.index)
    excluded = {
        "diverged": int(arms["diverged"].sum()),
        f"non-finite {outcome}": int((~arms["diverged"] & ~finite).sum()),
        "partner run excluded": int(usable["seed"].isin(unpaired_seeds).sum()),
    }
    return complete, excluded


def repeat_clustered_contrast(rows: pd.DataFrame, method: str, outcome: str) -> dict:
    """The tuned contrast when each seed trained at the lr of its own tuning repeat (column tune_repeat,
    soap.pipeline.tuned_members): paired differences averaged within each repeat, then the t interval
    and t-test over the repeats' means (R - 1 degrees of freedom).

    Seeds that share a repeat share its lr choice, so they are not independent replicates of the
    tuning: an interval over seeds would treat the tuned lr as known. Over repeats, the variability
    of the tuning itself (which lr each repeat found) enters the interval, as it would for a reader
    who tunes again. The estimate weighs repeats equally.
    """
    pairs, excluded = paired_outcomes(rows, method, outcome)
    repeat_of = rows.groupby("seed")["tune_repeat"].first()
    diffs = pairs[method] - pairs[REFERENCE]
    by_repeat = diffs.groupby(repeat_of.reindex(diffs.index).to_numpy()).mean()
    out = t_interval(by_repeat.to_numpy())
    out["note"] = f"{len(diffs)} pairs in {out['n']} tuning repeats"
    if out["n"] < 2:
        out["note"] += ": no interval (it needs two repeats)"
    out["excluded"] = excluded
    return out


def t_interval(diffs: np.ndarray, level: float = 0.95) -> dict:
    """Mean of `diffs`, its t interval and the one-sample t-test p-value against 0."""
    diffs = np.asarray(diffs, dtype=float)
    n = len(diffs)
    if n < 2:
        return {"estimate": float(diffs.mean()) if n else np.nan, "ci_low": np.nan, "ci_high": np.nan,
                "p_value": np.nan, "n": n}
    mean, se = float(diffs.mean()), float(diffs.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1)) * se
    if se > 0:
        p = float(2 * stats.t.sf(abs(mean) / se, df=n - 1))
    else:  # identical differences: the interval is a point, and p is 0 unless the point is 0
        p = 1.0 if mean == 0 else 0.0
    return {"estimate": mean, "ci_low": mean - half, "ci_high": mean + half, "p_value": p, "n": n}


def paired_contrast(rows: pd.DataFrame, method: str, outcome: str) -> dict:
    """Mean paired difference method - bp with its paired t interval and p-value; `excluded` counts the
    runs left out by reason, `note` warns below MIN_PAIRS pairs."""
    pairs, excluded = paired_outcomes(rows, method, outcome)
    out = t_interval((pairs[method] - pairs[REFERENCE]).to_numpy())
    if out["n"] < 2:
        out["note"] = f"{out['n']} complete pair(s): no interval"
    elif out["n"] < MIN_PAIRS:
        out["note"] = f"only {out['n']} pairs (< {MIN_PAIRS}): the interval rests on near-normal differences"
    else:
        out["note"] = ""
    out["excluded"] = excluded
    return out
