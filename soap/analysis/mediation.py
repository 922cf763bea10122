"""Mediation of sign-tracking's effect through its feedback gain (statsmodels `Mediation`).

Design (`design: "fixed_lr"` in summary.json): grid runs of `sign` (exposure = 1) and `sign_scaled`
(exposure = 0) at the one shared nominal learning rate of the `fixed_lr` estimand, so the nominal
learning rate is held fixed by design rather than modelled. Mediator: log(feedback_gain). Mediator
model: OLS of log gain on exposure. Outcome model: OLS of the outcome on exposure, log gain and
log gain squared: the outcome is U-shaped in log effective learning rate, and the two arms sit at
log gains about 3 apart, so a straight line in the mediator would be a poor extrapolation. (When the
square cannot be estimated the outcome model falls back to linear in the mediator; when the gain
does not vary within arms the mediator and exposure are confounded and mediation is skipped.)

ACME, ADE and proportion mediated are the averages of the control and treated versions; intervals
and p-values are from statsmodels' parametric simulation, seeded through its `rng`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.mediation import Mediation

EXPOSURE, CONTROL = "sign", "sign_scaled"
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


@dataclass(frozen=True)
class MediationFit:
    effects: dict[str, dict[str, float]]  # acme/ade/total/prop -> estimate, ci_low, ci_high, p_value
    n: int
    outcome_formula: str
    text: str  # model summaries and the mediation table


def mediation_rows(grid_at_lr: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """The exposure and control runs usable for mediation, with `exposure` 0/1 and `log_gain`."""
    rows = grid_at_lr[grid_at_lr["method"].isin([EXPOSURE, CONTROL]) & ~grid_at_lr["diverged"]
                      & grid_at_lr[outcome].notna() & (grid_at_lr["feedback_gain"] > 0)].copy()
    rows["exposure"] = (rows["method"] == EXPOSURE).astype(float)
    rows["log_gain"] = np.log(rows["feedback_gain"])
    return rows


def fit_mediation(grid_at_lr: pd.DataFrame, outcome: str, n_sims: int,
                  rng: np.random.Generator) -> MediationFit | str:
    """Mediation analysis at one nominal learning rate; a string saying why when it cannot be done."""
    rows = mediation_rows(grid_at_lr, outcome)
    counts = rows["method"].value_counts()
    if min(counts.get(EXPOSURE, 0), counts.get(CONTROL, 0)) < MIN_RUNS_PER_ARM:
        return (f"fewer than {MIN_RUNS_PER_ARM} non-diverged runs per arm "
                f"({EXPOSURE}: {counts.get(EXPOSURE, 0)}, {CONTROL}: {counts.get(CONTROL, 0)})")
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
    text = "\n\n".join([
        f"Outcome model: {outcome_formula}",
        str(outcome_model.fit().summary()),
        "Mediator model: log_gain ~ exposure",
        str(mediator_model.fit().summary()),
        f"Mediation ({EXPOSURE} = 1 vs {CONTROL} = 0, {n_sims} simulations)",
        table.to_string(),
    ])
    return MediationFit(effects=effects, n=len(rows), outcome_formula=outcome_formula, text=text)
