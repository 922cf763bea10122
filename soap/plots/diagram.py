"""The causal diagram (figure 5): the rule acts on the loss through its direction and, through its
feedback gain, on the hidden layers' step sizes; the nominal lr sets every layer's step; a learning rate
chosen for another method confounds the comparison."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch

from soap.plots.style import styled
from soap.rules import REFERENCE

# Node positions in axis coordinates (0..1): the rule's path along the top row, the learning rates below.
# Under SGD the nominal lr sets every layer's step; the feedback gain multiplies the hidden layers' steps
# only, because the output layer's error is the loss gradient itself, whatever the rule (issue 19).
NODES = {
    "method": ("method\n(feedback rule)", (0.08, 0.66)),
    "gain": (f"feedback gain g_l\n|δ_l rule| / |δ_l {REFERENCE}|", (0.33, 0.66)),
    "hidden": ("hidden layer l's step\nlr × g_l", (0.62, 0.66)),
    "output": ("output layer's step\nlr", (0.62, 0.36)),
    "outcome": ("test loss", (0.91, 0.51)),
    "nominal": ("nominal lr", (0.33, 0.14)),
    "other": (f"lr chosen for\nanother method ({REFERENCE})", (0.10, 0.14)),
}
EDGES = [
    # (from, to, line style, colour, label, label position)
    ("method", "gain", "-", "#222222", None, None),
    ("gain", "hidden", "-", "#222222", None, None),
    ("nominal", "hidden", "-", "#222222", None, None),
    ("nominal", "output", "-", "#222222", None, None),
    ("hidden", "outcome", "-", "#222222", None, None),
    ("output", "outcome", "-", "#222222", None, None),
    ("method", "outcome", "-", "#222222", "direct: the rule's error direction", (0.50, 0.97)),
    ("method", "nominal", "--", "#4477AA", "lr tuned for this method:\na mediator of its effect", (0.12, 0.40)),
    ("other", "nominal", ":", "#CC3311", f"lr tuned for {REFERENCE}:\nconfounds the comparison", (0.22, -0.02)),
]


@styled
def plot_causal_diagram():
    """Figure 5: the causal diagram of method, feedback gain, learning rates and outcome."""
    fig, ax = plt.subplots(figsize=(10, 4.6), layout="constrained")
    ax.set(xlim=(0, 1), ylim=(-0.06, 1.02))
    ax.set_axis_off()
    boxes = {}
    for key, (text, (x, y)) in NODES.items():
        boxes[key] = ax.text(x, y, text, ha="center", va="center", fontsize=12, zorder=3,
                             bbox={"boxstyle": "round,pad=0.5", "facecolor": "#fbfbfb",
                                   "edgecolor": "#444444", "lw": 1.2})
    fig.canvas.draw()  # text boxes need a renderer before arrows can be clipped to them
    for src, dst, style, color, label, where in EDGES:
        arc = "arc3,rad=-0.35" if (src, dst) == ("method", "outcome") else "arc3,rad=0"
        ax.add_patch(FancyArrowPatch(NODES[src][1], NODES[dst][1], arrowstyle="-|>",
                                     mutation_scale=18, lw=1.8, ls=style, color=color, connectionstyle=arc,
                                     patchA=boxes[src].get_bbox_patch(), patchB=boxes[dst].get_bbox_patch(),
                                     zorder=2))
        if label:
            ax.text(*where, label, ha="center", va="center", fontsize=10.5, color=color, style="italic")
    return fig, np.array([[ax]])
