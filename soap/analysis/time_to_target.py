"""The `time_to_target_ratio` estimand: examples needed to reach the target training loss, vs bp.

Data convention: `rows` is one dataset's runs of one phase (tuned; grid at the shared learning rate
when there are no tuned runs). A run that reached the target is an event at `examples_to_target`; a
run that did not (including a diverged one) is right-censored at the examples it saw: the
`examples_seen` column when present, else the dataset's fallback budget (`censoring_budget`: the
largest time to target observed, a lower bound on the common budget, so censoring is never placed
later than seen). `censoring_times` is the one rule, for the estimand, its sensitivity analysis and
the rule comparison's medians.

Estimates: Kaplan-Meier median per method, the ratio of medians method / bp with its interval and
p-value from one cluster bootstrap over every seed of either arm (median_ratio: a test of the ratio
itself), and, descriptively, a Cox proportional-hazards model on method with standard errors clustered
by seed, with a proportional-hazards check on its Schoenfeld residuals. A hazard ratio above 1 means
the method reaches the target sooner than bp. A KM median is undefined (null) when at least half of a
method's runs are censored before it; the ratio is then reported as a lower bound.
`target_sensitivity` repeats the ratio at other target losses, read off the training curves.

Arms without events: when a method's runs (or bp's) never reach the target, the Cox partial likelihood
has no finite maximum (the log hazard ratio runs off to -inf and its Wald standard error is meaningless:
on MNIST it printed a hazard ratio of 8e-12 with a tight interval and p = 0). Such a method's hazard
ratio is reported as not estimable (null estimate and interval) and its p-value comes from a log-rank
test against bp, which stays valid with zero events; the Cox model is fitted on the other arms only.
Likewise a bootstrap replicate whose method median is undefined is a right-censored ratio: it counts
as infinite for the upper limit but at its lower bound (the arm's largest observed time over bp's
median) for the lower limit, so an interval reads "at least x" instead of [inf, inf].

Ties: examples_to_target is the first logging point at or below the target, so on a 640-example
logging grid many runs tie. Kaplan-Meier handles ties exactly; the Cox fit uses Breslow's approximation
(statsmodels' default), which is biased towards 1 under heavy ties but does not fail.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import SurvfuncRight, survdiff
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from soap.analysis.inputs import METHOD_TERM
from soap.analysis.rows import Collector, ordered_methods, rng_for
from soap.analysis.summary import Interval, TimeToTarget, WaldTest, json_safe
from soap.rules import REFERENCE



def censoring_budget(runs: pd.DataFrame, column: str = "examples_to_target") -> float:
    """The censoring time of a run whose budget is not recorded: the largest `column` observed in
    `runs` (one dataset's), NaN when no run reached the target."""
    times = pd.to_numeric(runs[column], errors="coerce").to_numpy(dtype=float)
    return float(np.nanmax(times)) if np.isfinite(times).any() else np.nan


def censoring_times(rows: pd.DataFrame, fallback_budget: float, column: str = "examples_to_target") -> np.ndarray:
    """Per run, where it is censored if it never reached the target: the examples it saw when the time
    is counted in examples and `examples_seen` is recorded, else `fallback_budget` (censoring_budget)."""
    if column == "examples_to_target" and "examples_seen" in rows:
        return pd.to_numeric(rows["examples_seen"], errors="coerce").fillna(fallback_budget).to_numpy(dtype=float)
    return np.full(len(rows), fallback_budget, dtype=float)


def survival_data(rows: pd.DataFrame, fallback_budget: float) -> pd.DataFrame:
    """Per run: method, seed, time (examples) and event (1 reached target, 0 censored)."""
    reached = rows["reached_target"].to_numpy() & rows["examples_to_target"].notna().to_numpy()
    time = np.where(reached, rows["examples_to_target"].to_numpy(), censoring_times(rows, fallback_budget))
    return pd.DataFrame({
        "method": rows["method"].to_numpy(),
        "seed": rows["seed"].to_numpy(),
        "time": time.astype(float),
        "event": reached.astype(int),
    })


def km_median(time: np.ndarray, event: np.ndarray) -> float:
    """Kaplan-Meier median time (the first time S(t) < 1/2, SAS's and statsmodels' rule); NaN when
    survival never falls below one half. One implementation with the bootstrap's (km_median_weighted),
    so an estimate and its replicates treat S = 1/2 exactly alike: statsmodels' SurvfuncRight, which
    multiplies grouped factors, can land a hair below 1/2 where the exact product is 1/2."""
    if len(time) == 0:
        return np.nan
    time = np.asarray(time, dtype=float)
    return float(km_median_weighted(time, np.asarray(event, dtype=int), np.ones((1, len(time))))[0])


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


def km_median_weighted(time: np.ndarray, event: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """KM medians of one arm under many weightings at once (weights (B, n): bootstrap counts).

    The same estimator as km_median (SurvfuncRight's strict S(t) < 1/2), vectorised: runs sorted by
    time with events before censorings at a tie, S the running product of 1 - d_i / (at risk at i).
    Processing tied events one by one gives the same product as grouping them. NaN where S never
    falls below one half.
    """
    order = np.lexsort((1 - event, time))
    time, event, weights = time[order], event[order], weights[:, order]
    at_risk = np.cumsum(weights[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1 - weights * event / at_risk, 1.0)
    below = np.cumprod(factor, axis=1) < 0.5 - 1e-12
    first = below.argmax(axis=1)
    return np.where(below.any(axis=1), time[first], np.nan)


def expanded_tail_factor(k: int, level: float = 0.95) -> float:
    """Widening of a percentile interval for k resampled clusters: sqrt(k/(k-1)) t_{k-1} / z.

    A percentile bootstrap over k seeds takes its spread from the plug-in distribution, whose variance
    is (k-1)/k of the sample's, and a z quantile: too narrow at 8-10 seeds. Hesterberg's expanded
    percentile ("What teachers should know about the bootstrap", The American Statistician 69, 2015)
    restores the t interval's width while keeping the bootstrap's shape.
    """
    return float(np.sqrt(k / (k - 1)) * stats.t.ppf(0.5 + level / 2, k - 1) / stats.norm.ppf(0.5 + level / 2))


def median_ratio(surv: pd.DataFrame, method: str, n_boot: int, rng: np.random.Generator,
                 level: float = 0.95, expand: bool = False) -> dict[str, float]:
    """Ratio of KM medians method / bp: estimate, interval, p-value, from one cluster bootstrap.

    Every seed of either arm is a cluster: a resample draws seeds from their union, and each drawn
    seed brings its runs of both arms (a seed run by one arm only brings that run), so the interval
    uses the runs the estimate uses. The interval is the percentiles of the log-ratio replicates and the
    p-value twice the smaller tail beyond 0, so the interval excludes 1 exactly when p < 1 - level.
    A replicate whose method median is censored is an infinite ratio for the upper limit and, for the
    lower limit, at least its longest time over bp's median (so a censored arm reads "at least x").
    Unlike a mean's, a median's percentile bootstrap is not too narrow at few seeds: its replicates
    take few distinct values, which widens the tails. Measured (tests/test_analysis_bootstrap.py) on
    8 and 10 seeds it covers 94-96%, and the test of ratio 1 rejects 3-5.5% of true nulls at 8-16
    seeds; the expanded percentile (`expand=True`, replicates widened about the estimate by
    expanded_tail_factor) over-covers there (98%), so it is not the default. A replicate where bp's
    median is censored is a ratio of 0.

    When the method's own median is censored (fewer than half its runs reach the target), the estimate
    is None and `lower_bound` is the method's longest observed time over bp's median: the ratio is at
    least that.
    """
    arms = {m: surv[surv["method"] == m] for m in (method, REFERENCE)}
    medians = {m: km_median(a["time"].to_numpy(), a["event"].to_numpy()) for m, a in arms.items()}
    estimate = medians[method] / medians[REFERENCE]
    seeds = np.array(sorted(set(arms[method]["seed"]) | set(arms[REFERENCE]["seed"])))
    out = {"estimate": float(estimate), "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
           "n": len(seeds), "lower_bound": np.nan, "sd": np.nan}
    if np.isnan(medians[method]) and np.isfinite(medians[REFERENCE]):
        out["lower_bound"] = float(arms[method]["time"].max() / medians[REFERENCE])
    if len(seeds) < 2 or not np.isfinite(medians[REFERENCE]):
        return out
    counts = np.zeros((n_boot, len(seeds)))
    draws = rng.integers(0, len(seeds), (n_boot, len(seeds)))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1)  # how often each seed is drawn
    boot, longest = {}, {}
    for m, arm in arms.items():
        column = np.searchsorted(seeds, arm["seed"].to_numpy())
        time, weights = arm["time"].to_numpy(float), counts[:, column]
        boot[m] = km_median_weighted(time, arm["event"].to_numpy(int), weights)
        longest[m] = np.where(weights > 0, time, -np.inf).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(np.where(np.isnan(boot[method]), np.inf, boot[method])) - np.log(
            np.where(np.isnan(boot[REFERENCE]), np.inf, boot[REFERENCE]))
        # For the lower limit, a censored method median is at least its replicate's longest time.
        log_bound = np.where(np.isnan(boot[method]) & np.isfinite(boot[REFERENCE]),
                             np.log(longest[method]) - np.log(boot[REFERENCE]), log_ratio)
    keep = ~np.isnan(log_ratio)  # both censored: no information
    log_ratio, log_bound = log_ratio[keep], log_bound[keep]
    if len(log_ratio) < 2:
        return out
    centre = np.log(estimate) if np.isfinite(estimate) else np.median(log_bound)
    if expand:
        factor = expanded_tail_factor(len(seeds), level)
        log_ratio, log_bound = (centre + factor * (x - centre) for x in (log_ratio, log_bound))
    tail = (1 - level) / 2
    # No interpolation: an infinite replicate must give an infinite bound, not inf - inf.
    low = np.quantile(log_bound, tail, method="inverted_cdf")
    high = np.quantile(log_ratio, 1 - tail, method="inverted_cdf")
    finite = log_ratio[np.isfinite(log_ratio)]
    p = 2 * min((log_ratio <= 0).mean(), (log_bound >= 0).mean())
    out.update(ci_low=float(np.exp(low)), ci_high=float(np.exp(high)),
               p_value=float(min(1.0, max(p, 1 / len(log_ratio)))),  # a bootstrap p is never below 1/B
               sd=float(finite.std(ddof=1)) if len(finite) > 1 else np.nan)
    return out


@dataclass(frozen=True)
class CoxFit:
    hazard_ratio: dict[str, dict[str, float]]  # method -> estimate, ci_low, ci_high, p_value
    text: str
    not_estimable: tuple[str, ...] = ()  # methods whose hazard ratio has no finite estimate
    # method -> (correlation of its Schoenfeld residuals with log time, p-value): the PH check
    proportional_hazards: dict[str, tuple[float, float]] = None
    reasons: dict[str, str] = None  # method -> why its hazard ratio is not estimable


def logrank_p(surv: pd.DataFrame, method: str) -> float:
    """Log-rank test p-value of method vs bp (valid when an arm has no events)."""
    pair = surv[surv["method"].isin([method, REFERENCE])]
    if pair["event"].sum() == 0:
        return np.nan
    chi2, _ = survdiff(pair["time"].to_numpy(), pair["event"].to_numpy(), pair["method"].to_numpy())
    return float(stats.chi2.sf(chi2, df=1))  # survdiff's own p is 1 - cdf, which underflows to 0


# A fitted |log hazard ratio| beyond this (a ratio beyond 1e4 or below 1e-4) is the optimiser running
# off along a monotone partial likelihood, not an estimate.
MAX_LOG_HAZARD_RATIO = np.log(1e4)


def fit_cox(surv: pd.DataFrame) -> CoxFit | None:
    """Cox PH model time ~ method (vs bp), censored runs kept, SEs clustered by seed; None if no events.

    A method whose hazard ratio has no finite maximum gets a null hazard ratio and a log-rank p, with
    the reason in `not_estimable` / the text: no events in its arm or in bp's, or a monotone partial
    likelihood, where the arms' event times barely interleave (say every fa run reaching the target
    after nearly every bp run, at 16 seeds on a 640-example logging grid), so the fitted ratio runs off
    to 0 or infinity (statsmodels, not converging, printed 1e-12 with an interval from 1e-168 to
    1e144). The model is refitted without such methods.
    """
    methods = sorted(m for m in surv["method"].unique() if m != REFERENCE)
    if not methods or surv["event"].sum() == 0 or REFERENCE not in set(surv["method"]):
        return None
    events = surv.groupby("method")["event"].sum()
    reasons = {m: f"no events in {m if events[m] == 0 else REFERENCE}" for m in methods
               if events[m] == 0 or events[REFERENCE] == 0}
    fitted = [m for m in methods if m not in reasons]
    hazard_ratio, ph, text = {}, {}, ""
    while fitted:
        rows = surv[surv["method"].isin([REFERENCE, *fitted])]
        model = PHReg.from_formula(f"time ~ {METHOD_TERM}", rows, status=rows["event"].to_numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # judged below, per method
            results = model.fit(groups=rows["seed"].to_numpy())
        names = list(model.exog_names)
        index = {m: names.index(f"{METHOD_TERM}[T.{m}]") for m in fitted}
        runaway = [m for m, i in index.items()
                   if not (abs(results.params[i]) < MAX_LOG_HAZARD_RATIO and np.isfinite(results.bse[i]))]
        if not runaway:
            break
        reasons.update({m: "monotone partial likelihood (event times barely interleave with bp's)" for m in runaway})
        fitted = [m for m in fitted if m not in runaway]
    for method, reason in reasons.items():
        hazard_ratio[method] = {"estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                                "p_value": logrank_p(surv, method)}
    if reasons:
        text = "Hazard ratio not estimable (p-values from log-rank tests): " + "; ".join(
            f"{m}: {r}" for m, r in reasons.items()) + "\n"
    if fitted:
        log_ci = results.conf_int()
        residuals = results.schoenfeld_residuals  # NaN rows: censored runs
        log_time = np.log(rows["time"].to_numpy())
        for method, i in index.items():
            hazard_ratio[method] = {"estimate": float(np.exp(results.params[i])),
                                    "ci_low": float(np.exp(log_ci[i, 0])), "ci_high": float(np.exp(log_ci[i, 1])),
                                    "p_value": float(results.pvalues[i])}
            ph[method] = proportional_hazards_test(residuals[:, i], log_time)
        text += str(results.summary())
    return CoxFit(hazard_ratio=dict(sorted(hazard_ratio.items())), text=text, not_estimable=tuple(sorted(reasons)),
                  proportional_hazards=ph, reasons=reasons)


def proportional_hazards_test(residuals: np.ndarray, log_time: np.ndarray) -> tuple[float, float]:
    """Correlation of one covariate's Schoenfeld residuals with log time over the events, and its
    p-value (the Grambsch-Therneau idea with unscaled residuals): under proportional hazards the
    residuals do not trend with time, so a small p says the hazard ratio changes during training and
    one number summarises it badly."""
    keep = np.isfinite(residuals)
    if keep.sum() < 3 or np.ptp(residuals[keep]) == 0 or np.ptp(log_time[keep]) == 0:
        return np.nan, np.nan
    test = stats.pearsonr(residuals[keep], log_time[keep])
    return float(test.statistic), float(test.pvalue)


# Targets of the sensitivity analysis, as multiples of the study's target loss.
TARGET_MULTIPLIERS = (0.8, 0.9, 1.0, 1.1, 1.25)


def target_sensitivity(rows: pd.DataFrame, curves: pd.DataFrame, target: float, n_boot: int,
                       rng: np.random.Generator, multipliers=TARGET_MULTIPLIERS) -> list[dict]:
    """The ratio of medians method / bp at other target losses (multiples of `target`), with the
    first crossing of each recomputed from the smoothed training curves (soap.metrics.examples_to_target,
    the function that set the study's own). Rows: multiplier, target_loss, method, estimate, ci_low,
    ci_high, p_value, n_censored."""
    from soap.metrics import examples_to_target  # imports torch: only when curves are given

    curves = curves[curves["run_id"].isin(rows["run_id"])]
    out = []
    for multiplier in multipliers:
        loss = float(target * multiplier)
        hits = examples_to_target(curves, loss).set_index("run_id").reindex(rows["run_id"])
        at = rows.assign(examples_to_target=hits["examples_to_target"].to_numpy(),
                         reached_target=hits["reached_target"].fillna(False).astype(bool).to_numpy())
        surv = survival_data(at, censoring_budget(at))
        for method in sorted(set(surv["method"]) - {REFERENCE}):
            ratio = median_ratio(surv, method, n_boot, rng)
            out.append({"multiplier": multiplier, "target_loss": loss, "method": method,
                        **{k: ratio[k] for k in ("estimate", "ci_low", "ci_high", "p_value", "lower_bound")},
                        "n_censored": int((surv.loc[surv["method"] == method, "event"] == 0).sum())})
    return out


# --- the estimand's rows --------------------------------------------------------------------------------

OUTCOME = "examples_to_target"  # the estimates table's outcome of the time_to_target_ratio rows


def time_to_target_rows(out: Collector, rows, ds_runs, dataset, n_boot, seed, summary, model_texts,
                         km_tables) -> None:
    """The time_to_target_ratio rows of one dataset (on `rows`, its tuned runs, or its grid runs at the
    shared lr), its summary block with the Cox hazard ratios, and its KM table into `km_tables`."""
    fallback_budget = censoring_budget(ds_runs)
    if rows.empty or not np.isfinite(fallback_budget):
        out.skip("time_to_target", dataset, "no run reached the target (or no target was set)")
        return
    surv = survival_data(rows, fallback_budget)
    methods = ordered_methods(rows)
    km_tables.append(km_table(surv).assign(dataset=dataset))
    ratios = {m: median_ratio(surv, m, n_boot, rng_for(seed, "time_to_target", dataset, m))
              for m in methods[1:]}
    medians = {m: km_median(*_arm(surv, m)) for m in methods}
    block = TimeToTarget(
        target_loss=ds_runs["target_loss"].dropna().median() if "target_loss" in ds_runs else None,
        phase=str(rows["phase"].iloc[0]), median_examples=medians,
        median_lower_bound={m: (float(surv.loc[surv["method"] == m, "time"].max()) if np.isnan(v) else None)
                            for m, v in medians.items()},
        n_censored={m: int((1 - surv.loc[surv["method"] == m, "event"]).sum()) for m in methods},
        n_runs={m: int((surv["method"] == m).sum()) for m in methods})
    interval = "cluster bootstrap over seeds, percentile (log ratio)"
    for m, ratio in ratios.items():
        note = ""
        if np.isfinite(ratio["lower_bound"]):
            note = (f"{m}'s median is censored (fewer than half its runs reach the target): the ratio is "
                    f"at least {ratio['lower_bound']:.3g}")
        block.ratio[m] = Interval(**{k: ratio[k] for k in ("estimate", "ci_low", "ci_high", "p_value", "sd")},
                                  n=ratio["n"], unit="seeds", interval=interval, note=note)
        out.row("time_to_target_ratio", dataset, m, REFERENCE, OUTCOME, ratio, ratio["n"], "seeds", interval,
                note=note)
    summary.time_to_target[dataset] = block
    cox = fit_cox(surv)
    if cox is None:
        block.hazard_ratio_note = "no Cox model: no run of bp or of any method reached the target"
        return
    model_texts[f"cox/{dataset}"] = cox.text
    block.hazard_ratio = {m: Interval(**json_safe(v), unit="runs") for m, v in cox.hazard_ratio.items()}
    notes = []
    if cox.not_estimable:
        notes.append("not estimable for " + "; ".join(f"{m} ({r})" for m, r in cox.reasons.items())
                     + ": p from a log-rank test")
    for m, (corr, p) in (cox.proportional_hazards or {}).items():
        block.proportional_hazards[m] = WaldTest(
            hypothesis=f"{m}'s Schoenfeld residuals do not trend with log time (proportional hazards)",
            statistic=corr, p_value=p, note="Pearson correlation over events")
    bad = [m for m, t in block.proportional_hazards.items() if t.p_value is not None and t.p_value < 0.05]
    if bad:
        notes.append(f"proportional hazards rejected (p < 0.05) for {', '.join(bad)}: read those hazard "
                     "ratios as averages over training, and lean on the ratio of medians")
    block.hazard_ratio_note = "; ".join(notes)


def _arm(surv: pd.DataFrame, method: str) -> tuple[np.ndarray, np.ndarray]:
    arm = surv[surv["method"] == method]
    return arm["time"].to_numpy(), arm["event"].to_numpy()
