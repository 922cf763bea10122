"""The analysis stage: a runs table in, the estimands of STUDY.md out (estimates, summary, model texts,
KM, and the tables the report shows).

`analyze` is pure (DataFrames in, an AnalysisResult out) and only orchestrates: which estimand runs on
which runs. Each estimand module builds its own rows (soap.analysis.rows.Collector): paired,
effective_lr_estimand, mediation_estimand, time_to_target, divergence, refresh_period,
rule_comparison, tuning_budget. Files: soap.analysis.outputs. Every estimand of every dataset is
computed on its own: one that cannot be computed gets a row (or a `skipped` entry) with its reason, and
never takes the others down.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

import soap.analysis.descriptive as descriptive
import soap.analysis.divergence as divergence
import soap.analysis.effective_lr_estimand as effective_lr_estimand
import soap.analysis.mediation as mediation
import soap.analysis.mediation_estimand as mediation_estimand
import soap.analysis.paired as paired
import soap.analysis.refresh_period as refresh_period
import soap.analysis.rule_comparison as rule_comparison
import soap.analysis.time_to_target as time_to_target
import soap.analysis.tuning_budget as tuning_budget
from soap.analysis.errors import AnalysisError
from soap.analysis.inputs import at_lr, choose_fixed_lr, prepare_runs, tuned_lrs
from soap.analysis.multiplicity import describe_families, holm_adjust, holm_family
from soap.analysis.rows import ESTIMATES_COLUMNS, Collector, ordered_methods, rng_for
from soap.analysis.summary import EstimateRow, Summary, json_safe, load
from soap.tables import effective_lr

PAIRED_ESTIMANDS = ("fixed_lr", "small_lr", "tuned")
ESTIMANDS = (*PAIRED_ESTIMANDS, "tuned_at_grid_length", "effective_lr", "grid_lr",
             "poi_fixed_lr", "poi_small_lr", "poi_tuned",
             "mediation_acme", "mediation_ade", "mediation_total", "mediation_prop", "time_to_target_ratio")
KM_COLUMNS = ("dataset", "method", "examples", "survival", "ci_low", "ci_high")
# statsmodels' default; each simulation redraws both models, and 1000 already pins 95% limits well.
MAX_MEDIATION_SIMS = 1000

__all__ = ["ESTIMANDS", "ESTIMATES_COLUMNS", "KM_COLUMNS", "AnalysisResult", "analyze"]


@dataclass(frozen=True)
class AnalysisResult:
    estimates: pd.DataFrame  # ESTIMATES_COLUMNS, one row per (estimand, dataset, method, outcome, lr)
    summary: Summary  # summary.json (soap.analysis.summary)
    model_texts: dict[str, str]  # model name -> statsmodels summary text
    km: pd.DataFrame  # KM_COLUMNS
    # name -> table the report shows as tables/<name>.csv: runs_overview, tuned_lr, exclusions, divergence,
    # rule_comparison, reference_levels, and with tuning trials tuning_budget, tuning_trials, tuning_best
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)


def analyze(runs: pd.DataFrame, *, fixed_lr: float | None = None,
            outcomes: tuple[str, ...] = ("test_loss", "test_acc"), seed: int = 0,
            n_boot: int = 2000, mediation_design: str = mediation.DEFAULT_DESIGN,
            n_sims: int | None = None, curves: pd.DataFrame | None = None, trials: pd.DataFrame | None = None,
            best: pd.DataFrame | None = None, tune_batch: int | None = None,
            lr_range: tuple[float, float] | None = None) -> AnalysisResult:
    """Estimate every method-vs-bp estimand of STUDY.md from a runs table.

    The first outcome is primary: summary.json's blocks and the time-to-target Holm family refer to
    it. `fixed_lr` overrides bp's tuned learning rate as the shared rate of the `fixed_lr` estimand (and
    of the mediation analysis in its "fixed_lr" design), snapped to the nearest grid value on a log
    scale. `n_boot` is the number of bootstrap resamples, `n_sims` the mediation simulations (default:
    n_boot, at most MAX_MEDIATION_SIMS). `mediation_design` is "pooled" or "fixed_lr" (see
    soap.analysis.mediation). `curves` (the curves table, optional) adds the time-to-target ratio at
    other target losses. `trials` and `best` (the tuning studies' trials.csv and best.json with
    dataset, method and repeat columns: outputs.load_tuning) add the tuning-budget curves from their
    i.i.d. trials (`tune_batch`: TPE's startup trials, config tune.batch); `lr_range` (tune.lr_low,
    tune.lr_high) marks tuned lrs at an edge of the search range. Holm families:
    soap.analysis.multiplicity. Raises AnalysisError on unusable input.
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
    summary = Summary(outcome=primary, datasets=sorted(runs["dataset"].unique()), methods=ordered_methods(runs),
                      n_runs=len(runs), min_pairs=paired.MIN_PAIRS, refresh_period=refresh_period.main_refresh_period(runs))
    out, model_texts, km_tables = Collector(), {}, []
    all_runs = runs
    if summary.refresh_period is not None:  # the estimands at one T; the others are a sensitivity analysis
        runs = refresh_period.at_refresh_period(runs, summary.refresh_period)
        for dataset, ds_runs in all_runs.groupby("dataset", sort=True):
            out.guard("refresh_period sensitivity", dataset, lambda d=dataset, r=ds_runs: summary.refresh_sensitivity
                      .__setitem__(d, refresh_period.refresh_sensitivity(r, fixed_lr, primary)))
    for dataset, ds_runs in runs.groupby("dataset", sort=True):
        grid = ds_runs[ds_runs["phase"] == "grid"]
        tuned = ds_runs[ds_runs["phase"] == "tuned"]
        methods = ordered_methods(ds_runs)[1:]
        shared_lr = choose_fixed_lr(ds_runs, fixed_lr, primary)
        small_lr = float(grid["lr"].min()) if len(grid) else None
        summary.n_seeds[dataset] = {p: int(r["seed"].nunique()) for p, r in ds_runs.groupby("phase")}
        if "epochs" in ds_runs:
            summary.epochs[dataset] = {p: float(r["epochs"].median()) for p, r in ds_runs.groupby("phase")}
        summary.n_diverged[dataset] = {m: int(ds_runs.loc[ds_runs["method"] == m, "diverged"].sum())
                                       for m in ordered_methods(ds_runs)}
        summary.fixed_lr[dataset], summary.small_lr[dataset] = shared_lr, small_lr
        summary.tuned_lr[dataset] = tuned_lrs(ds_runs)
        phase_rows = {"fixed_lr": at_lr(grid, shared_lr) if shared_lr else grid.iloc[:0],
                      "small_lr": at_lr(grid, small_lr) if small_lr else grid.iloc[:0], "tuned": tuned}

        for outcome in outcomes:
            for estimand, rows in phase_rows.items():
                if rows.empty:
                    out.skip(estimand, dataset, f"no {'tuned' if estimand == 'tuned' else 'grid'} runs")
                    continue
                out.guard(estimand, dataset, lambda e=estimand, r=rows, o=outcome: paired.paired_rows(
                    out, e, r, dataset, methods, o, n_boot, seed, count=o == primary))
            out.guard("grid_lr", dataset, lambda o=outcome: paired.grid_lr_rows(out, grid, dataset, methods, o))
            out.guard("effective_lr", dataset, lambda o=outcome: effective_lr_estimand.effective_lr_rows(
                out, grid, dataset, o, summary if o == primary else None, model_texts))
            out.guard("mediation", dataset, lambda o=outcome: mediation_estimand.mediation_estimand_rows(
                out, grid, phase_rows["fixed_lr"], dataset, shared_lr, o, n_sims, seed,
                summary if o == primary else None, model_texts, mediation_design))
        ttt_rows = tuned if not tuned.empty else phase_rows["fixed_lr"]
        out.guard("time_to_target", dataset, lambda: time_to_target.time_to_target_rows(
            out, ttt_rows, ds_runs, dataset, n_boot, seed, summary, model_texts, km_tables))
        if curves is not None and not tuned.empty and not grid.empty:
            out.guard("tuned_at_grid_length", dataset, lambda: paired.tuned_at_grid_length_rows(
                out, tuned, grid, curves, dataset, methods))
        block = summary.time_to_target.get(dataset)
        if curves is not None and block is not None and block.target_loss is not None:
            out.guard("time_to_target sensitivity", dataset, lambda: block.target_sensitivity.extend(
                time_to_target.target_sensitivity(ttt_rows, curves, block.target_loss, min(n_boot, 500),
                                                  rng_for(seed, "target_sensitivity", dataset))))
        out.guard("divergence", dataset, lambda: divergence.divergence_block(summary, grid, dataset))

    estimates = out.table()
    estimates["holm_family"] = holm_family(estimates, primary)
    estimates["p_holm"] = holm_adjust(estimates, primary)
    estimates["n"] = estimates["n"].astype(int)
    summary.holm_families = describe_families(estimates)
    summary.exclusions, summary.skipped = out.exclusions, out.skipped
    summary.estimates = [load(EstimateRow, json_safe(r)) for r in estimates.to_dict(orient="records")]
    km = pd.concat(km_tables, ignore_index=True) if km_tables else pd.DataFrame(columns=list(KM_COLUMNS))
    if lr_range is not None:
        summary.tuned_lr_edges = tuning_budget.tuned_lrs_at_edge(summary.tuned_lr, *map(float, lr_range))
    budget = None
    if trials is not None:
        budget, summary.tuning_budget_trials = tuning_budget.budget_curves(trials, tune_batch)
    # Round-tripped through JSON, so the summary in memory is exactly what summary.json gives the report
    # (NaN and infinities as None).
    summary = Summary.from_json(summary.to_json())
    if "effective_lr" not in all_runs:  # an extra column (tables.RUNS_EXTRA_COLUMNS); derivable by definition
        all_runs = all_runs.assign(effective_lr=effective_lr(all_runs))
    tables = {"runs_overview": descriptive.runs_overview(all_runs),
              "tuned_lr": pd.DataFrame([{"dataset": d, "method": m, "tuned_lr": lr}
                                        for d, by_method in summary.tuned_lr.items() for m, lr in by_method.items()],
                                       columns=["dataset", "method", "tuned_lr"]),
              "exclusions": pd.DataFrame([dataclasses.asdict(e) for e in summary.exclusions],
                                         columns=["estimand", "dataset", "method", "reason", "n"]),
              "divergence": divergence.divergence_cells(summary),
              "rule_comparison": rule_comparison.rule_comparison_table(all_runs, estimates),
              "reference_levels": rule_comparison.reference_levels(all_runs)}
    for name, table in (("tuning_budget", budget), ("tuning_trials", trials), ("tuning_best", best)):
        if table is not None:
            tables[name] = table
    return AnalysisResult(estimates=estimates, summary=summary, model_texts=model_texts, km=km[list(KM_COLUMNS)],
                          tables=tables)
