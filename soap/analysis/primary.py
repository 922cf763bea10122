"""The study's primary test, declared in config before the data (analysis.primary): bp@r is non-inferior
to r, where r's advantage over bp is largest.

Hypothesis: r's advantage over bp is its per-layer step size. Then bp's direction given r's per-layer
steps (bp@r) matches or beats r, so the prediction is one-sided: with d_s = y(bp@r)_s - y(r)_s paired by
seed s, oriented so that larger is worse (test loss as is; test accuracy with its sign flipped),

    H0: mean(d) >= margin   against   H1: mean(d) < margin,

a one-sided paired t-test at 5% (t = (mean(d) - margin) / se, n - 1 degrees of freedom).

- supported: the one-sided 95% upper bound of mean(d) is below the margin (H0 rejected);
- contradicted: bp@r is shown inferior, the one-sided 95% lower bound above the margin;
- inconclusive otherwise (too few seeds or too much noise to tell).

Where (the lr): the grid lr where r's advantage over bp, mean over seeds of val_loss(bp) - val_loss(r), is
largest, among lrs whose bp, r and bp@r cells have at least 2 seeds healthy in all three. The lr is chosen
on validation loss and the test is estimated on test data. Validation and test share each run's training
noise, so choosing where r looks best on validation also picks where r's test loss is low by chance: that
moves d = bp@r - r up, against the hypothesis, so the selection cannot make "supported" easier (the tests
check the size). The intersection-union alternative (non-inferiority at every lr where r beats bp on
validation) is valid without adjustment too, but each lr's test must pass on its own, so at the 4-10
seeds a study affords its power falls with every lr added, and lrs where r wins by noise add tests with
nothing to explain. When r beats bp at no lr on validation, the test is still run at the lr of r's
smallest disadvantage and `r_beats_bp` is False: the answer then says there is no advantage to explain.

Seeds: those healthy in both cells (bp@r, r) at the chosen lr; a diverged run is counted, not dropped
silently (`diverged`).

`power` gives the test's power at n seeds from the true mean of d and its between-seed SD (noncentral t).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from soap.analysis.decomposition import OUTCOMES, seed_values
from soap.analysis.errors import AnalysisError

LEVEL = 0.05


def worse_sign(outcome: str) -> float:
    """+1 where a larger outcome is worse (losses), -1 where it is better (accuracy)."""
    return -1.0 if outcome.endswith("acc") else 1.0


def choose_lr(runs: pd.DataFrame, rule: str) -> tuple[float, float, bool]:
    """(lr, r's mean validation-loss advantage over bp there, whether it is positive) for one dataset's
    factorial runs; AnalysisError when no lr has 2 seeds healthy in bp, r and bp@r."""
    values, _ = seed_values(runs, rule, "val_loss")
    usable = values[["bp", "r", "bp@r"]].dropna()
    counts = usable.groupby(level="lr").size()
    usable = usable[usable.index.get_level_values("lr").isin(counts[counts >= 2].index)]
    if usable.empty:
        raise AnalysisError(f"no grid lr has 2 seeds healthy in bp, {rule} and bp@{rule}: the primary test "
                            "cannot be evaluated")
    advantage = (usable["bp"] - usable["r"]).groupby(level="lr").mean()
    lr = float(advantage.idxmax())
    return lr, float(advantage.max()), bool(advantage.max() > 0)


def non_inferiority(worse: np.ndarray, margin: float, level: float = LEVEL) -> dict:
    """The one-sided paired t-test of H0 mean(worse) >= margin; the one-sided (1 - level) bounds of the
    mean (together the two-sided 1 - 2 level interval), the p-value and the verdict."""
    worse = np.asarray(worse, dtype=float)
    n = len(worse)
    if n < 2:
        return {"mean": float(worse.mean()) if n else np.nan, "lower": np.nan, "upper": np.nan, "p": np.nan,
                "n": n, "verdict": "inconclusive"}
    mean, se = float(worse.mean()), float(worse.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(1 - level, n - 1)) * se
    if se > 0:
        p = float(stats.t.cdf((mean - margin) / se, n - 1))
    else:
        p = 0.0 if mean < margin else 1.0
    lower, upper = mean - half, mean + half
    verdict = "supported" if upper < margin else "contradicted" if lower > margin else "inconclusive"
    return {"mean": mean, "lower": lower, "upper": upper, "p": p, "n": n, "verdict": verdict}


def primary_test(runs: pd.DataFrame, rule: str, outcome: str, margin: float, lr: float | None = None) -> dict:
    """The primary test on one dataset's factorial runs (soap.analysis.decomposition.factorial_runs),
    at `lr` or the lr chosen on validation (module docstring). The estimate and interval are of
    bp@r - r in the outcome's unit (accuracy in points); `null` is the margin on that scale."""
    chosen, advantage, beats = choose_lr(runs, rule)
    lr = chosen if lr is None else lr
    row = non_inferior(runs, rule, outcome, margin, lr, "bp@r", "r")
    return {**row, "val_advantage": advantage, "r_beats_bp": beats}


def non_inferior(runs: pd.DataFrame, rule: str, outcome: str, margin: float, lr: float, first: str,
                 second: str) -> dict:
    """Non-inferiority of cell `first` to cell `second` (cell names of soap.analysis.decomposition) at
    lr, paired by seed over the seeds healthy in both: the estimate and the one-sided bounds of
    first - second in the outcome's unit, `null` the margin on that scale, p one-sided."""
    unit, scale = OUTCOMES[outcome]
    values, diverged = seed_values(runs, rule, outcome)
    at = values.xs(lr, level="lr")[[first, second]].dropna()
    sign = worse_sign(outcome)
    test = non_inferiority(sign * (at[first] - at[second]).to_numpy() * scale, margin)
    low, high = sorted((sign * test["lower"], sign * test["upper"]))
    return {"rule": rule, "outcome": outcome, "unit": unit, "lr": lr, "estimate": sign * test["mean"],
            "ci_low": low, "ci_high": high, "null": sign * margin, "margin": margin, "p": test["p"],
            "verdict": test["verdict"], "n": test["n"], "diverged": int(diverged.loc[lr, [first, second]].sum())}


def power(n: int, effect: float, sd: float, margin: float, level: float = LEVEL) -> float:
    """Power of the primary test at n seeds when the true mean of d (bp@r - r, larger worse) is `effect`
    and the SD of d over seeds is `sd`: P(T < -t_{1-level, n-1}), T noncentral t with n - 1 degrees of
    freedom and noncentrality (effect - margin) / (sd / sqrt(n))."""
    if n < 2 or not sd > 0:
        raise ValueError(f"power needs n >= 2 seeds and sd > 0 (got n={n}, sd={sd})")
    critical = stats.t.ppf(1 - level, n - 1)
    return float(stats.nct.cdf(-critical, n - 1, (effect - margin) / (sd / np.sqrt(n))))
