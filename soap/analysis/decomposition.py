"""The decomposition table: the direction x step-size factorial (STUDY.md) split into its effects.

For a factorial rule r the four cells are bp, r, bp@r (bp's direction with r's per-layer step sizes:
method bp, step_rule r) and r@bp (r's direction with bp's steps: method r, step_rule bp), crossed with
the grid lrs and paired by seed. Factorial runs are ordinary grid rows (optimizer sgd, feedback scale 1,
one lr for every layer) with a `step_rule` column; a table without it has step_rule == method.

Per dataset, architecture (never pooled: an MLP's and a LeNet-5's runs are separate rows), rule, grid lr
and outcome (test loss in nats, test accuracy in points), each effect is a
linear combination of the cells' per-seed outcomes (soap.factorial.EFFECTS), with the paired t interval
(95%) and the two-sided t-test over seeds:

- total r - bp;
- step effect bp@r - bp (bp's direction; only the per-layer step sizes change);
- direction effect at r's steps r - bp@r;
- direction effect at bp's steps r@bp - bp;
- interaction (r - bp@r) - (r@bp - bp).

Holm's adjustment (statsmodels multipletests) runs over every row of the table with a p-value: one
family, all datasets, architectures, rules, lrs, outcomes and effects.

Divergence: a seed whose run diverged (or has a non-finite outcome) in a cell has no value there. An
effect uses the seeds healthy in every cell it needs and only those (its differences are undefined for
the others); `diverged` counts the diverged runs of those cells at that lr and `note` names them per
cell, so a row resting on survivors says so. A row with fewer than 2 usable seeds keeps its counts and
has no interval. Nothing is dropped silently: every (rule, lr, outcome, effect) with runs gets a row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from soap.analysis.errors import AnalysisError
from soap.analysis.paired import t_interval
from soap.factorial import CELL_NAMES, EFFECTS, cell_key, cell_label
from soap.rules import REFERENCE

OUTCOMES = {"test_loss": ("nats", 1.0), "test_acc": ("points", 100.0)}
COLUMNS = ("dataset", "architecture", "rule", "lr", "outcome", "unit", "effect", "contrast", "estimate", "ci_low", "ci_high",
           "p", "p_holm", "n", "n_seeds", "diverged", "note")


def plain_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs at the study's main refresh period with one lr for every layer, with the columns older runs
    tables may lack filled in (optimizer sgd, feedback_scale 1, step_rule = method)."""
    runs = runs.copy()
    runs["optimizer"] = runs.get("optimizer", "sgd")
    runs["feedback_scale"] = runs.get("feedback_scale", 1.0)
    runs["step_rule"] = runs["step_rule"].fillna(runs["method"]) if "step_rule" in runs else runs["method"]
    runs["diverged"] = runs["diverged"].astype(bool)
    keep = np.ones(len(runs), dtype=bool)
    if "refresh_period" in runs:
        keep &= (runs["refresh_period"] == runs["refresh_period"].mode().iloc[0]).to_numpy()
    for column in [c for c in runs.columns if c.startswith("lr_scale_l")]:
        keep &= (runs[column] == 1.0).to_numpy()  # one lr for every layer: the factorial's cells
    return runs[keep]


NEEDED_COLUMNS = ("dataset", "architecture", "phase", "method", "seed", "lr", "diverged", "val_loss", "test_loss", "test_acc")


def factorial_runs(runs: pd.DataFrame, source: str = "runs table") -> pd.DataFrame:
    """The runs a factorial cell can hold: plain grid runs under sgd at feedback scale 1. AnalysisError
    names the columns the factorial needs that `runs` lacks."""
    missing = [c for c in NEEDED_COLUMNS if c not in runs.columns]
    if missing:
        raise AnalysisError(f"{source} is missing column(s) the factorial needs: {', '.join(missing)}")
    runs = plain_runs(runs)
    return runs[(runs["phase"] == "grid") & (runs["optimizer"] == "sgd") & (runs["feedback_scale"] == 1.0)]


def require_cells(runs: pd.DataFrame, rule: str, source: str = "RUNS") -> None:
    """AnalysisError naming the first factorial cell of `rule` with no runs in `runs` (factorial_runs)."""
    for cell in CELL_NAMES:
        method, step = cell_key(cell, rule)
        if not ((runs["method"] == method) & (runs["step_rule"] == step)).any():
            raise AnalysisError(f"no {cell_label(cell, rule)} runs (method {method}, step_rule {step}) in {source}: "
                                f"the primary test needs interventions.factorial to include {rule}")


def factorial_rules(runs: pd.DataFrame) -> list[str]:
    """Rules r with at least one crossed cell (bp@r or r@bp) in `runs` (factorial_runs)."""
    crossed = runs[runs["method"] != runs["step_rule"]]
    return sorted((set(crossed["method"]) | set(crossed["step_rule"])) - {REFERENCE})


def seed_values(runs: pd.DataFrame, rule: str, outcome: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (lr, seed), each cell's mean outcome where the seed's runs there are healthy (NaN otherwise),
    and each cell's count of diverged runs per lr; columns are the cell names of EFFECTS."""
    names = list(CELL_NAMES)
    cell_of = {cell_key(cell, rule): cell for cell in names}
    cell = pd.Series(list(zip(runs["method"], runs["step_rule"])), index=runs.index).map(cell_of)
    rows = runs.assign(cell=cell).dropna(subset=["cell"])
    value = rows[outcome].astype(float)
    rows = rows.assign(value=value.where(~rows["diverged"] & np.isfinite(value)))
    grouped = rows.groupby(["lr", "seed", "cell"])["value"]
    # a seed with any unhealthy repeat has no value: its mean would be over survivors only
    values = grouped.mean().where(grouped.count() == grouped.size()).unstack("cell").reindex(columns=names)
    diverged = rows.groupby(["lr", "cell"])["diverged"].sum().unstack("cell").reindex(columns=names)
    return values, diverged.fillna(0).astype(int)


def effect_estimate(wide: pd.DataFrame, effect: str, scale: float = 1.0) -> tuple[dict, int]:
    """t interval of one effect from the per-seed cell values of one lr (columns: cell names); and the
    number of seeds with a value in any cell the effect needs."""
    needed = EFFECTS[effect]
    present = wide.reindex(columns=list(needed)).to_numpy(dtype=float)
    complete = ~np.isnan(present).any(axis=1)
    diffs = present[complete] @ np.array(list(needed.values()), dtype=float) * scale
    return t_interval(diffs), int((~np.isnan(present)).any(axis=1).sum())


def decomposition_table(runs: pd.DataFrame, rules: list[str] | None = None) -> pd.DataFrame:
    """Every effect of every factorial rule (default: those with crossed cells in `runs`), dataset,
    architecture, grid lr and outcome, with Holm's p over the whole table (module docstring)."""
    runs = factorial_runs(runs)
    rules = factorial_rules(runs) if rules is None else rules
    rows = [row for _, part in runs.groupby(["dataset", "architecture"]) for rule in rules for outcome in OUTCOMES
            for row in effect_rows(part, rule, outcome)]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    tested = table["p"].notna()
    if tested.any():
        table.loc[tested, "p_holm"] = multipletests(table.loc[tested, "p"].to_numpy(), method="holm")[1]
    return table


def effect_rows(runs: pd.DataFrame, rule: str, outcome: str) -> list[dict]:
    """The rows of one (dataset, architecture)'s factorial runs, rule and outcome: every grid lr and
    effect (no Holm)."""
    unit, scale = OUTCOMES[outcome]
    values, diverged = seed_values(runs, rule, outcome)
    rows = []
    for lr, wide in values.groupby(level="lr"):
        for effect, needed in EFFECTS.items():
            stats_, n_seeds = effect_estimate(wide, effect, scale)
            counts = diverged.reindex(columns=list(needed)).loc[lr].fillna(0).astype(int)
            note = ", ".join(f"{cell_label(c, rule)}: {k} diverged" for c, k in counts.items() if k)
            rows.append({"dataset": runs["dataset"].iloc[0], "architecture": runs["architecture"].iloc[0],
                         "rule": rule, "lr": float(lr), "outcome": outcome,
                         "unit": unit, "effect": effect, "contrast": contrast_text(effect, rule),
                         "estimate": stats_["estimate"], "ci_low": stats_["ci_low"], "ci_high": stats_["ci_high"],
                         "p": stats_["p_value"], "p_holm": np.nan, "n": stats_["n"], "n_seeds": n_seeds,
                         "diverged": int(counts.sum()), "note": note})
    return rows


def contrast_text(effect: str, rule: str) -> str:
    terms = " ".join(f"{'+' if coef > 0 else '-'} {cell_label(c, rule)}" for c, coef in EFFECTS[effect].items())
    return terms.removeprefix("+ ")
