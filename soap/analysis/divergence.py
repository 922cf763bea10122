"""Divergence as an outcome: how often each (method, lr) cell of the grid diverged, and whether a method
diverges more than bp at matched nominal lr.

Data convention: `grid` is one dataset's grid runs (the runs table's `diverged` flag per run). Rates
get Wilson 95% intervals (exact enough at the few runs per cell the grid has, and never outside
[0, 1]); the odds ratios come from a logistic model diverged ~ method + log lr with standard errors
clustered by seed, or a reason when divergence is separated by lr (no finite maximum).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.proportion import proportion_confint
from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

from soap.analysis.inputs import METHOD_TERM
from soap.analysis.summary import Divergence, DivergenceCell, Interval, Summary
from soap.rules import REFERENCE

CELL_COLUMNS = ("dataset", "method", "lr", "n_runs", "n_diverged", "rate", "ci_low", "ci_high")


def divergence_block(summary: Summary, grid: pd.DataFrame, dataset: str) -> None:
    """Divergence as an outcome: the rate per (method, lr) cell with a Wilson interval, and a logistic
    model diverged ~ method + log lr with SEs clustered by seed (odds ratios against bp at matched
    nominal lr), into summary.divergence[dataset]."""
    cells = []
    for (method, lr), rows in grid.groupby(["method", "lr"]):
        k, n = int(rows["diverged"].sum()), len(rows)
        low, high = proportion_confint(k, n, method="wilson")
        cells.append(DivergenceCell(method=method, lr=float(lr), n_runs=n, n_diverged=k, rate=k / n,
                                    ci_low=float(low), ci_high=float(high)))
    block = Divergence(cells=cells, note="Wilson 95% intervals per cell")
    summary.divergence[dataset] = block
    block.model, block.coef, reason = divergence_model(grid)
    if reason:
        block.note += f"; logistic model not fitted: {reason}"


def divergence_model(grid: pd.DataFrame) -> tuple[str, dict[str, Interval], str]:
    """Logistic regression of divergence on method and log lr, clustered by seed; a reason instead when
    it has no finite maximum (divergence perfectly separated by lr, as at a sharp edge)."""
    formula = f"diverged ~ {METHOD_TERM} + np.log(lr)"
    data = grid.assign(diverged=grid["diverged"].astype(float))
    if data["diverged"].sum() == 0:
        return formula, {}, "no grid run diverged"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PerfectSeparationWarning)
            fit = smf.logit(formula, data).fit(disp=0, cov_type="cluster",
                                               cov_kwds={"groups": data["seed"].to_numpy()})
    except (PerfectSeparationError, PerfectSeparationWarning, np.linalg.LinAlgError) as err:
        return formula, {}, f"perfect separation ({type(err).__name__}): lr alone tells which runs diverge"
    if not fit.mle_retvals.get("converged", True) or (fit.params.abs() > 20).any():
        return formula, {}, "no finite maximum (quasi-complete separation): lr alone tells which runs diverge"
    coef = {}
    for method in sorted(set(grid["method"]) - {REFERENCE}):
        name = f"{METHOD_TERM}[T.{method}]"
        if name in fit.params:
            low, high = np.exp(fit.conf_int().loc[name])
            coef[method] = Interval(estimate=float(np.exp(fit.params[name])), ci_low=float(low),
                                    ci_high=float(high), p_value=float(fit.pvalues[name]), n=len(data),
                                    unit="runs", interval="cluster-robust by seed (odds ratio)")
    return formula, coef, ""


def divergence_cells(summary: Summary) -> pd.DataFrame:
    """Every dataset's cells as one table (CELL_COLUMNS): tables/divergence.csv and its figure."""
    return pd.DataFrame([{"dataset": d, **dataclasses.asdict(c)} for d, block in summary.divergence.items()
                         for c in block.cells], columns=list(CELL_COLUMNS))
