"""soap.plots.diagram (figure 5): every node drawn once, every edge an arrow between its nodes, and the
edges of issue 19: the nominal lr acts on every layer's step, the feedback gain on the hidden layers'
steps only."""

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
    assert len(arrows) == len(EDGES)
    assert [a.get_linestyle() for a in arrows].count("--") == 1
    plt.close(fig)


def test_lr_sets_every_layers_step_and_the_gain_only_the_hidden_layers():
    edges = {(src, dst) for src, dst, *_ in EDGES}
    assert {("nominal", "hidden"), ("nominal", "output"), ("gain", "hidden")} <= edges
    assert not {(src, dst) for src, dst in edges if src == "gain"} - {("gain", "hidden")}  # never the output layer
    assert {("hidden", "outcome"), ("output", "outcome"), ("method", "gain"), ("method", "outcome")} <= edges
    assert not [e for e in edges if e[0] == "nominal" and e[1] == "outcome"]  # lr acts through the steps
    assert NODES["output"][0].endswith("\nlr") and "g_l" in NODES["hidden"][0]
