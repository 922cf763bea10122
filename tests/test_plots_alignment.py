"""soap.plots.alignment (figure 9): a row per (dataset, quantity), a column per layer."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from soap.plots import plot_alignment
from soap.plots.alignment import layer_columns


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def curves():
    """fa on two datasets, angles logged for layers 0 and 1, the error-signal cosine for layer 0 only."""
    rows = []
    for dataset in ("mnist", "fashion_mnist"):
        for seed in (0, 1):
            for examples in (0, 100):
                rows.append({"dataset": dataset, "method": "fa", "seed": seed, "examples": examples,
                             "angle_l1": 80.0 - examples / 10 + seed, "angle_l0": 85.0, "cos_l0": 0.5 + seed / 10})
    return pd.DataFrame(rows)


def test_layer_columns_are_ordered_by_layer_number():
    table = pd.DataFrame(columns=["angle_l10", "angle_l2", "angle_lx", "cos_l0", "angle_l0"])
    assert layer_columns(table, "angle") == ["angle_l0", "angle_l2", "angle_l10"]


def test_rows_are_datasets_times_quantities_and_columns_are_layers():
    _, axes = plot_alignment(curves())
    assert axes.shape == (4, 2)
    assert [ax.get_title() for ax in axes[:, 0]] == ["MNIST, layer 0", "MNIST, layer 0", "Fashion-MNIST, layer 0",
                                                     "Fashion-MNIST, layer 0"]
    assert axes[0, 1].get_title() == "MNIST, layer 1" and not axes[1, 1].axison  # no cosine for layer 1
    (fa,) = [line for line in axes[0, 1].get_lines() if line.get_label() == "fa"]
    np.testing.assert_allclose(fa.get_ydata(), [80.5, 70.5])  # mean over the two seeds
    assert axes[0, 0].get_ylim() == (0, 92) and axes[1, 0].get_ylim()[1] == 1.03
    assert axes[3, 0].get_xlabel() == "training examples seen" and axes[2, 0].get_xlabel() == ""


def test_no_curves_give_a_no_data_panel():
    _, axes = plot_alignment(None)
    assert axes.shape == (2, 1) and not axes[0, 0].axison
    assert axes[0, 0].texts[0].get_text() == "no angle logged\nfor this layer"
