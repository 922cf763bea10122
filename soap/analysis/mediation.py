"""Mediation of sign-tracking's effect through its feedback gain (statsmodels `Mediation`).

Exposure `sign` (1) vs `sign_scaled` (0), mediator log(feedback_gain), outcome a test metric. Two
designs; summary.json's `mediation[dataset]["design"]` says which one produced the numbers.

`pooled` (the default): the grid runs of both arms at every grid learning rate where both arms' cells
are healthy (no seed diverged: the rule of soap.analysis.effective_lr, for the same reason). The
nominal lr is then balanced between arms by design and enters both models as a covariate:

- mediator model: log_gain ~ exposure * C(log_lr) (saturated: the gain's dependence on lr differs by
  arm; sign's gain falls from ~50 to ~12 across MNIST's grid while sign_scaled's stays near 0.7);
- outcome model: outcome ~ exposure + C(log_lr) + log_gain + (log_lr + log_gain - c)**2, i.e. a free
  effect of the nominal lr (the output layer takes the nominal step whatever the gain) plus a U in
  log effective lr = log_lr + log_gain, shared by both arms (c centres it; it does not change the fit).

ACME, ADE and total are averages over the pooled runs, i.e. over the pooled grid lrs with equal weight
per run: the estimand is "averaged over the healthy grid range", not "at one lr". `fixed_lr`: the runs of
both arms at the one shared nominal lr of the `fixed_lr` estimand, mediator model log_gain ~ exposure,
outcome model outcome ~ exposure + log_gain + log_gain**2.

Why pooled is the default: within one arm at one lr the gain barely varies (8 seeds; sd of log gain
~0.02-0.3), so at a single lr exposure and mediator are almost collinear and the ACME/ADE split rests
on a curvature fitted to a few points. On the default MNIST study the fixed-lr design gave ACME 0.27
[-0.75, 1.34] and proportion mediated 4.5 [-80, 70]; pooling four lrs (4x the runs, and the gain
moving with lr inside each arm) gives intervals of width ~0.3 on ACME and ADE. The price is
model dependence, which a reader should know: the two arms' effective lrs do not overlap (sign's
effective lr is 20-50 x its lr), so the split relies on the parametric outcome model (a U in log
effective lr shared by both arms) rather than on overlapping data. The models' predict() rebuilds the
interaction and the square from the counterfactual exposure and mediator that statsmodels substitutes.

Intervals and p-values are from statsmodels' parametric simulation, seeded through its `rng`. ACME,
ADE and proportion mediated are the averages of the control and treated versions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.mediation import Mediation

from soap.analysis.effective_lr import healthy_cells

EXPOSURE, CONTROL = "sign", "sign_scaled"
DESIGNS = ("pooled", "fixed_lr")
DEFAULT_DESIGN = "pooled"
MIN_RUNS_PER_ARM = 3
_SUMMARY_ROWS = {
    "acme": "ACME (average)",
    "ade": "ADE (average)",
    "total": "Total effect",
    "prop": "Prop. mediated (average)",
}


class _QuadraticMediatorOLS(OLS):
    """OLS on columns [const, exposure, mediator, mediator**2].

    Mediation's array interface substitutes only the mediator column when it predicts counterfactual
    outcomes; predict() recomputes the square from it so those predictions stay consistent.
    """

    def predict(self, params, exog=None, *args, **kwargs):
        if exog is not None:
            exog = np.array(exog, dtype=float, copy=True)
            exog[:, 3] = exog[:, 2] ** 2
        return super().predict(params, exog, *args, **kwargs)


class _DerivedColumnsOLS(OLS):
    """OLS whose exog has columns derived from others (interactions, squares).

    Mediation's array interface substitutes only the exposure and mediator columns when it predicts
    counterfactuals; predict() rebuilds the derived columns from them with `derive(exog) -> exog`.
    (The formula interface does this too, but rebuilds the whole design per simulation: ~100x slower.)
    """

    derive = None  # set per instance

    def predict(self, params, exog=None, *args, **kwargs):
        if exog is not None and self.derive is not None:
            exog = self.derive(np.array(exog, dtype=float, copy=True))
        return super().predict(params, exog, *args, **kwargs)


def _derived_ols(endog: pd.Series, exog: pd.DataFrame, derive) -> _DerivedColumnsOLS:
    model = _DerivedColumnsOLS(endog, exog)
    model.derive = derive
    return model


@dataclass(frozen=True)
class MediationFit:
    effects: dict[str, dict[str, float]]  # acme/ade/total/prop -> estimate, ci_low, ci_high, p_value
    n: int
    outcome_formula: str
    text: str  # model summaries and the mediation table
    design: str = "fixed_lr"
    mediator_formula: str = "log_gain ~ exposure"
    lrs: tuple[float, ...] = ()  # the nominal learning rates the runs were at


def mediation_rows(grid_at_lr: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """The exposure and control runs usable for mediation, with `exposure` 0/1, `log_gain`, `log_lr`."""
    rows = grid_at_lr[grid_at_lr["method"].isin([EXPOSURE, CONTROL]) & ~grid_at_lr["diverged"]
                      & np.isfinite(grid_at_lr[outcome]) & (grid_at_lr["feedback_gain"] > 0)].copy()
    rows["exposure"] = (rows["method"] == EXPOSURE).astype(float)
    rows["log_gain"] = np.log(rows["feedback_gain"])
    rows["log_lr"] = np.log(rows["lr"])
    return rows


def pooled_rows(grid: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """The pooled design's runs: both arms, at grid lrs where both arms' (method, lr) cells are healthy."""
    arms = grid[grid["method"].isin([EXPOSURE, CONTROL])]
    arms = arms[healthy_cells(arms)]
    n_arms = arms.groupby("lr")["method"].nunique()
    both = n_arms.index[n_arms == 2]
    return mediation_rows(arms[arms["lr"].isin(both)], outcome)


def _arm_counts_reason(rows: pd.DataFrame) -> str | None:
    counts = rows["method"].value_counts()
    if min(counts.get(EXPOSURE, 0), counts.get(CONTROL, 0)) < MIN_RUNS_PER_ARM:
        return (f"fewer than {MIN_RUNS_PER_ARM} non-diverged runs per arm "
                f"({EXPOSURE}: {counts.get(EXPOSURE, 0)}, {CONTROL}: {counts.get(CONTROL, 0)})")
    return None


def _effects(result) -> tuple[dict, pd.DataFrame]:
    table = result.summary()
    effects = {
        key: {
            "estimate": float(table.loc[label, "Estimate"]),
            "ci_low": float(table.loc[label, "Lower CI bound"]),
            "ci_high": float(table.loc[label, "Upper CI bound"]),
            "p_value": float(table.loc[label, "P-value"]),
        }
        for key, label in _SUMMARY_ROWS.items()
    }
    return effects, table


def fit_mediation(grid_at_lr: pd.DataFrame, outcome: str, n_sims: int,
                  rng: np.random.Generator) -> MediationFit | str:
    """Mediation analysis at one nominal learning rate (the `fixed_lr` design); a string saying why
    when it cannot be done."""
    rows = mediation_rows(grid_at_lr, outcome)
    reason = _arm_counts_reason(rows)
    if reason:
        return reason
    exog = pd.DataFrame({
        "const": 1.0,
        "exposure": rows["exposure"],
        "log_gain": rows["log_gain"],
        "log_gain_sq": rows["log_gain"] ** 2,
    })
    y = rows[outcome]
    if np.linalg.matrix_rank(exog.to_numpy()) == 4:
        outcome_model = _QuadraticMediatorOLS(y, exog)
        outcome_formula = f"{outcome} ~ exposure + log_gain + log_gain**2"
    elif np.linalg.matrix_rank(exog.to_numpy()[:, :3]) == 3:
        outcome_model = OLS(y, exog.iloc[:, :3])
        outcome_formula = f"{outcome} ~ exposure + log_gain"
    else:
        return "feedback gain does not vary within arms: mediator and exposure are confounded"
    mediator_model = OLS(rows["log_gain"], exog[["const", "exposure"]])
    result = Mediation(outcome_model, mediator_model, "exposure", "log_gain").fit(n_rep=n_sims, rng=rng)
    effects, table = _effects(result)
    text = "\n\n".join([
        "Design: fixed_lr",
        f"Outcome model: {outcome_formula}",
        str(outcome_model.fit().summary()),
        "Mediator model: log_gain ~ exposure",
        str(mediator_model.fit().summary()),
        f"Mediation ({EXPOSURE} = 1 vs {CONTROL} = 0, {n_sims} simulations)",
        table.to_string(),
    ])
    return MediationFit(effects=effects, n=len(rows), outcome_formula=outcome_formula, text=text,
                        design="fixed_lr", lrs=tuple(float(x) for x in sorted(rows["lr"].unique())))


def fit_pooled_mediation(grid: pd.DataFrame, outcome: str, n_sims: int,
                         rng: np.random.Generator) -> MediationFit | str:
    """Mediation over every grid lr where both arms are healthy (the `pooled` design); a string saying
    why when it cannot be done."""
    rows = pooled_rows(grid, outcome).reset_index(drop=True)
    reason = _arm_counts_reason(rows)
    if reason:
        return reason
    lrs = tuple(float(x) for x in sorted(rows["lr"].unique()))
    log_lr = rows["log_lr"].to_numpy()
    centre = float(np.mean(log_lr + rows["log_gain"]))
    # Design columns. lr dummies (first lr as baseline) and their products with exposure.
    dummies = pd.DataFrame({f"lr[{lr:.4g}]": np.isclose(rows["lr"], lr).astype(float) for lr in lrs[1:]})
    n_d = dummies.shape[1]
    exposure = rows["exposure"].to_numpy()
    mediator_exog = pd.concat([
        pd.DataFrame({"const": 1.0, "exposure": exposure}), dummies,
        dummies.mul(exposure, axis=0).add_prefix("exposure:"),
    ], axis=1)

    def derive_mediator(x):  # columns: const, exposure, dummies, exposure * dummies
        x[:, 2 + n_d:] = x[:, [1]] * x[:, 2:2 + n_d]
        return x

    u_name = f"(log_lr + log_gain {'-' if centre >= 0 else '+'} {abs(centre):.6g})**2"
    outcome_exog = pd.concat([
        pd.DataFrame({"const": 1.0, "exposure": exposure}), dummies,
        pd.DataFrame({"log_gain": rows["log_gain"], u_name: (log_lr + rows["log_gain"] - centre) ** 2}),
    ], axis=1)

    def derive_outcome(x):  # columns: const, exposure, dummies, log_gain, U
        x[:, -1] = (log_lr + x[:, -2] - centre) ** 2
        return x

    lr_text = " + C(lr)" if n_d else ""
    mediator_formula = f"log_gain ~ exposure{' * C(lr)' if n_d else ''}"
    outcome_formula = f"{outcome} ~ exposure{lr_text} + log_gain + {u_name}"
    outcome_model = _derived_ols(rows[outcome], outcome_exog, derive_outcome)
    if np.linalg.matrix_rank(outcome_exog.to_numpy()) < outcome_exog.shape[1]:
        outcome_exog = outcome_exog.iloc[:, :-1]
        outcome_formula = f"{outcome} ~ exposure{lr_text} + log_gain"
        if np.linalg.matrix_rank(outcome_exog.to_numpy()) < outcome_exog.shape[1]:
            return "feedback gain does not vary within arms: mediator and exposure are confounded"
        outcome_model = OLS(rows[outcome], outcome_exog)
    mediator_model = _derived_ols(rows["log_gain"], mediator_exog, derive_mediator)
    result = Mediation(outcome_model, mediator_model, "exposure", "log_gain").fit(n_rep=n_sims, rng=rng)
    effects, table = _effects(result)
    text = "\n\n".join([
        f"Design: pooled over grid lrs {list(lrs)} (both arms healthy)",
        f"Outcome model: {outcome_formula}",
        str(outcome_model.fit().summary()),
        f"Mediator model: {mediator_formula}",
        str(mediator_model.fit().summary()),
        f"Mediation ({EXPOSURE} = 1 vs {CONTROL} = 0, {n_sims} simulations)",
        table.to_string(),
    ])
    return MediationFit(effects=effects, n=len(rows), outcome_formula=outcome_formula, text=text,
                        design="pooled", mediator_formula=mediator_formula, lrs=lrs)
