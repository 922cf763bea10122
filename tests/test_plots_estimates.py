"""soap.plots.estimates (figures 6, 7, 11 and 14) on hand-made estimates tables."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from soap.plots import plot_forest, plot_grid_contrasts, plot_mediation, plot_rule_comparison
from soap.plots.estimates import FADED_ALPHA


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def estimate(method, estimand, value, dataset="mnist", outcome="test_loss", **extra):
    return {"dataset": dataset, "method": method, "reference": "bp", "estimand": estimand, "outcome": outcome,
            "estimate": value, "ci_low": value - 0.1, "ci_high": value + 0.1, **extra}


def _points(ax):
    """(x, y, alpha) of each error bar's marker."""
    return [(float(c.lines[0].get_xdata()[0]), float(c.lines[0].get_ydata()[0]), c.lines[0].get_alpha())
            for c in ax.containers]


def test_forest_has_a_panel_per_dataset_and_estimand_with_each_method_on_its_row():
    table = pd.DataFrame([estimate("sign", "tuned", -0.2, p_holm=0.01), estimate("fa", "tuned", 0.3),
                          estimate("fa", "fixed_lr", 0.5), estimate("fa", "tuned", 0.1, dataset="kmnist"),
                          estimate("fa", "tuned", 9.0, reference="sign")])
    _, axes = plot_forest(table)
    assert axes.shape == (2, 2)  # datasets x the estimands present, in FOREST_ESTIMANDS order
    assert [ax.get_title() for ax in axes[0]] == ["MNIST: at bp's tuned lr", "MNIST: each at its tuned lr"]
    assert sorted(_points(axes[0, 1])) == [(-0.2, -1.0, None), (0.3, 0.0, None)]  # fa's row above sign's
    assert [t.get_text() for t in axes[0, 0].get_yticklabels()] == ["fa"]
    assert "p=0.01" in [t.get_text() for t in axes[0, 1].texts]
    assert not axes[1, 0].axison and "no method-vs-bp estimates" in axes[1, 0].texts[0].get_text()


def test_forest_without_estimates_is_one_no_data_panel():
    _, axes = plot_forest(pd.DataFrame(columns=["estimand", "estimate"]))
    assert axes.shape == (1, 1) and not axes[0, 0].axison


def test_grid_contrasts_draw_each_lr_and_bps_tuned_lr():
    table = pd.DataFrame([estimate("sign", "grid_lr", v, lr=lr) for lr, v in ((0.1, -0.3), (1.0, 0.2))]
                         + [estimate("sign", "tuned", 5.0, lr=0.5)])
    _, axes = plot_grid_contrasts(table, tuned_lr={"mnist": {"bp": 0.3}})
    ax = axes[0, 0]
    (sign,) = [c for c in ax.containers if c.get_label() == "sign"]
    # one method: no side-by-side shift
    np.testing.assert_allclose(np.asarray(sign.lines[0].get_xdata(), float), [0.1, 1.0])
    np.testing.assert_allclose(np.asarray(sign.lines[0].get_ydata(), float), [-0.3, 0.2])
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_label() == "bp's tuned lr"] == [0.3]


def test_mediation_draws_each_effect_and_says_why_a_dataset_was_skipped():
    block = {"acme": {"estimate": 0.2, "ci_low": 0.1, "ci_high": 0.3, "sd": 0.05},
             "ade": {"estimate": -0.1, "ci_low": -0.2, "ci_high": 0.0}, "total": {"estimate": 0.1},
             "prop": {"estimate": 2.0, "ci_low": 0.5, "ci_high": 4.0}, "exposure": "sign", "control": "sign_scaled"}
    _, axes = plot_mediation({"mnist": block}, skipped={"kmnist": "too few seeds"})
    assert [(x, y) for x, y, _ in _points(axes[0, 0])] == [(0.2, 0.0), (-0.1, -1.0), (0.1, -2.0)]
    assert "proportion mediated 2.00\n(95% CI 0.50 to 4.00)" in axes[0, 0].get_title()
    assert [t.get_text() for t in axes[0, 0].texts] == ["SD 0.05"]
    assert "kmnist: no mediation analysis\n(too few seeds)" == axes[0, 1].texts[0].get_text()


def comparison(slopes=None):
    """sign and fa, each at its tuned lr and at matched effective lr, on loss and accuracy."""
    rows = [estimate(m, e, v, outcome=o) for o in ("test_loss", "test_acc")
            for m, e, v in (("sign", "tuned", -0.05), ("sign", "effective_lr", 0.02), ("fa", "tuned", 0.1),
                            ("fa", "effective_lr", 0.03))]
    table = pd.DataFrame(rows)
    if slopes is not None:
        table["slopes_differ"] = slopes * 2
    return table


def test_rule_comparison_fades_exactly_the_contrasts_whose_slopes_differ():
    # sign's effective_lr contrast rejected parallel curves on both outcomes; nothing else did
    slopes = [False, True, False, None]
    _, axes = plot_rule_comparison(comparison(slopes).astype({"slopes_differ": object}))
    for ax, factor in zip(axes[0], (1, 100)):
        faded = {round(x, 6) for x, _, alpha in _points(ax) if alpha == FADED_ALPHA}
        assert faded == {round(0.02 * factor, 6)}
        assert sum(alpha is None or alpha == 1.0 for _, _, alpha in _points(ax)) == 3


def test_rule_comparison_without_the_column_or_with_a_note_fades_nothing():
    table = comparison().assign(note="fa's slope in log effective lr differs from bp's")
    _, axes = plot_rule_comparison(table)
    assert len(_points(axes[0, 0])) == 4 and all(alpha != FADED_ALPHA for _, _, alpha in _points(axes[0, 0]))


def test_rule_comparison_rejects_a_slopes_differ_that_is_not_boolean():
    with pytest.raises(ValueError, match="slopes_differ must hold booleans"):
        plot_rule_comparison(comparison(["yes", "no", "no", "no"]))


def test_rule_comparison_shows_accuracy_in_points_and_the_references_level():
    _, axes = plot_rule_comparison(comparison(), {"mnist": {"test_loss": 0.3, "test_acc": 0.95}})
    assert sorted(x for x, _, _ in _points(axes[0, 1])) == pytest.approx([-5.0, 2.0, 3.0, 10.0])
    assert axes[0, 1].get_title() == "MNIST (bp at its tuned lr: 95%)"
    assert [t.get_text() for t in axes[0, 0].get_yticklabels()] == ["fa", "sign"]
    # each rule's two estimands side by side on its row: tuned just above, effective_lr just below
    assert sorted((round(y, 6), x) for x, y, _ in _points(axes[0, 0])) == [
        (-1.16, 0.02), (-0.84, -0.05), (-0.16, 0.03), (0.16, 0.1)]
    _, axes = plot_rule_comparison(comparison()[lambda t: t["outcome"] == "test_loss"])
    assert "no test acc contrasts against bp" in axes[0, 1].texts[0].get_text()
