"""Expected best validation loss against tuning budget (Dodge et al. 2019), and tuned lrs at an edge.

Data convention: `trials` is the concatenation of the tuning phase's trials.csv files (Optuna's
`trials_dataframe()`: number, value, state, params_lr, user_attrs_* ...) with dataset, method and repeat
columns added (soap.analysis.outputs.load_tuning reads them from the tune directory).

The estimator assumes the trials are i.i.d. draws from the search distribution. A TPE sampler's later
trials are not: they follow the earlier ones. So only i.i.d. trials enter:

- when trials.csv records each trial's origin (column ORIGIN_COLUMN, written by soap.tuning.study:
  "random" for a trial drawn independently from the search distribution, "tpe" otherwise), the
  trials drawn at random;
- else TPE's startup trials: the first `startup` trials of each study (config tune.batch: the first
  population is drawn before TPE has anything to model).

`expected_best(values, k)` for a sorted sample v_(1) <= ... <= v_(N) is
sum_i v_(i) [((N - i + 1) / N)^k - ((N - i) / N)^k], the expectation of the best of k draws with
replacement from the trials (Dodge et al. 2019, "Show your work", eq. 1, for a minimum).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# trials.csv's record of where a trial's lr came from (soap.tuning.study.trials_frame); not imported
# from there, so the analysis does not import Optuna.
ORIGIN_COLUMN = "origin"
# A tuned lr within this fraction of the search range's log width of a bound is "at the edge".
EDGE_FRACTION = 0.05


def expected_best(values: np.ndarray, k: int) -> float:
    """Expected minimum of k draws with replacement from `values` (Dodge et al. 2019)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    i = np.arange(1, n + 1)
    weights = ((n - i + 1) / n) ** k - ((n - i) / n) ** k
    return float((weights * v).sum())


def iid_trials(trials: pd.DataFrame, startup: int | None) -> tuple[pd.DataFrame, str]:
    """The completed trials that are i.i.d. draws, and which rule chose them (for the caption)."""
    done = trials[np.isfinite(pd.to_numeric(trials["value"], errors="coerce"))]
    if "state" in done:
        done = done[done["state"].astype(str).str.upper().str.endswith("COMPLETE")]
    if ORIGIN_COLUMN in done:
        drawn = done[ORIGIN_COLUMN].astype(str).str.strip().str.lower() == "random"
        return done[drawn], "trials drawn at random (recorded origin)"
    if startup is None:
        return done.iloc[:0], "no record of which trials were drawn at random, and no tune.batch"
    first = done.sort_values("number").groupby(["dataset", "method", "repeat"]).head(startup)
    return first, f"TPE's startup trials (the first {startup} of each study, tune.batch)"


def budget_curves(trials: pd.DataFrame, startup: int | None) -> tuple[pd.DataFrame, str]:
    """Per (dataset, method): expected best validation loss for k = 1 .. (i.i.d. trials), pooled over
    the method's repeats (each repeat samples the same search distribution)."""
    chosen, which = iid_trials(trials, startup)
    rows = []
    for (dataset, method), group in chosen.groupby(["dataset", "method"]):
        values = group["value"].astype(float).to_numpy()
        rows += [{"dataset": dataset, "method": method, "budget": k, "expected_best": expected_best(values, k),
                  "n_trials": len(values)} for k in range(1, len(values) + 1)]
    return pd.DataFrame(rows, columns=["dataset", "method", "budget", "expected_best", "n_trials"]), which


def at_edge(lr: float, low: float, high: float) -> str | None:
    """"low" or "high" when lr sits within EDGE_FRACTION of the log search range of a bound, else None."""
    width = np.log(high) - np.log(low)
    if np.log(lr) - np.log(low) <= EDGE_FRACTION * width:
        return "low"
    if np.log(high) - np.log(lr) <= EDGE_FRACTION * width:
        return "high"
    return None


def tuned_lrs_at_edge(tuned_lr: dict[str, dict[str, float]], low: float, high: float) -> dict[str, dict[str, str]]:
    """{dataset: {method: "low" / "high"}} for the tuned lrs ({dataset: {method: lr}}) at an edge of
    the search range [low, high] (config tune.lr_low / lr_high); methods inside it are left out."""
    out = {}
    for dataset, by_method in tuned_lr.items():
        edges = {m: at_edge(lr, low, high) for m, lr in by_method.items()}
        out[dataset] = {m: e for m, e in edges.items() if e}
    return out
