"""The analysis stage: a runs table in, the estimands of STUDY.md out (estimates, summary, model texts, KM).

`analyze` is pure (a DataFrame in, an AnalysisResult out); `run_analysis` reads and writes files.
Every estimand of every dataset is computed on its own: one that cannot be computed gets a row (or a
`skipped` entry) with its reason, and never takes the others down.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from soap.analysis import effective_lr, improvement, mediation, paired, time_to_target
from soap.analysis.errors import AnalysisError
from soap.analysis.inputs import REFERENCE, at_lr, choose_fixed_lr, prepare_runs, tuned_lrs
from soap.analysis.multiplicity import describe_families, holm_adjust, holm_family
from soap.analysis.summary import (Divergence, DivergenceCell, EffectiveLrModel, EstimateRow, Exclusion,
                                   Interval, MediationSummary, Skipped, Summary, TimeToTarget, WaldTest,
                                   json_safe, load)
from soap.tables import read_table, validate_curves, validate_runs, write_table, write_text

log = logging.getLogger(__name__)

ESTIMATES_COLUMNS = ("estimand", "dataset", "method", "reference", "outcome", "lr", "estimate", "ci_low",
                     "ci_high", "p_value", "p_holm", "n", "unit", "interval", "holm_family", "note")
PAIRED_ESTIMANDS = ("fixed_lr", "small_lr", "tuned")
ESTIMANDS = (*PAIRED_ESTIMANDS, "tuned_at_grid_length", "effective_lr", "grid_lr",
             "poi_fixed_lr", "poi_small_lr", "poi_tuned",
             "mediation_acme", "mediation_ade", "mediation_total", "mediation_prop", "time_to_target_ratio")
KM_COLUMNS = ("dataset", "method", "examples", "survival", "ci_low", "ci_high")
TIME_OUTCOME = "examples_to_target"
# statsmodels' default; each simulation redraws both models, and 1000 already pins 95% limits well.
MAX_MEDIATION_SIMS = 1000
# What a failing estimand can raise from numpy, pandas, scipy and statsmodels on degenerate data
# (singular designs, empty groups, no events). Caught per estimand so the others are still computed;
# the message goes into the estimand's `skipped` reason and the traceback into the log.
ESTIMAND_ERRORS = (ValueError, ArithmeticError, KeyError, IndexError)


@dataclass(frozen=True)
class AnalysisResult:
    estimates: pd.DataFrame  # ESTIMATES_COLUMNS, one row per (estimand, dataset, method, outcome, lr)
    summary: Summary  # summary.json (soap.analysis.summary)
    model_texts: dict[str, str]  # model name -> statsmodels summary text
    km: pd.DataFrame  # KM_COLUMNS


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator per (seed, estimand, dataset, ...): results do not depend on the order of analysis."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _ordered_methods(rows: pd.DataFrame) -> list[str]:
    return [REFERENCE] + sorted(m for m in rows["method"].unique() if m != REFERENCE)


def lower_is_better(outcome: str) -> bool:
    return "acc" not in outcome


class _Collector:
    """Rows, exclusions and skipped estimands of one analysis, with the guard that isolates failures."""

    def __init__(self):
        self.rows: list[dict] = []
        self.exclusions: list[Exclusion] = []
        self.skipped: list[Skipped] = []

    def row(self, estimand, dataset, method, reference, outcome, stats: dict, n: int, unit: str, interval: str,
            lr: float | None = None, note: str = "") -> None:
        self.rows.append({"estimand": estimand, "dataset": dataset, "method": method, "reference": reference,
                          "outcome": outcome, "lr": np.nan if lr is None else lr,
                          "estimate": stats.get("estimate", np.nan), "ci_low": stats.get("ci_low", np.nan),
                          "ci_high": stats.get("ci_high", np.nan), "p_value": stats.get("p_value", np.nan),
                          "p_holm": np.nan, "n": int(n), "unit": unit, "interval": interval,
                          "holm_family": None, "note": note or stats.get("note", "")})

    def exclude(self, estimand: str, dataset: str, method: str, counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            if n:
                self.exclusions.append(Exclusion(estimand, dataset, method, reason, int(n)))

    def skip(self, estimand: str, dataset: str, reason: str) -> None:
        log.info("%s skipped for %s: %s", estimand, dataset, reason)
        self.skipped.append(Skipped(estimand, dataset, reason))

    def guard(self, estimand: str, dataset: str, compute) -> None:
        try:
            compute()
        except ESTIMAND_ERRORS as err:
            log.warning("%s failed for %s", estimand, dataset, exc_info=True)
            self.skip(estimand, dataset, f"could not be computed: {type(err).__name__}: {err}")


def analyze(runs: pd.DataFrame, *, fixed_lr: float | None = None,
            outcomes: tuple[str, ...] = ("test_loss", "test_acc"), seed: int = 0,
            n_boot: int = 2000, mediation_design: str = mediation.DEFAULT_DESIGN,
            n_sims: int | None = None, curves: pd.DataFrame | None = None) -> AnalysisResult:
    """Estimate every method-vs-bp estimand of STUDY.md from a runs table.

    The first outcome is primary: summary.json's blocks and the time-to-target Holm family refer to
    it. `fixed_lr` overrides bp's tuned learning rate as the shared rate of the `fixed_lr` estimand (and
    of the mediation analysis in its "fixed_lr" design), snapped to the nearest grid value on a log
    scale. `n_boot` is the number of bootstrap resamples, `n_sims` the mediation simulations (default:
    n_boot, at most MAX_MEDIATION_SIMS). `mediation_design` is "pooled" or "fixed_lr" (see
    soap.analysis.mediation). `curves` (the curves table, optional) adds the time-to-target ratio at
    other target losses. Holm families: soap.analysis.multiplicity. Raises AnalysisError on unusable
    input.
    """
    if mediation_design not in mediation.DESIGNS:
        raise AnalysisError(f"mediation_design must be one of {mediation.DESIGNS}, got {mediation_design!r}")
    runs = prepare_runs(runs)
    outcomes = tuple(outcomes)
    if not outcomes:
        raise AnalysisError("no outcomes to analyse")
    for outcome in outcomes:
        if outcome not in runs or not pd.api.types.is_numeric_dtype(runs[outcome]):
            raise AnalysisError(f"outcome {outcome!r} is not a numeric column of the runs table")
    if n_boot < 1:
        raise AnalysisError(f"n_boot must be at least 1, got {n_boot}")
    n_sims = min(n_boot if n_sims is None else n_sims, MAX_MEDIATION_SIMS)
    primary = outcomes[0]
    summary = Summary(outcome=primary, datasets=sorted(runs["dataset"].unique()), methods=_ordered_methods(runs),
                      n_runs=len(runs), min_pairs=paired.MIN_PAIRS, refresh_period=main_refresh_period(runs))
    out, model_texts, km_tables = _Collector(), {}, []
    all_runs = runs
    if summary.refresh_period is not None:  # the estimands at one T; the others are a sensitivity analysis
        runs = at_refresh_period(runs, summary.refresh_period)
        for dataset, ds_runs in all_runs.groupby("dataset", sort=True):
            out.guard("refresh_period sensitivity", dataset, lambda d=dataset, r=ds_runs: summary.refresh_sensitivity
                      .__setitem__(d, _refresh_sensitivity(r, fixed_lr, primary)))
    for dataset, ds_runs in runs.groupby("dataset", sort=True):
        grid = ds_runs[ds_runs["phase"] == "grid"]
        tuned = ds_runs[ds_runs["phase"] == "tuned"]
        methods = _ordered_methods(ds_runs)[1:]
        shared_lr = choose_fixed_lr(ds_runs, fixed_lr, primary)
        small_lr = float(grid["lr"].min()) if len(grid) else None
        summary.n_seeds[dataset] = {p: int(r["seed"].nunique()) for p, r in ds_runs.groupby("phase")}
        if "epochs" in ds_runs:
            summary.epochs[dataset] = {p: float(r["epochs"].median()) for p, r in ds_runs.groupby("phase")}
        summary.n_diverged[dataset] = {m: int(ds_runs.loc[ds_runs["method"] == m, "diverged"].sum())
                                       for m in _ordered_methods(ds_runs)}
        summary.fixed_lr[dataset], summary.small_lr[dataset] = shared_lr, small_lr
        summary.tuned_lr[dataset] = tuned_lrs(ds_runs)
        phase_rows = {"fixed_lr": at_lr(grid, shared_lr) if shared_lr else grid.iloc[:0],
                      "small_lr": at_lr(grid, small_lr) if small_lr else grid.iloc[:0], "tuned": tuned}

        for outcome in outcomes:
            for estimand, rows in phase_rows.items():
                if rows.empty:
                    out.skip(estimand, dataset, f"no {'tuned' if estimand == 'tuned' else 'grid'} runs")
                    continue
                out.guard(estimand, dataset, lambda e=estimand, r=rows, o=outcome: _paired_rows(
                    out, e, r, dataset, methods, o, n_boot, seed, count=o == primary))
            out.guard("grid_lr", dataset, lambda o=outcome: _grid_lr_rows(out, grid, dataset, methods, o))
            out.guard("effective_lr", dataset, lambda o=outcome: _effective_lr_rows(
                out, grid, dataset, o, summary if o == primary else None, model_texts))
            out.guard("mediation", dataset, lambda o=outcome: _mediation_rows(
                out, grid, phase_rows["fixed_lr"], dataset, shared_lr, o, n_sims, seed,
                summary if o == primary else None, model_texts, mediation_design))
        ttt_rows = tuned if not tuned.empty else phase_rows["fixed_lr"]
        out.guard("time_to_target", dataset, lambda: _time_to_target_rows(
            out, ttt_rows, ds_runs, dataset, n_boot, seed, summary, model_texts, km_tables))
        if curves is not None and not tuned.empty and not grid.empty:
            out.guard("tuned_at_grid_length", dataset, lambda: _tuned_at_grid_length(
                out, tuned, grid, curves, dataset, methods))
        block = summary.time_to_target.get(dataset)
        if curves is not None and block is not None and block.target_loss is not None:
            out.guard("time_to_target sensitivity", dataset, lambda: block.target_sensitivity.extend(
                time_to_target.target_sensitivity(ttt_rows, curves, block.target_loss, min(n_boot, 500),
                                                  _rng(seed, "target_sensitivity", dataset))))
        out.guard("divergence", dataset, lambda: _divergence(summary, grid, dataset))

    estimates = pd.DataFrame(out.rows, columns=list(ESTIMATES_COLUMNS))
    estimates["holm_family"] = holm_family(estimates, primary)
    estimates["p_holm"] = holm_adjust(estimates, primary)
    estimates["n"] = estimates["n"].astype(int)
    summary.holm_families = describe_families(estimates)
    summary.exclusions, summary.skipped = out.exclusions, out.skipped
    summary.estimates = [load(EstimateRow, json_safe(r)) for r in estimates.to_dict(orient="records")]
    km = pd.concat(km_tables, ignore_index=True) if km_tables else pd.DataFrame(columns=list(KM_COLUMNS))
    # Round-tripped through JSON, so the summary in memory is exactly what summary.json gives the report
    # (NaN and infinities as None).
    return AnalysisResult(estimates=estimates, summary=Summary.from_json(summary.to_json()),
                          model_texts=model_texts, km=km[list(KM_COLUMNS)])


def _paired_rows(out: _Collector, estimand, rows, dataset, methods, outcome, n_boot, seed, count: bool) -> None:
    """Paired contrast and probability of improvement per method; exclusions counted when `count`
    (once, for the primary outcome: the other outcomes drop the same diverged runs)."""
    lr = float(rows["lr"].iloc[0]) if estimand != "tuned" else None
    for method in methods:
        if not (rows["method"] == method).any():
            out.row(estimand, dataset, method, REFERENCE, outcome, {}, 0, "pairs", paired.INTERVAL, lr,
                    note=f"no {method} runs here")
            continue
        by_repeat = estimand == "tuned" and _trained_at_repeat_lrs(rows)
        contrast = (paired.repeat_clustered_contrast if by_repeat else paired.paired_contrast)(rows, method, outcome)
        excluded = contrast.pop("excluded")
        if count:
            out.exclude(estimand, dataset, method, excluded)
        out.row(estimand, dataset, method, REFERENCE, outcome, contrast, contrast["n"],
                "tuning repeats" if by_repeat else "pairs", paired.REPEAT_INTERVAL if by_repeat else paired.INTERVAL,
                lr)
        # Probability of improvement over the same runs (every non-diverged run with a finite outcome).
        arms = rows[~rows["diverged"] & np.isfinite(rows[outcome])]
        poi = improvement.poi_interval(arms.loc[arms["method"] == method, outcome].to_numpy(),
                                       arms.loc[arms["method"] == REFERENCE, outcome].to_numpy(), n_boot,
                                       _rng(seed, "poi", estimand, dataset, method, outcome),
                                       lower_is_better(outcome))
        out.row(f"poi_{estimand}", dataset, method, REFERENCE, outcome, poi, poi["n"], "runs per arm (smaller)",
                improvement.INTERVAL, lr)


def _trained_at_repeat_lrs(rows: pd.DataFrame) -> bool:
    """Whether the tuned runs trained at their tuning repeats' own lrs (tuned.lr_source: repeat), with
    two or more repeats; then the tuned interval is taken over repeats."""
    if "tune_repeat" not in rows:
        return False
    repeats = pd.to_numeric(rows["tune_repeat"], errors="coerce")
    return bool(repeats.notna().all() and (repeats >= 0).all() and repeats.nunique() >= 2)


def _tuned_at_grid_length(out: _Collector, tuned, grid, curves, dataset, methods) -> None:
    """The tuned comparison at the grid's training length, so it sits beside the grid estimands like
    with like: each tuned run's validation loss at its last evaluation within the grid runs' budget
    (examples_seen), read off the curves. Validation, not test, loss: the curves log no test loss
    mid-run (the estimand's outcome column says so)."""
    if "examples_seen" not in grid or "examples_seen" not in tuned:
        out.skip("tuned_at_grid_length", dataset, "no examples_seen column: training lengths unknown")
        return
    budget = float(grid.loc[~grid["diverged"], "examples_seen"].median())
    if not budget < float(tuned.loc[~tuned["diverged"], "examples_seen"].median()):
        return  # the tuned runs are no longer than the grid's: the tuned estimand already compares like with like
    logged = curves[curves["run_id"].isin(tuned["run_id"]) & (curves["examples"] <= budget + 0.5)]
    last = logged.dropna(subset=["val_loss"]).sort_values("examples").groupby("run_id")["val_loss"].last()
    at = tuned.assign(val_loss_at_grid_length=tuned["run_id"].map(last).astype(float))
    outcome = "val_loss_at_grid_length"
    for method in methods:
        if (at["method"] == method).any():
            contrast = paired.paired_contrast(at, method, outcome)
            contrast.pop("excluded")
            out.row("tuned_at_grid_length", dataset, method, REFERENCE, outcome, contrast, contrast["n"], "pairs",
                    paired.INTERVAL, note=contrast["note"] or f"validation loss after {budget:,.0f} examples")


def _grid_lr_rows(out: _Collector, grid, dataset, methods, outcome) -> None:
    """Method - bp at every grid lr (issue item 8): where each method wins, with paired t intervals."""
    for lr, rows in grid.groupby("lr"):
        for method in methods:
            if (rows["method"] == method).any():
                contrast = paired.paired_contrast(rows, method, outcome)
                contrast.pop("excluded")  # counted under fixed_lr / small_lr where they matter
                out.row("grid_lr", dataset, method, REFERENCE, outcome, contrast, contrast["n"], "pairs",
                        paired.INTERVAL, float(lr))


def _effective_lr_rows(out: _Collector, grid, dataset, outcome, summary, model_texts) -> None:
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
                    _pair_interval(coef), note=_not_parallel(coef["parallel"], method))
        else:
            out.row("effective_lr", dataset, method, REFERENCE, outcome, {}, 0, "runs", _pair_interval(None),
                    note=f"no healthy run inside {REFERENCE}'s effective-lr range")


def _coefficient(coef: dict) -> dict:
    """A per-contrast fit's estimate, interval and p-value (without its counts)."""
    return {k: coef[k] for k in ("estimate", "ci_low", "ci_high", "p_value")}


def _not_parallel(test: dict, method: str, level: float = 0.05) -> str:
    """A warning for a contrast whose method's curve has another slope than bp's: one number then
    averages a difference that changes with the learning rate (Kolen-Pollack, which starts as FA, is
    far behind bp at small lrs and level with it at large ones)."""
    p = test.get("p_value")
    if p is None or not p < level:
        return ""
    return (f"{method}'s slope in log effective lr differs from {REFERENCE}'s (F test, p = {p:.2g}): the "
            "difference changes with the learning rate and this is its average over the support")


def _pair_interval(coef: dict | None) -> str:
    """How an effective-lr contrast's interval is made: its own fit on bp's and the method's runs."""
    clusters = f"t({coef['n_clusters'] - 1})" if coef else "t(G-1)"
    return f"cluster-robust by seed, {clusters}; fitted on {REFERENCE}'s and this method's runs"


def _mediation_rows(out: _Collector, grid, grid_at_lr, dataset, shared_lr, outcome, n_sims, seed, summary,
                    model_texts, design) -> None:
    where = "grid runs" if design == "pooled" else "grid runs at the shared learning rate"
    if not {mediation.EXPOSURE, mediation.CONTROL} <= set((grid if design == "pooled" else grid_at_lr)["method"]):
        if summary is not None:
            out.skip("mediation", dataset, f"no {mediation.EXPOSURE} and {mediation.CONTROL} {where}")
        return
    if design == "pooled":
        rows, excluded = mediation.pooled_rows(grid, outcome)
    else:
        rows, excluded = mediation.mediation_rows(grid_at_lr, outcome)
    if summary is not None:  # counted once, for the primary outcome; both arms together
        out.exclude("mediation", dataset, f"{mediation.EXPOSURE}, {mediation.CONTROL}", excluded)
    fit = mediation.fit_mediation(rows, outcome, n_sims, _rng(seed, "mediation", dataset, outcome), design)
    if isinstance(fit, str):
        if summary is not None:
            out.skip("mediation", dataset, fit)
        return
    model_texts[f"mediation/{dataset}/{outcome}"] = fit.text
    unit = "runs (seeds as fixed effects)"
    interval = "parametric simulation + seed sampling, t (Satterthwaite)"
    if summary is not None:
        summary.mediation[dataset] = MediationSummary(
            exposure=mediation.EXPOSURE, control=mediation.CONTROL, design=fit.design,
            lr=shared_lr if fit.design == "fixed_lr" else None, lrs=list(fit.lrs), outcome_model=fit.outcome_formula,
            mediator_model=fit.mediator_formula, n=fit.n, n_seeds=fit.n_seeds, n_sims=fit.n_sims,
            **{part: Interval(**json_safe(fit.effects[part]), n=fit.n, unit=unit,
                              interval="simulation percentile" if part == "prop" else interval)
               for part in mediation.PARTS})
    for key, effect in fit.effects.items():
        out.row(f"mediation_{key}", dataset, mediation.EXPOSURE, mediation.CONTROL, outcome, effect, fit.n, unit,
                "simulation percentile" if key == "prop" else interval)


def _time_to_target_rows(out: _Collector, rows, ds_runs, dataset, n_boot, seed, summary, model_texts,
                         km_tables) -> None:
    fallback_budget = ds_runs["examples_to_target"].max()
    if rows.empty or not np.isfinite(fallback_budget):
        out.skip("time_to_target", dataset, "no run reached the target (or no target was set)")
        return
    surv = time_to_target.survival_data(rows, fallback_budget)
    methods = _ordered_methods(rows)
    km_tables.append(time_to_target.km_table(surv).assign(dataset=dataset))
    ratios = {m: time_to_target.median_ratio(surv, m, n_boot, _rng(seed, "time_to_target", dataset, m))
              for m in methods[1:]}
    medians = {m: time_to_target.km_median(*_arm(surv, m)) for m in methods}
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
        out.row("time_to_target_ratio", dataset, m, REFERENCE, TIME_OUTCOME, ratio, ratio["n"], "seeds", interval,
                note=note)
    summary.time_to_target[dataset] = block
    cox = time_to_target.fit_cox(surv)
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


def _divergence(summary: Summary, grid: pd.DataFrame, dataset: str) -> None:
    """Divergence as an outcome: the rate per (method, lr) cell with a Wilson interval, and a logistic
    model diverged ~ method + log lr with SEs clustered by seed (odds ratios against bp at matched
    nominal lr)."""
    from statsmodels.stats.proportion import proportion_confint

    cells = []
    for (method, lr), rows in grid.groupby(["method", "lr"]):
        k, n = int(rows["diverged"].sum()), len(rows)
        low, high = proportion_confint(k, n, method="wilson")
        cells.append(DivergenceCell(method=method, lr=float(lr), n_runs=n, n_diverged=k, rate=k / n,
                                    ci_low=float(low), ci_high=float(high)))
    block = Divergence(cells=cells, note="Wilson 95% intervals per cell")
    summary.divergence[dataset] = block
    block.model, block.coef, reason = _divergence_model(grid)
    if reason:
        block.note += f"; logistic model not fitted: {reason}"


def _divergence_model(grid: pd.DataFrame) -> tuple[str, dict[str, Interval], str]:
    """Logistic regression of divergence on method and log lr, clustered by seed; a reason instead when
    it has no finite maximum (divergence perfectly separated by lr, as at a sharp edge)."""
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

    formula = f"diverged ~ {effective_lr.METHOD_TERM} + np.log(lr)"
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
        name = f"{effective_lr.METHOD_TERM}[T.{method}]"
        if name in fit.params:
            low, high = np.exp(fit.conf_int().loc[name])
            coef[method] = Interval(estimate=float(np.exp(fit.params[name])), ci_low=float(low),
                                    ci_high=float(high), p_value=float(fit.pvalues[name]), n=len(data),
                                    unit="runs", interval="cluster-robust by seed (odds ratio)")
    return formula, coef, ""


def main_refresh_period(runs: pd.DataFrame) -> float | None:
    """The refresh period T of the main estimands when the runs hold several (a T axis in the grid):
    the most frequent among the non-bp runs (ties: the smaller T). None when there is one T or none."""
    if "refresh_period" not in runs or runs["refresh_period"].dropna().nunique() < 2:
        return None
    counts = runs.loc[runs["method"] != REFERENCE, "refresh_period"].value_counts()
    return float(counts[counts == counts.max()].index.min())


def at_refresh_period(runs: pd.DataFrame, period: float) -> pd.DataFrame:
    """Each method's runs at refresh period `period`; a method never run at it keeps all its runs (bp
    and fa ignore T, and a study may run them at one T only)."""
    at = np.isclose(runs["refresh_period"].astype(float), period)
    has = runs.assign(at=at).groupby("method")["at"].transform("any")
    return runs[at | ~has]


def _refresh_sensitivity(ds_runs: pd.DataFrame, fixed_lr, outcome: str) -> list[dict]:
    """The paired estimands (fixed_lr, small_lr, tuned) at every refresh period T in the runs."""
    rows = []
    for period in sorted(ds_runs["refresh_period"].dropna().unique()):
        at = at_refresh_period(ds_runs, float(period))
        grid, tuned = at[at["phase"] == "grid"], at[at["phase"] == "tuned"]
        shared = choose_fixed_lr(at, fixed_lr, outcome)
        subsets = {"fixed_lr": at_lr(grid, shared) if shared else grid.iloc[:0],
                   "small_lr": at_lr(grid, grid["lr"].min()) if len(grid) else grid, "tuned": tuned}
        for estimand, subset in subsets.items():
            for method in sorted(set(subset["method"]) - {REFERENCE}):
                contrast = paired.paired_contrast(subset, method, outcome)
                rows.append({"refresh_period": float(period), "estimand": estimand, "method": method,
                             **{k: contrast[k] for k in ("estimate", "ci_low", "ci_high", "p_value", "n")}})
    return rows


def _arm(surv: pd.DataFrame, method: str) -> tuple[np.ndarray, np.ndarray]:
    arm = surv[surv["method"] == method]
    return arm["time"].to_numpy(), arm["event"].to_numpy()


def models_text(model_texts: dict[str, str]) -> str:
    return "\n\n".join(f"{'=' * 100}\n{name}\n{'=' * 100}\n{text}" for name, text in model_texts.items())


def run_analysis(runs_path, out_dir, *, fixed_lr: float | None = None, seed: int = 0,
                 n_boot: int = 2000, mediation_design: str = mediation.DEFAULT_DESIGN,
                 curves_path=None) -> AnalysisResult:
    """Read a runs table (parquet or CSV) and optionally its curves table, analyse them and write into
    out_dir, each file atomically: estimates.csv, summary.json, models.txt and km.csv."""
    runs = validate_runs(read_table(runs_path), source=str(runs_path))  # the error names the file
    curves = None if curves_path is None else validate_curves(read_table(curves_path), source=str(curves_path))
    result = analyze(runs, fixed_lr=fixed_lr, seed=seed, n_boot=n_boot, mediation_design=mediation_design,
                     curves=curves)
    out_dir = Path(out_dir)
    write_table(result.estimates, out_dir / "estimates.csv")
    write_table(result.km, out_dir / "km.csv")
    write_text(models_text(result.model_texts), out_dir / "models.txt")
    write_text(result.summary.to_json(), out_dir / "summary.json")
    log.info("analysis of %s written to %s (%d estimates)", runs_path, out_dir, len(result.estimates))
    return result
