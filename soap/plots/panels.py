"""What many figures draw inside a panel: a mean with its band, a "no data" message, error bars, one
legend below the figure."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from soap.analysis.descriptive import finite  # the one definition; also used by callers of this module


def no_data(ax, message: str) -> None:
    """Turn an axis into a panel that says why there is nothing to show."""
    ax.set_axis_off()
    message = "\n".join(textwrap.fill(line, 48) for line in message.splitlines())
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555",
            transform=ax.transAxes,
            bbox={"boxstyle": "round,pad=0.8", "facecolor": "#f4f4f4", "edgecolor": "#cccccc"})


def band(ax, summary: pd.DataFrame, x: str, color: str, label: str, step: bool = False, alpha: float = 0.2,
         **line_kw) -> None:
    """A mean line with its interval as a shaded band; ``summary`` has columns x, mean, ci_low, ci_high."""
    summary = summary.sort_values(x)
    drawstyle = "steps-post" if step else "default"
    ax.plot(summary[x], summary["mean"], color=color, label=label, drawstyle=drawstyle, lw=1.8, **line_kw)
    ax.fill_between(summary[x], summary["ci_low"], summary["ci_high"], color=color, alpha=alpha, lw=0,
                    step="post" if step else None)


def clip_log_bands(ax, lowest_mean: float) -> None:
    """On a log axis a band reaching zero (few seeds, wide t-interval) would stretch the axis by
    decades; keep the axis near the means instead and let such a band run off the bottom."""
    if np.isfinite(lowest_mean) and lowest_mean > 0:
        ax.set_ylim(bottom=max(ax.get_ylim()[0], lowest_mean / 2))


def legend_below(fig, axes) -> None:
    """One legend for the whole figure, below it, built from every axis's labelled artists."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles and not label.startswith("_"):
                handles[label] = handle
                labels.append(label)
    if handles:
        # Rows of equal length rather than a full row and a straggler.
        per_row = max(2, min(6, round(fig.get_figwidth() / 2.8)))
        ncols = math.ceil(len(labels) / math.ceil(len(labels) / per_row))
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center", ncols=ncols)


def number(x, fmt: str = ".2f") -> str:
    return format(float(x), fmt) if finite(x) else "n/a"


def xerr(estimate: float, low, high) -> list[list[float]]:
    """Error-bar lengths for matplotlib; a missing limit draws no bar on that side."""
    return [[estimate - low if finite(low) else 0.0], [high - estimate if finite(high) else 0.0]]
