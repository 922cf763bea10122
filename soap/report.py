"""The study report: figures (PNG + PDF), tables (CSV) and one self-contained HTML page.

``build_report(results_dir, out_html, figures_dir)`` reads what the pipeline wrote under
``results_dir``:

- required: ``runs.parquet``, ``curves.parquet``, ``analysis/summary.json``;
- optional: ``analysis/estimates.csv``, ``analysis/km.csv``,
  ``tune/{dataset}/{method}/r{repeat}/trials.csv`` and ``best.json``, ``provenance.json``.

It writes every figure of :data:`FIGURES` to ``figures_dir`` as ``<stem>.png`` and ``<stem>.pdf``, the
tables as CSV to ``tables_dir`` (default: a ``tables`` folder beside ``out_html``, i.e.
``results/tables/``), and the HTML with the PNGs embedded as base64 data URIs, so the page opens
offline and references nothing outside itself.

Every number in the narrative comes from ``summary.json`` or ``provenance.json`` through the
formatters below; the template holds no numbers of its own. Missing optional inputs are listed in the
report, and the figures that need them draw a "no data" panel.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scipy import stats

from soap import plots as F
from soap.analysis.summary import Interval, Summary
from soap.files import png_data_uri
from soap.analysis.tuning_budget import at_edge, budget_curves
from soap.intervention_figures import report_section
from soap.rule_comparison import rule_comparison_table
from soap.tables import effective_lr, read_table, validate_curves, validate_runs, write_table, write_text
from soap.rules import REFERENCE

logger = logging.getLogger(__name__)

COMPARISON_ESTIMANDS = ("fixed_lr", "small_lr", "tuned", "effective_lr")


@dataclass(frozen=True)
class FigureSpec:
    stem: str  # file name without suffix, under figures_dir; also the caption file's name
    title: str
    caption: str


# The order here is the order in the report. Captions are also in workflow/report/<stem>.rst for
# Snakemake's report; tests check that the two sets of stems agree.
FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig01_bp_vs_fa", "Feedback alignment learns more slowly than backprop",
               "Training loss (EMA) against examples seen for bp and fa, both at bp's tuned learning "
               "rate (grid runs at the shared lr); mean and 95% CI over seeds. The dashed line is the "
               "target loss. The box gives how many times bp's examples fa's mean curve takes to cross "
               "it here, and the analysis's ratio of median examples to target (from the runs it names)."),
    FigureSpec("fig02_fixed_lr_curves", "The naive comparison: every method at one learning rate",
               "Training loss (EMA) of every method at the shared nominal learning rate, chosen for "
               "bp; mean and 95% CI over seeds. This is the write-up's comparison."),
    FigureSpec("fig03_lr_response", "Learning-rate response",
               "Final test loss against nominal learning rate on the grid runs; mean and 95% CI over "
               "seeds. Triangles mark each method's tuned learning rate, crosses learning rates where "
               "some seeds diverged (those runs have no final loss), the dashed line the shared lr."),
    FigureSpec("fig04_effective_lr_response", "The same runs against effective learning rate",
               "Final test loss against effective learning rate (nominal lr times feedback gain). "
               "Points are runs; lines join, per nominal lr, the mean with its 95% CI. Where the "
               "methods' curves collapse, their differences are learning rate."),
    FigureSpec("fig05_causal_diagram", "Causal diagram",
               "The method changes the feedback gain, which multiplies the nominal learning rate into "
               "the effective one. A learning rate tuned for the method itself lies on the method's "
               "causal path (a mediator); one chosen for another method (bp) confounds the comparison."),
    FigureSpec("fig06_forest", "Estimates: each method against bp",
               "Difference in test loss, method minus bp, with 95% intervals, one panel per estimand, "
               "each with its own axis: at bp's tuned learning rate (chosen for bp), at the smallest "
               "grid learning rate (too small for bp: the original write-up's regime), with each "
               "method at its own tuned learning rate, and at matched effective learning rate "
               "(regression on the grid). Holm-adjusted p-values at the right."),
    FigureSpec("fig07_mediation", "Mediation: sign vs sign_scaled through feedback gain",
               "Average causal mediated effect (ACME) of sign over sign_scaled through log feedback "
               "gain, the direct effect (ADE) and the total effect on test loss, with 95% intervals "
               "and each effect's standard deviation; seeds enter both models as fixed effects. "
               "ACME and ADE are far less precise than their sum."),
    FigureSpec("fig08_time_to_target", "Time to target loss",
               "Kaplan-Meier estimate of the fraction of runs whose smoothed training loss has not yet "
               "reached the target, against examples seen, with 95% bands. Runs that never reach it are "
               "censored, not dropped."),
    FigureSpec("fig09_alignment", "Alignment over training",
               "Per layer, the angle between the feedback matrix B and the forward weights W, and the "
               "cosine between each rule's hidden error signal and backprop's on the same batch; runs "
               "at each method's tuned learning rate, mean and 95% CI over seeds."),
    FigureSpec("fig10_tuning", "Learning-rate tuning (Optuna)",
               "Left: best validation loss so far against trial number, one line per study (method and "
               "repeat). Right: every completed trial's learning rate against its validation loss; "
               "dotted lines mark each study's best learning rate."),
    FigureSpec("fig11_grid_contrasts", "Method minus bp at every grid learning rate",
               "Paired difference in test loss, method minus bp, at each grid learning rate, with "
               "paired t 95% intervals over seeds (symmetric-log axis). Below zero the method beats bp "
               "at that learning rate: at learning rates too small for bp, sign's larger effective "
               "step wins; at bp's tuned learning rate (dotted) it does not."),
    FigureSpec("fig12_divergence", "Divergence as an outcome",
               "Fraction of grid runs that diverged (loss became NaN or infinite) per method and "
               "learning rate, with Wilson 95% intervals."),
    FigureSpec("fig13_tuning_budget", "Expected best validation loss against tuning budget",
               "Expected best validation loss after k tuning trials (Dodge et al. 2019), per method, "
               "from the i.i.d. trials only: those recorded as drawn at random, else TPE's startup "
               "trials (the first tune.batch of each study); the panel title says which."),
    FigureSpec("fig14_rule_comparison", "Rule comparison: every rule against bp",
               "Test loss (left) and test accuracy (right, percentage points), each rule minus bp. "
               "Filled squares: each rule at its own tuned learning rate (paired t 95% interval, over "
               "tuning repeats when each seed trains at its repeat's lr). Open diamonds: at matched effective learning rate (grid regression, cluster-"
               "robust by seed, fitted on bp's and that rule's runs); a faded diamond marks a rule whose "
               "curve has another slope than bp's (p < 0.05), where the one difference averages one "
               "that changes with the learning rate. A rule whose square beats bp but whose diamond "
               "does not wins by its step size. so_ rules (dashed in the other figures) carry activity "
               "propagation on top of their base rule. An interval much wider than the others runs off "
               "the panel. Absolute values and times to target: tables/rule_comparison.csv."),
)


@dataclass
class Inputs:
    """Everything the report reads; optional inputs are None (or empty) when missing."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    summary: Summary
    estimates: pd.DataFrame | None = None
    km: pd.DataFrame | None = None
    trials: pd.DataFrame | None = None
    best: pd.DataFrame | None = None
    provenance: dict | None = None
    missing: list[str] = field(default_factory=list)


# --- loading --------------------------------------------------------------------------------------

def load_inputs(results_dir: str | Path) -> Inputs:
    """Read the pipeline's outputs under results_dir; raises FileNotFoundError for a required one."""
    results = Path(results_dir)
    summary_path = results / "analysis" / "summary.json"
    for required in (results / "runs.parquet", results / "curves.parquet", summary_path):
        if not required.exists():
            raise FileNotFoundError(f"report input not found: {required}")
    runs = validate_runs(read_table(results / "runs.parquet"), source=str(results / "runs.parquet"))
    if "effective_lr" not in runs:  # an extra column (tables.RUNS_EXTRA_COLUMNS); derivable by definition
        runs["effective_lr"] = effective_lr(runs)
    curves = validate_curves(read_table(results / "curves.parquet"), source=str(results / "curves.parquet"))
    inputs = Inputs(runs=runs, curves=curves, summary=Summary.from_json(summary_path.read_text()))
    inputs.estimates = _optional_table(results / "analysis" / "estimates.csv", inputs.missing)
    if inputs.estimates is None and inputs.summary.estimates:
        inputs.estimates = _summary_estimates(inputs.summary)
    inputs.km = _optional_table(results / "analysis" / "km.csv", inputs.missing)
    inputs.trials, inputs.best = _load_tuning(results / "tune", inputs.missing)
    provenance = results / "provenance.json"
    if provenance.exists():
        inputs.provenance = json.loads(provenance.read_text())
    else:
        inputs.missing.append(str(provenance))
    for name in inputs.missing:
        logger.warning("report input missing, its figures and sections will say so: %s", name)
    return inputs


def _optional_table(path: Path, missing: list[str]) -> pd.DataFrame | None:
    if path.exists():
        return read_table(path)
    missing.append(str(path))
    return None


def _load_tuning(tune_dir: Path, missing: list[str]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Concatenate tune/{dataset}/{method}/r{repeat}/trials.csv and best.json with their keys."""
    trials, best = [], []
    for path in sorted(tune_dir.glob("*/*/r*/trials.csv")):
        dataset, method, repeat = path.parts[-4], path.parts[-3], path.parts[-2][1:]
        trials.append(read_table(path).assign(dataset=dataset, method=method, repeat=repeat))
        best_path = path.with_name("best.json")
        if best_path.exists():
            best.append({"dataset": dataset, "method": method, "repeat": repeat,
                         **json.loads(best_path.read_text())})
    if not trials:
        missing.append(str(tune_dir / "{dataset}/{method}/r{repeat}/trials.csv"))
        return None, None
    return pd.concat(trials, ignore_index=True), pd.DataFrame(best) if best else None


# --- selecting what each figure shows ---------------------------------------------------------------

def at_lr(runs: pd.DataFrame, lr: float) -> pd.DataFrame:
    """Rows at nominal learning rate lr, tolerant of float round-trips through CSV."""
    return runs[np.isclose(runs["lr"].to_numpy(dtype=float), lr, rtol=1e-6, atol=0.0)]


def curves_with_runs(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Curves of the given runs with their design columns; rows follow the runs' order."""
    keys = ["run_id", "dataset", "method", "seed", "lr", "phase", "diverged"]
    return runs[keys].merge(curves, on="run_id", how="inner")


def fixed_lr_curves(curves: pd.DataFrame, runs: pd.DataFrame, fixed_lr: Mapping[str, float]) -> pd.DataFrame:
    """Curves of the grid runs at each dataset's shared learning rate (the fixed_lr estimand's runs)."""
    grid = runs[runs["phase"] == "grid"]
    chosen = [at_lr(grid[grid["dataset"] == d], lr) for d, lr in fixed_lr.items() if lr is not None]
    chosen = pd.concat(chosen) if chosen else grid.iloc[:0]
    return curves_with_runs(curves, chosen)


def target_losses(summary: Summary) -> dict[str, float]:
    return {d: v.target_loss for d, v in summary.time_to_target.items() if v.target_loss is not None}


def in_dataset_order(table: pd.DataFrame | None, datasets: list[str]) -> pd.DataFrame | None:
    """Rows sorted (stably) by the summary's dataset order, so every figure facets datasets alike."""
    if table is None or "dataset" not in table:
        return table
    rank = {d: i for i, d in enumerate(datasets)}
    return table.sort_values("dataset", key=lambda col: col.map(rank).fillna(len(rank)), kind="stable")


def _summary_estimates(summary: Summary) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(r) for r in summary.estimates]).astype({"lr": float})


def divergence_cells(summary: Summary) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": d, **dataclasses.asdict(c)} for d, block in summary.divergence.items()
                         for c in block.cells],
                        columns=["dataset", "method", "lr", "n_runs", "n_diverged", "rate", "ci_low", "ci_high"])


def _tune_config(provenance: Mapping | None) -> dict:
    return dict(((provenance or {}).get("config") or {}).get("tune") or {})


def tuning_budget(inputs: Inputs) -> tuple[pd.DataFrame | None, str]:
    """Expected best validation loss per tuning budget, from the i.i.d. trials (soap.analysis.tuning_budget)."""
    if inputs.trials is None:
        return None, ""
    batch = _tune_config(inputs.provenance).get("batch")
    return budget_curves(inputs.trials, int(batch) if batch else None)


def tuned_lrs_at_edge(inputs: Inputs) -> dict[str, dict[str, str]]:
    """{dataset: {method: "low" / "high"}} for tuned lrs at an edge of the search range (provenance's
    tune.lr_low / lr_high)."""
    tune = _tune_config(inputs.provenance)
    if "lr_low" not in tune or "lr_high" not in tune:
        return {}
    out = {}
    for dataset, by_method in inputs.summary.tuned_lr.items():
        edges = {m: at_edge(lr, float(tune["lr_low"]), float(tune["lr_high"])) for m, lr in by_method.items()}
        out[dataset] = {m: e for m, e in edges.items() if e}
    return out


def make_figures(inputs: Inputs) -> dict[str, tuple]:
    """Every figure of FIGURES as {stem: (fig, axes)}."""
    s = inputs.summary
    datasets = list(s.datasets or inputs.runs["dataset"].unique())
    runs = in_dataset_order(inputs.runs, datasets)
    trials, km, estimates = (in_dataset_order(t, datasets) for t in (inputs.trials, inputs.km, inputs.estimates))
    outcome = s.outcome
    if estimates is not None and "outcome" in estimates:
        estimates = estimates[estimates["outcome"] == outcome]
    fixed = {d: lr for d, lr in s.fixed_lr.items() if lr is not None}
    targets = target_losses(s)
    fixed_curves = fixed_lr_curves(inputs.curves, runs, fixed)
    ratios = {d: {**dataclasses.asdict(v.ratio.get("fa") or Interval()), "phase": v.phase}
              for d, v in s.time_to_target.items()}
    grid = runs[runs["phase"] == "grid"]
    tuned_curves = curves_with_runs(inputs.curves, runs[runs["phase"] == "tuned"])
    mediation = {d: dataclasses.asdict(m) for d, m in s.mediation.items()}
    skipped = {d: s.skipped_reason("mediation", d) for d in datasets if s.skipped_reason("mediation", d)}
    budget, which = tuning_budget(inputs)
    made = {
        "fig01_bp_vs_fa": F.plot_bp_vs_fa(fixed_curves, targets, ratios, fixed),
        "fig02_fixed_lr_curves": F.plot_fixed_lr_curves(fixed_curves, fixed, targets),
        "fig03_lr_response": F.plot_lr_response(grid, s.tuned_lr, fixed, outcome),
        "fig04_effective_lr_response": F.plot_effective_lr_response(grid, outcome),
        "fig05_causal_diagram": F.plot_causal_diagram(),
        "fig06_forest": F.plot_forest(estimates, COMPARISON_ESTIMANDS, REFERENCE, outcome),
        "fig07_mediation": F.plot_mediation(mediation, outcome, skipped),
        "fig08_time_to_target": F.plot_km(km, targets, {d: v.phase for d, v in s.time_to_target.items()}),
        "fig09_alignment": F.plot_alignment(tuned_curves),
        "fig10_tuning": F.plot_tuning(trials, inputs.best),
        "fig11_grid_contrasts": F.plot_grid_contrasts(estimates, REFERENCE, outcome, s.tuned_lr),
        "fig12_divergence": F.plot_divergence(in_dataset_order(divergence_cells(s), datasets)),
        "fig13_tuning_budget": F.plot_tuning_budget(in_dataset_order(budget, datasets), which),
        # every outcome: the comparison shows accuracy beside loss
        "fig14_rule_comparison": F.plot_rule_comparison(in_dataset_order(inputs.estimates, datasets),
                                                        reference_levels(inputs.runs), REFERENCE),
    }
    assert list(made) == [spec.stem for spec in FIGURES], "FIGURES and make_figures disagree"
    return made


# --- tables -----------------------------------------------------------------------------------------

def runs_overview(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, phase, method, lr): how many runs, how many diverged, and mean outcomes."""
    grouped = runs.groupby(["dataset", "phase", "method", "lr"], observed=True)
    return grouped.agg(n_runs=("run_id", "size"), n_diverged=("diverged", "sum"),
                       feedback_gain_gmean=("feedback_gain", _gmean),
                       effective_lr_gmean=("effective_lr", _gmean),
                       test_loss_mean=("test_loss", "mean"), test_acc_mean=("test_acc", "mean")).reset_index()


def _gmean(values: pd.Series) -> float:
    values = values[np.isfinite(values) & (values > 0)]
    return float(stats.gmean(values)) if len(values) else math.nan


def reference_levels(runs: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{dataset: {outcome: bp's mean at its tuned lr}}: the levels the rule comparison's differences
    are read against."""
    tuned = runs[(runs["phase"] == "tuned") & (runs["method"] == REFERENCE)]
    return {d: {o: float(rows[o].mean()) for o in ("test_loss", "test_acc")} for d, rows in tuned.groupby("dataset")}


def tuned_lr_table(summary: Summary) -> pd.DataFrame:
    rows = [{"dataset": d, "method": m, "tuned_lr": lr} for d, by_method in summary.tuned_lr.items()
            for m, lr in by_method.items()]
    return pd.DataFrame(rows, columns=["dataset", "method", "tuned_lr"])


def write_tables(inputs: Inputs, tables_dir: Path) -> dict[str, Path]:
    s = inputs.summary
    tables = {"runs_overview": runs_overview(inputs.runs), "tuned_lr": tuned_lr_table(s),
              "exclusions": pd.DataFrame([dataclasses.asdict(e) for e in s.exclusions],
                                         columns=["estimand", "dataset", "method", "reason", "n"]),
              "divergence": divergence_cells(s),
              "rule_comparison": rule_comparison_table(inputs.runs, inputs.estimates, REFERENCE)}
    budget, _ = tuning_budget(inputs)
    if budget is not None:
        tables["tuning_budget"] = budget
    for name in ("estimates", "km", "trials", "best"):
        table = getattr(inputs, name)
        if table is not None:
            tables["tuning_" + name if name in ("trials", "best") else name] = table
    return {name: write_table(table, tables_dir / f"{name}.csv") for name, table in tables.items()}


# --- formatting: the only way numbers reach the page --------------------------------------------------

def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_num(x, digits: int = 3) -> str:
    """A float to `digits` significant figures; 'n/a' for None or NaN."""
    return f"{float(x):.{digits}g}" if _finite(x) else "n/a"


def fmt_p(x) -> str:
    if not _finite(x):
        return "n/a"
    # A simulation- or bootstrap-based p of exactly zero only says "below the method's resolution".
    return "≈ 0" if float(x) == 0 else f"{float(x):.2g}"


def fmt_int(x) -> str:
    """Counts and examples, with thousands separators."""
    return f"{int(round(float(x))):,}" if _finite(x) else "n/a"


def fmt_duration(seconds) -> str:
    if not _finite(seconds):
        return "n/a"
    minutes, secs = divmod(int(round(float(seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


FORMATTERS = (fmt_num, fmt_p, fmt_int, fmt_duration)


def fmt_interval(value: Interval | Mapping | None, digits: int = 3, null: float = 0.0) -> dict:
    """An estimate with its 95% interval as strings, and which side of `null` the interval lies on.

    direction is "below" or "above" when the whole interval is on one side of null, else "neither".
    The p-value shown is the Holm-adjusted one when there is one (p_label says which).
    """
    if isinstance(value, Interval):
        value = dataclasses.asdict(value)
    value = value or {}
    est, lo, hi = value.get("estimate"), value.get("ci_low"), value.get("ci_high")
    direction = "neither"
    if _finite(lo) and _finite(hi):
        direction = "below" if float(hi) < null else "above" if float(lo) > null else "neither"
    holm = _finite(value.get("p_holm"))
    p = value.get("p_holm") if holm else value.get("p_value")
    unit = str(value.get("unit") or "")
    return {"estimate": fmt_num(est, digits), "ci_low": fmt_num(lo, digits), "ci_high": fmt_num(hi, digits),
            "p": fmt_p(p) if _finite(p) else None, "p_label": "Holm-adjusted p" if holm else "p",
            "n": (fmt_int(value["n"]) + (f" {unit}" if unit else "")) if _finite(value.get("n")) else None,
            "sd": fmt_num(value.get("sd"), 2) if _finite(value.get("sd")) else None,
            "note": str(value.get("note") or ""),
            # a paired estimate on fewer than MIN_PAIRS pairs: flagged in the cell, explained below the table
            "few_pairs": str(value.get("note") or "").startswith("only "),
            "direction": direction, "available": _finite(est)}


# --- the narrative's context ------------------------------------------------------------------------

def dataset_context(inputs: Inputs, dataset: str) -> dict:
    """Everything the template says about one dataset, as preformatted strings."""
    s = inputs.summary
    rows = _summary_estimates(s) if s.estimates else pd.DataFrame(columns=["dataset", "outcome"])
    rows = rows[(rows["outcome"] == s.outcome) & (rows["dataset"] == dataset)]
    tuned_lr = s.tuned_lr.get(dataset, {})
    ttt = s.time_to_target.get(dataset)
    model = s.effective_lr_model.get(dataset)
    edges = tuned_lrs_at_edge(inputs).get(dataset, {})
    return {
        "name": dataset,
        "label": F.dataset_label(dataset),
        "n_seeds": {phase: fmt_int(n) for phase, n in s.n_seeds.get(dataset, {}).items()},
        "epochs": {phase: fmt_num(e) for phase, e in s.epochs.get(dataset, {}).items()},
        "n_diverged": {m: fmt_int(n) for m, n in s.n_diverged.get(dataset, {}).items()},
        "fixed_lr": fmt_num(s.fixed_lr.get(dataset)),
        "small_lr": fmt_num(s.small_lr.get(dataset)),
        "tuned_lr": {m: fmt_num(lr) for m, lr in tuned_lr.items()},
        "tuned_lr_edges": {m: e for m, e in edges.items()},
        "comparisons": comparison_table(rows, tuned_lr, edges),
        "headline": headline(rows),
        "tuned_at_grid_length": _by_method(s, dataset, "tuned_at_grid_length"),
        "poi": {label: {r["method"]: fmt_interval(r, null=0.5)
                        for r in rows[rows["estimand"] == f"poi_{estimand}"].to_dict(orient="records")}
                for estimand, label in (("small_lr", "at the smallest grid lr"), ("tuned", "each at its tuned lr"))
                if (rows["estimand"] == f"poi_{estimand}").any()} if len(rows) else {},
        "effective_lr_model": _model_context(model),
        "mediation": _mediation_context(s.mediation.get(dataset)),
        "mediation_skipped": s.skipped_reason("mediation", dataset),
        "time_to_target": _ttt_context(ttt) if ttt else None,
        "skipped": [{"estimand": k.estimand, "reason": k.reason} for k in s.skipped if k.dataset == dataset],
        "divergence": None if dataset not in s.divergence else {
            "model": s.divergence[dataset].model, "note": s.divergence[dataset].note,
            "coef": {m: fmt_interval(v, null=1.0) for m, v in s.divergence[dataset].coef.items()}},
        "refresh_sensitivity": [{"refresh_period": fmt_int(r["refresh_period"]), "estimand": r["estimand"],
                                 "method": r["method"], **fmt_interval(r)}
                                for r in s.refresh_sensitivity.get(dataset, [])],
        "exclusions": [{"estimand": e.estimand, "method": e.method, "reason": e.reason, "n": fmt_int(e.n)}
                       for e in s.exclusions if e.dataset == dataset],
    }


def comparison_table(rows: pd.DataFrame, tuned_lr: Mapping[str, float], edges: Mapping[str, str]) -> list[dict]:
    """One row per method: its tuned lr and, per comparison estimand, its interval against bp."""
    versus_bp = rows[rows["reference"] == REFERENCE] if len(rows) else rows
    table = []
    for method in F.order_methods(set(versus_bp["method"]) | set(tuned_lr)):
        cells = {}
        for estimand in COMPARISON_ESTIMANDS:
            match = versus_bp[(versus_bp["estimand"] == estimand) & (versus_bp["method"] == method)]
            cells[estimand] = fmt_interval(match.iloc[0].to_dict() if len(match) else None)
        table.append({"method": method, "tuned_lr": fmt_num(tuned_lr.get(method)), "edge": edges.get(method, ""),
                      "cells": cells})
    return table


def _by_method(summary: Summary, dataset: str, estimand: str) -> dict[str, dict]:
    """One estimand's rows of one dataset (any outcome), formatted, by method."""
    return {r.method: fmt_interval(dataclasses.asdict(r)) for r in summary.estimates
            if r.estimand == estimand and r.dataset == dataset}


def headline(rows: pd.DataFrame) -> list[dict]:
    """Per method with both: the contrast at the smallest grid lr (the write-up's regime) beside the
    tuned one, so the page leads with how the verdict changes once the lr is not chosen for bp."""
    out = []
    for method in F.order_methods(set(rows["method"]) - {REFERENCE} if len(rows) else set()):
        cells = {e: rows[(rows["estimand"] == e) & (rows["method"] == method)] for e in ("small_lr", "tuned")}
        if all(len(c) for c in cells.values()):
            out.append({"method": method, **{e: fmt_interval(c.iloc[0].to_dict()) for e, c in cells.items()}})
    return out


def _model_context(model) -> dict | None:
    if model is None:
        return None
    test = model.interaction
    return {"formula": model.formula, "r2": fmt_num(model.r2), "n": fmt_int(model.n),
            "n_clusters": fmt_int(model.n_clusters),
            "coef": {m: fmt_interval(v) for m, v in model.coef.items()},
            "nominal_formula": model.nominal_formula or "",
            "nominal_coef": {m: fmt_interval(v) for m, v in model.nominal_coef.items()},
            "interaction": None if test is None else {
                "hypothesis": test.hypothesis, "statistic": fmt_num(test.statistic), "df_num": fmt_num(test.df_num),
                "df_denom": fmt_num(test.df_denom), "p": fmt_p(test.p_value) if _finite(test.p_value) else None,
                "note": test.note}}


def _mediation_context(block) -> dict | None:
    if block is None:
        return None
    return {"exposure": block.exposure, "control": block.control,
            # one shared lr (fixed_lr design), or every grid lr where both arms are healthy (pooled)
            "lr": fmt_num(block.lr) if block.lr is not None else ", ".join(fmt_num(lr) for lr in block.lrs) or "n/a",
            "design": block.design, "n": fmt_int(block.n), "n_seeds": fmt_int(block.n_seeds),
            "n_sims": fmt_int(block.n_sims), "outcome_model": block.outcome_model,
            "mediator_model": block.mediator_model,
            **{part: fmt_interval(getattr(block, part)) for part in ("acme", "ade", "total", "prop")}}


def _ttt_context(ttt) -> dict:
    return {"target_loss": fmt_num(ttt.target_loss), "phase": ttt.phase,
            "median_examples": {m: (fmt_int(v) if _finite(v) else
                                    f"censored (more than {fmt_int(ttt.median_lower_bound.get(m))})")
                                for m, v in ttt.median_examples.items()},
            "ratio": {m: fmt_interval(v, null=1.0) for m, v in ttt.ratio.items()},
            "hazard_ratio": {m: fmt_interval(v, null=1.0) for m, v in ttt.hazard_ratio.items()},
            "hazard_ratio_note": ttt.hazard_ratio_note,
            "ph": {m: fmt_p(t.p_value) for m, t in ttt.proportional_hazards.items() if _finite(t.p_value)},
            "sensitivity": _sensitivity_table(ttt.target_sensitivity),
            "n_censored": {m: fmt_int(v) for m, v in ttt.n_censored.items()}}


def _sensitivity_table(rows: list[dict]) -> dict | None:
    """The target-loss sensitivity as {methods: [...], rows: [{target_loss, cells: {method: interval}}]}."""
    if not rows:
        return None
    table = pd.DataFrame(rows)
    methods = F.order_methods(table["method"].unique())
    return {"methods": methods,
            "rows": [{"target_loss": fmt_num(loss), "multiplier": fmt_num(group["multiplier"].iloc[0]),
                      "cells": {r["method"]: fmt_interval(r, null=1.0) for r in group.to_dict(orient="records")}}
                     for loss, group in table.groupby("target_loss")]}


def provenance_context(provenance: Mapping | None) -> dict | None:
    """provenance.json (soap.pipeline.gather's record) as strings; absent keys read "not recorded"."""
    if provenance is None:
        return None
    device = provenance.get("device")
    if isinstance(device, (list, tuple)):  # one entry per distinct device the jobs ran on
        device = ", ".join(map(str, device))
    return {"versions": {str(k): str(v) for k, v in (provenance.get("versions") or {}).items()},
            "device": str(device or "not recorded"),
            "wall_time": fmt_duration(provenance.get("wall_time_s")),
            "compute_time": fmt_duration(provenance["compute_time_s"]) if "compute_time_s" in provenance else None,
            "jobs": fmt_int(provenance["jobs"]) if "jobs" in provenance else None,
            "started": str(provenance.get("started") or "not recorded"),
            "finished": str(provenance.get("finished") or "not recorded"),
            "config": flatten(provenance.get("config") or {})}


def flatten(tree, prefix: str = "") -> list[tuple[str, str]]:
    """A nested config as (dotted.key, value) rows; lists stay on one row."""
    if isinstance(tree, Mapping):
        rows = []
        for key, value in tree.items():
            rows += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(tree, (list, tuple)):
        return [(prefix, ", ".join(map(str, tree)))]
    return [(prefix, str(tree))]


def report_context(inputs: Inputs, figure_images: Mapping[str, str], tables: Mapping[str, Path]) -> dict:
    s = inputs.summary
    datasets = list(s.datasets or inputs.runs["dataset"].unique())
    _, which = tuning_budget(inputs)
    return {
        "outcome": s.outcome.replace("_", " "),
        "methods": list(s.methods or F.order_methods(inputs.runs["method"].unique())),
        "n_runs": fmt_int(s.n_runs),
        "min_pairs": fmt_int(s.min_pairs),
        "refresh_period": fmt_int(s.refresh_period) if s.refresh_period is not None else None,
        "holm_families": dict(s.holm_families),
        "datasets": [dataset_context(inputs, d) for d in datasets],
        "budget_trials": which,
        "provenance": provenance_context(inputs.provenance),
        "missing": inputs.missing,
        "figures": [{"stem": spec.stem, "title": spec.title, "caption": spec.caption,
                     "src": figure_images.get(spec.stem, "")} for spec in FIGURES],
        "tables": {name: path.name for name, path in tables.items()},
        "colors": {m: F.method_color(m) for m in F.order_methods(inputs.runs["method"].unique())},
    }


def render_html(context: Mapping) -> str:
    template_text = resources.files("soap").joinpath("templates", "report.html").read_text()
    # Autoescape: method names, config values and paths are data and must not become markup.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.from_string(template_text).render(**context)


# --- the entry point --------------------------------------------------------------------------------

def build_report(results_dir: str | Path, out_html: str | Path, figures_dir: str | Path,
                 tables_dir: str | Path | None = None) -> Path:
    """Build the report from results_dir: figures to figures_dir, CSVs to tables_dir, HTML to out_html.

    tables_dir defaults to ``<out_html's folder>/tables``. Returns the HTML's path.
    """
    out_html, figures_dir = Path(out_html), Path(figures_dir)
    tables_dir = Path(tables_dir) if tables_dir is not None else out_html.parent / "tables"
    inputs = load_inputs(results_dir)
    images = {}
    for stem, (fig, _axes) in make_figures(inputs).items():
        png, _pdf = F.save_figure(fig, figures_dir / stem)
        plt.close(fig)
        images[stem] = png_data_uri(png)
        logger.info("figure written: %s.{png,pdf}", figures_dir / stem)
    tables = write_tables(inputs, tables_dir)
    logger.info("tables written to %s: %s", tables_dir, ", ".join(sorted(tables)))
    context = dict(report_context(inputs, images, tables))
    # issue 10's verdict table and figures, when the study ran the intervention arms (soap.intervention_figures)
    context["interventions"] = Markup(report_section(Path(results_dir) / "interventions" / "verdict"))
    write_text(render_html(context), out_html)
    logger.info("report written: %s", out_html)
    return out_html
