"""soap.plots.lr_response (figures 3, 4 and 12) on hand-made grid runs."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from soap.plots import plot_divergence, plot_effective_lr_response, plot_lr_response


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def grid():
    """bp and sign at two lrs, two seeds; sign diverges at lr 1 for seed 1 (no final loss)."""
    rows = []
    for method, gain in (("bp", 1.0), ("sign", 20.0)):
        for lr in (0.1, 1.0):
            for seed in (0, 1):
                diverged = method == "sign" and lr == 1.0 and seed == 1
                rows.append({"dataset": "mnist", "method": method, "lr": lr, "seed": seed, "diverged": diverged,
                             "test_loss": np.nan if diverged else lr + seed / 10 + (gain > 1),
                             "effective_lr": lr * gain * (1 + seed)})
    return pd.DataFrame(rows)


def _line(ax, label):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def test_lr_response_draws_the_mean_over_seeds_and_marks_divergence_and_the_tuned_lr(grid):
    _, axes = plot_lr_response(grid, tuned_lr={"mnist": {"bp": 0.1}}, fixed_lr={"mnist": 1.0})
    ax = axes[0, 0]
    np.testing.assert_allclose(_line(ax, "bp").get_ydata(), [0.15, 1.05])
    np.testing.assert_allclose(_line(ax, "sign").get_ydata(), [1.15, 2.0])  # lr 1: seed 0's alone
    diverged = [line for line in ax.get_lines() if line.get_label() == "_diverged"]
    assert [list(line.get_xdata()) for line in diverged] == [[], [1.0]]
    tuned = _line(ax, "_tuned")
    assert list(tuned.get_xdata()) == [0.1] and tuned.get_color() == _line(ax, "bp").get_color()
    assert _line(ax, "shared lr").get_xdata()[0] == 1.0
    assert ax.get_xscale() == ax.get_yscale() == "log"


def test_a_wide_band_runs_off_the_bottom_at_half_the_lowest_value():
    # two seeds 0.1 apart: the t-interval (t = 12.7) reaches down to 0.415, below half the lowest mean
    # (1.05) and half the lowest run (1.0)
    runs = pd.DataFrame({"dataset": "mnist", "method": "bp", "lr": [0.1, 0.1, 1.0, 1.0], "seed": [0, 1, 0, 1],
                         "diverged": False, "test_loss": [1.0, 1.1, 1.0, 1.1], "effective_lr": [0.1, 0.1, 1.0, 1.0]})
    assert plot_lr_response(runs)[1][0, 0].get_ylim()[0] == pytest.approx(1.05 / 2)
    # the effective-lr figure shows the runs as points too: half the lowest run
    assert plot_effective_lr_response(runs)[1][0, 0].get_ylim()[0] == pytest.approx(1.0 / 2)


def test_effective_lr_response_puts_each_lr_at_its_geometric_mean_effective_lr(grid):
    _, axes = plot_effective_lr_response(grid)
    sign = _line(axes[0, 0], "sign")
    # seeds' effective lrs at lr 0.1 are 2 and 4; at lr 1 only seed 0's finite run counts for the mean,
    # but both runs' effective lrs (20, 40) place the point
    np.testing.assert_allclose(sign.get_xdata(), [stats.gmean([2.0, 4.0]), stats.gmean([20.0, 40.0])])
    np.testing.assert_allclose(sign.get_ydata(), [1.15, 2.0])


def test_runs_without_a_positive_effective_lr_give_a_no_data_panel(grid):
    _, axes = plot_effective_lr_response(grid.assign(effective_lr=0.0))
    assert not axes[0, 0].axison and "no grid runs with an effective learning rate" in axes[0, 0].texts[0].get_text()


def test_divergence_draws_each_rate_with_its_interval():
    cells = pd.DataFrame({"dataset": "mnist", "method": ["sign", "sign", "bp"], "lr": [1.0, 0.1, 1.0],
                          "rate": [0.5, 0.0, 0.0], "ci_low": [0.1, 0.0, 0.0], "ci_high": [0.9, 0.4, 0.3]})
    _, axes = plot_divergence(cells)
    ax = axes[0, 0]
    sign = next(c for c in ax.containers if c.get_label() == "sign")
    assert list(sign.lines[0].get_xdata()) == [0.1, 1.0] and list(sign.lines[0].get_ydata()) == [0.0, 0.5]
    assert ax.get_ylim() == (-0.03, 1.03)
    _, axes = plot_divergence(cells.drop(columns="rate"))
    assert "no grid runs" in axes[0, 0].texts[0].get_text()
