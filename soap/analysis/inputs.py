"""Checking a runs table for analysis, and the learning rates the estimands are taken at.

Data convention throughout soap.analysis: a runs table of STUDY.md's contract (one row per run;
`validate_runs` dtypes), `bp` as the reference method, seeds paired within a (dataset, phase).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from soap.analysis.errors import AnalysisError
from soap.networks import single_network_per_dataset
from soap.tables import TableError, validate_runs
from soap.rules import REFERENCE

# The method factor of every regression on runs, with bp as its baseline level: coefficients are
# contrasts against bp.
METHOD_TERM = f"C(method, Treatment('{REFERENCE}'))"


def prepare_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Validate `runs` for analysis and return it with canonical dtypes, or raise AnalysisError (also for
    a dataset holding runs of two architectures, soap.networks)."""
    try:
        runs = validate_runs(runs)
        single_network_per_dataset(runs)  # every estimand below is keyed by dataset
    except TableError as err:
        raise AnalysisError(str(err)) from err
    if runs.empty:
        raise AnalysisError("runs table has no rows")
    for dataset, rows in runs.groupby("dataset"):
        if rows["diverged"].all():
            raise AnalysisError(f"dataset {dataset!r}: every run diverged ({len(rows)} runs); nothing to analyse")
        for phase, phase_rows in rows.groupby("phase"):
            n_seeds = phase_rows["seed"].nunique()
            if n_seeds < 2:
                raise AnalysisError(
                    f"dataset {dataset!r}, phase {phase!r}: fewer than 2 seeds ({n_seeds}); "
                    "paired intervals need replicates"
                )
            _check_bp_pairs(phase_rows, dataset, phase)
    return runs


def _check_bp_pairs(rows: pd.DataFrame, dataset: str, phase: str) -> None:
    bp_seeds = set(rows.loc[rows["method"] == REFERENCE, "seed"])
    for method, method_rows in rows[rows["method"] != REFERENCE].groupby("method"):
        unpaired = sorted(set(method_rows["seed"]) - bp_seeds)
        if unpaired:
            shown = ", ".join(map(str, unpaired[:10])) + (" ..." if len(unpaired) > 10 else "")
            raise AnalysisError(
                f"method {method!r} has no {REFERENCE!r} pair in dataset {dataset!r}, phase {phase!r}: "
                f"no {REFERENCE} runs for seed(s) {shown}"
            )


def tuned_lrs(runs: pd.DataFrame) -> dict[str, float]:
    """Each method's tuned learning rate in one dataset's runs (geometric mean if repeats disagree)."""
    tuned = runs[runs["phase"] == "tuned"]
    return {method: float(stats.gmean(rows["lr"].astype(float))) for method, rows in tuned.groupby("method")}


def snap_to_grid(lr: float, grid: np.ndarray) -> float:
    """The grid value nearest to lr on a log scale."""
    grid = np.asarray(grid, dtype=float)
    return float(grid[np.argmin(np.abs(np.log(grid) - np.log(lr)))])


def choose_fixed_lr(runs: pd.DataFrame, requested: float | None, outcome: str) -> float | None:
    """The shared nominal learning rate of the `fixed_lr` estimand for one dataset's runs.

    `requested` if given, else bp's tuned learning rate, else (no tuned bp runs) the grid learning rate
    with bp's lowest mean `outcome`; snapped to the nearest grid value on a log scale because the
    estimand compares grid runs. None when the dataset has no grid runs.
    """
    grid = runs[runs["phase"] == "grid"]
    if grid.empty:
        return None
    if requested is not None and not requested > 0:
        raise AnalysisError(f"fixed learning rate must be positive, got {requested}")
    grid_lrs = np.unique(grid["lr"].to_numpy())
    if requested is None:
        requested = tuned_lrs(runs).get(REFERENCE)
    if requested is None:
        bp = grid[(grid["method"] == REFERENCE) & ~grid["diverged"]]
        mean_by_lr = bp.groupby("lr")[outcome].mean()
        if mean_by_lr.dropna().empty:
            return float(grid_lrs[len(grid_lrs) // 2])
        requested = float(mean_by_lr.idxmin())
    return snap_to_grid(requested, grid_lrs)


def at_lr(runs: pd.DataFrame, lr: float) -> pd.DataFrame:
    """Rows at nominal learning rate lr, tolerant of float round-trips through CSV."""
    return runs[np.isclose(runs["lr"].to_numpy(dtype=float), lr, rtol=1e-6, atol=0.0)]
