"""The analysis's contrasts against the reference rule (figures 6, 7, 11 and 14): each method minus bp,
with its interval, per estimand, per grid lr, split by mediation, and side by side for every rule.

``estimates`` is the analysis's estimates table (soap.analysis.ESTIMATES_COLUMNS, plus the boolean
``slopes_differ`` where the analysis tested parallel curves); ``mediation`` is summary.json's mediation
blocks as dicts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.transforms import blended_transform_factory

from soap.plots.facets import dataset_facets, dataset_grid, dataset_panels, has_columns
from soap.plots.panels import finite, legend_below, no_data, number, xerr
from soap.plots.style import ESTIMAND_LABELS, ESTIMAND_MARKERS, dataset_label, method_color, order_methods, styled
from soap.analysis.rule_comparison import ESTIMANDS as RULE_COMPARISON_ESTIMANDS
from soap.rules import REFERENCE

FOREST_ESTIMANDS = ("fixed_lr", "small_lr", "tuned", "effective_lr")


# --- 6: forest ----------------------------------------------------------------------------------------

@styled
def plot_forest(estimates: pd.DataFrame | None, estimands: tuple[str, ...] = FOREST_ESTIMANDS,
                reference: str = REFERENCE, outcome: str = "test_loss"):
    """Figure 6: forest plot of each method vs ``reference``, one panel per (dataset, estimand).

    Each estimand has its own x axis: one large contrast (a method diverging at the shared lr) must not
    squeeze the others into a dot at zero. Estimates are differences (method minus reference) in
    ``outcome``: left of zero is better than the reference. The Holm-adjusted p-value is printed beside
    each row.
    """
    rows = None
    if has_columns(estimates, "estimand", "reference", "estimate"):
        rows = estimates[estimates["estimand"].isin(estimands) & (estimates["reference"] == reference)]
    present = [e for e in estimands if rows is not None and (rows["estimand"] == e).any()] or ["(none)"]
    n_methods = 1 if rows is None or rows.empty else rows["method"].nunique()
    fig, axes, datasets, panels = dataset_grid(rows, "estimand", present,
                                               lambda _: f"no method-vs-{reference} estimates",
                                               panel=(3.9, 1.3 + 0.42 * max(n_methods, 3)))
    for ax, dataset, e, subset in panels:
        estimand = present[e]
        _forest_panel(ax, subset, estimand, show_labels=e == 0)
        title = ESTIMAND_LABELS.get(estimand, estimand)
        lr = subset["lr"].dropna() if "lr" in subset else pd.Series(dtype=float)
        if len(lr):
            title += f"\n(lr = {lr.iloc[0]:.3g})"
        ax.set_title(f"{dataset_label(dataset)}: {title}" if len(datasets) > 1 else title, fontsize=10.5)
        ax.set_xlabel(f"{outcome.replace('_', ' ')}, method - {reference}")
    return fig, axes


def _forest_panel(ax, rows: pd.DataFrame, estimand: str, show_labels: bool) -> None:
    methods = order_methods(rows["method"].unique())
    p_column = blended_transform_factory(ax.transAxes, ax.transData)
    for i, method in enumerate(methods):
        row = rows[rows["method"] == method].iloc[0]
        color = method_color(method)
        if finite(row["estimate"]):
            ax.errorbar(row["estimate"], -i, xerr=xerr(row["estimate"], row["ci_low"], row["ci_high"]),
                        fmt=ESTIMAND_MARKERS.get(estimand, "o"), color=color, ms=6, capsize=3, lw=1.6)
        else:
            ax.text(0.02, -i, "not estimated", transform=p_column, va="center", fontsize=8.5, color="#777777")
        if finite(row.get("p_holm")):
            ax.text(1.02, -i, f"p={row['p_holm']:.2g}", transform=p_column, va="center", fontsize=8,
                    color="#444444")
    ax.axvline(0, color="#777777", lw=1)
    ax.set_yticks([-i for i in range(len(methods))], methods if show_labels else [""] * len(methods))
    ax.set_ylim(-len(methods) + 0.4, 0.6)
    ax.grid(axis="y", visible=False)


# --- 7: mediation -------------------------------------------------------------------------------------

MEDIATION_PARTS = (("acme", "mediated (ACME)\nvia log feedback gain"), ("ade", "direct (ADE)"),
                   ("total", "total effect"))


@styled
def plot_mediation(mediation: Mapping[str, Mapping] | None, outcome: str = "test_loss",
                   skipped: Mapping[str, str] | None = None):
    """Figure 7: mediation of sign vs sign_scaled through log(feedback_gain), per dataset.

    ``mediation`` is {dataset: {"acme": {...}, "ade": {...}, "total": {...}, "prop": {...}, "exposure",
    "control"}} (summary.json's mediation blocks as dicts); ``skipped`` is {dataset: reason}, shown in
    that dataset's panel. Each effect is labelled with its SD, so the imprecision of the split shows.
    """
    mediation, skipped = mediation or {}, skipped or {}
    fig, axes, datasets = dataset_facets(dict.fromkeys([*mediation, *skipped]), panel=(5.6, 3.4))
    for ax, dataset in zip(axes[0], datasets):
        block = mediation.get(dataset)
        if not block or not any(part in block for part, _ in MEDIATION_PARTS):
            reason = skipped.get(dataset, "needs sign and sign_scaled runs")
            no_data(ax, f"{dataset_label(dataset)}: no mediation analysis\n({reason})")
            continue
        colors = (method_color("sign"), "#777777", "#222222")
        for i, ((part, label), color) in enumerate(zip(MEDIATION_PARTS, colors)):
            value = block.get(part) or {}
            est = value.get("estimate")
            if finite(est):
                ax.errorbar(est, -i, xerr=xerr(est, value.get("ci_low"), value.get("ci_high")),
                            fmt="o", color=color, capsize=3, ms=7, lw=1.8)
                if finite(value.get("sd")):
                    ax.annotate(f"SD {value['sd']:.2g}", (est, -i), xytext=(0, 7), textcoords="offset points",
                                ha="center", fontsize=8.5, color="#444444")
        ax.set_yticks([-i for i in range(len(MEDIATION_PARTS))], [lab for _, lab in MEDIATION_PARTS])
        ax.set_ylim(-len(MEDIATION_PARTS) + 0.4, 0.6)
        ax.axvline(0, color="#777777", lw=1)
        ax.grid(axis="y", visible=False)
        title = f"{dataset_label(dataset)}: {block.get('exposure', 'sign')} vs " \
                f"{block.get('control', 'sign_scaled')}"
        prop = block.get("prop") or {}
        if finite(prop.get("estimate")):
            title += f"\nproportion mediated {prop['estimate']:.2f}\n" \
                     f"(95% CI {number(prop.get('ci_low'))} to {number(prop.get('ci_high'))})"
        ax.set_title(title, fontsize=10.5)
        ax.set_xlabel(f"effect on {outcome.replace('_', ' ')} (nats)")
    return fig, axes


# --- 11: grid contrasts -------------------------------------------------------------------------------

@styled
def plot_grid_contrasts(estimates: pd.DataFrame | None, reference: str = REFERENCE, outcome: str = "test_loss",
                        tuned_lr: Mapping[str, Mapping[str, float]] | None = None):
    """Figure 11: method - reference at every grid learning rate, with paired t intervals.

    ``estimates`` holds the analysis's ``grid_lr`` rows. Below zero the method beats the reference at
    that lr: this is where an lr too small for bp lets sign's larger effective step win.
    """
    tuned_lr = tuned_lr or {}
    rows = None
    if has_columns(estimates, "estimand", "reference", "lr"):
        rows = estimates[(estimates["estimand"] == "grid_lr") & (estimates["reference"] == reference)]
    fig, axes, panels = dataset_panels(rows, "no grid contrasts", panel=(6.4, 4.2))
    for ax, dataset, subset in panels:
        methods = order_methods(subset["method"].unique())
        for i, method in enumerate(methods):
            m = subset[(subset["method"] == method) & np.isfinite(subset["estimate"].astype(float))].sort_values("lr")
            # Methods side by side at each lr, a few percent apart on the log axis, so bars do not overlap.
            x = m["lr"] * np.exp(0.06 * (i - (len(methods) - 1) / 2))
            ax.errorbar(x, m["estimate"], yerr=[m["estimate"] - m["ci_low"], m["ci_high"] - m["estimate"]],
                        fmt="o-", ms=4, lw=1.4, capsize=2, color=method_color(method), label=method)
        ax.axhline(0, color="#777777", lw=1)
        if reference in tuned_lr.get(dataset, {}):
            ax.axvline(tuned_lr[dataset][reference], color="#222222", ls=":", lw=1, label=f"{reference}'s tuned lr")
        ax.set_yscale("symlog", linthresh=0.05)
        ax.set(xscale="log", xlabel="nominal learning rate (log scale)",
               ylabel=f"{outcome.replace('_', ' ')}, method - {reference}\n(< 0: method better; symlog)",
               title=dataset_label(dataset))
    legend_below(fig, axes)
    return fig, axes


# --- 14: the rule comparison --------------------------------------------------------------------------

# (column, axis label, factor, unit of the level in the title): accuracy reads best in percentage points
RULE_COMPARISON_OUTCOMES = (
    ("test_loss", "test loss, method - {reference} (nats)\n< 0: better than {reference}", 1.0, " nats"),
    ("test_acc", "test accuracy, method - {reference} (points)\n> 0: better than {reference}", 100.0, "%"))
# An interval this many times wider than the panel's median one runs off the panel instead of setting
# its scale (one imprecise contrast would squeeze every other into a dot)
WIDE_INTERVAL = 4.0
FADED_ALPHA = 0.35  # a contrast whose slope test rejected parallel curves: the difference is an average


@styled
def plot_rule_comparison(estimates: pd.DataFrame | None, reference_values: Mapping | None = None,
                         reference: str = REFERENCE):
    """Figure 14: every rule minus the reference on test loss (left) and test accuracy (right), one row
    per dataset: filled squares with each rule at its own tuned lr (the `tuned` estimand's paired t
    interval), open diamonds at matched effective lr (`effective_lr`: the grid regression on the
    reference's and the rule's runs), faded where the estimates' boolean `slopes_differ` is True (the
    rule's curve is not parallel to the reference's; no such column: nothing faded).
    `reference_values`: {dataset: {outcome: the reference's mean at its tuned lr}}, printed in the panel
    titles so differences can be read as levels."""
    rows = None
    if has_columns(estimates, "estimand", "reference", "outcome", "estimate"):
        rows = estimates[estimates["estimand"].isin(RULE_COMPARISON_ESTIMANDS)
                         & (estimates["reference"] == reference)]
        if "slopes_differ" in rows:
            rows = rows.assign(slopes_differ=_boolean(rows["slopes_differ"]))
    n_methods = 1 if rows is None or rows.empty else rows["method"].nunique()
    fig, axes, _, panels = dataset_grid(
        rows, "outcome", [outcome for outcome, *_ in RULE_COMPARISON_OUTCOMES],
        lambda outcome: f"no {outcome.replace('_', ' ')} contrasts against {reference}",
        panel=(5.75, 1.6 + 0.36 * max(n_methods, 3)))
    for ax, dataset, c, subset in panels:
        outcome, xlabel, factor, unit = RULE_COMPARISON_OUTCOMES[c]
        _comparison_panel(ax, subset, factor, show_labels=c == 0)
        level = (reference_values or {}).get(dataset, {}).get(outcome)
        title = dataset_label(dataset)
        if finite(level):
            title += f" ({reference} at its tuned lr: {level * factor:.4g}{unit})"
        ax.set_title(title, fontsize=10.5)
        ax.set_xlabel(xlabel.format(reference=reference))
    for estimand in RULE_COMPARISON_ESTIMANDS:
        axes[0, 0].plot([], [], ls="", marker=ESTIMAND_MARKERS[estimand], color="#555555", ms=6,
                        mfc="white" if estimand == "effective_lr" else "#555555", label=ESTIMAND_LABELS[estimand])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    return fig, axes


def _boolean(column: pd.Series) -> pd.Series:
    """slopes_differ as bools, a missing value (no slope test for that contrast) as False."""
    present = column.dropna()
    if not present.map(lambda v: isinstance(v, (bool, np.bool_))).all():
        raise ValueError(f"estimates column slopes_differ must hold booleans, got {sorted(set(map(repr, present)))}")
    return column.fillna(False).astype(bool)


def _comparison_panel(ax, rows: pd.DataFrame, factor: float, show_labels: bool) -> None:
    methods = order_methods(rows["method"].unique())
    for k, estimand in enumerate(RULE_COMPARISON_ESTIMANDS):
        offset = 0.16 * (1 - 2 * k)  # the two estimands of a rule side by side on its row
        for i, method in enumerate(methods):
            match = rows[(rows["method"] == method) & (rows["estimand"] == estimand)]
            if match.empty or not finite(match["estimate"].iloc[0]):
                continue
            est, low, high = (match[key].iloc[0] * factor for key in ("estimate", "ci_low", "ci_high"))
            color = method_color(method)
            faded = "slopes_differ" in match and bool(match["slopes_differ"].iloc[0])
            ax.errorbar(est, -i + offset, xerr=xerr(est, low, high), fmt=ESTIMAND_MARKERS[estimand], color=color,
                        mfc="white" if estimand == "effective_lr" else color, ms=5.5, capsize=2.5, lw=1.4,
                        alpha=FADED_ALPHA if faded else 1.0)
    ax.axvline(0, color="#777777", lw=1)
    finite_rows = rows[np.isfinite(rows["estimate"].astype(float))]
    width = (finite_rows["ci_high"] - finite_rows["ci_low"]).astype(float)
    narrow = finite_rows[width <= WIDE_INTERVAL * width.median()]
    low = min(0.0, finite_rows["estimate"].min(), narrow["ci_low"].min()) * factor
    high = max(0.0, finite_rows["estimate"].max(), narrow["ci_high"].max()) * factor
    if np.isfinite([low, high]).all() and high > low:
        ax.set_xlim(low - 0.06 * (high - low), high + 0.06 * (high - low))
    ax.set_yticks([-i for i in range(len(methods))], methods if show_labels else [""] * len(methods))
    for label, method in zip(ax.get_yticklabels(), methods):
        label.set_color(method_color(method))
    ax.set_ylim(-len(methods) + 0.4, 0.6)
    ax.grid(axis="y", visible=False)
