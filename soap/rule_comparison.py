"""The rule comparison: every feedback rule against bp, at its own tuned lr and at matched effective lr.

A reader choosing a rule asks two questions of each: how well does it do when its learning rate is
tuned for it (the practical question), and how does it do when its hidden layers take the same step
as bp's (the mechanistic one: is anything left besides the step size)? Both are contrasts the analysis
already estimates (`tuned`: paired over seeds; `effective_lr`: regression on the grid), on test loss
and test accuracy. This module lays them side by side for every rule, with each rule's absolute test
metrics at its tuned lr and its time to target (in examples, and in forward-backward passes, since an
so_ step makes two), as one table; its figure is soap.plots.plot_rule_comparison.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from soap.analysis import time_to_target
from soap.analysis.descriptive import mean_ci
from soap.metrics import feedback_gain
from soap.rules import in_registry_order as order_methods

ESTIMANDS = ("tuned", "effective_lr")  # the contrasts each rule is compared on (figure 14 draws them)


def rule_comparison_table(runs: pd.DataFrame, estimates: pd.DataFrame | None, reference: str = "bp") -> pd.DataFrame:
    """One row per (dataset, method): absolute test metrics at the tuned lr (mean, 95% t interval over
    seeds), the tuned and matched-effective-lr contrasts against `reference` from `estimates`, the
    gains, and the Kaplan-Meier median time to target in examples and in passes, with the analysis's
    ratio of medians against `reference`."""
    tuned = runs[runs["phase"] == "tuned"]
    rows = []
    for (dataset, method), arm in tuned.groupby(["dataset", "method"], sort=False):
        row = {"dataset": dataset, "method": method, "tuned_lr": float(stats.gmean(arm["lr"])),
               "n_runs": len(arm), "n_diverged": int(arm["diverged"].sum()),
               # over runs, combined as each run's gain is over layers and time
               "feedback_gain": feedback_gain(arm["feedback_gain"]),
               "soap_gain": feedback_gain(arm["soap_gain"]) if "soap_gain" in arm else math.nan}
        for outcome in ("test_loss", "test_acc"):
            ci = mean_ci(arm.assign(all=0), ["all"], outcome)
            row.update({f"{outcome}_mean": ci["mean"].iloc[0], f"{outcome}_ci_low": ci["ci_low"].iloc[0],
                        f"{outcome}_ci_high": ci["ci_high"].iloc[0]} if len(ci) else {})
            for estimand in ESTIMANDS:
                match = _estimate(estimates, estimand, dataset, method, outcome, reference)
                for key in ("estimate", "ci_low", "ci_high"):
                    row[f"{outcome}_{estimand}_{key}"] = match.get(key, math.nan)
                row[f"{outcome}_{estimand}_note"] = match.get("note", "") if isinstance(match.get("note"), str) else ""
        row["median_examples_to_target"] = _km_median(arm, "examples_to_target", "examples_seen")
        if "passes_to_target" in arm:
            row["median_passes_to_target"] = _km_median(arm, "passes_to_target", None)
        ratio = _estimate(estimates, "time_to_target_ratio", dataset, method, None, reference)
        for key in ("estimate", "ci_low", "ci_high"):
            row[f"time_to_target_ratio_{key}"] = ratio.get(key, 1.0 if method == reference else math.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {m: i for i, m in enumerate(order_methods(table["method"].unique()))}
    return table.sort_values(["dataset", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                             kind="stable").reset_index(drop=True)


def _estimate(estimates, estimand, dataset, method, outcome, reference) -> dict:
    if estimates is None or estimates.empty:
        return {}
    mask = ((estimates["estimand"] == estimand) & (estimates["dataset"] == dataset)
            & (estimates["method"] == method) & (estimates["reference"] == reference))
    if outcome is not None:
        mask &= estimates["outcome"] == outcome
    return estimates[mask].iloc[0].to_dict() if mask.any() else {}


def _km_median(arm: pd.DataFrame, column: str, budget_column: str | None) -> float:
    """Kaplan-Meier median of `column`, runs that never reached the target censored at their budget
    (`budget_column`, or the largest time observed): NaN when fewer than half the runs reach it."""
    reached = arm["reached_target"].astype(bool).to_numpy() & arm[column].notna().to_numpy()
    if not reached.any():
        return math.nan
    budget = (arm[budget_column].to_numpy(float) if budget_column in arm
              else np.full(len(arm), np.nanmax(arm[column].to_numpy(float))))
    time = np.where(reached, arm[column].to_numpy(float), budget)
    return time_to_target.km_median(time, reached.astype(int))
