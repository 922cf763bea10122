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

import soap.analysis.improvement as improvement
from soap.analysis.rows import Collector, lower_is_better, rng_for
from soap.rules import REFERENCE

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


# --- the estimands' rows ------------------------------------------------------------------------------

def paired_rows(out: Collector, estimand, rows, dataset, methods, outcome, n_boot, seed, count: bool) -> None:
    """Paired contrast and probability of improvement per method; exclusions counted when `count`
    (once, for the primary outcome: the other outcomes drop the same diverged runs)."""
    lr = float(rows["lr"].iloc[0]) if estimand != "tuned" else None
    for method in methods:
        if not (rows["method"] == method).any():
            out.row(estimand, dataset, method, REFERENCE, outcome, {}, 0, "pairs", INTERVAL, lr,
                    note=f"no {method} runs here")
            continue
        by_repeat = estimand == "tuned" and trained_at_repeat_lrs(rows)
        contrast = (repeat_clustered_contrast if by_repeat else paired_contrast)(rows, method, outcome)
        excluded = contrast.pop("excluded")
        if count:
            out.exclude(estimand, dataset, method, excluded)
        out.row(estimand, dataset, method, REFERENCE, outcome, contrast, contrast["n"],
                "tuning repeats" if by_repeat else "pairs", REPEAT_INTERVAL if by_repeat else INTERVAL, lr)
        # Probability of improvement over the same runs (every non-diverged run with a finite outcome).
        arms = rows[~rows["diverged"] & np.isfinite(rows[outcome])]
        poi = improvement.poi_interval(arms.loc[arms["method"] == method, outcome].to_numpy(),
                                       arms.loc[arms["method"] == REFERENCE, outcome].to_numpy(), n_boot,
                                       rng_for(seed, "poi", estimand, dataset, method, outcome),
                                       lower_is_better(outcome))
        out.row(f"poi_{estimand}", dataset, method, REFERENCE, outcome, poi, poi["n"], "runs per arm (smaller)",
                improvement.INTERVAL, lr)


def trained_at_repeat_lrs(rows: pd.DataFrame) -> bool:
    """Whether the tuned runs trained at their tuning repeats' own lrs (tuned.lr_source: repeat), with
    two or more repeats; then the tuned interval is taken over repeats."""
    if "tune_repeat" not in rows:
        return False
    repeats = pd.to_numeric(rows["tune_repeat"], errors="coerce")
    return bool(repeats.notna().all() and (repeats >= 0).all() and repeats.nunique() >= 2)


def grid_lr_rows(out: Collector, grid, dataset, methods, outcome) -> None:
    """Method - bp at every grid lr: where each method wins, with paired t intervals."""
    for lr, rows in grid.groupby("lr"):
        for method in methods:
            if (rows["method"] == method).any():
                contrast = paired_contrast(rows, method, outcome)
                contrast.pop("excluded")  # counted under fixed_lr / small_lr where they matter
                out.row("grid_lr", dataset, method, REFERENCE, outcome, contrast, contrast["n"], "pairs",
                        INTERVAL, float(lr))


def tuned_at_grid_length_rows(out: Collector, tuned, grid, curves, dataset, methods) -> None:
    """The tuned comparison at the grid's training length, so it sits beside the grid estimands like
    with like: each tuned run's validation loss at its last evaluation within the grid runs' budget
    (examples_seen), read off the curves. Validation, not test, loss: the curves log no test loss
    mid-run (the estimand's outcome column says so)."""
    if "examples_seen" not in grid or "examples_seen" not in tuned:
        out.skip("tuned_at_grid_length", dataset, "no examples_seen column: training lengths unknown")
        return
    budget = float(grid.loc[~grid["diverged"], "examples_seen"].median())
    if not budget < float(tuned.loc[~tuned["diverged"], "examples_seen"].median()):
        return  # the tuned runs are no longer than the grid's: the tuned estimand already compares like with like
    logged = curves[curves["run_id"].isin(tuned["run_id"]) & (curves["examples"] <= budget + 0.5)]
    last = logged.dropna(subset=["val_loss"]).sort_values("examples").groupby("run_id")["val_loss"].last()
    at = tuned.assign(val_loss_at_grid_length=tuned["run_id"].map(last).astype(float))
    outcome = "val_loss_at_grid_length"
    for method in methods:
        if (at["method"] == method).any():
            contrast = paired_contrast(at, method, outcome)
            contrast.pop("excluded")
            out.row("tuned_at_grid_length", dataset, method, REFERENCE, outcome, contrast, contrast["n"], "pairs",
                    INTERVAL, note=contrast["note"] or f"validation loss after {budget:,.0f} examples")
