"""The `effective_lr` estimand: method vs bp at matched effective learning rate (a controlled direct effect).

Descriptive, model-based: its assumption is that one scalar gain (feedback_gain, a geometric mean over
hidden layers) summarises a rule's per-layer steps, so that runs of equal lr * gain take equal steps.
Under SGD a rule's gain acts per hidden layer and never on the output layer, so two runs of equal
lr * gain can allocate their steps differently across layers, and that allocation alone moves the loss
(about 0.1 nats on MNIST, issue 19). The coefficient is then not a direction effect. The experimental
answer is the factorial's (soap.analysis.decomposition: bp@r - r at every lr); this estimand is reported
beside it as a description (tests/test_analysis_worlds.py shows it missing the per-layer truth in a world
with unequal layer weights).

Data convention: `grid` is one dataset's grid-phase runs. The model is OLS of the outcome on
C(method, Treatment('bp')) plus a smooth function of log(lr * step_gain) (soap.tables.step_gain:
feedback_gain, times soap_gain for so_ runs), fitted on the runs inside the common support (below),
with cluster-robust standard errors by seed (runs sharing a seed share initial weights and data
order) and t(G-1) reference distributions since the number of seeds G is small.

Which runs enter (in this order; summary.json's `support` reports each count per method):

1. Diverged runs are excluded (their loss is undefined; counted in `excluded_diverged`).
2. Unhealthy cells: a (method, lr) grid cell in which any seed diverged is dropped whole. Its
   surviving runs are a selected subset at the edge of stability, and there the outcome is no longer
   a function of the effective learning rate: `feedback_gain` scales only the hidden layers' step,
   while the output layer still takes the nominal lr (on MNIST, fa at lr 3 has effective lr 0.1 but
   loss 1.4, against 0.2 for runs at nominal lr 0.1). The rule looks at divergence only, never at
   the outcome, so it cannot select on the effect being estimated.
3. Common support (the min-max rule of Dehejia and Wahba 1999): every contrast involves bp, so the
   support is the range of log effective lr spanned by bp's healthy runs. Another method's runs
   outside it are dropped: there the bp curve they would be compared with is extrapolated, not
   observed. bp's own runs all stay (they pin the reference curve over the whole support). A method
   left with no run inside the support gets no estimate. The support is one range for every method
   on purpose: the intersection over all methods can be empty (sign's gain of 20-50 puts even its
   smallest grid lr at an effective lr near bp's largest healthy one), while each method's runs
   inside bp's range are compared by interpolation along a curve bp observes on both sides.

Outcome scale and smooth: the outcome is modelled on its own scale (nats for loss), so coefficients
are differences at matched effective lr, the estimand of STUDY.md. On the default MNIST study, without
steps 2-3 the fit had R^2 0.22 and residual kurtosis ~95 (a few runs with losses of 2 to 10 near the
divergence edge, and sign's coefficient resting on extrapolation); with them R^2 is 0.99 with roughly
normal residuals, and modelling log(loss) fits no better inside the support (its residuals are more
skewed and heavier-tailed) while turning the estimand into a ratio. The smooth is a cubic B-spline in
log effective lr with df = (distinct bp effective lrs in the support) - 1, at most 4 (a cubic with
one interior knot; it contains every quadratic, so the U is in the model), or a quadratic / line when
bp has too few distinct values. The cap is deliberate: the reference curve is pinned by bp's own grid
points, and extra flexibility would be identified only through the other methods' runs, i.e. through
the parallel-curves assumption under test. `spline_sensitivity` reports the coefficients for df
3..6 so that a reader sees how much they depend on this choice.

One fit per contrast: each method's coefficient comes from the model fitted on bp's runs and that
method's runs only. A pooled fit over every method shares one curve among all of them, so a method
whose curve is not a parallel shift of bp's bends it for every other contrast. On the 19-rule MNIST
study (config/rules.yaml) the pooled accuracy model had R^2 0.69 and put stale_bp 2.3 points below
bp at matched effective lr, although stale_bp's grid accuracy is within 0.3 points of bp's at every
lr; fitted on bp and stale_bp alone it gives -0.24 points. The pooled fit is still reported (its
formula, R^2 and the joint test that the methods share bp's curve shape), as a description of the grid.

The same model on nominal log(lr) (with the same trimming on that scale) is the contrast: what
"adjusting for learning rate" gives when the learning rate the method actually applies is ignored.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from soap.analysis.inputs import REFERENCE
from soap.tables import effective_lr, step_gain

METHOD_TERM = f"C(method, Treatment('{REFERENCE}'))"
MAX_SPLINE_DF = 4
SENSITIVITY_DFS = (3, 4, 5, 6)
# Relative slack on the support's edges, for float round-trips only (bp's effective lr is its lr).
_EDGE_TOL = 1e-9


@dataclass(frozen=True)
class LrModelFit:
    """A fitted learning-rate-adjusted model: the formula, its results and per-method coefficients."""

    formula: str
    results: object  # statsmodels RegressionResultsWrapper
    # method -> estimate, ci_low, ci_high, p_value, n, n_clusters, and `parallel`: interaction_test on
    # bp's and its runs (one slope term: does its curve have bp's shape, so that one difference fits?)
    coef: dict[str, dict]
    n: int  # runs in the pooled fit (every method)
    n_clusters: int
    summary_text: str
    support: dict = field(default_factory=dict)  # low, high (on the lr scale), n_dropped, ... per method
    sensitivity: dict = field(default_factory=dict)  # method -> {spline df: estimate}
    interaction: dict = field(default_factory=dict)  # WaldTest fields: do methods share one curve shape?

    @property
    def r2(self) -> float:
        return float(self.results.rsquared)


def smooth_term(x: pd.Series, name: str, reference_x: pd.Series | None = None) -> str:
    """A formula term smooth in `name`, as flexible as the reference's distinct values allow."""
    n_distinct = (x if reference_x is None else reference_x).round(9).nunique()
    if n_distinct >= 4:
        return f"bs({name}, df={min(n_distinct - 1, MAX_SPLINE_DF)})"
    if n_distinct >= 3:
        return f"{name} + I({name}**2)"
    return name


def healthy_cells(grid: pd.DataFrame) -> pd.Series:
    """Per run: True when no run of its (method, lr) cell diverged."""
    if grid.empty:
        return pd.Series(dtype=bool)
    any_diverged = grid.groupby(["method", "lr"])["diverged"].transform("any")
    return ~any_diverged.astype(bool)


def model_rows(grid: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """The grid runs a model can use (not diverged, finite outcome and gain), with log_lr, log_elr
    and `healthy` (no run of the (method, lr) cell diverged)."""
    grid = grid.assign(healthy=healthy_cells(grid))
    usable = grid[~grid["diverged"] & np.isfinite(grid[outcome]) & (step_gain(grid) > 0)].copy()
    usable["log_lr"] = np.log(usable["lr"])
    usable["log_elr"] = np.log(effective_lr(usable))
    return usable


def common_support(rows: pd.DataFrame, lr_column: str) -> tuple[pd.DataFrame, dict]:
    """`rows` (from model_rows) restricted to healthy cells inside bp's healthy range of lr_column,
    and the support record for summary.json (range on the lr scale, per-method counts)."""
    methods = sorted(rows["method"].unique())
    healthy = rows[rows["healthy"]]
    ref = healthy.loc[healthy["method"] == REFERENCE, lr_column]
    if ref.empty:
        return rows.iloc[:0], {}
    low, high = float(ref.min()), float(ref.max())
    slack = _EDGE_TOL * max(1.0, abs(low), abs(high))
    inside = healthy[lr_column].between(low - slack, high + slack)
    kept = healthy[inside | (healthy["method"] == REFERENCE)]
    count = lambda frame: {m: int((frame["method"] == m).sum()) for m in methods}  # noqa: E731
    kept_range = {
        m: [float(np.exp(g[lr_column].min())), float(np.exp(g[lr_column].max()))]
        for m, g in kept.groupby("method")
    }
    support = {
        "scale": "effective_lr" if lr_column == "log_elr" else "lr",
        "low": float(np.exp(low)),
        "high": float(np.exp(high)),
        "n_dropped": count(healthy[~inside & (healthy["method"] != REFERENCE)]),
        "n_unhealthy_cell": count(rows[~rows["healthy"]]),
        "n_used": count(kept),
        "used_range": kept_range,
    }
    return kept, support


def _fit(rows: pd.DataFrame, formula: str, with_summary: bool = False):
    with warnings.catch_warnings():
        # Clustered by G seeds, the overall F test has rank at most G - 1 and statsmodels warns when the
        # model has more terms; that F test is not used here, the per-method t tests are.
        warnings.filterwarnings("ignore", message="covariance of constraints does not have full rank")
        results = smf.ols(formula, rows).fit(cov_type="cluster", cov_kwds={"groups": rows["seed"].to_numpy()},
                                             use_t=True)
        return (results, str(results.summary())) if with_summary else results


def fit_lr_model(grid: pd.DataFrame, outcome: str, lr_column: str = "log_elr",
                 sensitivity: bool = False) -> LrModelFit | str:
    """OLS of outcome on method + smooth(lr_column) over the common-support grid runs, once pooled
    (`results`: the description) and once per method on bp's and its runs (`coef`: the contrasts); a
    string saying why when it cannot be fitted (no healthy bp cell, no other method in support, fewer
    than 2 seeds).

    lr_column is "log_elr" (the estimand) or "log_lr" (the nominal contrast); `sensitivity` refits
    with spline df SENSITIVITY_DFS (when there are enough distinct values) and records the coefficients.
    """
    rows, support = common_support(model_rows(grid, outcome), lr_column)
    methods = sorted(m for m in rows["method"].unique() if m != REFERENCE)
    if REFERENCE not in set(rows["method"]):
        return f"no healthy {REFERENCE} grid cell (a cell with a diverged seed is dropped whole)"
    if not methods:
        return f"no other method has a healthy run inside {REFERENCE}'s range of {lr_column}"
    if rows["seed"].nunique() < 2:
        return "fewer than 2 seeds in the common support"
    ref_x = rows.loc[rows["method"] == REFERENCE, lr_column]
    formula = f"{outcome} ~ {METHOD_TERM} + {smooth_term(rows[lr_column], lr_column, ref_x)}"
    results, text = _fit(rows, formula, with_summary=True)
    pairs = {m: rows[rows["method"].isin([REFERENCE, m])] for m in methods}
    pair_fits = {m: _fit(pair, formula, with_summary=True) for m, pair in pairs.items()}
    summary_text = "\n\n".join([f"pooled: {formula}\ncommon support: {support}\n{text}"] + [
        f"{m} against {REFERENCE} (the {m} contrast): {formula}\n{pair_text}"
        for m, (_, pair_text) in pair_fits.items()])
    by_df = {m: {} for m in methods}
    for m, pair in pairs.items():
        if sensitivity and pair[lr_column].round(9).nunique() > max(SENSITIVITY_DFS):
            for df in SENSITIVITY_DFS:
                alt = _fit(pair, f"{outcome} ~ {METHOD_TERM} + bs({lr_column}, df={df})")
                by_df[m][str(df)] = float(alt.params[f"{METHOD_TERM}[T.{m}]"])
    return LrModelFit(
        interaction=interaction_test(rows, outcome, lr_column, results),
        formula=formula,
        results=results,
        coef={m: {**method_coefficient(fit, m), "n": int(fit.nobs), "n_clusters": int(pairs[m]["seed"].nunique()),
                  "parallel": interaction_test(pairs[m], outcome, lr_column, fit)}
              for m, (fit, _) in pair_fits.items()},
        n=int(results.nobs),
        n_clusters=int(rows["seed"].nunique()),
        summary_text=summary_text,
        support=support,
        sensitivity=by_df,
    )


def interaction_test(rows: pd.DataFrame, outcome: str, lr_column: str, main_results) -> dict:
    """Joint test that every method's curve has bp's shape: the method x lr_column slope terms added
    to the main model, tested together with the cluster-robust covariance and an F(q, G - 1)
    reference. Slopes only (not method x spline): a clustered covariance from G seeds has rank at
    most G - 1, so a test of more than G - 1 terms has no valid reference distribution."""
    n_seeds = rows["seed"].nunique()
    methods = sorted(m for m in rows["method"].unique() if m != REFERENCE)
    hypothesis = f"every method's slope in {lr_column} differs from {REFERENCE}'s by 0"
    if len(methods) > n_seeds - 2:
        return {"hypothesis": hypothesis, "note": f"{len(methods)} slope terms need more than {n_seeds} seeds"}
    # Explicit columns: patsy would code method:x in full (bp's slope too), which the smooth spans.
    rows = rows.assign(**{f"slope_{i}": (rows["method"] == m) * rows[lr_column] for i, m in enumerate(methods)})
    names = [f"slope_{i}" for i, m in enumerate(methods) if rows.loc[rows["method"] == m, lr_column].nunique() > 1]
    if not names:
        return {"hypothesis": hypothesis, "note": "no method spans a range of learning rates"}
    formula = f"{main_results.model.formula} + {' + '.join(names)}"
    results = _fit(rows, formula)
    test = results.wald_test(", ".join(f"{n} = 0" for n in names), use_f=True, scalar=True)
    return {"hypothesis": hypothesis, "statistic": float(test.statistic), "df_num": float(test.df_num),
            "df_denom": float(test.df_denom), "p_value": float(test.pvalue),
            "note": f"method x {lr_column} slopes added to the model, SEs clustered by seed"}


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
