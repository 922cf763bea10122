"""soap.plots.survival (figure 8): Kaplan-Meier curves as steps with their bands."""

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from soap.plots import plot_km


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


KM = pd.DataFrame({"dataset": "mnist", "method": ["fa", "fa", "bp", "bp"], "examples": [0, 300, 0, 100],
                   "survival": [1.0, 0.0, 1.0, 0.0], "ci_low": [1.0, 0.0, 1.0, 0.0], "ci_high": [1.0, 0.4, 1.0, 0.2]})


def test_each_method_is_a_step_curve_in_registry_order_with_target_and_phase_in_the_title():
    _, axes = plot_km(KM, targets={"mnist": 0.25}, phases={"mnist": "tuned"})
    ax = axes[0, 0]
    curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in curves] == ["bp", "fa"]
    assert all(line.get_drawstyle() == "steps-post" for line in curves)
    assert list(curves[0].get_xdata()) == [0, 100] and list(curves[0].get_ydata()) == [1.0, 0.0]
    assert ax.get_title() == "MNIST, target loss 0.25\ntuned runs" and ax.get_ylim() == (-0.02, 1.02)


def test_without_intervals_the_band_has_no_width():
    _, axes = plot_km(KM.drop(columns=["ci_low", "ci_high"]))
    for band in axes[0, 0].collections:
        ys = band.get_paths()[0].vertices[:, 1]
        assert set(ys) <= {0.0, 1.0}


def test_no_km_table_gives_a_no_data_panel():
    _, axes = plot_km(KM.iloc[0:0])
    assert not axes[0, 0].axison and axes[0, 0].texts[0].get_text() == "no time-to-target data"
