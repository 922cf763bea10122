"""The `time_to_target_ratio` estimand: examples needed to reach the target training loss, vs bp.

Data convention: `rows` is one dataset's runs of one phase (tuned; grid at the shared learning rate
when there are no tuned runs). A run that reached the target is an event at `examples_to_target`; a
run that did not (including a diverged one) is right-censored at the examples it saw: the
`examples_seen` column when present, else, for every run, the largest `examples_to_target` observed
in the dataset (a lower bound on the common budget, so censoring is never placed later than seen).

Estimates: Kaplan-Meier median per method (statsmodels SurvfuncRight), the ratio of medians method / bp
with a percentile interval from a bootstrap over seeds (paired: one resample of seeds serves both
methods), and a Cox proportional-hazards model on method with standard errors clustered by seed.
A hazard ratio above 1 means the method reaches the target sooner than bp. A KM median is undefined
(null) when at least half of a method's runs are censored before it.

Arms without events: when a method's runs (or bp's) never reach the target, the Cox partial likelihood
has no finite maximum (the log hazard ratio runs off to -inf and its Wald standard error is meaningless:
on MNIST it printed a hazard ratio of 8e-12 with a tight interval and p = 0). Such a method's hazard
ratio is reported as not estimable (null estimate and interval) and its p-value comes from a log-rank
test against bp, which stays valid with zero events; the Cox model is fitted on the other arms only.
Likewise a bootstrap replicate whose method median is undefined is a right-censored ratio: it counts
as infinite for the upper limit but at its lower bound (the arm's largest observed time over bp's
median) for the lower limit, so an interval reads "at least x" instead of [inf, inf].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

from soap.analysis.inputs import REFERENCE

METHOD_TERM = f"C(method, Treatment('{REFERENCE}'))"


def survival_data(rows: pd.DataFrame, fallback_budget: float) -> pd.DataFrame:
    """Per run: method, seed, time (examples) and event (1 reached target, 0 censored)."""
    reached = rows["reached_target"].to_numpy() & rows["examples_to_target"].notna().to_numpy()
    if "examples_seen" in rows:
        censor_at = pd.to_numeric(rows["examples_seen"], errors="coerce").fillna(fallback_budget).to_numpy()
    else:
        censor_at = np.full(len(rows), fallback_budget)
    time = np.where(reached, rows["examples_to_target"].to_numpy(), censor_at)
    return pd.DataFrame({
        "method": rows["method"].to_numpy(),
        "seed": rows["seed"].to_numpy(),
        "time": time.astype(float),
        "event": reached.astype(int),
    })


def km_median(time: np.ndarray, event: np.ndarray) -> float:
    """Kaplan-Meier median time; NaN when survival never falls below one half."""
    if len(time) == 0:
        return np.nan
    return float(SurvfuncRight(time, event).quantile(0.5))


def km_table(surv: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """KM survival (the fraction not yet at target) per method, with pointwise log-log intervals."""
    z = stats.norm.ppf(0.5 + level / 2)
    tables = []
    for method, rows in surv.groupby("method", sort=True):
        sf = SurvfuncRight(rows["time"].to_numpy(), rows["event"].to_numpy())
        s, se = sf.surv_prob, sf.surv_prob_se
        with np.errstate(divide="ignore", invalid="ignore"):
            # Greenwood SE carried to log(-log S), which keeps the interval inside [0, 1].
            half_width = z * se / np.abs(s * np.log(s))
            low = np.where((s > 0) & (s < 1), s ** np.exp(half_width), s)
            high = np.where((s > 0) & (s < 1), s ** np.exp(-half_width), s)
        tables.append(pd.DataFrame({
            "method": method,
            "examples": np.r_[0.0, sf.surv_times],
            "survival": np.r_[1.0, s],
            "ci_low": np.r_[1.0, low],
            "ci_high": np.r_[1.0, high],
        }))
    return pd.concat(tables, ignore_index=True)


def median_ratio(surv: pd.DataFrame, method: str, n_boot: int, rng: np.random.Generator,
                 level: float = 0.95) -> dict[str, float]:
    """Ratio of KM medians method / bp and its bootstrap interval over seeds.

    A replicate whose method median is undefined counts as an infinite ratio (the method is slower
    than the observation window shows), so an upper bound may be infinite; replicates where neither
    median is defined carry no information and are dropped.
    """
    arms = {m: surv[surv["method"] == m] for m in (method, REFERENCE)}
    estimate = km_median(arms[method]["time"].to_numpy(), arms[method]["event"].to_numpy()) / km_median(
        arms[REFERENCE]["time"].to_numpy(), arms[REFERENCE]["event"].to_numpy()
    )
    # (time, event) arrays per seed, so a resample is a numpy concatenation, not a DataFrame one.
    by_seed = {m: {s: (g["time"].to_numpy(), g["event"].to_numpy()) for s, g in rows.groupby("seed")}
               for m, rows in arms.items()}
    seeds = np.array(sorted(set(by_seed[method]) & set(by_seed[REFERENCE])))
    ratios, bounds = [], []  # bounds: the ratio, or for a right-censored one its lower bound
    for _ in range(n_boot):
        sample = rng.choice(seeds, len(seeds), replace=True)
        medians, max_times = [], []
        for m in (method, REFERENCE):
            time = np.concatenate([by_seed[m][s][0] for s in sample])
            event = np.concatenate([by_seed[m][s][1] for s in sample])
            median = km_median(time, event)
            medians.append(np.inf if np.isnan(median) else median)
            max_times.append(time.max())
        if np.isfinite(medians[0]) or np.isfinite(medians[1]):
            ratios.append(medians[0] / medians[1])
            # An undefined method median is beyond its arm's largest time: the ratio is at least this.
            bounds.append(ratios[-1] if np.isfinite(medians[0]) else max_times[0] / medians[1])
    tail = (1 - level) / 2
    if len(ratios) < 2:
        low, high = np.nan, np.nan
    else:
        # No interpolation: an infinite replicate must give an infinite bound, not inf - inf.
        low = np.quantile(np.array(bounds), tail, method="inverted_cdf")
        high = np.quantile(np.array(ratios), 1 - tail, method="inverted_cdf")
    return {"estimate": float(estimate), "ci_low": float(low), "ci_high": float(high)}


@dataclass(frozen=True)
class CoxFit:
    hazard_ratio: dict[str, dict[str, float]]  # method -> estimate, ci_low, ci_high, p_value
    text: str
    not_estimable: tuple[str, ...] = ()  # methods whose hazard ratio has no finite estimate


def logrank_p(surv: pd.DataFrame, method: str) -> float:
    """Log-rank test p-value of method vs bp (valid when an arm has no events)."""
    pair = surv[surv["method"].isin([method, REFERENCE])]
    if pair["event"].sum() == 0:
        return np.nan
    chi2, _ = survdiff(pair["time"].to_numpy(), pair["event"].to_numpy(), pair["method"].to_numpy())
    return float(stats.chi2.sf(chi2, df=1))  # survdiff's own p is 1 - cdf, which underflows to 0


def fit_cox(surv: pd.DataFrame) -> CoxFit | None:
    """Cox PH model time ~ method (vs bp), censored runs kept, SEs clustered by seed; None if no events.

    Methods with no events, or all methods when bp has none, get a null hazard ratio and a log-rank p.
    """
    methods = sorted(m for m in surv["method"].unique() if m != REFERENCE)
    if not methods or surv["event"].sum() == 0 or REFERENCE not in set(surv["method"]):
        return None
    events = surv.groupby("method")["event"].sum()
    degenerate = [m for m in methods if events[m] == 0 or events[REFERENCE] == 0]
    hazard_ratio = {m: {"estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": logrank_p(surv, m)}
                    for m in degenerate}
    fitted = [m for m in methods if m not in degenerate]
    note = (f"Hazard ratio not estimable (no events in the arm or in {REFERENCE}): {', '.join(degenerate)}; "
            "p-values from log-rank tests.\n" if degenerate else "")
    if not fitted:
        return CoxFit(hazard_ratio=hazard_ratio, text=note, not_estimable=tuple(degenerate))
    surv = surv[surv["method"].isin([REFERENCE, *fitted])]
    model = PHReg.from_formula(f"time ~ {METHOD_TERM}", surv, status=surv["event"].to_numpy())
    results = model.fit(groups=surv["seed"].to_numpy())
    names = list(model.exog_names)
    log_ci = results.conf_int()
    for method in fitted:
        i = names.index(f"{METHOD_TERM}[T.{method}]")
        hazard_ratio[method] = {
            "estimate": float(np.exp(results.params[i])),
            "ci_low": float(np.exp(log_ci[i, 0])),
            "ci_high": float(np.exp(log_ci[i, 1])),
            "p_value": float(results.pvalues[i]),
        }
    return CoxFit(hazard_ratio=dict(sorted(hazard_ratio.items())), text=note + str(results.summary()),
                  not_estimable=tuple(degenerate))
