"""The intervention arms of issue 10: set feedback scale and per-layer step sizes by hand and see whether
a rule's advantage follows them.

  dose        sign_scaled and fa at feedback scales alpha crossed with the lr grid (alpha = 1 is the main grid)
  bp_matched  bp whose layer-l lr is lr * g_l, g_l = |delta_l(sign)| / |delta_l(bp)| measured on sign's
              grid run at the same seed and lr: bp given sign's step sizes, with bp's directions
  optimizers  tune -> grid -> tuned again under momentum, adam or signsgd (scale-invariant controls)

Pure functions from config and runs tables to members; the workflow (workflow/rules/interventions.smk)
only wires them.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Iterable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MATCHED_PHASE = "matched"  # phase of bp_matched's runs: bp at sign's per-layer step sizes
GAIN_COLUMN = re.compile(r"^feedback_gain_l(\d+)$")


def gain_columns(runs: pd.DataFrame) -> list[str]:
    """feedback_gain_l1, feedback_gain_l2, ... in layer order (hidden layers, input to output)."""
    found = sorted((int(m.group(1)), c) for c in runs.columns if (m := GAIN_COLUMN.match(c)))
    return [c for _, c in found]


def matched_lr_scales(runs: pd.DataFrame, source: str = "sign") -> pd.DataFrame:
    """Per (dataset, seed, lr) of `source`'s grid runs: the per-layer lr multipliers of bp_matched.

    Weight layer l (1-based, input to output) takes g_l, the source's gain at hidden layer l (the error
    that drives that layer's step); the output layer takes 1, as no feedback rule scales its error. Only
    plain runs count (sgd, alpha 1, one lr, the default refresh period); a diverged run, or one without
    a finite positive gain at every layer, gives no row (logged).

    Returns columns dataset, seed, lr, lr_scale_l1 .. lr_scale_lL, one row per (dataset, seed, lr).
    """
    gains = gain_columns(runs)
    if not gains:
        raise ValueError("the runs table has no feedback_gain_l* columns (per-layer gains)")
    plain = (runs["phase"] == "grid") & (runs["method"] == source)
    for column, value in (("optimizer", "sgd"), ("feedback_scale", 1.0)):
        if column in runs:
            plain &= runs[column] == value
    for column in runs.columns:
        if column.startswith("lr_scale_l"):
            plain &= runs[column] == 1.0
    if "refresh_period" in runs and plain.any():
        # the main grid's period: the most common one (other periods are a sensitivity axis)
        plain &= runs["refresh_period"] == runs.loc[plain, "refresh_period"].mode().iloc[0]
    chosen = runs[plain]
    usable = ~chosen["diverged"].astype(bool) & (chosen[gains].gt(0) & np.isfinite(chosen[gains])).all(axis=1)
    if (~usable).any():
        log.warning("%d %s grid run(s) diverged or lack a gain: no bp_matched run for %s", int((~usable).sum()),
                    source, chosen.loc[~usable, "run_id"].tolist())
    chosen = chosen[usable]
    if chosen.duplicated(["dataset", "seed", "lr"]).any():
        raise ValueError(f"several {source} grid runs share a (dataset, seed, lr)")
    out = chosen[["dataset", "seed", "lr"]].copy()
    for layer, column in enumerate(gains, start=1):
        out[f"lr_scale_l{layer}"] = chosen[column].to_numpy(dtype=float)
    out[f"lr_scale_l{len(gains) + 1}"] = 1.0
    return out.sort_values(["dataset", "seed", "lr"]).reset_index(drop=True)


def matched_members(scales: pd.DataFrame, dataset: str, seeds: Iterable[int] | None = None) -> list[dict]:
    """bp_matched's members for one dataset: bp at [lr * g_1, ..., lr * g_{L-1}, lr] per (seed, lr) row of
    `matched_lr_scales` (optionally only `seeds`)."""
    rows = scales[scales["dataset"] == dataset]
    if seeds is not None:
        rows = rows[rows["seed"].isin(list(seeds))]
    columns = sorted((c for c in rows.columns if c.startswith("lr_scale_l")), key=lambda c: int(c[10:]))
    return [{"method": "bp", "lr": [float(row.lr) * float(getattr(row, c)) for c in columns], "seed": int(row.seed)}
            for row in rows.itertuples()]


def dose_members(methods: list[str], alphas: list[float], lrs: list[float], seeds: Iterable[int]) -> list[dict]:
    """The dose-response arm: every method at every feedback scale but 1 (the main grid has it) x lr x seed."""
    seeds = list(seeds)
    return [{"method": m, "lr": float(lr), "seed": int(s), "feedback_scale": float(a)}
            for m in methods for a in alphas if not math.isclose(a, 1.0) for lr in lrs for s in seeds]


def optimizer_lrs(entry: dict) -> list[float]:
    """The lr grid of one `interventions.optimizers` entry: n_lrs log-spaced points over its range."""
    return [float(f"{lr:.4g}") for lr in np.geomspace(entry["lr_low"], entry["lr_high"], entry["n_lrs"])]


def enabled(cfg: dict) -> bool:
    """Whether the study config switches on any intervention arm."""
    arms = cfg["interventions"]
    return bool(arms["alphas"]) or arms["bp_matched"] or bool(arms["optimizers"])


def check_config(cfg: dict) -> None:
    """Cross-key checks of the `interventions` block the schema cannot express; ConfigError names the key."""
    from soap.config import ConfigError
    from soap.rules import RULES

    arms = cfg["interventions"]
    for key in ("alpha_methods", "optimizer_methods"):
        unknown = [m for m in arms[key] if m not in RULES]
        if unknown:
            raise ConfigError(f"interventions.{key}: unknown method(s) {unknown}; known: {', '.join(RULES)}")
    if "bp" in arms["alpha_methods"]:  # its runs would break the runs-table contract (bp's gain is 1)
        raise ConfigError("interventions.alpha_methods: bp with a feedback scale is bp at per-layer learning "
                          "rates (use bp_matched's machinery), not a dose of a feedback rule")
    if arms["bp_matched"]:
        if "sign" not in cfg["methods"]:
            raise ConfigError("interventions.bp_matched needs sign in methods (its gains come from sign's grid)")
        if arms["seeds"] > cfg["grid"]["seeds"]:
            raise ConfigError("interventions.seeds must not exceed grid.seeds when bp_matched is on "
                              "(each matched run needs sign's grid run at its seed)")
    for i, entry in enumerate(arms["optimizers"]):
        if entry["lr_low"] >= entry["lr_high"]:
            raise ConfigError(f"interventions.optimizers.{i}.lr_low must be below its lr_high")
    if enabled(cfg) and cfg["tune"]["seed"] < arms["seeds"]:
        raise ConfigError("tune.seed must be at least interventions.seeds (tuning seeds distinct from evaluation seeds)")
