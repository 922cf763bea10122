"""The learning-rate response (figures 3, 4 and 12): each method's final outcome, and how often it
diverged, across the grid of learning rates, nominal and effective.

``runs`` is the runs table's grid phase (soap.tables.RUNS_COLUMNS plus ``effective_lr``). Bands are
95% t-intervals of the mean over seeds (soap.analysis.descriptive.mean_ci).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.transforms import blended_transform_factory
from scipy import stats

from soap.analysis.descriptive import mean_ci
from soap.plots.facets import dataset_panels
from soap.plots.panels import band, clip_log_bands, legend_below
from soap.plots.style import LOSS_LABEL, dataset_label, method_color, method_linestyle, order_methods, styled


@styled
def plot_lr_response(runs: pd.DataFrame | None, tuned_lr: Mapping[str, Mapping[str, float]] | None = None,
                     fixed_lr: Mapping[str, float] | None = None, outcome: str = "test_loss"):
    """Figure 3: final outcome vs nominal learning rate on the grid runs, tuned optima marked.

    Diverged runs have no final loss; where any seed diverged, an x at the top marks the lr.
    """
    tuned_lr, fixed_lr = tuned_lr or {}, fixed_lr or {}
    fig, axes, panels = dataset_panels(runs, "no grid runs", "lr", outcome)
    for ax, dataset, grid in panels:
        top = blended_transform_factory(ax.transData, ax.transAxes)
        lowest = math.inf
        for method in order_methods(grid["method"].unique()):
            rows = grid[grid["method"] == method]
            color = method_color(method)
            summary = mean_ci(rows, ["lr"], outcome)
            if not summary.empty:
                band(ax, summary, "lr", color, method, marker="o", ms=4, ls=method_linestyle(method))
                lowest = min(lowest, summary["mean"].min())
            diverged = rows.groupby("lr")["diverged"].any()
            diverged = diverged[diverged].index
            ax.plot(diverged, np.full(len(diverged), 0.98), ls="", marker="x", color=color, ms=6,
                    transform=top, label="_diverged")
            if method in tuned_lr.get(dataset, {}):
                ax.plot([tuned_lr[dataset][method]], [0.03], marker="^", ms=10, color=color,
                        markeredgecolor="white", transform=top, clip_on=False, label="_tuned")
        if dataset in fixed_lr:
            ax.axvline(fixed_lr[dataset], color="#777777", ls="--", lw=1, label="shared lr")
        ax.plot([], [], ls="", marker="^", color="#555555", ms=9, label="tuned lr (per method)")
        ax.plot([], [], ls="", marker="x", color="#555555", label="some seeds diverged")
        _response_axes(ax, "nominal learning rate (log scale)", outcome, dataset, lowest)
    legend_below(fig, axes)
    return fig, axes


@styled
def plot_effective_lr_response(runs: pd.DataFrame | None, outcome: str = "test_loss"):
    """Figure 4: the grid's outcome against effective learning rate (lr * feedback_gain).

    Points are runs; lines join, per method and nominal lr, the geometric mean effective lr with the
    mean outcome and its 95% CI. If the methods' differences are learning rate, the lines collapse.
    """
    fig, axes, panels = dataset_panels(
        runs, "no grid runs with an effective learning rate", "effective_lr", outcome,
        select=lambda rows: rows[np.isfinite(rows["effective_lr"]) & (rows["effective_lr"] > 0)])
    for ax, dataset, grid in panels:
        lowest = grid[outcome].min()
        for method in order_methods(grid["method"].unique()):
            rows = grid[grid["method"] == method]
            color = method_color(method)
            ax.scatter(rows["effective_lr"], rows[outcome], s=9, color=color, alpha=0.3, lw=0,
                       label="_runs")
            summary = mean_ci(rows, ["lr"], outcome)
            x = rows.groupby("lr")["effective_lr"].apply(lambda v: float(stats.gmean(v)))
            summary = summary.assign(effective_lr=summary["lr"].map(x))
            if not summary.empty:
                band(ax, summary, "effective_lr", color, method, marker="o", ms=4, ls=method_linestyle(method))
        _response_axes(ax, "effective lr = lr × feedback gain (log scale)", outcome, dataset, lowest)
    legend_below(fig, axes)
    return fig, axes


def _response_axes(ax, xlabel: str, outcome: str, dataset: str, lowest: float) -> None:
    """Both axes logarithmic, the final outcome against an lr; the lower limit near the lowest mean."""
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=f"final {outcome.replace('_', ' ')}\n{LOSS_LABEL}",
           title=dataset_label(dataset))
    clip_log_bands(ax, lowest)


@styled
def plot_divergence(cells: pd.DataFrame | None):
    """Figure 12: the fraction of runs that diverged per method and grid lr, with Wilson 95% intervals.

    ``cells`` has columns dataset, method, lr, rate, ci_low, ci_high (summary.json's divergence cells).
    """
    fig, axes, panels = dataset_panels(cells, "no grid runs", "rate")
    for ax, dataset, rows in panels:
        for method in order_methods(rows["method"].unique()):
            m = rows[rows["method"] == method].sort_values("lr")
            ax.errorbar(m["lr"], m["rate"], yerr=[m["rate"] - m["ci_low"], m["ci_high"] - m["rate"]], fmt="o-",
                        ms=4, lw=1.4, capsize=2, color=method_color(method), label=method)
        ax.set(xscale="log", ylim=(-0.03, 1.03), xlabel="nominal learning rate (log scale)",
               ylabel="fraction of runs diverged", title=dataset_label(dataset))
    legend_below(fig, axes)
    return fig, axes
