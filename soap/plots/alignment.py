"""Alignment (figure 9): per layer, how close each method's feedback matrix B is to W, and how close
its error signal is to bp's, over training.

``curves`` is the curves table of the tuned runs joined to the runs table (dataset, method, seed),
with ``examples`` and the logged ``angle_l<k>`` and ``cos_l<k>`` columns.
"""

from __future__ import annotations

import pandas as pd

from soap.analysis.descriptive import mean_ci
from soap.plots.facets import dataset_facets, dataset_rows, datasets_of
from soap.plots.panels import band, legend_below, no_data
from soap.plots.style import EXAMPLES_FORMATTER, EXAMPLES_LABEL, dataset_label, method_color, method_linestyle, \
    order_methods, styled
from soap.rules import REFERENCE

# (column prefix, axis label): one row of panels each, per dataset
QUANTITIES = (("angle", "angle(B, W) (degrees)"), ("cos", f"cosine of error signal\nwith {REFERENCE}'s"))


def layer_columns(curves: pd.DataFrame, prefix: str) -> list[str]:
    """The columns ``<prefix>_l<k>`` of the table, by layer k."""
    columns = [c for c in curves.columns if c.startswith(f"{prefix}_l") and c[len(prefix) + 2:].isdigit()]
    return sorted(columns, key=lambda c: int(c[len(prefix) + 2:]))


@styled
def plot_alignment(curves: pd.DataFrame | None):
    """Figure 9: per layer and method, the angle between B and W and the error-signal cosine with BP.

    Rows are (dataset, quantity) pairs and columns are layers; the cosine exists only for layers whose
    error signal feeds a hidden layer.
    """
    layer_cols = {p: ([] if curves is None else layer_columns(curves, p)) for p, _ in QUANTITIES}
    ncols = max(1, *(len(c) for c in layer_cols.values()))
    fig, axes, datasets = dataset_facets(datasets_of(curves), columns=ncols, rows_per_dataset=len(QUANTITIES),
                                         panel=(4.6, 3.3), sharex=True)
    for d, dataset in enumerate(datasets):
        rows = dataset_rows(curves, dataset, "examples")
        for r, (prefix, ylabel) in enumerate(QUANTITIES):
            row = len(QUANTITIES) * d + r
            for c, ax in enumerate(axes[row]):
                if c >= len(layer_cols[prefix]):
                    no_data(ax, f"no {prefix} logged\nfor this layer") if c == 0 else ax.set_axis_off()
                    continue
                column = layer_cols[prefix][c]
                _alignment_panel(ax, rows, column)
                # Common scales make layers comparable: angles span 0-90 degrees, cosines reach 1.
                ax.set_ylim(*((0, 92) if prefix == "angle" else (min(0, ax.get_ylim()[0]), 1.03)))
                ax.set_title(f"{dataset_label(dataset)}, layer {column.rsplit('_l', 1)[1]}", fontsize=10.5)
                if c == 0:
                    ax.set_ylabel(ylabel)
                if row == len(axes) - 1:
                    ax.set_xlabel(EXAMPLES_LABEL)
    legend_below(fig, axes)
    return fig, axes


def _alignment_panel(ax, curves: pd.DataFrame | None, column: str) -> None:
    rows = None if curves is None else curves.dropna(subset=[column])
    if rows is None or rows.empty:
        no_data(ax, f"{column} not logged")
        return
    for method in order_methods(rows["method"].unique()):
        summary = mean_ci(rows[rows["method"] == method], ["examples"], column)
        band(ax, summary, "examples", method_color(method), method, ls=method_linestyle(method))
    ax.tick_params(labelbottom=True)
    ax.xaxis.set_major_formatter(EXAMPLES_FORMATTER)
