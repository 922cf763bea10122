"""The analysis stage: a runs table in, the estimands of STUDY.md out (estimates, summary, model texts, KM).

`analyze` is pure (a DataFrame in, an AnalysisResult out); `run_analysis` reads and writes files.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from soap.analysis import effective_lr, mediation, paired, time_to_target
from soap.analysis.errors import AnalysisError
from soap.analysis.inputs import REFERENCE, at_lr, choose_fixed_lr, prepare_runs, tuned_lrs
from soap.analysis.multiplicity import holm_adjust
from soap.tables import read_table, validate_runs, write_table, write_text

log = logging.getLogger(__name__)

ESTIMATES_COLUMNS = ("estimand", "dataset", "method", "reference", "outcome", "estimate", "ci_low",
                     "ci_high", "p_value", "p_holm", "n")
ESTIMANDS = ("fixed_lr", "tuned", "effective_lr", "mediation_acme", "mediation_ade", "mediation_total",
             "mediation_prop", "time_to_target_ratio")
KM_COLUMNS = ("dataset", "method", "examples", "survival", "ci_low", "ci_high")
TIME_OUTCOME = "examples_to_target"
# statsmodels' default; each simulation redraws both models, and 1000 already pins 95% limits well.
MAX_MEDIATION_SIMS = 1000


@dataclass(frozen=True)
class AnalysisResult:
    estimates: pd.DataFrame  # ESTIMATES_COLUMNS, one row per (estimand, dataset, method, outcome)
    summary: dict  # JSON-ready: the key numbers the report quotes (see summary.json in the docs)
    model_texts: dict[str, str]  # model name -> statsmodels summary text
    km: pd.DataFrame  # KM_COLUMNS


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator per (seed, estimand, dataset, ...): results do not depend on the order of analysis."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _ordered_methods(rows: pd.DataFrame) -> list[str]:
    return [REFERENCE] + sorted(m for m in rows["method"].unique() if m != REFERENCE)


def analyze(runs: pd.DataFrame, *, fixed_lr: float | None = None,
            outcomes: tuple[str, ...] = ("test_loss", "test_acc"), seed: int = 0,
            n_boot: int = 2000, mediation_design: str = mediation.DEFAULT_DESIGN) -> AnalysisResult:
    """Estimate every method-vs-bp estimand of STUDY.md from a runs table.

    The first outcome is primary: summary.json's numbers and the time-to-target Holm family refer to
    it. `fixed_lr` overrides bp's tuned learning rate as the shared rate of the `fixed_lr` estimand (and
    of the mediation analysis in its "fixed_lr" design), snapped to the nearest grid value on a log scale. `n_boot` is the number
    of bootstrap resamples (and of mediation simulations, at most MAX_MEDIATION_SIMS).
    `mediation_design` is "pooled" (every grid lr where sign and sign_scaled are both healthy, the
    default) or "fixed_lr" (the shared lr only); see soap.analysis.mediation. The Holm family is
    described in soap.analysis.multiplicity. Raises AnalysisError on unusable input.
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
    primary = outcomes[0]

    rows, model_texts, km_tables = [], {}, []
    summary = {
        "outcome": primary,
        "datasets": sorted(runs["dataset"].unique()),
        "methods": _ordered_methods(runs),
        "n_runs": len(runs),
        "n_seeds": {},
        "n_diverged": {},
        "excluded_diverged": {"fixed_lr": 0, "tuned": 0, "effective_lr": 0, "mediation": 0},
        "fixed_lr": {},
        "tuned_lr": {},
        "effective_lr_model": {},
        "mediation": {},
        "mediation_skipped": {},
        "time_to_target": {},
    }
    for dataset, ds_runs in runs.groupby("dataset", sort=True):
        grid = ds_runs[ds_runs["phase"] == "grid"]
        tuned = ds_runs[ds_runs["phase"] == "tuned"]
        methods = _ordered_methods(ds_runs)[1:]
        shared_lr = choose_fixed_lr(ds_runs, fixed_lr, primary)
        grid_at_lr = at_lr(grid, shared_lr) if shared_lr is not None else grid.iloc[:0]
        summary["n_seeds"][dataset] = int(ds_runs["seed"].nunique())
        summary["n_diverged"][dataset] = {
            m: int(ds_runs.loc[ds_runs["method"] == m, "diverged"].sum()) for m in _ordered_methods(ds_runs)
        }
        summary["fixed_lr"][dataset] = shared_lr
        summary["tuned_lr"][dataset] = tuned_lrs(ds_runs)
        excluded = summary["excluded_diverged"]
        excluded["fixed_lr"] += int(grid_at_lr["diverged"].sum())
        excluded["tuned"] += int(tuned["diverged"].sum())
        excluded["effective_lr"] += int(grid["diverged"].sum())
        med_grid = grid_at_lr if mediation_design == "fixed_lr" else grid
        excluded["mediation"] += int(med_grid.loc[med_grid["method"].isin(
            [mediation.EXPOSURE, mediation.CONTROL]), "diverged"].sum())

        for outcome in outcomes:
            is_primary = outcome == primary
            rows += _paired_rows("fixed_lr", grid_at_lr, dataset, methods, outcome, n_boot, seed)
            rows += _paired_rows("tuned", tuned, dataset, methods, outcome, n_boot, seed)
            rows += _effective_lr_rows(grid, dataset, outcome, summary if is_primary else None, model_texts)
            rows += _mediation_rows(grid, grid_at_lr, dataset, shared_lr, outcome, n_boot, seed,
                                    summary if is_primary else None, model_texts, mediation_design)
        ttt_rows = tuned if not tuned.empty else grid_at_lr
        rows += _time_to_target_rows(ttt_rows, ds_runs, dataset, n_boot, seed, summary, model_texts, km_tables)

    estimates = pd.DataFrame(rows, columns=list(ESTIMATES_COLUMNS))
    estimates["p_holm"] = holm_adjust(estimates, primary)
    estimates["n"] = estimates["n"].astype(int)
    summary["estimates"] = estimates.to_dict(orient="records")
    if not summary["mediation_skipped"]:
        del summary["mediation_skipped"]
    km = pd.concat(km_tables, ignore_index=True) if km_tables else pd.DataFrame(columns=list(KM_COLUMNS))
    return AnalysisResult(estimates=estimates, summary=json_safe(summary), model_texts=model_texts,
                          km=km[list(KM_COLUMNS)])


def _row(estimand: str, dataset: str, method: str, reference: str, outcome: str, stats: dict, n: int) -> dict:
    return {"estimand": estimand, "dataset": dataset, "method": method, "reference": reference,
            "outcome": outcome, "estimate": stats["estimate"], "ci_low": stats["ci_low"],
            "ci_high": stats["ci_high"], "p_value": stats.get("p_value", np.nan), "p_holm": np.nan, "n": n}


def _paired_rows(estimand, phase_rows, dataset, methods, outcome, n_boot, seed) -> list[dict]:
    rows = []
    for method in methods:
        if not (phase_rows["method"] == method).any():
            continue
        contrast = paired.paired_contrast(phase_rows, method, outcome, n_boot,
                                          _rng(seed, estimand, dataset, method, outcome))
        rows.append(_row(estimand, dataset, method, REFERENCE, outcome, contrast, contrast["n"]))
    return rows


def _effective_lr_rows(grid, dataset, outcome, summary, model_texts) -> list[dict]:
    fit = effective_lr.fit_lr_model(grid, outcome, "log_elr", sensitivity=summary is not None)
    if fit is None:
        return []
    nominal = effective_lr.fit_lr_model(grid, outcome, "log_lr")
    model_texts[f"effective_lr/{dataset}/{outcome}"] = fit.summary_text
    if nominal is not None:
        model_texts[f"nominal_lr/{dataset}/{outcome}"] = nominal.summary_text
    if summary is not None:
        summary["effective_lr_model"][dataset] = {
            "formula": fit.formula, "r2": fit.r2, "n": fit.n, "n_clusters": fit.n_clusters,
            "coef": fit.coef, "support": fit.support, "spline_sensitivity": fit.sensitivity,
            "nominal_formula": nominal.formula if nominal else None,
            "nominal_coef": nominal.coef if nominal else {},
            "nominal_support": nominal.support if nominal else {},
        }
    return [_row("effective_lr", dataset, m, REFERENCE, outcome, c, fit.n) for m, c in fit.coef.items()]


def _mediation_rows(grid, grid_at_lr, dataset, shared_lr, outcome, n_boot, seed, summary, model_texts,
                    design) -> list[dict]:
    rows = grid if design == "pooled" else grid_at_lr
    where = "grid runs" if design == "pooled" else "grid runs at the shared learning rate"
    if not {mediation.EXPOSURE, mediation.CONTROL} <= set(rows["method"]):
        fit = f"no {mediation.EXPOSURE} and {mediation.CONTROL} {where}"
    else:
        fitter = mediation.fit_pooled_mediation if design == "pooled" else mediation.fit_mediation
        fit = fitter(rows, outcome, min(n_boot, MAX_MEDIATION_SIMS), _rng(seed, "mediation", dataset, outcome))
    if isinstance(fit, str):
        if summary is not None:
            summary["mediation_skipped"][dataset] = fit
        log.info("mediation skipped for %s/%s: %s", dataset, outcome, fit)
        return []
    model_texts[f"mediation/{dataset}/{outcome}"] = fit.text
    if summary is not None:
        summary["mediation"][dataset] = {
            "exposure": mediation.EXPOSURE, "control": mediation.CONTROL,
            "lr": shared_lr if fit.design == "fixed_lr" else None, "lrs": list(fit.lrs),
            "design": fit.design, "outcome_model": fit.outcome_formula,
            "mediator_model": fit.mediator_formula, **fit.effects, "n": fit.n,
        }
    return [_row(f"mediation_{key}", dataset, mediation.EXPOSURE, mediation.CONTROL, outcome, effect, fit.n)
            for key, effect in fit.effects.items()]


def _time_to_target_rows(rows, ds_runs, dataset, n_boot, seed, summary, model_texts, km_tables) -> list[dict]:
    fallback_budget = ds_runs["examples_to_target"].max()
    if rows.empty or not np.isfinite(fallback_budget):
        return []
    surv = time_to_target.survival_data(rows, fallback_budget)
    methods = _ordered_methods(rows)
    km_tables.append(time_to_target.km_table(surv).assign(dataset=dataset))
    cox = time_to_target.fit_cox(surv)
    if cox is not None:
        model_texts[f"cox/{dataset}"] = cox.text
    ratios = {m: time_to_target.median_ratio(surv, m, n_boot, _rng(seed, "time_to_target", dataset, m))
              for m in methods[1:]}
    target = ds_runs["target_loss"].dropna().median() if "target_loss" in ds_runs else np.nan
    summary["time_to_target"][dataset] = {
        "target_loss": target,
        "phase": str(rows["phase"].iloc[0]),
        "median_examples": {m: time_to_target.km_median(*_arm(surv, m)) for m in methods},
        "ratio": ratios,
        "hazard_ratio": cox.hazard_ratio if cox else {},
        "n_censored": {m: int((1 - surv.loc[surv["method"] == m, "event"]).sum()) for m in methods},
        "n_runs": {m: int((surv["method"] == m).sum()) for m in methods},
        "hazard_ratio_not_estimable": list(cox.not_estimable) if cox else [],
    }
    return [
        _row("time_to_target_ratio", dataset, m, REFERENCE, TIME_OUTCOME,
             {**ratio, "p_value": cox.hazard_ratio[m]["p_value"] if cox else np.nan},
             int(surv["method"].isin([m, REFERENCE]).sum()))
        for m, ratio in ratios.items()
    ]


def _arm(surv: pd.DataFrame, method: str) -> tuple[np.ndarray, np.ndarray]:
    arm = surv[surv["method"] == method]
    return arm["time"].to_numpy(), arm["event"].to_numpy()


def json_safe(value):
    """`value` with numpy scalars made Python and NaN/inf made None, so json.dumps(strict) accepts it."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def models_text(model_texts: dict[str, str]) -> str:
    return "\n\n".join(f"{'=' * 100}\n{name}\n{'=' * 100}\n{text}" for name, text in model_texts.items())


def run_analysis(runs_path, out_dir, *, fixed_lr: float | None = None, seed: int = 0,
                 n_boot: int = 2000, mediation_design: str = mediation.DEFAULT_DESIGN) -> AnalysisResult:
    """Read a runs table (parquet or CSV), analyse it and write into out_dir, each file atomically:
    estimates.csv, summary.json, models.txt and km.csv."""
    runs = validate_runs(read_table(runs_path), source=str(runs_path))  # the error names the file
    result = analyze(runs, fixed_lr=fixed_lr, seed=seed, n_boot=n_boot, mediation_design=mediation_design)
    out_dir = Path(out_dir)
    write_table(result.estimates, out_dir / "estimates.csv")
    write_table(result.km, out_dir / "km.csv")
    write_text(models_text(result.model_texts), out_dir / "models.txt")
    write_text(json.dumps(result.summary, indent=2, allow_nan=False) + "\n", out_dir / "summary.json")
    log.info("analysis of %s written to %s (%d estimates)", runs_path, out_dir, len(result.estimates))
    return result
