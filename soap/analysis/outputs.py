"""The analysis stage's files: the runs, curves and tuning studies read in, every output written out.

`run_analysis` reads, calls soap.analysis.core.analyze and writes into one directory, each file
atomically: estimates.csv, km.csv, models.txt, summary.json, and one CSV per report table
(AnalysisResult.tables: runs_overview, tuned_lr, exclusions, divergence, rule_comparison,
reference_levels, and with a tune directory tuning_budget, tuning_trials, tuning_best). The report
reads these and computes nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

import soap.analysis.mediation as mediation
from soap.analysis.core import AnalysisResult, analyze
from soap.tables import read_table, validate_curves, validate_runs, write_table, write_text

log = logging.getLogger(__name__)

# The tuning phase's layout under a tune directory: one study per dataset, method and repeat.
TRIALS_GLOB = "*/*/r*/trials.csv"


def load_tuning(tune_dir: str | Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Every study's tune/{dataset}/{method}/r{repeat}/trials.csv and best.json, concatenated with their
    keys as columns; (None, None) when there is no study."""
    trials, best = [], []
    for path in sorted(Path(tune_dir).glob(TRIALS_GLOB)):
        dataset, method, repeat = path.parts[-4], path.parts[-3], path.parts[-2][1:]
        trials.append(read_table(path).assign(dataset=dataset, method=method, repeat=repeat))
        best_path = path.with_name("best.json")
        if best_path.exists():
            best.append({"dataset": dataset, "method": method, "repeat": repeat,
                         **json.loads(best_path.read_text())})
    if not trials:
        return None, None
    return pd.concat(trials, ignore_index=True), pd.DataFrame(best) if best else None


def models_text(model_texts: dict[str, str]) -> str:
    return "\n\n".join(f"{'=' * 100}\n{name}\n{'=' * 100}\n{text}" for name, text in model_texts.items())


def run_analysis(runs_path, out_dir, *, fixed_lr: float | None = None, seed: int = 0,
                 n_boot: int = 2000, mediation_design: str = mediation.DEFAULT_DESIGN,
                 curves_path=None, tune_dir=None, tune_batch: int | None = None,
                 lr_range: tuple[float, float] | None = None) -> AnalysisResult:
    """Read a runs table (parquet or CSV), optionally its curves table and its tuning studies
    (`tune_dir`, with config tune.batch and (tune.lr_low, tune.lr_high)), analyse them and write every
    output into out_dir."""
    runs = validate_runs(read_table(runs_path), source=str(runs_path))  # the error names the file
    curves = None if curves_path is None else validate_curves(read_table(curves_path), source=str(curves_path))
    trials, best = (None, None) if tune_dir is None else load_tuning(tune_dir)
    if tune_dir is not None and trials is None:
        log.warning("no tuning study under %s (%s): no tuning-budget curves", tune_dir, TRIALS_GLOB)
    result = analyze(runs, fixed_lr=fixed_lr, seed=seed, n_boot=n_boot, mediation_design=mediation_design,
                     curves=curves, trials=trials, best=best, tune_batch=tune_batch, lr_range=lr_range)
    out_dir = Path(out_dir)
    write_table(result.estimates, out_dir / "estimates.csv")
    write_table(result.km, out_dir / "km.csv")
    for name, table in result.tables.items():
        write_table(table, out_dir / f"{name}.csv")
    write_text(models_text(result.model_texts), out_dir / "models.txt")
    # summary.json last: the report treats it as the mark of a complete analysis directory
    write_text(result.summary.to_json(), out_dir / "summary.json")
    log.info("analysis of %s written to %s (%d estimates)", runs_path, out_dir, len(result.estimates))
    return result
