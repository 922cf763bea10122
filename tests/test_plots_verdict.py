"""soap.plots.verdict: the intervention arms' figures on a hand-made runs table whose optimum moves
exactly with the gain (lr* = lr*_bp / gain), so the optimum-shift slope is 1 by construction."""

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from soap.plots import verdict as V

LRS = np.exp(np.arange(-3.0, 4.0))  # log lr -3 .. 3
MARGINS = {"test_loss": 0.02}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def runs():
    """Grid runs whose validation loss is (log lr + log gain)^2: bp's optimum at log lr 0, each variant's at
    -log gain. sign_scaled is dosed at two alphas; bp_matched runs sit in their own phase."""
    rows = []
    variants = {("bp", 1.0): 1.0, ("sign", 1.0): math.exp(0.5), ("sign_scaled", 1.0): math.e,
                ("sign_scaled", 2.0): math.e ** 2, ("fa", 1.0): math.exp(-1)}
    for (method, alpha), gain in variants.items():
        for lr in LRS:
            for seed in (0, 1):
                loss = (math.log(lr) + math.log(gain)) ** 2
                rows.append({"dataset": "mnist", "phase": "grid", "method": method, "feedback_scale": alpha,
                             "optimizer": "sgd", "lr": lr, "seed": seed, "feedback_gain": gain, "diverged": False,
                             "val_loss": loss, "test_loss": loss})
    for lr in LRS[:2]:
        for seed in (0, 1):
            rows.append({"dataset": "mnist", "phase": "matched", "method": "bp", "feedback_scale": 1.0,
                         "optimizer": "sgd", "lr": lr, "seed": seed, "feedback_gain": 1.0, "diverged": False,
                         "val_loss": 1.0, "test_loss": 1.0 + lr + 0.2 * seed})
    return pd.DataFrame(rows)


VERDICT = pd.DataFrame({"dataset": "mnist", "row": ["c", "c", "a"], "outcome": "test_loss",
                        "contrast": ["sign - sign_scaled under sgd", "under adam", "dose"],
                        "estimate": [0.05, 0.0, 9.0], "ci_low": [0.03, -0.01, 8.0], "ci_high": [0.07, 0.01, 10.0]})


def _drawn(ax) -> bool:
    return ax.axison and "arm not run in this study" not in [t.get_text() for t in ax.texts]


def test_dose_draws_one_line_per_dosed_rule_and_alpha_at_effective_lr():
    _, ax = V.plot_dose(runs())
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"sign_scaled alpha=1", "sign_scaled alpha=2"}  # only sign_scaled has two alphas
    np.testing.assert_allclose(lines["sign_scaled alpha=2"].get_xdata(), LRS * math.e ** 2)
    assert ax.get_xscale() == "log"


def test_matched_draws_bp_sign_and_bp_matched_with_their_intervals():
    _, ax = V.plot_matched(runs())
    assert [c.get_label() for c in ax.containers] == ["bp", "sign", "bp_matched"]
    matched = ax.containers[2]
    np.testing.assert_allclose(np.asarray(matched.lines[0].get_ydata(), float), 1.1 + LRS[:2])
    # the two seeds differ by 0.2: sem 0.1, a 95% bar of 1.96 sem on each side
    segments = matched.lines[2][0].get_segments()
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], [2 * 1.96 * 0.1] * 2)


def test_optimizers_draw_row_c_with_the_margin_as_a_band():
    _, ax = V.plot_optimizers(VERDICT, MARGINS)
    (bars,) = ax.containers
    assert list(bars.lines[0].get_xdata()) == [0.05, 0.0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["mnist: sign - sign_scaled under sgd",
                                                            "mnist: under adam"]
    (band,) = ax.patches
    assert (band.get_x(), band.get_x() + band.get_width()) == pytest.approx((-0.02, 0.02))


def test_optimum_shift_fits_slope_one_where_gain_acts_as_learning_rate():
    _, ax = V.plot_optimum_shift(runs())
    (points,) = ax.collections
    x, y = points.get_offsets().T
    np.testing.assert_allclose(sorted(x), [-1.0, 0.5, 1.0, 2.0])  # log gain of fa, sign, sign_scaled x2
    np.testing.assert_allclose(x, y, atol=1e-9)
    assert [line.get_label() for line in ax.get_lines()] == ["fit, slope 1.00", "slope 1"]


@pytest.mark.parametrize("plot", [lambda r: V.plot_dose(r), lambda r: V.plot_matched(r),
                                  lambda r: V.plot_optimum_shift(r),
                                  lambda r: V.plot_optimizers(VERDICT.iloc[0:0], MARGINS)])
def test_an_arm_not_run_gives_a_panel_that_says_so(plot):
    table = runs()
    table = table[(table["phase"] == "grid") & (table["feedback_scale"] == 1.0) & (table["method"] == "bp")]
    fig, ax = plot(table)
    assert isinstance(fig, plt.Figure) and not _drawn(ax)


def test_write_figures_writes_one_png_per_verdict_row_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = V.verdict_figures(runs(), VERDICT, MARGINS)
    assert list(made) == list(V.FIGURES) and all(_drawn(ax) for _, ax in made.values())
    assert os.listdir(tmp_path) == []  # drawing writes nothing
    paths = V.write_figures(runs(), VERDICT, MARGINS, tmp_path / "verdict")
    assert paths == [tmp_path / "verdict" / f"{stem}.png" for stem in V.FIGURES]
    assert sorted(os.listdir(tmp_path / "verdict")) == sorted(f"{stem}.png" for stem in V.FIGURES)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
