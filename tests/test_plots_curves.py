"""soap.plots.curves (figures 1 and 2) on a hand-made curves table whose crossings are known."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from soap.plots import plot_bp_vs_fa, plot_fixed_lr_curves


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def curves(methods=("bp", "fa", "sign")):
    """Two seeds per method; seed losses straddle the mean: bp's mean falls to 0.5 at 100 examples, fa's
    at 200, sign's never."""
    means = {"bp": [1.0, 0.5, 0.25], "fa": [1.0, 0.8, 0.5], "sign": [1.0, 0.9, 0.8]}
    rows = []
    for method in methods:
        for seed, shift in ((0, -0.05), (1, 0.05)):
            for examples, mean in zip((0, 100, 200), means[method]):
                rows.append({"dataset": "mnist", "method": method, "seed": seed, "run_id": f"{method}{seed}",
                             "examples": examples, "train_loss_ema": mean + shift * mean, "diverged": False})
    return pd.DataFrame(rows)


def _text(ax):
    return "\n".join(t.get_text() for t in ax.texts)


def test_bp_vs_fa_draws_only_bp_and_fa_with_their_mean_curves():
    fig, axes = plot_bp_vs_fa(curves(), targets={"mnist": 0.5})
    ax = axes[0, 0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {"bp (2 seeds)", "fa (2 seeds)"} <= set(lines) and not any(k.startswith("sign") for k in lines)
    np.testing.assert_allclose(lines["fa (2 seeds)"].get_ydata(), [1.0, 0.8, 0.5])
    assert [label.get_text() for label in fig.legends[0].get_texts()] == ["bp (2 seeds)", "fa (2 seeds)",
                                                                         "target loss"]


def test_bp_vs_fa_says_how_much_later_fa_crosses_the_target_and_the_analysis_ratio():
    ratio = {"estimate": 1.9, "ci_low": 1.5, "ci_high": 2.4, "phase": "tuned"}
    _, axes = plot_bp_vs_fa(curves(), {"mnist": 0.5}, {"mnist": ratio}, {"mnist": 0.05})
    text = _text(axes[0, 0])
    assert "fa takes 2x bp's examples" in text  # 200 / 100
    assert "ratio of medians (tuned runs): 1.90x\n(95% CI 1.50 to 2.40)" in text
    assert axes[0, 0].get_title() == "MNIST, lr = 0.05"


def test_without_a_target_or_ratio_the_panel_says_so():
    _, axes = plot_bp_vs_fa(curves())
    assert "time to target not available" in _text(axes[0, 0])


def test_a_diverged_run_is_marked_at_its_last_point():
    table = curves()
    table.loc[(table["run_id"] == "fa1") & (table["examples"] == 200), "train_loss_ema"] = np.nan
    table.loc[table["run_id"] == "fa1", "diverged"] = True
    _, axes = plot_fixed_lr_curves(table.dropna(subset=["train_loss_ema"]))
    marks = [line for line in axes[0, 0].get_lines() if line.get_label() == "_diverged"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [100]


@pytest.mark.parametrize("table", [None, pd.DataFrame(), curves(("sign",))])
def test_no_bp_or_fa_curves_give_a_no_data_panel(table):
    _, axes = plot_bp_vs_fa(table)
    assert axes.shape == (1, 1) and not axes[0, 0].axison
    assert "no bp / fa training curves" in _text(axes[0, 0])


def test_fixed_lr_curves_draw_every_method_in_registry_order():
    _, axes = plot_fixed_lr_curves(curves(("sign", "fa", "bp")), lrs={"mnist": 0.1})
    labels = [line.get_label() for line in axes[0, 0].get_lines() if not line.get_label().startswith("_")]
    assert labels == ["bp (2 seeds)", "fa (2 seeds)", "sign (2 seeds)"]
    assert axes[0, 0].get_title() == "MNIST, every method at lr = 0.1"
    assert axes[0, 0].get_yscale() == "log"
