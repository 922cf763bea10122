"""The `effective_lr` estimand's rows: each method against bp at matched effective learning rate.

The regression itself is soap.analysis.effective_lr (fit_lr_model); this module turns its fits into
the estimates table's rows, the exclusions and summary.json's effective_lr_model block.
"""

from __future__ import annotations

import numpy as np

import soap.analysis.effective_lr as effective_lr
from soap.analysis.rows import Collector
from soap.analysis.summary import EffectiveLrModel, Interval, WaldTest, json_safe, load
from soap.rules import REFERENCE

# The level of the equal-slopes test behind slopes_differ (and the row's note).
SLOPE_LEVEL = 0.05


def effective_lr_rows(out: Collector, grid, dataset, outcome, summary, model_texts) -> None:
    """The effective_lr rows of one dataset and outcome (each method against bp at matched effective lr,
    its own fit on bp's and the method's grid runs); for the primary outcome (`summary` given) also its
    exclusions and summary block. model_texts gets the fits' statsmodels summaries."""
    fit = effective_lr.fit_lr_model(grid, outcome, "log_elr", sensitivity=summary is not None)
    if isinstance(fit, str):
        out.skip("effective_lr", dataset, fit)
        return
    nominal = effective_lr.fit_lr_model(grid, outcome, "log_lr")
    model_texts[f"effective_lr/{dataset}/{outcome}"] = fit.summary_text
    if not isinstance(nominal, str):
        model_texts[f"nominal_lr/{dataset}/{outcome}"] = nominal.summary_text
    support = fit.support
    if summary is not None:
        for reason, key in (("outside bp's effective-lr range", "n_dropped"),
                            ("cell with a diverged seed", "n_unhealthy_cell")):
            for method, n in support.get(key, {}).items():
                out.exclude("effective_lr", dataset, method, {reason: n})
        for method in grid["method"].unique():
            arm = grid[grid["method"] == method]
            out.exclude("effective_lr", dataset, method, {
                "diverged": int(arm["diverged"].sum()),
                f"non-finite {outcome}": int((~arm["diverged"] & ~np.isfinite(arm[outcome])).sum()),
                "non-finite feedback_gain": int((~arm["diverged"] & np.isfinite(arm[outcome])
                                                 & ~(arm["feedback_gain"] > 0)).sum())})
        summary.effective_lr_model[dataset] = EffectiveLrModel(
            formula=fit.formula, r2=fit.r2, n=fit.n, n_clusters=fit.n_clusters,
            coef={m: Interval(**_coefficient(c), n=c["n"], unit="runs", interval=_pair_interval(c))
                  for m, c in fit.coef.items()},
            support=json_safe(support), spline_sensitivity=fit.sensitivity,
            nominal_formula=None if isinstance(nominal, str) else nominal.formula,
            nominal_coef={} if isinstance(nominal, str) else {m: Interval(**_coefficient(c), n=c["n"], unit="runs")
                                                              for m, c in nominal.coef.items()},
            interaction=load(WaldTest, json_safe(fit.interaction)) if fit.interaction else None)
    for method in sorted(set(grid["method"]) - {REFERENCE}):
        if method in fit.coef:
            coef = fit.coef[method]
            out.row("effective_lr", dataset, method, REFERENCE, outcome, _coefficient(coef), coef["n"], "runs",
                    _pair_interval(coef), note=_not_parallel(coef["parallel"], method),
                    slopes_differ=slopes_differ(coef["parallel"]))
        else:
            out.row("effective_lr", dataset, method, REFERENCE, outcome, {}, 0, "runs", _pair_interval(None),
                    note=f"no healthy run inside {REFERENCE}'s effective-lr range")


def _coefficient(coef: dict) -> dict:
    """A per-contrast fit's estimate, interval and p-value (without its counts)."""
    return {k: coef[k] for k in ("estimate", "ci_low", "ci_high", "p_value")}


def slopes_differ(test: dict) -> bool:
    """Whether a contrast's test of equal slopes (bp's and the method's, in log effective lr) rejects at
    SLOPE_LEVEL: one number then averages a difference that changes with the learning rate
    (Kolen-Pollack, which starts as FA, is far behind bp at small lrs and level with it at large ones)."""
    p = test.get("p_value")
    return p is not None and bool(p < SLOPE_LEVEL)


def _not_parallel(test: dict, method: str) -> str:
    """The row's note for a contrast whose slopes differ (slopes_differ), with the test's p-value."""
    if not slopes_differ(test):
        return ""
    p = test["p_value"]
    return (f"{method}'s slope in log effective lr differs from {REFERENCE}'s (F test, p = {p:.2g}): the "
            "difference changes with the learning rate and this is its average over the support")


def _pair_interval(coef: dict | None) -> str:
    """How an effective-lr contrast's interval is made: its own fit on bp's and the method's runs."""
    clusters = f"t({coef['n_clusters'] - 1})" if coef else "t(G-1)"
    return f"cluster-robust by seed, {clusters}; fitted on {REFERENCE}'s and this method's runs"
