"""The `effective_lr` estimand: method vs bp at matched effective learning rate (a controlled direct effect).

Data convention: `grid` is one dataset's grid-phase runs. The model is OLS of the outcome on
C(method, Treatment('bp')) plus a smooth function of log(lr * feedback_gain): a cubic B-spline with 4
degrees of freedom when there are at least 6 distinct values to fit it (it contains every quadratic,
so a U-shaped response is in the model), else a polynomial of degree up to 2. Standard errors are
cluster-robust by seed (runs sharing a seed share initial weights and data order), with t(G-1)
reference distributions since the number of seeds G is small. Diverged runs are excluded.

The same model on nominal log(lr) is the contrast: what "adjusting for learning rate" gives when the
learning rate the method actually applies is ignored.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from soap.analysis.inputs import REFERENCE

METHOD_TERM = f"C(method, Treatment('{REFERENCE}'))"


@dataclass(frozen=True)
class LrModelFit:
    """A fitted learning-rate-adjusted model: the formula, its results and per-method coefficients."""

    formula: str
    results: object  # statsmodels RegressionResultsWrapper
    coef: dict[str, dict[str, float]]  # method -> estimate, ci_low, ci_high, p_value
    n: int
    n_clusters: int
    summary_text: str

    @property
    def r2(self) -> float:
        return float(self.results.rsquared)


def smooth_term(x: pd.Series, name: str) -> str:
    """A formula term smooth in `name`, as flexible as the number of distinct values allows."""
    n_distinct = x.nunique()
    if n_distinct >= 6:
        return f"bs({name}, df=4)"
    if n_distinct >= 3:
        return f"{name} + I({name}**2)"
    return name


def model_rows(grid: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """The grid runs a model can use (not diverged, finite outcome and gain), with log_lr and log_elr."""
    usable = grid[~grid["diverged"] & grid[outcome].notna() & (grid["feedback_gain"] > 0)].copy()
    usable["log_lr"] = np.log(usable["lr"])
    usable["log_elr"] = np.log(usable["lr"] * usable["feedback_gain"])
    return usable


def fit_lr_model(grid: pd.DataFrame, outcome: str, lr_column: str = "log_elr") -> LrModelFit | None:
    """OLS of outcome on method + smooth(lr_column) over usable grid runs; None if it cannot be fitted.

    lr_column is "log_elr" (the estimand) or "log_lr" (the nominal contrast).
    """
    rows = model_rows(grid, outcome)
    methods = [m for m in rows["method"].unique() if m != REFERENCE]
    if REFERENCE not in set(rows["method"]) or not methods or rows["seed"].nunique() < 2:
        return None
    formula = f"{outcome} ~ {METHOD_TERM} + {smooth_term(rows[lr_column], lr_column)}"
    with warnings.catch_warnings():
        # Clustered by G seeds, the overall F test has rank at most G - 1 and statsmodels warns when the
        # model has more terms; that F test is not used here, the per-method t tests are.
        warnings.filterwarnings("ignore", message="covariance of constraints does not have full rank")
        results = smf.ols(formula, rows).fit(
            cov_type="cluster", cov_kwds={"groups": rows["seed"].to_numpy()}, use_t=True
        )
        summary_text = f"{formula}\n{results.summary()}"
    return LrModelFit(
        formula=formula,
        results=results,
        coef={m: method_coefficient(results, m) for m in sorted(methods)},
        n=int(results.nobs),
        n_clusters=int(rows["seed"].nunique()),
        summary_text=summary_text,
    )


def method_coefficient(results, method: str) -> dict[str, float]:
    """Estimate, 95% interval and p-value of one method's coefficient (its difference from bp)."""
    name = f"{METHOD_TERM}[T.{method}]"
    low, high = results.conf_int().loc[name]
    return {
        "estimate": float(results.params[name]),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(results.pvalues[name]),
    }
