"""Per-run measurements: alignment of B with W, the rule's error signal against BP's, targets.

Tensors carry a leading population dimension: weights (pop, out, in), error signals (pop, batch, units).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor


def angle_degrees(a: Tensor, b: Tensor) -> Tensor:
    """Angle between a[p] and b[p] seen as flat vectors, per member: (pop, ...) x2 -> (pop,).

    As 2 atan2(|a/|a| - b/|b||, |a/|a| + b/|b||) (Kahan): exact at 0 and 180 degrees in float32, where
    arccos of the cosine turns rounding into spurious hundredths of a degree. A zero vector gives 90.
    """
    a, b = a.flatten(1), b.flatten(1)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return torch.rad2deg(2 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1)))


def signal_agreement(rule_delta: Tensor, bp_delta: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine and norm ratio |rule| / |bp| of two error signals per member: (pop, batch, units) -> (pop,)."""
    rule, bp = rule_delta.flatten(1), bp_delta.flatten(1)
    rule_norm, bp_norm = rule.norm(dim=1), bp.norm(dim=1).clamp_min(1e-30)
    cosine = (rule * bp).sum(1) / (rule_norm.clamp_min(1e-30) * bp_norm)
    return cosine, rule_norm / bp_norm


def feedback_gain(norm_ratios: np.ndarray) -> float:
    """Geometric mean of norm ratios over hidden layers and logging points (STUDY.md).

    It is the factor by which the rule scales the hidden layers' step, hence effective_lr = lr * gain.
    Non-finite or non-positive ratios (a diverged stretch) are ignored; NaN if none is left.
    """
    ratios = np.asarray(norm_ratios, dtype=float).ravel()
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    return float(stats.gmean(ratios)) if ratios.size else math.nan


def examples_to_target(curves: pd.DataFrame, target: float, column: str = "train_loss_ema") -> pd.DataFrame:
    """First logged example count at which each run's smoothed training loss is at or below `target`.

    Returns one row per run_id with examples_to_target (NaN when never reached: a censored run) and
    reached_target. Resolution is the logging interval.
    """
    logged = curves.dropna(subset=[column]).sort_values(["run_id", "examples"])
    hits = logged[logged[column] <= target].groupby("run_id")["examples"].min()
    runs = pd.Index(curves["run_id"].unique(), name="run_id")
    out = pd.DataFrame(index=runs)
    out["examples_to_target"] = hits.reindex(runs).astype(float)
    out["reached_target"] = out["examples_to_target"].notna()
    return out.reset_index()


def time_to_target(curves: pd.DataFrame, run_ids, target: float) -> tuple[np.ndarray, np.ndarray]:
    """examples_to_target (NaN: censored) and reached_target of each of `run_ids`, in that order: the
    one reading of the curves that the trainer and the pipeline's gathered target both use."""
    hits = examples_to_target(curves, target).set_index("run_id").reindex(pd.Index(run_ids))
    return hits["examples_to_target"].to_numpy(), hits["reached_target"].fillna(False).astype(bool).to_numpy()
