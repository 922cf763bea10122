"""The verdict table (soap.analysis.verdict) on synthetic runs tables whose truth is known: worlds where the
learning-rate hypothesis holds (equivalence) and worlds where it fails, with smooth loss curves that the
spline does not fit exactly, seed effects shared across arms and heavy-tailed run noise."""

import math

import numpy as np
import pandas as pd
import pytest

from soap.analysis.verdict import verdict_table

MARGINS = {"test_loss": 0.02, "test_acc": 0.5, "log_lr": 0.25}
LRS = np.geomspace(1e-3, 3, 12)
BEST = 0.1  # the effective lr of lowest loss


def _loss(log_elr):
    """A lopsided U in log effective lr: a quadratic plus a logistic step (no polynomial or spline of df 4)."""
    u = log_elr - math.log(BEST)
    return 0.1 + 0.02 * u**2 + 0.1 / (1 + np.exp(-(u - 2)))


def world(rng, seeds=10, alpha_effect=0.0, gain_moves_optimum=True, matched_shift=0.0, signsgd_keeps_scale=False):
    """Grid runs of bp, sign, sign_scaled and fa (dose rules at several alphas), bp_matched runs, and a
    signsgd grid of sign and sign_scaled. Knobs break one prediction each."""
    rows = []
    seed_effect = rng.normal(0, 0.01, seeds)

    def add(phase, method, alpha, lr, seed, gain, optimizer="sgd", shift=0.0):
        elr = lr * gain if gain_moves_optimum else lr
        base = _loss(math.log(elr)) + seed_effect[seed] + shift
        val, test = base + 0.003 * rng.standard_t(4), base + 0.003 * rng.standard_t(4)
        diverged = lr * gain > 5
        rows.append({"run_id": f"{phase}-{method}-{alpha}-{lr}-{seed}-{optimizer}", "phase": phase,
                     "dataset": "synthetic", "method": method, "seed": seed, "lr": lr, "feedback_gain": gain,
                     "feedback_scale": alpha, "optimizer": optimizer, "diverged": diverged,
                     "val_loss": np.nan if diverged else val, "test_loss": np.nan if diverged else test,
                     "test_acc": np.nan if diverged else 0.98 - test / 4, "refresh_period": 6400,
                     "lr_scale_l1": 1.0, "lr_scale_l2": 1.0, "lr_scale_l3": 1.0})

    own = {"bp": 1.0, "sign": 25.0, "sign_scaled": 1.3, "fa": 0.8}
    for seed in range(seeds):
        for lr in LRS:
            for method, g in own.items():
                alphas = [0.25, 1.0, 4.0, 16.0] if method in ("sign_scaled", "fa") else [1.0]
                for alpha in alphas:
                    gain = alpha * g * math.exp(rng.normal(0, 0.02))
                    add("grid", method, alpha, lr, seed, gain, shift=alpha_effect * math.log(alpha) / math.log(4))
            # bp at sign's step sizes: the loss sign has at this lr, plus a shift when matching fails
            add("matched", "bp", 1.0, lr, seed, own["sign"], shift=matched_shift)
            for method in ("sign", "sign_scaled"):  # signsgd: the scale drops out (or, broken, does not)
                gain = own[method] if signsgd_keeps_scale else 1.0
                add("grid", method, 1.0, lr / 10, seed, gain * 10, optimizer="signsgd")
    runs = pd.DataFrame(rows)
    runs.loc[runs.phase == "matched", ["lr_scale_l1", "lr_scale_l2"]] = 25.0
    return runs


def _rows(table, row, contains=""):
    return table[(table["row"] == row) & table["contrast"].str.contains(contains, regex=False)]


def test_every_prediction_supported_where_the_advantage_is_learning_rate():
    table = verdict_table(world(np.random.default_rng(1)), MARGINS, n_boot=400)
    assert set(table["row"]) == {"a", "b", "c", "d"}
    a = _rows(table, "a")
    assert set(a["contrast"].str.split(":").str[0]) == {"sign_scaled", "fa"}
    assert a["equivalent"].all() and (a["verdict"] == "supported").all(), a
    b = _rows(table, "b")
    assert b["equivalent"].all() and (b["verdict"] == "supported").all(), b
    # sign - sign_scaled: a large difference under sgd, none under signsgd
    assert _rows(table, "c", "under sgd")["different"].all()
    assert (_rows(table, "c", "under sgd")["verdict"] == "supported").all()
    assert (_rows(table, "c", "signsgd")["verdict"] == "supported").all()
    assert _rows(table, "c", "signsgd")["equivalent"].all()
    d = _rows(table, "d").iloc[0]
    assert d.ci_low < 1 < d.ci_high and d.verdict == "supported", d


def test_each_prediction_fails_where_its_world_breaks_it():
    rng = np.random.default_rng(2)
    broken = verdict_table(world(rng, alpha_effect=0.05, matched_shift=0.05), MARGINS, n_boot=400)
    for row in ("a", "b"):
        rows = _rows(broken, row, "")
        rows = rows[rows["outcome"] == "test_loss"]
        assert (~rows["equivalent"]).all() and (rows["verdict"] == "contradicted").all(), rows
    # the optimum does not move with gain: the slope is near 0, not 1
    flat = verdict_table(world(rng, gain_moves_optimum=False), MARGINS, n_boot=400)
    d = _rows(flat, "d").iloc[0]
    assert d.ci_high < 0.5 and d.verdict == "contradicted", d
    # with gain not moving the optimum, sgd's sign - sign_scaled vanishes: the predicted difference is not seen
    assert (_rows(flat, "c", "under sgd")["verdict"] != "supported").all()
    # a signsgd that kept the scale: sign and sign_scaled differ, against the prediction
    kept = verdict_table(world(rng, signsgd_keeps_scale=True), MARGINS, n_boot=100)
    assert (_rows(kept, "c", "signsgd")["verdict"] == "contradicted").all()


def test_paired_interval_covers_the_truth_at_its_nominal_rate():
    # 400 replicates of row b with 4 seeds, a true shift of 0.01 and heavy-tailed noise: the t interval
    # covers ~95%; a normal interval (df ignored) would cover ~86% with 4 pairs
    from soap.analysis.verdict import _paired_rows

    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(400):
        seed_effect = rng.normal(0, 0.02, 4)
        losses = [0.3 + seed_effect + shift + 0.01 * rng.standard_t(3, 4) for shift in (0.01, 0.0)]
        first, second = (pd.DataFrame({"seed": range(4), "test_loss": loss, "test_acc": 1 - loss}) for loss in losses)
        row = _paired_rows(pd.DataFrame({"dataset": ["x"]}), "b", "", first, second, MARGINS, "equivalent")[0]
        hits += row["ci_low"] <= 0.01 <= row["ci_high"]
    assert 0.92 <= hits / 400 <= 0.985


def test_dose_interval_covers_the_true_alpha_effect():
    # row a's cluster-robust interval on a world with a known alpha effect (0.01 per 4x), 60 replicates
    from soap.analysis.verdict import dose_rows

    rng = np.random.default_rng(4)
    hits = n = 0
    for _ in range(60):
        runs = world(rng, seeds=8, alpha_effect=0.01)
        grid = runs[runs.method == "sign_scaled"]
        row = dose_rows(grid.assign(diverged=grid["diverged"].astype(bool)), MARGINS)[0]
        hits += row["ci_low"] <= 0.01 <= row["ci_high"]
        n += 1
    assert 0.85 <= hits / n <= 1.0
