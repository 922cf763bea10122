"""Mediation of sign-tracking's effect through its feedback gain (statsmodels `Mediation`).

Descriptive, model-based: the mediator is one scalar gain (log feedback_gain, a geometric mean over hidden
layers), which assumes that it summarises a rule's per-layer steps. It does not: under SGD the gain acts per
hidden layer and not on the output layer, so the same scalar can come with different per-layer steps, and
the "direct effect" then holds step-size allocation as well as direction. The experimental split of
direction and step size is the factorial's (soap.analysis.decomposition); this analysis is reported beside
it as a description.

Exposure `sign` (1) vs `sign_scaled` (0), mediator log(feedback_gain), outcome a test metric, with the
seed in both models (STUDY.md): seed s gives both arms the same initial weights, which plausibly move
the gain and the loss alike. Without seed effects that common cause reads as mediation: in a world
where the seed moves both, the pooled analysis without them gave ACME +0.33 against a truth of -0.11
and covered 0 of 50 times; with seed fixed effects in both models it is unbiased.

Models (both designs; `design` says which runs enter):

- mediator: log_gain ~ exposure * C(lr) + C(seed)  (the gain's dependence on lr differs by arm: sign's
  falls from ~50 to ~12 across MNIST's grid while sign_scaled's stays near 0.7);
- outcome: outcome ~ exposure + C(lr) + C(seed) + log_gain + (log_lr + log_gain - c)**2, a free effect
  of the nominal lr (the output layer takes the nominal step whatever the gain) plus a U in log
  effective lr = log_lr + log_gain shared by both arms (c centres it). At one lr this is
  outcome ~ exposure + C(seed) + log_gain + log_gain**2.

Designs (config `analysis.mediation_design`, CLI `--mediation-design`):

- `pooled` (default): both arms' grid runs at every grid lr where both arms' cells are healthy (no
  seed diverged: the rule of soap.analysis.effective_lr). ACME, ADE and total average over those lrs
  with equal weight per run: the estimand is "averaged over the healthy grid range".
- `fixed_lr`: both arms' non-diverged runs at the shared lr of the `fixed_lr` estimand (STUDY.md's).
  Within one arm at one lr the gain barely varies, so exposure and mediator are nearly collinear and
  the split rests on a curvature fitted to few points: expect wide intervals.

Intervals: statsmodels' parametric simulation (seeded through its `rng`) for the parameters'
uncertainty, plus the variance from sampling the seeds (see _effects), with t(G-1) intervals and
p-values. The models use OLS covariances: with seed fixed effects taking G - 1 of the columns, a
covariance clustered by seed has rank at most G - 1, smaller than the number of parameters, and the
simulation then never moves the directions it lacks (in the tests it covered the total effect 60% of
the time). ACME, ADE and proportion mediated are the averages of the control and treated versions;
`sd` is each effect's SD, so a reader sees how imprecise the split is (at 10 seeds the SDs of ACME and
ADE, ~0.05 in the synthetic worlds, are several times the total's). The proportion mediated keeps the
simulation's percentile interval and p-value, floored at 1/n_sims (a p of 0 only says "below the
simulation's resolution").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.mediation import Mediation

from soap.analysis.effective_lr import healthy_cells

EXPOSURE, CONTROL = "sign", "sign_scaled"
DESIGNS = ("pooled", "fixed_lr")
DEFAULT_DESIGN = "pooled"
MIN_RUNS_PER_ARM = 3
PARTS = ("acme", "ade", "total", "prop")


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
    effects: dict[str, dict[str, float]]  # acme/ade/total/prop -> estimate, ci_low, ci_high, p_value, sd
    n: int
    n_seeds: int
    n_sims: int
    outcome_formula: str
    mediator_formula: str
    text: str  # model summaries and the mediation table
    design: str
    lrs: tuple[float, ...]  # the nominal learning rates the runs were at


def mediation_rows(rows: pd.DataFrame, outcome: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The exposure and control runs usable for mediation, with `exposure` 0/1, `log_gain`, `log_lr`;
    and the runs of the two arms left out, by reason."""
    arms = rows[rows["method"].isin([EXPOSURE, CONTROL])]
    finite_y = np.isfinite(arms[outcome].to_numpy(dtype=float))
    finite_gain = np.isfinite(arms["feedback_gain"].to_numpy(dtype=float)) & (arms["feedback_gain"] > 0)
    ok = ~arms["diverged"] & finite_y & finite_gain
    excluded = {"diverged": int(arms["diverged"].sum()),
                f"non-finite {outcome}": int((~arms["diverged"] & ~finite_y).sum()),
                "non-finite feedback_gain": int((~arms["diverged"] & finite_y & ~finite_gain).sum())}
    used = arms[ok].copy()
    used["exposure"] = (used["method"] == EXPOSURE).astype(float)
    used["log_gain"] = np.log(used["feedback_gain"])
    used["log_lr"] = np.log(used["lr"])
    return used, excluded


def pooled_rows(grid: pd.DataFrame, outcome: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The pooled design's runs: both arms, at grid lrs where both arms' (method, lr) cells are healthy."""
    arms = grid[grid["method"].isin([EXPOSURE, CONTROL])]
    healthy = healthy_cells(arms)
    n_arms = arms[healthy].groupby("lr")["method"].nunique()
    both = arms["lr"].isin(n_arms.index[n_arms == 2]) & healthy
    rows, excluded = mediation_rows(arms[both], outcome)
    left = arms[~both & ~arms["diverged"]]
    excluded["diverged"] = int(arms["diverged"].sum())
    excluded["cell not healthy in both arms"] = len(left)
    return rows, excluded


def _arm_counts_reason(rows: pd.DataFrame) -> str | None:
    counts = rows["method"].value_counts()
    if min(counts.get(EXPOSURE, 0), counts.get(CONTROL, 0)) < MIN_RUNS_PER_ARM:
        return (f"fewer than {MIN_RUNS_PER_ARM} usable runs per arm "
                f"({EXPOSURE}: {counts.get(EXPOSURE, 0)}, {CONTROL}: {counts.get(CONTROL, 0)})")
    return None


def _dummies(values: pd.Series, prefix: str) -> pd.DataFrame:
    """Treatment-coded dummies of `values` (first level the baseline); no columns for one level."""
    levels = sorted(values.unique())
    return pd.DataFrame({f"{prefix}[{v:.4g}]" if isinstance(v, float) else f"{prefix}[{v}]":
                         (values == v).to_numpy(dtype=float) for v in levels[1:]}, index=values.index)


def _effects(result, n_sims: int, seeds: np.ndarray) -> tuple[dict, pd.DataFrame]:
    """ACME, ADE, total and proportion mediated, for the population of seeds the runs sample.

    statsmodels' simulation redraws the models' parameters for the runs at hand: with seed fixed
    effects it holds the sampled seeds fixed, and its spread leaves out that another 10 seeds would
    have other gains (where the U is curved, other effects). The sampling of seeds adds the variance of
    the per-seed mean effect over G seeds, var_s / G; the interval is estimate +- t_{G-1} x the
    combined SD (Satterthwaite df), and the p-value the same t test's, so they agree. (In the seed-confounded world the
    simulation alone covered the total 58% of the time; with the seeds' variance, 95%.) The
    proportion mediated, a ratio, keeps the simulation's percentile interval.
    """
    table = result.summary()
    ind, direct = result.indirect_effects, result.direct_effects  # per run x simulation, control/treated
    unit = {"acme": (ind[0] + ind[1]) / 2, "ade": (direct[0] + direct[1]) / 2}
    unit["total"] = unit["acme"] + unit["ade"]
    sims = {"acme": result.ACME_avg, "ade": result.ADE_avg, "total": result.total_effect}
    labels = {"acme": "ACME (average)", "ade": "ADE (average)", "total": "Total effect",
              "prop": "Prop. mediated (average)"}
    n_seeds = len(np.unique(seeds))
    effects = {}
    for key, draws in sims.items():
        estimate = float(table.loc[labels[key], "Estimate"])
        per_seed = pd.Series(unit[key].mean(axis=1)).groupby(seeds).mean()
        v_sim, v_seed = np.var(draws, ddof=1), per_seed.var(ddof=1) / n_seeds
        sd = float(np.sqrt(v_sim + v_seed))
        # Satterthwaite: the seeds' part has G - 1 degrees of freedom, the simulation's many.
        df = (v_sim + v_seed) ** 2 / (v_seed**2 / (n_seeds - 1)) if v_seed > 0 else np.inf
        t = stats.t.ppf(0.975, df)
        p = float(2 * stats.t.sf(abs(estimate) / sd, df)) if sd > 0 else np.nan
        effects[key] = {"estimate": estimate, "ci_low": estimate - t * sd, "ci_high": estimate + t * sd,
                        "p_value": p, "sd": sd}
    prop = table.loc[labels["prop"]]
    effects["prop"] = {"estimate": float(prop["Estimate"]), "ci_low": float(prop["Lower CI bound"]),
                       "ci_high": float(prop["Upper CI bound"]),
                       "p_value": max(float(prop["P-value"]), 1.0 / n_sims),  # never below 1 / n_sims
                       "sd": float(np.std(result.prop_med_avg, ddof=1))}
    return effects, table


def fit_mediation(rows: pd.DataFrame, outcome: str, n_sims: int, rng: np.random.Generator,
                  design: str) -> MediationFit | str:
    """Mediation on the runs of one design (from mediation_rows or pooled_rows); a string saying why
    when it cannot be done."""
    reason = _arm_counts_reason(rows)
    if reason:
        return reason
    rows = rows.reset_index(drop=True)
    lrs = tuple(float(x) for x in sorted(rows["lr"].unique()))
    lr_d = _dummies(rows["lr"], "lr")
    seed_d = _dummies(rows["seed"], "seed")
    n_lr = lr_d.shape[1]
    exposure = rows["exposure"].to_numpy()
    log_lr = rows["log_lr"].to_numpy()
    centre = float(np.mean(log_lr + rows["log_gain"]))

    mediator_exog = pd.concat([pd.DataFrame({"const": 1.0, "exposure": exposure}), lr_d,
                               lr_d.mul(exposure, axis=0).add_prefix("exposure:"), seed_d], axis=1)

    def derive_mediator(x):  # columns: const, exposure, lr dummies, exposure * lr dummies, seeds
        x[:, 2 + n_lr:2 + 2 * n_lr] = x[:, [1]] * x[:, 2:2 + n_lr]
        return x

    u_name = f"(log_lr + log_gain {'-' if centre >= 0 else '+'} {abs(centre):.6g})**2"
    outcome_exog = pd.concat([pd.DataFrame({"const": 1.0, "exposure": exposure}), lr_d, seed_d,
                              pd.DataFrame({"log_gain": rows["log_gain"],
                                            u_name: (log_lr + rows["log_gain"] - centre) ** 2})], axis=1)

    def derive_outcome(x):  # last two columns: log_gain, U
        x[:, -1] = (log_lr + x[:, -2] - centre) ** 2
        return x

    lr_text = " + C(lr)" if n_lr else ""
    mediator_formula = f"log_gain ~ exposure{' * C(lr)' if n_lr else ''} + C(seed)"
    outcome_formula = f"{outcome} ~ exposure{lr_text} + C(seed) + log_gain + {u_name}"
    outcome_model = _derived_ols(rows[outcome], outcome_exog, derive_outcome)
    if np.linalg.matrix_rank(outcome_exog.to_numpy()) < outcome_exog.shape[1]:
        outcome_exog = outcome_exog.iloc[:, :-1]
        outcome_formula = f"{outcome} ~ exposure{lr_text} + C(seed) + log_gain"
        if np.linalg.matrix_rank(outcome_exog.to_numpy()) < outcome_exog.shape[1]:
            return ("feedback gain does not vary within arms and seeds: mediator and exposure are "
                    "confounded")
        outcome_model = OLS(rows[outcome], outcome_exog)
    if np.linalg.matrix_rank(mediator_exog.to_numpy()) < mediator_exog.shape[1]:
        return "the mediator model is not identified (an lr or seed with runs of one arm only)"
    if outcome_exog.shape[0] - outcome_exog.shape[1] < 2:
        return f"too few runs ({len(rows)}) for the outcome model's {outcome_exog.shape[1]} terms"
    mediator_model = _derived_ols(rows["log_gain"], mediator_exog, derive_mediator)
    result = Mediation(outcome_model, mediator_model, "exposure", "log_gain").fit(n_rep=n_sims, rng=rng)
    effects, table = _effects(result, n_sims, rows["seed"].to_numpy())
    where = (f"pooled over grid lrs {list(lrs)} (both arms healthy)" if design == "pooled"
             else f"at lr {lrs[0]:g}")
    text = "\n\n".join([
        f"Design: {design}, {where}; {rows['seed'].nunique()} seeds (fixed effects in both models)",
        f"Outcome model: {outcome_formula}",
        str(outcome_model.fit().summary()),
        f"Mediator model: {mediator_formula}",
        str(mediator_model.fit().summary()),
        f"Mediation ({EXPOSURE} = 1 vs {CONTROL} = 0, {n_sims} simulations)",
        table.to_string(),
    ])
    return MediationFit(effects=effects, n=len(rows), n_seeds=int(rows["seed"].nunique()), n_sims=n_sims,
                        outcome_formula=outcome_formula, mediator_formula=mediator_formula, text=text,
                        design=design, lrs=lrs)
