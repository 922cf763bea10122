"""soap.plots.facets: one panel (or row of panels) per dataset, in the table's dataset order."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from soap.plots import facets as F
from soap.plots import plot_km, plot_lr_response, plot_tuning


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_datasets_come_in_order_of_first_appearance_without_missing_values():
    table = pd.DataFrame({"dataset": ["mnist", "fashion_mnist", "mnist", None, "kmnist"]})
    assert F.datasets_of(table) == ["mnist", "fashion_mnist", "kmnist"]
    assert F.datasets_of(None) == [] and F.datasets_of(table.iloc[0:0]) == []
    assert F.datasets_of(pd.DataFrame({"method": ["bp"]})) == []


def test_side_by_side_facets_give_one_axis_per_dataset_in_order():
    fig, axes, datasets = F.dataset_facets(["b", "a", "c"], panel=(2.0, 3.0))
    assert datasets == ["b", "a", "c"] and axes.shape == (1, 3)
    assert tuple(fig.get_size_inches()) == (6.0, 3.0)


def test_row_facets_give_each_dataset_its_rows_of_panels():
    fig, axes, datasets = F.dataset_facets(["a", "b"], columns=3, rows_per_dataset=2, panel=(1.5, 1.0), sharex=True)
    assert axes.shape == (4, 3) and datasets == ["a", "b"]
    assert tuple(fig.get_size_inches()) == (4.5, 4.0)
    assert axes[0, 0].get_shared_x_axes().joined(axes[0, 0], axes[3, 2])


def test_no_dataset_still_gives_one_panel_for_the_message():
    _, axes, datasets = F.dataset_facets([])
    assert axes.shape == (1, 1) and datasets == [F.NO_DATASET]
    _, axes, _ = F.dataset_facets([], columns=2)
    assert axes.shape == (1, 2)


def test_dataset_rows_are_none_without_the_columns_a_figure_needs():
    table = pd.DataFrame({"dataset": ["a", "b", "a"], "x": [1, 2, 3]})
    assert list(F.dataset_rows(table, "a", "x")["x"]) == [1, 3]
    assert F.dataset_rows(table, "a", "y") is None
    assert F.dataset_rows(None, "a") is None and F.dataset_rows(table.iloc[0:0], "a") is None
    assert F.dataset_rows(table, "c", "x").empty


def _titles(axes):
    return [ax.get_title() for ax in np.ravel(axes)]


def test_figures_facet_their_datasets_in_the_tables_order():
    runs = pd.DataFrame({"dataset": ["fashion_mnist", "fashion_mnist", "mnist", "mnist"], "method": "bp",
                         "seed": [0, 1, 0, 1], "lr": 0.1, "test_loss": [0.3, 0.4, 0.2, 0.25], "diverged": False})
    _, axes = plot_lr_response(runs)
    assert _titles(axes) == ["Fashion-MNIST", "MNIST"]
    _, axes = plot_lr_response(runs.iloc[::-1])
    assert _titles(axes) == ["MNIST", "Fashion-MNIST"]
    km = pd.DataFrame({"dataset": ["mnist", "fashion_mnist"], "method": "bp", "examples": [10, 10],
                       "survival": [0.5, 0.5]})
    assert _titles(plot_km(km)[1]) == ["MNIST", "Fashion-MNIST"]
    trials = pd.DataFrame({"dataset": ["mnist", "kmnist"], "method": "bp", "repeat": 0, "number": 0,
                           "value": [0.5, 0.6], "params_lr": 0.1})
    _, axes = plot_tuning(trials)
    assert axes.shape == (2, 2) and _titles(axes[:, 0]) == ["MNIST: optimisation history",
                                                           "kmnist: optimisation history"]


def test_dataset_panels_hand_out_the_datasets_with_rows_and_say_why_for_the_others():
    table = pd.DataFrame({"dataset": ["a", "b", "b"], "x": [1.0, np.nan, 2.0]})
    fig, axes, panels = F.dataset_panels(table, "nothing here", "x", select=lambda rows: rows[rows["x"] > 1])
    assert axes.shape == (1, 2) and [(ax, d, list(r["x"])) for ax, d, r in panels] == [(axes[0, 1], "b", [2.0])]
    assert not axes[0, 0].axison and axes[0, 0].texts[0].get_text() == "nothing here"
    _, axes, panels = F.dataset_panels(table, "no y", "y")
    assert panels == [] and axes.shape == (1, 2)


def test_dataset_grid_gives_a_cell_per_dataset_and_value():
    table = pd.DataFrame({"dataset": ["a", "a", "b"], "outcome": ["loss", "acc", "loss"], "v": [1, 2, 3]})
    _, axes, datasets, panels = F.dataset_grid(table, "outcome", ["loss", "acc"], lambda v: f"no {v}")
    assert axes.shape == (2, 2) and datasets == ["a", "b"]
    assert [(d, c, list(rows["v"])) for _, d, c, rows in panels] == [("a", 0, [1]), ("a", 1, [2]), ("b", 0, [3])]
    assert axes[1, 1].texts[0].get_text() == "no acc"
    _, axes, _, panels = F.dataset_grid(None, "outcome", ["loss"], lambda v: "none")
    assert axes.shape == (1, 1) and panels == []
