"""The study's look: one colour per method, the method order, labels, and the matplotlib style.

Methods are the rules of the registry (soap.rules), so colours and order follow it: a new rule gets the
next colour and its place in every legend without an edit here.
"""

from __future__ import annotations

import functools
import zlib

import matplotlib.pyplot as plt
import matplotlib.ticker
import seaborn as sns

from soap.rules import REFERENCE, RULES, SECOND_ORDER_PREFIX, in_registry_order

# The reference rule is near-black: everything is compared with it.
REFERENCE_COLOR = "#222222"
# The other plain rules take these in registry order (mostly Paul Tol's colour-blind-safe "bright" and
# "muted" sets); an so_ rule shares its base rule's colour and is told apart by its dashed line.
PALETTE = ("#4477AA", "#EE6677", "#228833", "#AA3377", "#CCBB44", "#66CCEE", "#882255", "#44AA99", "#999933")
# Methods beyond the palette get a colour from here, chosen by a stable hash of the name so that a
# method keeps its colour from run to run and figure to figure.
FALLBACK_COLORS = ("#332288", "#117733", "#DDCC77", "#CC6677", "#88CCEE", "#AA4499", "#BBBBBB")

DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
ESTIMAND_LABELS = {
    "fixed_lr": f"at {REFERENCE}'s tuned lr",
    "small_lr": "at the smallest grid lr",
    "tuned": "each at its tuned lr",
    "effective_lr": "at matched effective lr",
}
ESTIMAND_MARKERS = {"fixed_lr": "o", "small_lr": "v", "tuned": "s", "effective_lr": "D"}

LOSS_LABEL = "cross-entropy (nats)"
EXAMPLES_LABEL = "training examples seen"

# Applied around each plot function (not globally) so that importing soap.plots changes nothing for
# other code that uses matplotlib.
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


def method_colors() -> dict[str, str]:
    """{rule: colour} for the registered plain rules, read from the registry when called (a rule
    registered after import gets its colour too)."""
    others = [name for name, rule in RULES.items() if not rule.second_order and name != REFERENCE]
    return {REFERENCE: REFERENCE_COLOR, **dict(zip(others, PALETTE))}


def method_color(method: str) -> str:
    """The fixed colour of a method; an so_ rule shares its base rule's (method_linestyle tells them
    apart); unknown methods get a stable colour from their name."""
    colors = method_colors()
    base = method.removeprefix(SECOND_ORDER_PREFIX)
    if base in colors:
        return colors[base]
    return FALLBACK_COLORS[zlib.crc32(method.encode()) % len(FALLBACK_COLORS)]


def method_linestyle(method: str) -> str:
    """Dashed for an so_ rule, so it reads as its base rule's colour with activity propagation on top."""
    return "--" if method.startswith(SECOND_ORDER_PREFIX) and method != SECOND_ORDER_PREFIX else "-"


# Registered rules in registry order (plain, then so_), then others alphabetically: legends, rows and
# tables all list methods this way.
order_methods = in_registry_order


def dataset_label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def title_network(fig, network: str):
    """Name the network a figure shows above its panels (soap.networks.network_title of its runs): a
    LeNet-5's figure must not read as an MLP's. Returns the figure."""
    fig.suptitle(network, fontsize=11, fontweight="bold")
    if fig.get_layout_engine() is None:  # laid out by tight_layout before the title: again, with it
        fig.tight_layout()
    return fig


def styled(plot):
    """Run a plot function inside the study style."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE_RC):
            return plot(*args, **kwargs)

    return wrapper


def _examples_label(x, _pos=None) -> str:
    """Tick labels for counts of examples: 50k, 1.5M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


EXAMPLES_FORMATTER = matplotlib.ticker.FuncFormatter(_examples_label)
