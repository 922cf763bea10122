"""soap.plots.verdict: the verdict stage's figures on hand-made tables whose drawn values are known: the
factorial's four cells (means and t intervals over seeds), the decomposition's effects, the verdict rows
against their margin, the descriptive rows without a reference line, and the optimum shift on runs
whose optimum moves exactly with the gain (slope 1 by construction)."""

import math
import os
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from soap.plots import verdict as V

REPO = Path(__file__).resolve().parents[1]
LRS = np.exp(np.arange(-3.0, 4.0))  # log lr -3 .. 3
FACTORIAL_LRS = (0.01, 0.1)
# per cell (method, step_rule): test loss of seeds 0, 1, 2 at lr 0.01; at 0.1 each is 0.5 more
CELLS = {("bp", "bp"): [1.0, 1.2, 1.4], ("sign", "sign"): [0.6, 0.7, 0.8], ("bp", "sign"): [0.5, 0.7, 0.9],
         ("sign", "bp"): [1.1, 1.1, 1.1]}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


NETWORK = {"architecture": "lenet5", "layers": "1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu"}


def factorial_runs(diverged=()):
    """The four cells of sign's factorial; `diverged` lists (method, step_rule, seed) runs that diverged."""
    rows = []
    for (method, step), losses in CELLS.items():
        for lr in FACTORIAL_LRS:
            for seed, loss in enumerate(losses):
                bad = (method, step, seed) in diverged
                value = np.nan if bad else loss + (0.5 if lr == 0.1 else 0.0)
                rows.append({"dataset": "mnist", "phase": "grid", "method": method, "step_rule": step,
                             "optimizer": "sgd", "feedback_scale": 1.0, "lr": lr, "seed": seed, "feedback_gain": 1.0,
                             "diverged": bad, "val_loss": value, "test_loss": value, "test_acc": 0.9, **NETWORK})
    return pd.DataFrame(rows)


def shift_runs():
    """Grid runs whose validation loss is (log lr + log gain)^2: bp's optimum at log lr 0, each variant's at
    -log gain."""
    rows = []
    variants = {("bp", 1.0): 1.0, ("sign", 1.0): math.exp(0.5), ("sign_scaled", 1.0): math.e,
                ("sign_scaled", 2.0): math.e ** 2, ("fa", 1.0): math.exp(-1)}
    for (method, alpha), gain in variants.items():
        for lr in LRS:
            for seed in (0, 1):
                loss = (math.log(lr) + math.log(gain)) ** 2
                rows.append({"dataset": "mnist", "phase": "grid", "method": method, "feedback_scale": alpha,
                             "optimizer": "sgd", "lr": lr, "seed": seed, "feedback_gain": gain, "diverged": False,
                             "val_loss": loss, "test_loss": loss, "test_acc": 0.9, **NETWORK})
    return pd.DataFrame(rows)


DECOMPOSITION = pd.DataFrame([
    {"dataset": "mnist", "rule": "sign", "lr": lr, "outcome": outcome, "unit": unit, "effect": effect,
     "estimate": k * base, "ci_low": k * base - 0.1, "ci_high": k * base + 0.1}
    for lr, base in ((0.01, 1.0), (0.1, 2.0)) for outcome, unit in (("test_loss", "nats"), ("test_acc", "points"))
    for k, effect in enumerate(("total", "step", "direction_at_r_steps", "direction_at_bp_steps", "interaction"))])
VERDICT = pd.DataFrame({
    "dataset": "mnist", "row": ["direction_at_bp_steps", "primary", "non_inferiority"],
    "kind": ["secondary", "primary", "secondary"], "primary": [False, True, False],
    "contrast": ["bp - sign@bp at lr 0.01", "bp@sign - sign at lr 0.01", "bp@sign - sign at lr 0.01"],
    "outcome": ["test_loss", "test_loss", "test_acc"], "unit": ["nats", "nats", "points"],
    "estimate": [0.02, 0.001, -0.3], "ci_low": [0.01, -0.01, -0.6], "ci_high": [0.03, 0.012, 0.0],
    "null": [0.015, 0.015, -0.5]})
DESCRIPTIVE = pd.DataFrame({
    "dataset": "mnist", "row": ["alpha_did", "alpha_did", "optimum_shift"], "unit": ["nats", "nats", "slope"],
    "contrast": ["sign: alpha 4 vs 1 minus bp's alpha effect", "fa: alpha 4 vs 1", "slope of log(lr*_bp / lr*)"],
    "estimate": [0.1, -0.2, 0.5], "ci_low": [0.0, -0.3, 0.3], "ci_high": [0.2, -0.1, 0.7]})
TABLES = SimpleNamespace(verdict=VERDICT, descriptive=DESCRIPTIVE, decomposition=DECOMPOSITION)


def _drawn(axes) -> bool:
    texts = [t.get_text() for ax in axes for t in ax.texts]
    return all(ax.axison for ax in axes) and not any(t.startswith(("no ", "too few")) for t in texts)


def _half_width(values) -> float:
    values = np.asarray(values)
    return stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))


def test_factorial_cells_draw_each_cell_mean_and_t_interval_over_seeds():
    _, axes = V.plot_factorial_cells(factorial_runs())
    (ax,) = axes
    bars = {c.get_label(): c for c in ax.containers}
    assert list(bars) == ["bp", "sign", "bp@sign", "sign@bp"] and ax.get_title() == "mnist: sign"
    for (method, step), losses in CELLS.items():
        bar = bars[method if method == step else f"{method}@{step}"]
        np.testing.assert_allclose(bar.lines[0].get_xdata(), FACTORIAL_LRS)
        np.testing.assert_allclose(bar.lines[0].get_ydata(), [np.mean(losses), np.mean(losses) + 0.5])
        segments = bar.lines[2][0].get_segments()
        np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], [2 * _half_width(losses)] * 2, atol=1e-12)


def test_factorial_cells_leave_diverged_runs_out_of_the_mean():
    _, (ax,) = V.plot_factorial_cells(factorial_runs(diverged={("sign", "sign", 2)}))
    sign = next(c for c in ax.containers if c.get_label() == "sign")
    np.testing.assert_allclose(sign.lines[0].get_ydata(), [0.65, 1.15])


def test_decomposition_draws_every_effect_of_the_outcome_with_its_interval():
    _, (ax,) = V.plot_decomposition(DECOMPOSITION)
    labels = [c.get_label() for c in ax.containers]
    assert labels == [V.EFFECT_LABELS[e] for e in ("total", "step", "direction_at_r_steps", "direction_at_bp_steps",
                                                    "interaction")]
    for k, bar in enumerate(ax.containers):
        np.testing.assert_allclose(bar.lines[0].get_ydata(), [k * 1.0, k * 2.0])
        segments = bar.lines[2][0].get_segments()
        np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], [0.2, 0.2])
    assert "nats" in ax.get_ylabel()
    _, (acc,) = V.plot_decomposition(DECOMPOSITION, "test_acc")
    assert "points" in acc.get_ylabel()


def test_primary_draws_the_primary_row_first_against_the_margin():
    _, axes = V.plot_primary(VERDICT)
    assert len(axes) == 2  # one panel per outcome
    loss = axes[0]
    by_height = sorted((t.get_position()[1], t.get_text()) for t in loss.get_yticklabels())
    # the primary row on top
    assert [text for _, text in by_height][::-1] == ["primary: mnist bp@sign - sign at lr 0.01",
                                                     "secondary: mnist bp - sign@bp at lr 0.01"]
    margins = [line.get_xdata()[0] for line in loss.get_lines() if line.get_linestyle() == "--"]
    assert margins == [0.015]
    acc_margins = [line.get_xdata()[0] for line in axes[1].get_lines() if line.get_linestyle() == "--"]
    assert acc_margins == [-0.5]  # an accuracy's margin on its own side
    primary = loss.containers[0]
    assert primary.lines[0].get_xdata()[0] == 0.001
    segments = primary.lines[2][0].get_segments()
    np.testing.assert_allclose(segments[0][:, 0], [-0.01, 0.012])


def test_descriptive_rows_get_one_panel_per_kind_and_no_reference_line():
    _, axes = V.plot_descriptive(DESCRIPTIVE)
    assert [ax.get_title() for ax in axes] == ["descriptive: alpha_did", "descriptive: optimum_shift"]
    for ax in axes:  # no margin, no zero line: nothing is predicted, so only the error bars' own lines
        own = {line for c in ax.containers for line in (c.lines[0], *c.lines[1])}
        assert set(ax.get_lines()) == own
    np.testing.assert_allclose(np.asarray(axes[0].containers[0].lines[0].get_xdata(), float), [0.1, -0.2])


def test_optimum_shift_fits_slope_one_where_the_optimum_moves_with_the_gain():
    _, (ax,) = V.plot_optimum_shift(shift_runs())
    (points,) = ax.collections
    x, y = points.get_offsets().T
    np.testing.assert_allclose(sorted(x), [-1.0, 0.5, 1.0, 2.0])  # log gain of fa, sign, sign_scaled x2
    np.testing.assert_allclose(x, y, atol=1e-9)
    # the fitted line only: no "slope 1" reference, which the hypothesis does not predict
    assert [line.get_label() for line in ax.get_lines()] == ["mnist: least squares, slope 1.00"]


@pytest.mark.parametrize("plot", [lambda r: V.plot_factorial_cells(r), lambda r: V.plot_optimum_shift(r),
                                  lambda r: V.plot_decomposition(DECOMPOSITION.iloc[:0]),
                                  lambda r: V.plot_decomposition(None), lambda r: V.plot_primary(None),
                                  lambda r: V.plot_descriptive(DESCRIPTIVE.iloc[:0])])
def test_an_arm_not_run_gives_a_panel_that_says_so(plot):
    table = shift_runs()
    table = table[(table["feedback_scale"] == 1.0) & (table["method"] == "bp")]  # no crossed cell, one rule
    fig, axes = plot(table)
    assert isinstance(fig, plt.Figure) and not _drawn(axes)


def test_write_figures_writes_one_png_per_figure_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = pd.concat([factorial_runs(), shift_runs().assign(step_rule=lambda d: d["method"])], ignore_index=True)
    made = V.verdict_figures(runs, TABLES)
    assert list(made) == list(V.FIGURES) and all(_drawn(axes) for _, axes in made.values())
    # every figure names the network its runs trained, from the runs table
    assert {fig.get_suptitle() for fig, _ in made.values()} == {"LeNet-5 1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu"}
    assert os.listdir(tmp_path) == []  # drawing writes nothing
    paths = V.write_figures(runs, TABLES, tmp_path / "verdict")
    assert paths == [tmp_path / "verdict" / f"{stem}.png" for stem in V.FIGURES]
    assert sorted(os.listdir(tmp_path / "verdict")) == sorted(f"{stem}.png" for stem in V.FIGURES)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_snakemake_captions_are_the_figures_captions():
    captions = {p.stem: p.read_text().strip() for p in (REPO / "workflow" / "report").glob("verdict_*.rst")}
    assert captions == V.FIGURES
