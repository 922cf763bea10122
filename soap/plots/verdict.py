"""The verdict stage's figures (issue 19): the direction x step-size factorial, its decomposition, the
primary test and the descriptive rows, each drawn from the tables of soap.analysis.verdict.

``runs`` is the main and the intervention runs tables concatenated (the factorial's cells are grid rows
with a ``step_rule`` column); ``tables`` is the verdict stage's result (soap.analysis.verdict.Verdict, or
anything with its ``verdict``, ``descriptive`` and ``decomposition`` tables). Each plot function returns
``(fig, axes)`` (a row of panels), with a panel saying what is missing where its arm was not run; :func:`write_figures`
saves them. The figures draw what the tables hold: no verdict is written on them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from soap.analysis.decomposition import factorial_rules, factorial_runs
from soap.analysis.paired import t_interval
from soap.analysis.verdict import optimum_shift_points, plain_runs
from soap.factorial import CELL_NAMES, EFFECTS, cell_key, cell_label
from soap.networks import network_title
from soap.plots.saving import save_figure
from soap.plots.style import title_network
from soap.rules import REFERENCE

# file stem -> caption (also the Snakemake report's, workflow/report/<stem>.rst; tests check they agree)
FIGURES = {
    "verdict_factorial_cells": "The direction x step-size factorial, one panel per dataset and factorial rule r: "
                               "final test loss against nominal lr of its four cells, bp, r, bp@r (bp's "
                               "direction with r's per-layer step sizes) and r@bp (r's direction with bp's "
                               "steps), paired by seed; mean and 95% t interval over the seeds whose run did "
                               "not diverge. Where two cells share their step sizes (r and bp@r; bp and r@bp), "
                               "the gap between them is the direction effect at those steps.",
    "verdict_decomposition": "The decomposition table's effects on test loss against nominal lr, one panel per "
                             "dataset and factorial rule: total (r - bp), step (bp@r - bp), direction at r's "
                             "steps (r - bp@r), direction at bp's steps (r@bp - bp) and their interaction, each "
                             "with its paired t 95% interval over seeds (tables/decomposition.csv; Holm-adjusted "
                             "p-values there). Below zero the effect lowers the loss.",
    "verdict_primary": "The verdict table's non-inferiority rows, one panel per outcome: each row's estimate "
                       "with the interval between its two one-sided 95% bounds (bp@r - r and bp - r@bp in the "
                       "outcome's unit, as the table gives them), against the pre-declared margin on that "
                       "scale (dashed): a loss row is non-inferior when its upper bound lies below the "
                       "margin, an accuracy row when its lower bound lies above it. The primary row (filled) is "
                       "tested at 5% on its own; the "
                       "secondary rows (open) are judged on Holm-adjusted p-values.",
    "verdict_descriptive": "The descriptive rows, one panel per row kind, each in its own unit: alpha_did (a "
                           "rule's feedback-scale effect minus bp's own at the same nominal lr), optimizer (sign "
                           "- sign_scaled under each optimizer where the two are not one another) and "
                           "optimum_shift (the slope of log(lr*_bp / lr*) on log gain, its interval widened for "
                           "the grid's discretisation); estimate and 95% interval. No prediction is derived for "
                           "these rows, so no reference line is drawn.",
    "verdict_optimum_shift": "The optimum_shift row's points: log(lr*_bp / lr*) against log feedback gain per "
                             "rule variant (method, feedback scale), lr* from the seed-averaged validation loss "
                             "on the grid, with the least-squares line whose slope the descriptive table gives.",
}
FIGSIZE = (6.4, 4.2)
DPI = 120
# the decomposition's effects as the figure's legend writes them
EFFECT_LABELS = {"total": "total r - bp", "step": "step bp@r - bp", "direction_at_r_steps": "direction at r's steps",
                 "direction_at_bp_steps": "direction at bp's steps", "interaction": "interaction"}
CELL_MARKERS = dict(zip(CELL_NAMES, "osD^"))


def _figure(draw, missing: str, n_panels: int = 1) -> tuple:
    """n_panels side by side drawn by draw(axes), or one panel saying `missing` where draw() drew nothing."""
    n = max(n_panels, 1)
    fig, axes = plt.subplots(1, n, figsize=(FIGSIZE[0] * (1 + 0.6 * (n - 1)), FIGSIZE[1]), squeeze=False)
    if not n_panels or not draw(axes[0]):
        for ax in axes[0]:
            ax.axis("off")
        axes[0][0].text(0.5, 0.5, missing, ha="center", va="center")
    fig.tight_layout()
    return fig, axes[0]


def _panels(table: pd.DataFrame | None, keys: list[str]) -> list[tuple]:
    """The (key values, rows) groups of a table in their order of appearance; none for a missing table."""
    if table is None or table.empty:
        return []
    return list(table.groupby(keys, sort=False))


def _seed_means(runs: pd.DataFrame, outcome: str) -> pd.Series:
    """Per (lr, seed), the mean outcome of healthy runs."""
    healthy = runs[~runs["diverged"] & np.isfinite(runs[outcome].astype(float))]
    return healthy.groupby(["lr", "seed"])[outcome].mean()


def plot_factorial_cells(runs: pd.DataFrame, outcome: str = "test_loss"):
    """The four cells' outcome against lr, one panel per (dataset, factorial rule)."""
    cells = factorial_runs(runs) if len(runs) else runs
    panels = [(d, r) for d, part in cells.groupby("dataset", sort=False) for r in factorial_rules(part)] \
        if len(cells) else []

    def draw(axes):
        for ax, (dataset, rule) in zip(axes, panels):
            part = cells[cells["dataset"] == dataset]
            for cell in CELL_NAMES:
                method, step = cell_key(cell, rule)
                per_seed = _seed_means(part[(part["method"] == method) & (part["step_rule"] == step)], outcome)
                stats = [(lr, t_interval(v.to_numpy())) for lr, v in per_seed.groupby(level="lr")]
                if not stats:
                    continue
                lrs = np.array([lr for lr, _ in stats])
                mean = np.array([s["estimate"] for _, s in stats])
                low = np.array([s["ci_low"] for _, s in stats])
                high = np.array([s["ci_high"] for _, s in stats])
                ax.errorbar(lrs, mean, yerr=[np.nan_to_num(mean - low), np.nan_to_num(high - mean)],
                            marker=CELL_MARKERS[cell], capsize=2, lw=1, label=cell_label(cell, rule))
            ax.set(xscale="log", xlabel="nominal lr", ylabel=outcome.replace("_", " "), title=f"{dataset}: {rule}")
            ax.legend(fontsize=7)
        return True

    return _figure(draw, "no factorial in this study (interventions.factorial)", len(panels))


def plot_decomposition(decomposition: pd.DataFrame | None, outcome: str = "test_loss"):
    """The decomposition's effects with their intervals against lr, one panel per (dataset, rule)."""
    rows = decomposition[decomposition["outcome"] == outcome] if decomposition is not None else None
    panels = _panels(rows, ["dataset", "rule"])

    def draw(axes):
        for ax, ((dataset, rule), part) in zip(axes, panels):
            for i, effect in enumerate(EFFECTS):
                line = part[part["effect"] == effect].sort_values("lr")
                if line.empty:
                    continue
                # effects side by side at each lr, so their intervals do not hide one another
                x = line["lr"].to_numpy(dtype=float) * np.exp(0.06 * (i - 2))
                est = line["estimate"].to_numpy(dtype=float)
                err = [np.nan_to_num(est - line["ci_low"].to_numpy(dtype=float)),
                       np.nan_to_num(line["ci_high"].to_numpy(dtype=float) - est)]
                ax.errorbar(x, est, yerr=err, marker="o", ms=3, capsize=2, lw=1, label=EFFECT_LABELS[effect])
            ax.axhline(0, color="k", lw=0.8)
            unit = part["unit"].iloc[0] if "unit" in part else ""
            ax.set(xscale="log", xlabel="nominal lr", ylabel=f"effect on {outcome.replace('_', ' ')} ({unit})",
                   title=f"{dataset}: {rule}")
            ax.legend(fontsize=6)
        return True

    return _figure(draw, "no decomposition table (no factorial in this study)", len(panels))


def plot_primary(verdict: pd.DataFrame | None):
    """The verdict rows' estimates and one-sided bounds against their margin, one panel per outcome."""
    panels = _panels(verdict, ["outcome"])

    def draw(axes):
        for ax, ((outcome,), part) in zip(axes, panels):
            part = part.sort_values("primary", ascending=False, kind="stable")
            y = np.arange(len(part))[::-1]
            for yi, row in zip(y, part.itertuples()):
                primary = bool(row.primary)
                ax.errorbar([row.estimate], [yi], xerr=[[row.estimate - row.ci_low], [row.ci_high - row.estimate]],
                            fmt="o", capsize=3, color="C0" if primary else "C7", mfc="C0" if primary else "white")
            nulls = part["null"].dropna().unique()
            for value in nulls:
                ax.axvline(value, color="C3", ls="--", lw=1, label="margin")
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(y, [f"{'primary' if r.primary else 'secondary'}: {r.dataset} {r.contrast}"
                              for r in part.itertuples()], fontsize=7)
            unit = part["unit"].iloc[0] if "unit" in part else ""
            ax.set(xlabel=f"{outcome.replace('_', ' ')} difference ({unit})")
        return True

    return _figure(draw, "no verdict table (no factorial in this study)", len(panels))


def plot_descriptive(descriptive: pd.DataFrame | None):
    """The descriptive rows' estimates and 95% intervals, one panel per row kind; no reference line."""
    panels = _panels(descriptive, ["row"])

    def draw(axes):
        for ax, ((kind,), part) in zip(axes, panels):
            y = np.arange(len(part))[::-1]
            err = [part["estimate"] - part["ci_low"], part["ci_high"] - part["estimate"]]
            ax.errorbar(part["estimate"], y, xerr=err, fmt="o", capsize=3, color="C2")
            ax.set_yticks(y, [f"{r.dataset}: {r.contrast}" for r in part.itertuples()], fontsize=7)
            unit = part["unit"].iloc[0] if "unit" in part else ""
            ax.set(xlabel=f"{kind} ({unit})", title=f"descriptive: {kind}")
        return True

    return _figure(draw, "no descriptive rows (their arms were not run)", len(panels))


def plot_optimum_shift(runs: pd.DataFrame):
    """The optimum_shift row's points, log(lr*_bp / lr*) against log gain per rule variant, and its line."""
    grid = plain_runs(runs) if len(runs) else runs
    grid = grid[(grid["phase"] == "grid") & ~grid["diverged"] & (grid["step_rule"] == grid["method"])
                & (grid["optimizer"] == "sgd")] if len(grid) else grid

    def draw(axes):
        ax, drawn = axes[0], False
        for dataset, part in grid.groupby("dataset"):
            curves = part.groupby(["method", "feedback_scale", "lr"])["val_loss"].mean()
            gains = part.groupby(["method", "feedback_scale", "lr"])["feedback_gain"].median()
            x, y = optimum_shift_points(curves, gains)
            if len(x) < 2:
                continue
            ax.scatter(x, y, label=dataset)
            slope, intercept = np.polyfit(x, y, 1)
            line = np.linspace(min(x.min(), 0), x.max(), 2)
            ax.plot(line, intercept + slope * line, lw=1, label=f"{dataset}: least squares, slope {slope:.2f}")
            drawn = True
        if drawn:
            ax.set(xlabel="log feedback gain", ylabel=f"log(lr*_{REFERENCE} / lr*)")
            ax.legend(fontsize=7)
        return drawn

    return _figure(draw, "too few rule variants with an interior optimum on the grid", 1)


def verdict_figures(runs: pd.DataFrame, tables) -> dict[str, tuple]:
    """Every figure of FIGURES as {stem: (fig, axes)}, each titled with the network of `runs`; tables:
    the verdict stage's Verdict."""
    made = {"verdict_factorial_cells": plot_factorial_cells(runs),
            "verdict_decomposition": plot_decomposition(tables.decomposition),
            "verdict_primary": plot_primary(tables.verdict),
            "verdict_descriptive": plot_descriptive(tables.descriptive),
            "verdict_optimum_shift": plot_optimum_shift(runs)}
    assert list(made) == list(FIGURES), "FIGURES and verdict_figures disagree"
    network = network_title(runs)
    for fig, _axes in made.values():
        title_network(fig, network)
    return made


def write_figures(runs: pd.DataFrame, tables, out_dir) -> list[Path]:
    """One PNG per figure of FIGURES in out_dir, written atomically; returns the paths."""
    paths = []
    for stem, (fig, _ax) in verdict_figures(runs, tables).items():
        paths += save_figure(fig, Path(out_dir) / stem, dpi=DPI, formats=("png",))
        plt.close(fig)
    return paths
