"""Time to target (figure 8): Kaplan-Meier curves of the examples each method needs to reach the
target loss, runs that never reach it censored.

``km`` is the analysis's km table (soap.analysis.KM_COLUMNS): dataset, method, examples, survival and,
where estimated, ci_low and ci_high.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from soap.plots.facets import dataset_panels
from soap.plots.panels import band, legend_below
from soap.plots.style import EXAMPLES_FORMATTER, EXAMPLES_LABEL, dataset_label, method_color, method_linestyle, \
    order_methods, styled


@styled
def plot_km(km: pd.DataFrame | None, targets: Mapping[str, float] | None = None,
            phases: Mapping[str, str] | None = None):
    """Figure 8: Kaplan-Meier curves of examples to the target loss, with 95% bands.

    ``phases[dataset]`` names the runs the curves come from ("tuned" or "grid").
    """
    targets, phases = targets or {}, phases or {}
    fig, axes, panels = dataset_panels(km, "no time-to-target data", "examples", "survival")
    for ax, dataset, rows in panels:
        for method in order_methods(rows["method"].unique()):
            curve = rows[rows["method"] == method].rename(columns={"survival": "mean"})
            if "ci_low" not in curve:
                curve = curve.assign(ci_low=curve["mean"], ci_high=curve["mean"])
            band(ax, curve, "examples", method_color(method), method, step=True, alpha=0.12,
                 ls=method_linestyle(method))
        title = dataset_label(dataset)
        if dataset in targets and pd.notna(targets[dataset]):
            title += f", target loss {targets[dataset]:.3g}"
        if phases.get(dataset):
            title += f"\n{phases[dataset]} runs"
        ax.set(ylim=(-0.02, 1.02), xlabel=EXAMPLES_LABEL, ylabel="fraction of runs\nnot yet at target",
               title=title)
        ax.xaxis.set_major_formatter(EXAMPLES_FORMATTER)
    legend_below(fig, axes)
    return fig, axes
