"""soap.plots.panels: the pieces several figures draw."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from soap.plots import panels


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_no_data_turns_the_axis_into_a_wrapped_message(ax):
    panels.no_data(ax, "a very long reason " * 5 + "\nsecond line")
    assert not ax.axison
    lines = ax.texts[0].get_text().splitlines()
    assert max(map(len, lines)) <= 48 and lines[-1] == "second line"


def test_band_sorts_by_x_and_shades_the_interval(ax):
    summary = pd.DataFrame({"x": [2, 1], "mean": [0.2, 0.1], "ci_low": [0.1, 0.0], "ci_high": [0.3, 0.2]})
    panels.band(ax, summary, "x", "#123456", "m")
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2] and ax.get_lines()[0].get_label() == "m"
    (fill,) = ax.collections
    ys = fill.get_paths()[0].vertices[:, 1]
    assert ys.min() == 0.0 and ys.max() == pytest.approx(0.3)


def test_a_log_axis_stays_near_the_means_when_a_band_reaches_zero(ax):
    ax.plot([1, 2], [1e-6, 1.0])
    ax.set_yscale("log")
    panels.clip_log_bands(ax, 0.1)
    assert ax.get_ylim()[0] == pytest.approx(0.05)


def test_one_legend_below_without_repeats_or_hidden_labels(ax):
    ax.plot([0], [0], label="bp")
    ax.plot([0], [0], label="_hidden")
    other = ax.figure.add_subplot(2, 1, 2)
    other.plot([0], [0], label="bp")
    other.plot([0], [0], label="fa")
    panels.legend_below(ax.figure, np.array([ax, other]))
    assert [t.get_text() for t in ax.figure.legends[0].get_texts()] == ["bp", "fa"]


def test_finite_numbers_and_error_bars():
    assert panels.finite(1) and panels.finite("2.5")
    assert not any(panels.finite(x) for x in (None, math.nan, math.inf, "n/a"))
    assert panels.number(0.1234) == "0.12" and panels.number(None) == "n/a"
    assert panels.xerr(1.0, 0.5, None) == [[0.5], [0.0]]
