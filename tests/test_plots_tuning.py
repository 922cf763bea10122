"""soap.plots.tuning (figures 10 and 13) on hand-made trials."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from soap.plots import plot_tuning, plot_tuning_budget


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def trials():
    return pd.DataFrame({"dataset": "mnist", "method": "bp", "repeat": [0, 0, 0, 0, 1],
                         "number": [0, 1, 2, 3, 0], "value": [0.5, 0.7, 0.3, np.nan, 0.6],
                         "params_lr": [0.1, 0.2, 0.3, 0.4, 0.5],
                         "state": ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "TrialState.COMPLETE"]})


def test_history_is_each_studys_best_so_far_and_the_scatter_its_completed_trials():
    _, axes = plot_tuning(trials(), pd.DataFrame({"dataset": "mnist", "method": "bp", "repeat": [0], "lr": [0.3]}))
    ax_hist, ax_lr = axes[0]
    lines = [line for line in ax_hist.get_lines()]
    assert [list(line.get_ydata()) for line in lines] == [[0.5, 0.5, 0.3], [0.6]]
    assert [line.get_label() for line in lines] == ["bp", "_repeat"]
    (points,) = ax_lr.collections
    assert sorted(points.get_offsets()[:, 0]) == [0.1, 0.2, 0.3, 0.5]  # the failed trial left out
    assert [line.get_xdata()[0] for line in ax_lr.get_lines() if line.get_label() == "_best"] == [0.3]


def test_no_completed_trial_gives_two_no_data_panels():
    _, axes = plot_tuning(trials().assign(state="FAIL"))
    assert axes.shape == (1, 2) and not any(ax.axison for ax in axes[0])


def test_budget_curves_are_drawn_per_method_in_budget_order():
    curves = pd.DataFrame({"dataset": "mnist", "method": ["fa", "fa", "bp"], "budget": [2, 1, 1],
                           "expected_best": [0.2, 0.4, 0.3]})
    _, axes = plot_tuning_budget(curves, which="tuned repeats")
    (bp, fa) = axes[0, 0].get_lines()
    assert (bp.get_label(), fa.get_label()) == ("bp", "fa")
    assert list(fa.get_xdata()) == [1, 2] and list(fa.get_ydata()) == [0.4, 0.2]
    assert axes[0, 0].get_title() == "MNIST: tuned repeats"
    _, axes = plot_tuning_budget(curves.iloc[0:0])
    assert axes[0, 0].texts[0].get_text() == "no i.i.d. tuning trials"
