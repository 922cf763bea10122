"""The study's figures: one style, one colour per method, one module per question.

Every plot function takes tables or estimates (already selected by the caller) and returns
``(fig, axes)``; none saves anything (nor names the network: the caller does, title_network): the caller does, with :func:`save_figure`. Datasets are facets
(soap.plots.facets), so every figure is one file whatever the number of datasets. A missing or empty
input draws a "no data" panel that says what is missing instead of raising, so a partial study still
gets a complete report.

- curves: training curves at one shared lr (figures 1, 2)
- lr_response: outcome and divergence across the lr grid (3, 4, 12)
- diagram: the causal diagram (5)
- estimates: contrasts against the reference: forest, mediation, grid contrasts, rule comparison (6, 7, 11, 14)
- survival: Kaplan-Meier time to target (8)
- alignment: B against W, error signals against bp's (9)
- tuning: Optuna's search and the tuning budget (10, 13)
- verdict: the verdict stage's figures: factorial, decomposition, primary test, descriptive rows (issue 19)
"""

from soap.plots.alignment import plot_alignment
from soap.plots.curves import plot_bp_vs_fa, plot_fixed_lr_curves
from soap.plots.diagram import plot_causal_diagram
from soap.plots.estimates import plot_forest, plot_grid_contrasts, plot_mediation, plot_rule_comparison
from soap.plots.facets import dataset_facets, dataset_rows, datasets_of
from soap.plots.lr_response import plot_divergence, plot_effective_lr_response, plot_lr_response
from soap.plots.panels import no_data
from soap.plots.saving import save_figure
from soap.plots.style import dataset_label, method_color, method_linestyle, order_methods, styled, title_network
from soap.plots.survival import plot_km
from soap.plots.tuning import plot_tuning, plot_tuning_budget
from soap.plots.verdict import (plot_decomposition, plot_descriptive, plot_factorial_cells, plot_optimum_shift,
                                plot_primary, verdict_figures, write_figures)

__all__ = ["dataset_facets", "dataset_label", "dataset_rows", "datasets_of", "method_color", "method_linestyle",
           "no_data", "order_methods", "plot_alignment", "plot_bp_vs_fa", "plot_causal_diagram", "plot_decomposition",
           "plot_descriptive", "plot_divergence", "plot_effective_lr_response", "plot_factorial_cells",
           "plot_fixed_lr_curves", "plot_forest", "plot_grid_contrasts", "plot_km", "plot_lr_response",
           "plot_mediation", "plot_optimum_shift", "plot_primary", "plot_rule_comparison", "plot_tuning",
           "plot_tuning_budget", "save_figure", "styled", "title_network", "verdict_figures", "write_figures"]
