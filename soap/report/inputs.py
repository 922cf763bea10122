"""What the report reads: the pipeline's tables and the analysis stage's outputs, nothing else.

Under ``results_dir``:

- required: ``runs.parquet``, ``curves.parquet``, ``analysis/summary.json``;
- optional: the analysis stage's tables ``analysis/{estimates,km,runs_overview,tuned_lr,exclusions,
  divergence,rule_comparison,reference_levels,tuning_budget,tuning_trials,tuning_best}.csv``
  (soap.analysis.outputs), ``provenance.json``, and the verdict stage's outputs in
  ``interventions/verdict/``: ``answer.json`` (the primary test's numbers and sentence),
  ``decomposition.csv``, ``verdict.csv``, ``descriptive.csv`` (soap.analysis.verdict) and its figures.

Missing optional inputs are listed (``Inputs.missing``) and the figures that need them draw a "no data"
panel.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from soap.analysis.summary import Summary
from soap.tables import effective_lr, read_table, validate_curves, validate_runs

logger = logging.getLogger(__name__)

# The analysis stage's tables the report shows (and copies to tables/<name>.csv).
ANALYSIS_TABLES = ("runs_overview", "tuned_lr", "exclusions", "divergence", "rule_comparison", "reference_levels",
                   "tuning_budget", "estimates", "km", "tuning_trials", "tuning_best")
# Tables that exist exactly when another does (tuning_trials): listing them as missing says nothing more.
DERIVED_TABLES = ("tuning_budget", "tuning_best")
VERDICT_DIR = Path("interventions") / "verdict"
VERDICT_TABLES = ("verdict", "descriptive", "decomposition")  # <name>.csv in VERDICT_DIR


@dataclass
class Inputs:
    """Everything the report reads; optional inputs are None (or empty) when missing."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    summary: Summary
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> table (ANALYSIS_TABLES)
    table_paths: dict[str, Path] = field(default_factory=dict)  # name -> the analysis's CSV
    provenance: dict | None = None
    # the verdict stage's outputs (soap.analysis.verdict.Verdict); None where the study ran no factorial
    verdict: pd.DataFrame | None = None
    descriptive: pd.DataFrame | None = None
    decomposition: pd.DataFrame | None = None
    answer: dict | None = None
    verdict_dir: Path | None = None
    missing: list[str] = field(default_factory=list)

    def table(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)

    @property
    def estimates(self) -> pd.DataFrame | None:
        return self.tables.get("estimates")


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
    for name in ANALYSIS_TABLES:
        path = results / "analysis" / f"{name}.csv"
        if path.exists():
            inputs.tables[name], inputs.table_paths[name] = read_table(path), path
        elif name not in DERIVED_TABLES:
            inputs.missing.append(str(path))
    if inputs.estimates is None and inputs.summary.estimates:
        inputs.tables["estimates"] = summary_estimates(inputs.summary)
    provenance = results / "provenance.json"
    if provenance.exists():
        inputs.provenance = json.loads(provenance.read_text())
    else:
        inputs.missing.append(str(provenance))
    verdict_dir = results / VERDICT_DIR
    if verdict_dir.is_dir():
        inputs.verdict_dir = verdict_dir
        for name in VERDICT_TABLES:
            if (verdict_dir / f"{name}.csv").is_file():
                setattr(inputs, name, read_table(verdict_dir / f"{name}.csv"))
        if (verdict_dir / "answer.json").is_file():
            inputs.answer = json.loads((verdict_dir / "answer.json").read_text())
    for name in inputs.missing:
        logger.warning("report input missing, its figures and sections will say so: %s", name)
    return inputs


def summary_estimates(summary: Summary) -> pd.DataFrame:
    """summary.json's estimate rows as the estimates table (the same rows as analysis/estimates.csv)."""
    return pd.DataFrame([dataclasses.asdict(r) for r in summary.estimates]).astype({"lr": float})
