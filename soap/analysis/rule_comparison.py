"""The rule comparison: every feedback rule against bp, at its own tuned lr and at matched effective lr.

A reader choosing a rule asks two questions of each: how well does it do when its learning rate is
tuned for it (the practical question), and how does it do when its hidden layers take the same step
as bp's (the mechanistic one: is anything left besides the step size)? Both are contrasts the analysis
already estimates (`tuned`: paired over seeds; `effective_lr`: regression on the grid), on test loss
and test accuracy. This module lays them side by side for every rule, with each rule's absolute test
metrics at its tuned lr and its time to target (in examples, and in forward-backward passes, since an
so_ step makes two), as one table (tables/rule_comparison.csv); its figure is
soap.plots.plot_rule_comparison, read against `reference_levels`. Both are per (dataset, architecture):
an MLP's and a LeNet-5's runs of one dataset give separate rows (soap.networks).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

import soap.analysis.time_to_target as time_to_target
from soap.analysis.descriptive import mean_ci
from soap.analysis.errors import AnalysisError
from soap.analysis.inputs import tuned_lrs
from soap.metrics import feedback_gain
from soap.networks import require_network
from soap.rules import REFERENCE, in_registry_order

# The contrasts the comparison lays side by side (and its figure draws), on both outcomes.
ESTIMANDS = ("tuned", "effective_lr")
OUTCOMES = ("test_loss", "test_acc")
KEYS = ("dataset", "architecture")  # what a row's runs share besides the method; never pooled across


def rule_comparison_table(runs: pd.DataFrame, estimates: pd.DataFrame | None,
                          reference: str = REFERENCE) -> pd.DataFrame:
    """One row per (dataset, architecture, method): absolute test metrics at the tuned lr (mean, 95% t
    interval over seeds), the tuned and matched-effective-lr contrasts against `reference` from
    `estimates`, the gains, and the Kaplan-Meier median time to target in examples and in passes, with
    the analysis's ratio of medians against `reference`. Estimates keyed by dataset alone (the
    analysis's, which refuses a dataset of two architectures) serve a runs table with one architecture
    per dataset; AnalysisError otherwise."""
    _require_keys(runs, estimates)
    tuned = runs[runs["phase"] == "tuned"]
    rows = []
    for (dataset, architecture, method), arm in tuned.groupby([*KEYS, "method"], sort=False):
        network = runs[(runs["dataset"] == dataset) & (runs["architecture"] == architecture)]
        budget = time_to_target.censoring_budget(network)
        row = {"dataset": dataset, "architecture": architecture, "method": method, "tuned_lr": tuned_lrs(arm)[method],
               "n_runs": len(arm), "n_diverged": int(arm["diverged"].sum()),
               # over runs, combined as each run's gain is over layers and time
               "feedback_gain": feedback_gain(arm["feedback_gain"]),
               "soap_gain": feedback_gain(arm["soap_gain"]) if "soap_gain" in arm else math.nan}
        for outcome in OUTCOMES:
            ci = mean_ci(arm.assign(all=0), ["all"], outcome)
            row.update({f"{outcome}_mean": ci["mean"].iloc[0], f"{outcome}_ci_low": ci["ci_low"].iloc[0],
                        f"{outcome}_ci_high": ci["ci_high"].iloc[0]} if len(ci) else {})
            for estimand in ESTIMANDS:
                match = _estimate(estimates, estimand, (dataset, architecture), method, outcome, reference)
                for key in ("estimate", "ci_low", "ci_high"):
                    row[f"{outcome}_{estimand}_{key}"] = match.get(key, math.nan)
                row[f"{outcome}_{estimand}_note"] = match.get("note", "") if isinstance(match.get("note"), str) else ""
                if estimand == "effective_lr":  # what the figure fades a marker by
                    row[f"{outcome}_{estimand}_slopes_differ"] = bool(match.get("slopes_differ", False))
        row["median_examples_to_target"] = _km_median(arm, "examples_to_target", budget)
        if "passes_to_target" in arm:
            row["median_passes_to_target"] = _km_median(
                arm, "passes_to_target", time_to_target.censoring_budget(network, "passes_to_target"))
        ratio = _estimate(estimates, "time_to_target_ratio", (dataset, architecture), method, None, reference)
        for key in ("estimate", "ci_low", "ci_high"):
            row[f"time_to_target_ratio_{key}"] = ratio.get(key, 1.0 if method == reference else math.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {method: rank for rank, method in enumerate(in_registry_order(table["method"]))}
    return table.sort_values([*KEYS, "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                             kind="stable").reset_index(drop=True)


def reference_levels(runs: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """Per (dataset, architecture, outcome): the reference's mean at its tuned lr, the level the
    comparison's differences are read against (columns dataset, architecture, outcome, level)."""
    require_network(runs)
    tuned = runs[(runs["phase"] == "tuned") & (runs["method"] == reference)]
    rows = [{"dataset": d, "architecture": a, "outcome": o, "level": float(arm[o].mean())}
            for (d, a), arm in tuned.groupby(list(KEYS)) for o in OUTCOMES]
    return pd.DataFrame(rows, columns=[*KEYS, "outcome", "level"])


def _require_keys(runs: pd.DataFrame, estimates: pd.DataFrame | None) -> None:
    require_network(runs)
    if estimates is None or estimates.empty or "architecture" in estimates:
        return
    mixed = runs.groupby("dataset")["architecture"].nunique()
    if (mixed > 1).any():
        raise AnalysisError(f"dataset {mixed[mixed > 1].index[0]!r} holds runs of several architectures but the "
                            "estimates have no architecture column: whose contrasts they are is unknown")


def _estimate(estimates, estimand, keys, method, outcome, reference) -> dict:
    if estimates is None or estimates.empty:
        return {}
    dataset, architecture = keys
    mask = ((estimates["estimand"] == estimand) & (estimates["dataset"] == dataset)
            & (estimates["method"] == method) & (estimates["reference"] == reference))
    if "architecture" in estimates:
        mask &= estimates["architecture"] == architecture
    if outcome is not None:
        mask &= estimates["outcome"] == outcome
    return estimates[mask].iloc[0].to_dict() if mask.any() else {}


def _km_median(arm: pd.DataFrame, column: str, fallback_budget: float) -> float:
    """Kaplan-Meier median of `column`, runs that never reached the target censored where
    time_to_target.censoring_times puts them: NaN when fewer than half the runs reach it."""
    reached = arm["reached_target"].astype(bool).to_numpy() & arm[column].notna().to_numpy()
    if not reached.any():
        return math.nan
    time = np.where(reached, arm[column].to_numpy(float),
                    time_to_target.censoring_times(arm, fallback_budget, column))
    return time_to_target.km_median(time, reached.astype(int))
