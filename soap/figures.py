"""The study's figures: one style, one colour per method, one function per figure.

Every plot function takes data (DataFrames or dicts, already selected by the caller) and returns
``(fig, axes)``; none of them saves anything (the caller does, with :func:`save_figure`). Datasets are
facets (columns, or rows where a figure already uses columns), so every figure is one file whatever the
number of datasets. A missing or empty input draws a "no data" panel that says what is missing instead
of raising, so a partial study still gets a complete report.

Data conventions:

- ``curves``: the long curves table joined to the runs table on ``run_id`` (so it carries ``dataset``,
  ``method``, ``seed``, ``lr``) with ``examples`` and the logged columns (``train_loss_ema``,
  ``angle_l0``, ``cos_l0``, ...).
- ``runs``: the runs table (soap.tables.RUNS_COLUMNS plus ``effective_lr``).
- Bands are 95% t-intervals of the mean over seeds (:func:`mean_ci`), not bootstrap: deterministic,
  fast, and the same in every figure.
"""

from __future__ import annotations

import functools
import math
import textwrap
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import FancyArrowPatch
from matplotlib.transforms import blended_transform_factory
from scipy import stats

from soap.rules import SECOND_ORDER_PREFIX
from soap.analysis.descriptive import mean_ci
from soap.files import write_atomic

# One colour per method, fixed across every figure (mostly Paul Tol's colour-blind-safe "bright" and
# "muted" sets). bp is near-black because it is the reference everything is compared with.
METHOD_COLORS: dict[str, str] = {
    "bp": "#222222",
    "fa": "#4477AA",
    "sign": "#EE6677",
    "sign_scaled": "#228833",
    "stale_bp": "#AA3377",
    "usf": "#CCBB44",
    "frsf": "#66CCEE",
    "brsf": "#882255",
    "dfa": "#999933",
    "kolen_pollack": "#44AA99",
}
# Methods beyond the table get a colour from here, chosen by a stable hash of the name so that a new
# method keeps its colour from run to run and figure to figure.
_FALLBACK_COLORS = ("#332288", "#117733", "#DDCC77", "#CC6677", "#88CCEE", "#AA4499", "#BBBBBB")
METHOD_ORDER: tuple[str, ...] = tuple(METHOD_COLORS)

DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
ESTIMAND_LABELS = {
    "fixed_lr": "at bp's tuned lr",
    "small_lr": "at the smallest grid lr",
    "tuned": "each at its tuned lr",
    "effective_lr": "at matched effective lr",
}
ESTIMAND_MARKERS = {"fixed_lr": "o", "small_lr": "v", "tuned": "s", "effective_lr": "D"}

LOSS_LABEL = "cross-entropy (nats)"
EXAMPLES_LABEL = "training examples seen"

# Applied around each plot function (not globally) so that importing soap.figures changes nothing
# for other code that uses matplotlib.
STYLE_RC: dict = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("paper", font_scale=1.35),
    "axes.titleweight": "bold",
    "axes.titlesize": 12,
    "legend.frameon": False,
    "figure.dpi": 100,
    "pdf.fonttype": 42,  # embed TrueType so text in the PDFs stays text
    "font.family": "DejaVu Sans",
}


def method_color(method: str) -> str:
    """The fixed colour of a method; an so_ rule shares its base rule's (method_linestyle tells them
    apart); unknown methods get a stable colour from their name."""
    base = method.removeprefix(SECOND_ORDER_PREFIX)
    if base in METHOD_COLORS:
        return METHOD_COLORS[base]
    return _FALLBACK_COLORS[zlib.crc32(method.encode()) % len(_FALLBACK_COLORS)]


def method_linestyle(method: str) -> str:
    """Dashed for an so_ rule, so it reads as its base rule's colour with activity propagation on top."""
    return "--" if method.startswith(SECOND_ORDER_PREFIX) and method != SECOND_ORDER_PREFIX else "-"


def order_methods(methods: Iterable[str]) -> list[str]:
    """Known methods in METHOD_ORDER, then their so_ variants in the same order, then any others
    alphabetically."""
    methods = set(methods)
    known = [m for m in METHOD_ORDER if m in methods]
    known += [SECOND_ORDER_PREFIX + m for m in METHOD_ORDER if SECOND_ORDER_PREFIX + m in methods]
    return known + sorted(methods - set(known))


def dataset_label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def styled(plot):
    """Run a plot function inside the study style."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE_RC):
            return plot(*args, **kwargs)

    return wrapper


def save_figure(fig, path_stem: str | Path, dpi: int = 200) -> tuple[Path, Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically; returns both paths.

    Freezes the figure's layout (constrained layout runs once, then is switched off), so both files
    have the same geometry. PDFs carry no creation date, so the same figure gives the same bytes.
    """
    stem = Path(path_stem)
    if fig.get_layout_engine() is not None:
        # Lay out once and freeze; otherwise every savefig re-runs constrained layout.
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
    paths = []
    for suffix in (".png", ".pdf"):  # inside the style: some of it (PDF font embedding) acts at save time
        target = stem.with_suffix(suffix)
        # The format is given explicitly because the temporary file's suffix is ".tmp".
        fmt = suffix[1:]
        # bbox "tight" as a safety net for anything the layout let overflow (a long legend).
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        with plt.rc_context(STYLE_RC):
            paths.append(write_atomic(target, lambda tmp, fmt=fmt, metadata=metadata: fig.savefig(
                tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)))
    return paths[0], paths[1]


def no_data(ax, message: str) -> None:
    """Turn an axis into a panel that says why there is nothing to show."""
    ax.set_axis_off()
    message = "\n".join(textwrap.fill(line, 48) for line in message.splitlines())
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555",
            transform=ax.transAxes,
            bbox={"boxstyle": "round,pad=0.8", "facecolor": "#f4f4f4", "edgecolor": "#cccccc"})


def _datasets(table: pd.DataFrame | None) -> list[str]:
    """The datasets of a table in order of first appearance (the caller orders the rows)."""
    if table is None or table.empty or "dataset" not in table:
        return []
    return list(dict.fromkeys(table["dataset"].dropna()))


def _facets(n: int, width: float = 5.6, height: float = 4.2):
    """One row of n panels (at least one, for the "no data" message)."""
    return plt.subplots(1, max(n, 1), figsize=(width * max(n, 1), height), squeeze=False,
                        layout="constrained")


def _empty(table: pd.DataFrame | None, *columns: str) -> bool:
    return table is None or table.empty or any(c not in table.columns for c in columns)


def _band(ax, summary: pd.DataFrame, x: str, color: str, label: str, step: bool = False, alpha: float = 0.2,
          **line_kw):
    summary = summary.sort_values(x)
    drawstyle = "steps-post" if step else "default"
    ax.plot(summary[x], summary["mean"], color=color, label=label, drawstyle=drawstyle, lw=1.8, **line_kw)
    ax.fill_between(summary[x], summary["ci_low"], summary["ci_high"], color=color, alpha=alpha, lw=0,
                    step="post" if step else None)


def _clip_log_bands(ax, lowest_mean: float) -> None:
    """On a log axis a band reaching zero (few seeds, wide t-interval) would stretch the axis by
    decades; keep the axis near the means instead and let such a band run off the bottom."""
    if np.isfinite(lowest_mean) and lowest_mean > 0:
        ax.set_ylim(bottom=max(ax.get_ylim()[0], lowest_mean / 2))


def _legend_below(fig, axes) -> None:
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


def _examples_label(x, _pos=None) -> str:
    """Tick labels for counts of examples: 50k, 1.5M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


EXAMPLES_FORMATTER = matplotlib.ticker.FuncFormatter(_examples_label)


def _first_crossing(summary: pd.DataFrame, target: float) -> float:
    below = summary.sort_values("examples")
    below = below[below["mean"] <= target]
    return float(below["examples"].iloc[0]) if len(below) else math.nan


# --- 1 and 2: training curves -----------------------------------------------------------------------

def _curve_panel(ax, curves: pd.DataFrame, target: float | None, value: str) -> dict[str, float]:
    """Draw mean curves with bands per method; returns each mean curve's first crossing of target."""
    crossings, any_diverged, lowest = {}, False, math.inf
    for method in order_methods(curves["method"].unique()):
        summary = mean_ci(curves[curves["method"] == method], ["examples"], value)
        if summary.empty:
            continue
        lowest = min(lowest, summary["mean"].min())
        rows = curves[curves["method"] == method]
        _band(ax, summary, "examples", method_color(method), f"{method} ({rows['seed'].nunique()} seeds)",
              ls=method_linestyle(method))
        any_diverged |= _mark_divergence(ax, rows, value, method_color(method))
        if target is not None and np.isfinite(target):
            crossings[method] = _first_crossing(summary, target)
    if any_diverged:
        ax.plot([], [], ls="", marker="x", mew=1.8, color="#555555", label="diverged run (last point)")
    if target is not None and np.isfinite(target):
        ax.axhline(target, color="#777777", ls="--", lw=1, label="target loss")
    ax.set_yscale("log")
    _clip_log_bands(ax, min(lowest, target) if target is not None and np.isfinite(target) else lowest)
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


@styled
def plot_bp_vs_fa(curves: pd.DataFrame | None, targets: Mapping[str, float] | None = None,
                  ratios: Mapping[str, Mapping] | None = None, lrs: Mapping[str, float] | None = None,
                  value: str = "train_loss_ema"):
    """Figure 1: bp and fa at bp's tuned learning rate, with the target loss and the time-to-target ratio.

    ``targets``, ``ratios`` and ``lrs`` are keyed by dataset; ``ratios[dataset]`` holds the analysis's
    ``estimate, ci_low, ci_high`` for fa's examples-to-target over bp's.
    """
    targets, ratios, lrs = targets or {}, ratios or {}, lrs or {}
    datasets = _datasets(curves) or ["(none)"]
    fig, axes = _facets(len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        subset = None if _empty(curves, value) else curves[
            (curves["dataset"] == dataset) & curves["method"].isin(["bp", "fa"])].dropna(subset=[value])
        if subset is None or subset.empty:
            no_data(ax, "no bp / fa training curves at the shared learning rate\n"
                        "(no fixed_lr in summary.json, or no grid runs at it)")
            continue
        target = targets.get(dataset)
        crossings = _curve_panel(ax, subset, target, value)
        title = dataset_label(dataset)
        if dataset in lrs:
            title += f", lr = {lrs[dataset]:.3g}"
        ax.set_title(title)
        _annotate_time_to_target(ax, target, crossings, ratios.get(dataset))
    _legend_below(fig, axes)
    return fig, axes


def _annotate_time_to_target(ax, target, crossings: dict[str, float], ratio: Mapping | None) -> None:
    """The write-up's horizontal line, with how much later fa's mean curve crosses it than bp's, and the
    analysis's ratio of medians (which may come from other runs: ratio["phase"] says which)."""
    bp_x, fa_x = crossings.get("bp", math.nan), crossings.get("fa", math.nan)
    lines = []
    if target is not None and np.isfinite(bp_x) and np.isfinite(fa_x) and bp_x > 0:
        ax.annotate("", xy=(fa_x, target), xytext=(bp_x, target),
                    arrowprops={"arrowstyle": "->", "color": method_color("fa"), "lw": 1.5})
        lines.append(f"mean curves here: fa takes {fa_x / bp_x:.2g}x bp's examples")
    ratio = ratio or {}
    if _finite(ratio.get("estimate")):
        source = f" ({ratio['phase']} runs)" if ratio.get("phase") else ""
        lines.append(f"ratio of medians{source}: {ratio['estimate']:.2f}x\n"
                     f"(95% CI {_num(ratio.get('ci_low'))} to {_num(ratio.get('ci_high'))})")
    if not lines:
        lines.append("time to target not available")
    ax.text(0.97, 0.97, "\n".join(lines), transform=ax.transAxes, ha="right", va="top", fontsize=9,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "#bbbbbb"})


def _num(x, fmt: str = ".2f") -> str:
    return format(float(x), fmt) if _finite(x) else "n/a"


@styled
def plot_fixed_lr_curves(curves: pd.DataFrame | None, lrs: Mapping[str, float] | None = None,
                         targets: Mapping[str, float] | None = None, value: str = "train_loss_ema"):
    """Figure 2: every method at the shared fixed learning rate (the write-up's naive comparison)."""
    lrs, targets = lrs or {}, targets or {}
    datasets = _datasets(curves) or ["(none)"]
    fig, axes = _facets(len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        subset = None if _empty(curves, value) else curves[curves["dataset"] == dataset].dropna(
            subset=[value])
        if subset is None or subset.empty:
            no_data(ax, "no training curves at the shared learning rate\n"
                        "(no fixed_lr in summary.json, or no grid runs at it)")
            continue
        _curve_panel(ax, subset, targets.get(dataset), value)
        title = dataset_label(dataset)
        if dataset in lrs:
            title += f", every method at lr = {lrs[dataset]:.3g}"
        ax.set_title(title)
    _legend_below(fig, axes)
    return fig, axes


# --- 3 and 4: learning-rate response ------------------------------------------------------------------

@styled
def plot_lr_response(runs: pd.DataFrame | None, tuned_lr: Mapping[str, Mapping[str, float]] | None = None,
                     fixed_lr: Mapping[str, float] | None = None, outcome: str = "test_loss"):
    """Figure 3: final outcome vs nominal learning rate on the grid runs, tuned optima marked.

    Diverged runs have no final loss; where any seed diverged, an x at the top marks the lr.
    """
    tuned_lr, fixed_lr = tuned_lr or {}, fixed_lr or {}
    datasets = _datasets(runs) or ["(none)"]
    fig, axes = _facets(len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        grid = None if _empty(runs, "lr", outcome) else runs[runs["dataset"] == dataset]
        if grid is None or grid.empty:
            no_data(ax, "no grid runs")
            continue
        top = blended_transform_factory(ax.transData, ax.transAxes)
        lowest = math.inf
        for method in order_methods(grid["method"].unique()):
            rows = grid[grid["method"] == method]
            color = method_color(method)
            summary = mean_ci(rows, ["lr"], outcome)
            if not summary.empty:
                _band(ax, summary, "lr", color, method, marker="o", ms=4, ls=method_linestyle(method))
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
        ax.set(xscale="log", yscale="log", xlabel="nominal learning rate (log scale)",
               ylabel=f"final {outcome.replace('_', ' ')}\n{LOSS_LABEL}", title=dataset_label(dataset))
        _clip_log_bands(ax, lowest)
    _legend_below(fig, axes)
    return fig, axes


@styled
def plot_effective_lr_response(runs: pd.DataFrame | None, outcome: str = "test_loss"):
    """Figure 4: the grid's outcome against effective learning rate (lr * feedback_gain).

    Points are runs; lines join, per method and nominal lr, the geometric mean effective lr with the
    mean outcome and its 95% CI. If the methods' differences are learning rate, the lines collapse.
    """
    datasets = _datasets(runs) or ["(none)"]
    fig, axes = _facets(len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        grid = None if _empty(runs, "effective_lr", outcome) else runs[
            (runs["dataset"] == dataset) & np.isfinite(runs["effective_lr"]) & (runs["effective_lr"] > 0)]
        if grid is None or grid.empty:
            no_data(ax, "no grid runs with an effective learning rate")
            continue
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
                _band(ax, summary, "effective_lr", color, method, marker="o", ms=4, ls=method_linestyle(method))
        ax.set(xscale="log", yscale="log", xlabel="effective lr = lr × feedback gain (log scale)",
               ylabel=f"final {outcome.replace('_', ' ')}\n{LOSS_LABEL}", title=dataset_label(dataset))
        _clip_log_bands(ax, lowest)
    _legend_below(fig, axes)
    return fig, axes


# --- 5: causal diagram --------------------------------------------------------------------------------

# Node positions in axis coordinates (0..1): the causal chain along the top row, the learning rates
# below it, so that no edge crosses another.
_DAG_NODES = {
    "method": ("method\n(feedback rule)", (0.09, 0.60)),
    "gain": ("feedback gain\n|δ rule| / |δ bp|", (0.37, 0.60)),
    "effective": ("effective lr\nlr × gain", (0.65, 0.60)),
    "outcome": ("test loss", (0.91, 0.60)),
    "nominal": ("nominal lr", (0.65, 0.17)),
    "other": ("lr chosen for\nanother method (bp)", (0.91, 0.17)),
}
_DAG_EDGES = [
    # (from, to, line style, colour, label, label position)
    ("method", "gain", "-", "#222222", None, None),
    ("gain", "effective", "-", "#222222", None, None),
    ("effective", "outcome", "-", "#222222", None, None),
    ("nominal", "effective", "-", "#222222", None, None),
    ("method", "outcome", "-", "#222222", "direct: how well the feedback aligns", (0.50, 0.96)),
    ("method", "nominal", "--", "#4477AA", "lr tuned for this method:\na mediator of its effect",
     (0.25, 0.22)),
    ("other", "nominal", ":", "#CC3311", "lr tuned for bp:\nconfounds the comparison", (0.78, 0.02)),
]


@styled
def plot_causal_diagram():
    """Figure 5: the causal diagram of method, feedback gain, learning rates and outcome."""
    fig, ax = plt.subplots(figsize=(10, 4.6), layout="constrained")
    ax.set(xlim=(0, 1), ylim=(-0.06, 1.02))
    ax.set_axis_off()
    boxes = {}
    for key, (text, (x, y)) in _DAG_NODES.items():
        boxes[key] = ax.text(x, y, text, ha="center", va="center", fontsize=12, zorder=3,
                             bbox={"boxstyle": "round,pad=0.5", "facecolor": "#fbfbfb",
                                   "edgecolor": "#444444", "lw": 1.2})
    fig.canvas.draw()  # text boxes need a renderer before arrows can be clipped to them
    for src, dst, style, color, label, where in _DAG_EDGES:
        arc = "arc3,rad=-0.35" if (src, dst) == ("method", "outcome") else "arc3,rad=0"
        ax.add_patch(FancyArrowPatch(_DAG_NODES[src][1], _DAG_NODES[dst][1], arrowstyle="-|>",
                                     mutation_scale=18, lw=1.8, ls=style, color=color, connectionstyle=arc,
                                     patchA=boxes[src].get_bbox_patch(), patchB=boxes[dst].get_bbox_patch(),
                                     zorder=2))
        if label:
            ax.text(*where, label, ha="center", va="center", fontsize=10.5, color=color, style="italic")
    return fig, np.array([[ax]])


# --- 6 and 7: estimates -------------------------------------------------------------------------------

@styled
def plot_forest(estimates: pd.DataFrame | None, estimands: tuple[str, ...] = ("fixed_lr", "small_lr", "tuned",
                                                                                  "effective_lr"),
                reference: str = "bp", outcome: str = "test_loss"):
    """Figure 6: forest plot of each method vs ``reference``, one panel per (dataset, estimand).

    Each estimand has its own x axis: one large contrast (a method diverging at the shared lr) must not
    squeeze the others into a dot at zero. Estimates are differences (method minus reference) in
    ``outcome``: left of zero is better than bp. The Holm-adjusted p-value is printed beside each row.
    """
    rows = None if _empty(estimates, "estimand", "estimate") else estimates[
        estimates["estimand"].isin(estimands) & (estimates["reference"] == reference)]
    datasets = _datasets(rows) or ["(none)"]
    present = [e for e in estimands if rows is not None and (rows["estimand"] == e).any()] or ["(none)"]
    n_methods = 1 if rows is None or rows.empty else rows["method"].nunique()
    fig, axes = plt.subplots(len(datasets), len(present), squeeze=False, layout="constrained",
                             figsize=(3.9 * len(present), (1.3 + 0.42 * max(n_methods, 3)) * len(datasets)))
    for d, dataset in enumerate(datasets):
        for e, estimand in enumerate(present):
            ax = axes[d, e]
            subset = None if rows is None else rows[(rows["dataset"] == dataset) & (rows["estimand"] == estimand)]
            if subset is None or subset.empty:
                no_data(ax, "no method-vs-bp estimates")
                continue
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
        if _finite(row["estimate"]):
            ax.errorbar(row["estimate"], -i, xerr=_xerr(row["estimate"], row["ci_low"], row["ci_high"]),
                        fmt=ESTIMAND_MARKERS.get(estimand, "o"), color=color, ms=6, capsize=3, lw=1.6)
        else:
            ax.text(0.02, -i, "not estimated", transform=p_column, va="center", fontsize=8.5, color="#777777")
        if _finite(row.get("p_holm")):
            ax.text(1.02, -i, f"p={row['p_holm']:.2g}", transform=p_column, va="center", fontsize=8,
                    color="#444444")
    ax.axvline(0, color="#777777", lw=1)
    ax.set_yticks([-i for i in range(len(methods))], methods if show_labels else [""] * len(methods))
    ax.set_ylim(-len(methods) + 0.4, 0.6)
    ax.grid(axis="y", visible=False)


@styled
def plot_grid_contrasts(estimates: pd.DataFrame | None, reference: str = "bp", outcome: str = "test_loss",
                        tuned_lr: Mapping[str, Mapping[str, float]] | None = None):
    """Figure 11: method - bp at every grid learning rate, with paired t intervals.

    ``estimates`` holds the analysis's ``grid_lr`` rows. Below zero the method beats bp at that lr:
    this is where an lr too small for bp lets sign's larger effective step win.
    """
    tuned_lr = tuned_lr or {}
    rows = None if _empty(estimates, "estimand", "lr") else estimates[
        (estimates["estimand"] == "grid_lr") & (estimates["reference"] == reference)]
    datasets = _datasets(rows) or ["(none)"]
    fig, axes = _facets(len(datasets), width=6.4)
    for ax, dataset in zip(axes[0], datasets):
        subset = None if rows is None else rows[rows["dataset"] == dataset]
        if subset is None or subset.empty:
            no_data(ax, "no grid contrasts")
            continue
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
    _legend_below(fig, axes)
    return fig, axes


@styled
def plot_divergence(cells: pd.DataFrame | None):
    """Figure 12: the fraction of runs that diverged per method and grid lr, with Wilson 95% intervals.

    ``cells`` has columns dataset, method, lr, rate, ci_low, ci_high (summary.json's divergence cells).
    """
    datasets = _datasets(cells) or ["(none)"]
    fig, axes = _facets(len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        subset = None if _empty(cells, "rate") else cells[cells["dataset"] == dataset]
        if subset is None or subset.empty:
            no_data(ax, "no grid runs")
            continue
        for method in order_methods(subset["method"].unique()):
            m = subset[subset["method"] == method].sort_values("lr")
            ax.errorbar(m["lr"], m["rate"], yerr=[m["rate"] - m["ci_low"], m["ci_high"] - m["rate"]], fmt="o-",
                        ms=4, lw=1.4, capsize=2, color=method_color(method), label=method)
        ax.set(xscale="log", ylim=(-0.03, 1.03), xlabel="nominal learning rate (log scale)",
               ylabel="fraction of runs diverged", title=dataset_label(dataset))
    _legend_below(fig, axes)
    return fig, axes


@styled
def plot_tuning_budget(curves: pd.DataFrame | None, which: str = ""):
    """Figure 13: expected best validation loss after k tuning trials (Dodge et al. 2019), per method.

    ``curves`` has columns dataset, method, budget, expected_best (soap.analysis.tuning_budget).
    """
    datasets = _datasets(curves) or ["(none)"]
    fig, axes = _facets(len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        subset = None if _empty(curves, "budget", "expected_best") else curves[curves["dataset"] == dataset]
        if subset is None or subset.empty:
            no_data(ax, "no i.i.d. tuning trials")
            continue
        for method in order_methods(subset["method"].unique()):
            m = subset[subset["method"] == method].sort_values("budget")
            ax.plot(m["budget"], m["expected_best"], "o-", ms=3.5, lw=1.6, color=method_color(method), label=method)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(yscale="log", xlabel="tuning budget k (trials)",
               ylabel=f"expected best validation loss\n{LOSS_LABEL}",
               title=f"{dataset_label(dataset)}{': ' + which if which else ''}")
    _legend_below(fig, axes)
    return fig, axes


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _xerr(estimate: float, low, high) -> list[list[float]]:
    """Error-bar lengths for matplotlib; a missing limit draws no bar on that side."""
    return [[estimate - low if _finite(low) else 0.0], [high - estimate if _finite(high) else 0.0]]


_MEDIATION_PARTS = (("acme", "mediated (ACME)\nvia log feedback gain"), ("ade", "direct (ADE)"),
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
    datasets = list(dict.fromkeys([*mediation, *skipped])) or ["(none)"]
    fig, axes = _facets(len(datasets), width=5.6, height=3.4)
    for ax, dataset in zip(axes[0], datasets):
        block = mediation.get(dataset)
        if not block or not any(part in block for part, _ in _MEDIATION_PARTS):
            reason = skipped.get(dataset, "needs sign and sign_scaled runs")
            no_data(ax, f"{dataset_label(dataset)}: no mediation analysis\n({reason})")
            continue
        colors = (method_color("sign"), "#777777", "#222222")
        for i, ((part, label), color) in enumerate(zip(_MEDIATION_PARTS, colors)):
            value = block.get(part) or {}
            est = value.get("estimate")
            if _finite(est):
                ax.errorbar(est, -i, xerr=_xerr(est, value.get("ci_low"), value.get("ci_high")),
                            fmt="o", color=color, capsize=3, ms=7, lw=1.8)
                if _finite(value.get("sd")):
                    ax.annotate(f"SD {value['sd']:.2g}", (est, -i), xytext=(0, 7), textcoords="offset points",
                                ha="center", fontsize=8.5, color="#444444")
        ax.set_yticks([-i for i in range(len(_MEDIATION_PARTS))], [lab for _, lab in _MEDIATION_PARTS])
        ax.set_ylim(-len(_MEDIATION_PARTS) + 0.4, 0.6)
        ax.axvline(0, color="#777777", lw=1)
        ax.grid(axis="y", visible=False)
        title = f"{dataset_label(dataset)}: {block.get('exposure', 'sign')} vs " \
                f"{block.get('control', 'sign_scaled')}"
        prop = block.get("prop") or {}
        if _finite(prop.get("estimate")):
            title += f"\nproportion mediated {prop['estimate']:.2f}\n" \
                     f"(95% CI {_num(prop.get('ci_low'))} to {_num(prop.get('ci_high'))})"
        ax.set_title(title, fontsize=10.5)
        ax.set_xlabel(f"effect on {outcome.replace('_', ' ')} (nats)")
    return fig, axes


# --- 8: Kaplan-Meier ----------------------------------------------------------------------------------

@styled
def plot_km(km: pd.DataFrame | None, targets: Mapping[str, float] | None = None,
            phases: Mapping[str, str] | None = None):
    """Figure 8: Kaplan-Meier curves of examples to the target loss, with 95% bands.

    ``phases[dataset]`` names the runs the curves come from ("tuned" or "grid").
    """
    targets, phases = targets or {}, phases or {}
    datasets = _datasets(km) or ["(none)"]
    fig, axes = _facets(len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        subset = None if _empty(km, "examples", "survival") else km[km["dataset"] == dataset]
        if subset is None or subset.empty:
            no_data(ax, "no time-to-target data")
            continue
        for method in order_methods(subset["method"].unique()):
            rows = subset[subset["method"] == method].rename(columns={"survival": "mean"})
            if "ci_low" not in rows:
                rows = rows.assign(ci_low=rows["mean"], ci_high=rows["mean"])
            _band(ax, rows, "examples", method_color(method), method, step=True, alpha=0.12,
                  ls=method_linestyle(method))
        title = dataset_label(dataset)
        if dataset in targets and pd.notna(targets[dataset]):
            title += f", target loss {targets[dataset]:.3g}"
        if phases.get(dataset):
            title += f"\n{phases[dataset]} runs"
        ax.set(ylim=(-0.02, 1.02), xlabel=EXAMPLES_LABEL, ylabel="fraction of runs\nnot yet at target",
               title=title)
        ax.xaxis.set_major_formatter(EXAMPLES_FORMATTER)
    _legend_below(fig, axes)
    return fig, axes


# --- 9: alignment -------------------------------------------------------------------------------------

def _layer_columns(curves: pd.DataFrame, prefix: str) -> list[str]:
    columns = [c for c in curves.columns if c.startswith(f"{prefix}_l") and c[len(prefix) + 2:].isdigit()]
    return sorted(columns, key=lambda c: int(c[len(prefix) + 2:]))


_ALIGNMENT_ROWS = (("angle", "angle(B, W) (degrees)"), ("cos", "cosine of error signal\nwith bp's"))


@styled
def plot_alignment(curves: pd.DataFrame | None):
    """Figure 9: per layer and method, the angle between B and W and the error-signal cosine with BP.

    Rows are (dataset, quantity) pairs and columns are layers; the cosine exists only for layers whose
    error signal feeds a hidden layer.
    """
    datasets = _datasets(curves) or ["(none)"]
    layer_cols = {p: ([] if curves is None else _layer_columns(curves, p)) for p, _ in _ALIGNMENT_ROWS}
    ncols = max(1, *(len(c) for c in layer_cols.values()))
    fig, axes = plt.subplots(2 * len(datasets), ncols, figsize=(4.6 * ncols, 3.3 * 2 * len(datasets)),
                             squeeze=False, layout="constrained", sharex=True)
    for d, dataset in enumerate(datasets):
        subset = None if _empty(curves, "examples") else curves[curves["dataset"] == dataset]
        for r, (prefix, ylabel) in enumerate(_ALIGNMENT_ROWS):
            row_axes = axes[2 * d + r]
            for c, ax in enumerate(row_axes):
                if c >= len(layer_cols[prefix]):
                    no_data(ax, f"no {prefix} logged\nfor this layer") if c == 0 else ax.set_axis_off()
                    continue
                column = layer_cols[prefix][c]
                _alignment_panel(ax, subset, column)
                # Common scales make layers comparable: angles span 0-90 degrees, cosines reach 1.
                ax.set_ylim(*((0, 92) if prefix == "angle" else (min(0, ax.get_ylim()[0]), 1.03)))
                ax.set_title(f"{dataset_label(dataset)}, layer {column.rsplit('_l', 1)[1]}", fontsize=10.5)
                if c == 0:
                    ax.set_ylabel(ylabel)
                if 2 * d + r == 2 * len(datasets) - 1:
                    ax.set_xlabel(EXAMPLES_LABEL)
    _legend_below(fig, axes)
    return fig, axes


def _alignment_panel(ax, curves: pd.DataFrame | None, column: str) -> None:
    rows = None if curves is None else curves.dropna(subset=[column])
    if rows is None or rows.empty:
        no_data(ax, f"{column} not logged")
        return
    for method in order_methods(rows["method"].unique()):
        summary = mean_ci(rows[rows["method"] == method], ["examples"], column)
        _band(ax, summary, "examples", method_color(method), method, ls=method_linestyle(method))
    ax.tick_params(labelbottom=True)
    ax.xaxis.set_major_formatter(EXAMPLES_FORMATTER)


# --- 10: Optuna ---------------------------------------------------------------------------------------

@styled
def plot_tuning(trials: pd.DataFrame | None, best: pd.DataFrame | None = None):
    """Figure 10: Optuna tuning, per dataset: best objective so far vs trial, and lr vs objective.

    ``trials`` is the concatenation of every study's ``trials_dataframe()`` with ``dataset``, ``method``
    and ``repeat`` columns added; ``best`` has one row per study with ``dataset, method, repeat, lr``.
    """
    datasets = _datasets(trials) or ["(none)"]
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.2 * len(datasets)), squeeze=False,
                             layout="constrained")
    for (ax_hist, ax_lr), dataset in zip(axes, datasets):
        subset = None if _empty(trials, "number", "value", "params_lr") else trials[
            (trials["dataset"] == dataset) & np.isfinite(trials["value"].astype(float))]
        if "state" in (subset.columns if subset is not None else []):
            subset = subset[subset["state"].astype(str).str.upper().str.endswith("COMPLETE")]
        if subset is None or subset.empty:
            no_data(ax_hist, "no tuning trials")
            no_data(ax_lr, "no tuning trials")
            continue
        _tuning_panels(ax_hist, ax_lr, subset, None if best is None or best.empty
                       else best[best["dataset"] == dataset])
        ax_hist.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax_hist.set(xlabel="trial number", ylabel=f"best validation loss so far\n{LOSS_LABEL}",
                    yscale="log", title=f"{dataset_label(dataset)}: optimisation history")
        ax_lr.set(xscale="log", yscale="log", xlabel="learning rate (log scale)",
                  ylabel=f"validation loss\n{LOSS_LABEL}", title=f"{dataset_label(dataset)}: lr vs objective")
    _legend_below(fig, axes)
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


# --- 14: the rule comparison ------------------------------------------------------------------------

RULE_COMPARISON_ESTIMANDS = ("tuned", "effective_lr")
# (column, axis label, factor, unit of the level in the title): accuracy reads best in percentage points
_RULE_COMPARISON_OUTCOMES = (("test_loss", "test loss, method - bp (nats)\n< 0: better than bp", 1.0, " nats"),
                             ("test_acc", "test accuracy, method - bp (points)\n> 0: better than bp", 100.0, "%"))
# An interval this many times wider than the panel's median one runs off the panel instead of setting
# its scale (one imprecise contrast would squeeze every other into a dot)
_WIDE_INTERVAL = 4.0


@styled
def plot_rule_comparison(estimates: pd.DataFrame | None, reference_values: Mapping | None = None,
                         reference: str = "bp"):
    """Figure 14: every rule minus bp on test loss (left) and test accuracy (right), one row per
    dataset: filled squares with each rule at its own tuned lr (the `tuned` estimand's paired t
    interval), open diamonds at matched effective lr (`effective_lr`: the grid regression on bp's and
    the rule's runs), faded where its note says the rule's slope is not bp's. `reference_values`:
    {dataset: {outcome: bp's mean at its tuned lr}}, printed in the panel titles so differences can be
    read as levels."""
    rows = None if _empty(estimates, "estimand", "outcome", "estimate") else estimates[
        estimates["estimand"].isin(RULE_COMPARISON_ESTIMANDS) & (estimates["reference"] == reference)]
    datasets = _datasets(rows) or ["(none)"]
    n_methods = 1 if rows is None or rows.empty else rows["method"].nunique()
    fig, axes = plt.subplots(len(datasets), len(_RULE_COMPARISON_OUTCOMES), squeeze=False, layout="constrained",
                             figsize=(11.5, (1.6 + 0.36 * max(n_methods, 3)) * len(datasets)))
    for d, dataset in enumerate(datasets):
        for c, (outcome, xlabel, factor, unit) in enumerate(_RULE_COMPARISON_OUTCOMES):
            ax = axes[d, c]
            subset = None if rows is None else rows[(rows["dataset"] == dataset) & (rows["outcome"] == outcome)]
            if subset is None or subset.empty:
                no_data(ax, f"no {outcome.replace('_', ' ')} contrasts against {reference}")
                continue
            _comparison_panel(ax, subset, factor, show_labels=c == 0)
            level = (reference_values or {}).get(dataset, {}).get(outcome)
            title = dataset_label(dataset)
            if _finite(level):
                title += f" ({reference} at its tuned lr: {level * factor:.4g}{unit})"
            ax.set_title(title, fontsize=10.5)
            ax.set_xlabel(xlabel)
    for estimand in RULE_COMPARISON_ESTIMANDS:
        axes[0, 0].plot([], [], ls="", marker=ESTIMAND_MARKERS[estimand], color="#555555", ms=6,
                        mfc="white" if estimand == "effective_lr" else "#555555", label=ESTIMAND_LABELS[estimand])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    return fig, axes


def _comparison_panel(ax, rows: pd.DataFrame, factor: float, show_labels: bool) -> None:
    methods = order_methods(rows["method"].unique())
    for k, estimand in enumerate(RULE_COMPARISON_ESTIMANDS):
        offset = 0.16 * (1 - 2 * k)  # the two estimands of a rule side by side on its row
        for i, method in enumerate(methods):
            match = rows[(rows["method"] == method) & (rows["estimand"] == estimand)]
            if match.empty or not _finite(match["estimate"].iloc[0]):
                continue
            est, low, high = (match[key].iloc[0] * factor for key in ("estimate", "ci_low", "ci_high"))
            color = method_color(method)
            # faded: the analysis found the rule's curve not parallel to bp's, so the difference is an average
            note = match["note"].iloc[0] if "note" in match else ""
            faded = isinstance(note, str) and "slope" in note
            ax.errorbar(est, -i + offset, xerr=_xerr(est, low, high), fmt=ESTIMAND_MARKERS[estimand], color=color,
                        mfc="white" if estimand == "effective_lr" else color, ms=5.5, capsize=2.5, lw=1.4,
                        alpha=0.35 if faded else 1.0)
    ax.axvline(0, color="#777777", lw=1)
    finite = rows[np.isfinite(rows["estimate"].astype(float))]
    width = (finite["ci_high"] - finite["ci_low"]).astype(float)
    narrow = finite[width <= _WIDE_INTERVAL * width.median()]
    low = min(0.0, finite["estimate"].min(), narrow["ci_low"].min()) * factor
    high = max(0.0, finite["estimate"].max(), narrow["ci_high"].max()) * factor
    if np.isfinite([low, high]).all() and high > low:
        ax.set_xlim(low - 0.06 * (high - low), high + 0.06 * (high - low))
    ax.set_yticks([-i for i in range(len(methods))], methods if show_labels else [""] * len(methods))
    for label, method in zip(ax.get_yticklabels(), methods):
        label.set_color(method_color(method))
    ax.set_ylim(-len(methods) + 0.4, 0.6)
    ax.grid(axis="y", visible=False)
