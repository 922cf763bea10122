"""Tuning (figures 10 and 13): how Optuna searched each method's learning rate, and what a smaller
search would have found.

``trials`` is every study's ``trials_dataframe()`` concatenated, with ``dataset``, ``method`` and
``repeat`` columns added; ``best`` has one row per study (dataset, method, repeat, lr); the budget
curves come from soap.analysis.tuning_budget.
"""

from __future__ import annotations

import matplotlib.ticker
import numpy as np
import pandas as pd

from soap.plots.facets import dataset_facets, dataset_panels, dataset_rows, datasets_of
from soap.plots.panels import legend_below, no_data
from soap.plots.style import LOSS_LABEL, dataset_label, method_color, order_methods, styled


@styled
def plot_tuning(trials: pd.DataFrame | None, best: pd.DataFrame | None = None):
    """Figure 10: Optuna tuning, per dataset: best objective so far vs trial, and lr vs objective."""
    fig, axes, datasets = dataset_facets(datasets_of(trials), columns=2, panel=(6.0, 4.2))
    for (ax_hist, ax_lr), dataset in zip(axes, datasets):
        rows = dataset_rows(trials, dataset, "number", "value", "params_lr")
        if rows is not None:
            rows = rows[np.isfinite(rows["value"].astype(float))]
            if "state" in rows:
                rows = rows[rows["state"].astype(str).str.upper().str.endswith("COMPLETE")]
        if rows is None or rows.empty:
            no_data(ax_hist, "no tuning trials")
            no_data(ax_lr, "no tuning trials")
            continue
        _tuning_panels(ax_hist, ax_lr, rows, None if best is None or best.empty
                       else best[best["dataset"] == dataset])
        ax_hist.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax_hist.set(xlabel="trial number", ylabel=f"best validation loss so far\n{LOSS_LABEL}",
                    yscale="log", title=f"{dataset_label(dataset)}: optimisation history")
        ax_lr.set(xscale="log", yscale="log", xlabel="learning rate (log scale)",
                  ylabel=f"validation loss\n{LOSS_LABEL}", title=f"{dataset_label(dataset)}: lr vs objective")
    legend_below(fig, axes)
    return fig, axes


def _tuning_panels(ax_hist, ax_lr, trials: pd.DataFrame, best: pd.DataFrame | None) -> None:
    for method in order_methods(trials["method"].unique()):
        color = method_color(method)
        rows = trials[trials["method"] == method]
        for i, (_, study) in enumerate(rows.groupby("repeat")):
            study = study.sort_values("number")
            ax_hist.plot(study["number"], study["value"].cummin(), color=color, lw=1.5, alpha=0.85,
                         drawstyle="steps-post", label=method if i == 0 else "_repeat")
        ax_lr.scatter(rows["params_lr"], rows["value"], s=14, color=color, alpha=0.6, lw=0, label=method)
        if best is not None and "lr" in best:
            for lr in best.loc[best["method"] == method, "lr"].dropna():
                ax_lr.axvline(lr, color=color, ls=":", lw=1.2, label="_best")


@styled
def plot_tuning_budget(curves: pd.DataFrame | None, which: str = ""):
    """Figure 13: expected best validation loss after k tuning trials (Dodge et al. 2019), per method.

    ``curves`` has columns dataset, method, budget, expected_best (soap.analysis.tuning_budget).
    """
    fig, axes, panels = dataset_panels(curves, "no i.i.d. tuning trials", "budget", "expected_best")
    for ax, dataset, rows in panels:
        for method in order_methods(rows["method"].unique()):
            m = rows[rows["method"] == method].sort_values("budget")
            ax.plot(m["budget"], m["expected_best"], "o-", ms=3.5, lw=1.6, color=method_color(method), label=method)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(yscale="log", xlabel="tuning budget k (trials)",
               ylabel=f"expected best validation loss\n{LOSS_LABEL}",
               title=f"{dataset_label(dataset)}{': ' + which if which else ''}")
    legend_below(fig, axes)
    return fig, axes
