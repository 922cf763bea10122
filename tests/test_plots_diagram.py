"""soap.plots.diagram (figure 5): every node drawn once, every edge an arrow."""

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch

from soap.plots import plot_causal_diagram
from soap.plots.diagram import EDGES, NODES


def test_the_diagram_draws_each_node_and_each_labelled_edge():
    fig, axes = plot_causal_diagram()
    ax = axes[0, 0]
    texts = [t.get_text() for t in ax.texts]
    assert all(texts.count(label) == 1 for label, _ in NODES.values())
    assert "lr tuned for bp:\nconfounds the comparison" in texts
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == len(EDGES) == 7
    assert [a.get_linestyle() for a in arrows].count("--") == 1
    plt.close(fig)
