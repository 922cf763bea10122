"""Training curves (figures 1 and 2): how fast each method's training loss falls at one shared lr.

``curves`` is the long curves table joined to the runs table on ``run_id`` (so it carries ``dataset``,
``method``, ``seed``, ``lr``, ``diverged``) with ``examples`` and the logged columns
(``train_loss_ema``, ...). Bands are 95% t-intervals of the mean over seeds
(soap.analysis.descriptive.mean_ci), the same in every figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from soap.analysis.descriptive import mean_ci
from soap.plots.facets import dataset_panels
from soap.plots.panels import band, clip_log_bands, finite, legend_below, number
from soap.plots.style import (EXAMPLES_FORMATTER, EXAMPLES_LABEL, LOSS_LABEL, dataset_label, method_color,
                              method_linestyle, order_methods, styled)
from soap.rules import REFERENCE

# the rule figure 1 sets against the reference: the write-up's feedback alignment
CHALLENGER = "fa"


@styled
def plot_bp_vs_fa(curves: pd.DataFrame | None, targets: Mapping[str, float] | None = None,
                  ratios: Mapping[str, Mapping] | None = None, lrs: Mapping[str, float] | None = None,
                  value: str = "train_loss_ema"):
    """Figure 1: bp and fa at bp's tuned learning rate, with the target loss and the time-to-target ratio.

    ``targets``, ``ratios`` and ``lrs`` are keyed by dataset; ``ratios[dataset]`` holds the analysis's
    ``estimate, ci_low, ci_high`` for fa's examples-to-target over bp's.
    """
    targets, ratios, lrs = targets or {}, ratios or {}, lrs or {}
    fig, axes, panels = dataset_panels(
        curves, f"no {REFERENCE} / {CHALLENGER} training curves at the shared learning rate\n"
                "(no fixed_lr in summary.json, or no grid runs at it)", value,
        select=lambda rows: rows[rows["method"].isin([REFERENCE, CHALLENGER])].dropna(subset=[value]))
    for ax, dataset, rows in panels:
        target = targets.get(dataset)
        crossings = _curve_panel(ax, rows, target, value)
        title = dataset_label(dataset)
        if dataset in lrs:
            title += f", lr = {lrs[dataset]:.3g}"
        ax.set_title(title)
        _annotate_time_to_target(ax, target, crossings, ratios.get(dataset))
    legend_below(fig, axes)
    return fig, axes


@styled
def plot_fixed_lr_curves(curves: pd.DataFrame | None, lrs: Mapping[str, float] | None = None,
                         targets: Mapping[str, float] | None = None, value: str = "train_loss_ema"):
    """Figure 2: every method at the shared fixed learning rate (the write-up's naive comparison)."""
    lrs, targets = lrs or {}, targets or {}
    fig, axes, panels = dataset_panels(curves, "no training curves at the shared learning rate\n"
                                               "(no fixed_lr in summary.json, or no grid runs at it)", value,
                                       select=lambda rows: rows.dropna(subset=[value]))
    for ax, dataset, rows in panels:
        _curve_panel(ax, rows, targets.get(dataset), value)
        title = dataset_label(dataset)
        if dataset in lrs:
            title += f", every method at lr = {lrs[dataset]:.3g}"
        ax.set_title(title)
    legend_below(fig, axes)
    return fig, axes


def _curve_panel(ax, curves: pd.DataFrame, target: float | None, value: str) -> dict[str, float]:
    """Draw mean curves with bands per method; returns each mean curve's first crossing of target."""
    crossings, any_diverged, lowest = {}, False, math.inf
    has_target = target is not None and np.isfinite(target)
    for method in order_methods(curves["method"].unique()):
        summary = mean_ci(curves[curves["method"] == method], ["examples"], value)
        if summary.empty:
            continue
        lowest = min(lowest, summary["mean"].min())
        rows = curves[curves["method"] == method]
        band(ax, summary, "examples", method_color(method), f"{method} ({rows['seed'].nunique()} seeds)",
             ls=method_linestyle(method))
        any_diverged |= _mark_divergence(ax, rows, value, method_color(method))
        if has_target:
            crossings[method] = _first_crossing(summary, target)
    if any_diverged:
        ax.plot([], [], ls="", marker="x", mew=1.8, color="#555555", label="diverged run (last point)")
    if has_target:
        ax.axhline(target, color="#777777", ls="--", lw=1, label="target loss")
    ax.set_yscale("log")
    clip_log_bands(ax, min(lowest, target) if has_target else lowest)
    ax.set_xlabel(EXAMPLES_LABEL)
    ax.xaxis.set_major_formatter(EXAMPLES_FORMATTER)
    ax.set_ylabel(f"training loss, EMA\n{LOSS_LABEL}")
    return crossings


def _mark_divergence(ax, rows: pd.DataFrame, value: str, color: str) -> bool:
    """An x at the last logged point of each diverged run (the band after it has fewer seeds)."""
    if "diverged" not in rows or not rows["diverged"].astype(bool).any():
        return False
    last = rows[rows["diverged"].astype(bool)].sort_values("examples").groupby("run_id").tail(1)
    ax.plot(last["examples"], last[value], ls="", marker="x", ms=7, mew=1.8, color=color, label="_diverged")
    return True


def _first_crossing(summary: pd.DataFrame, target: float) -> float:
    below = summary.sort_values("examples")
    below = below[below["mean"] <= target]
    return float(below["examples"].iloc[0]) if len(below) else math.nan


def _annotate_time_to_target(ax, target, crossings: dict[str, float], ratio: Mapping | None) -> None:
    """The write-up's horizontal line, with how much later fa's mean curve crosses it than bp's, and the
    analysis's ratio of medians (which may come from other runs: ratio["phase"] says which)."""
    ref_x, challenger_x = crossings.get(REFERENCE, math.nan), crossings.get(CHALLENGER, math.nan)
    lines = []
    if target is not None and np.isfinite(ref_x) and np.isfinite(challenger_x) and ref_x > 0:
        ax.annotate("", xy=(challenger_x, target), xytext=(ref_x, target),
                    arrowprops={"arrowstyle": "->", "color": method_color(CHALLENGER), "lw": 1.5})
        lines.append(f"mean curves here: {CHALLENGER} takes {challenger_x / ref_x:.2g}x {REFERENCE}'s examples")
    ratio = ratio or {}
    if finite(ratio.get("estimate")):
        source = f" ({ratio['phase']} runs)" if ratio.get("phase") else ""
        lines.append(f"ratio of medians{source}: {ratio['estimate']:.2f}x\n"
                     f"(95% CI {number(ratio.get('ci_low'))} to {number(ratio.get('ci_high'))})")
    if not lines:
        lines.append("time to target not available")
    ax.text(0.97, 0.97, "\n".join(lines), transform=ax.transAxes, ha="right", va="top", fontsize=9,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "#bbbbbb"})
