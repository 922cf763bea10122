"""The verdict table of issue 10: each prediction of "a rule's advantage is learning rate", tested by the
intervention arms (soap.interventions), as a contrast with a 95% interval and an equivalence test.

Rows (per dataset; the contrast, what the learning-rate hypothesis predicts):

  a  dose-response  per dose rule (sign_scaled, fa): the test-loss change from a 4x larger feedback scale
                    alpha at equal effective lr (OLS of test loss on a B-spline in log(lr * gain) plus
                    log alpha, SEs clustered by seed). gain is measured with alpha inside it, so
                    lr * gain is alpha * lr * (the rule's own gain). Predicted: equivalent to 0 (the alpha
                    curves collapse onto one curve in effective lr).
  b  bp_matched - sign, paired by seed at sign's best grid lr (chosen on validation loss), on test loss and
                    test accuracy. Predicted: equivalent (sign's gain is its advantage).
  c  sign - sign_scaled per optimizer, paired by seed at the grid lr best for the pair (validation loss).
                    Predicted: different under sgd and momentum (the scale is a learning rate there),
                    equivalent under signsgd and adam (they discard the gradient's scale).
  d  optimum shift  slope of log(lr*_bp / lr*_v) on log(gain_v) over rule variants v (each method, and each
                    (dose rule, alpha)), lr*_v from a parabola through the best validation loss of the
                    seed-averaged grid curve and its neighbours (in log lr; a variant whose minimum is at
                    the grid's edge has no lr* and is left out); bootstrap over seeds.
                    Predicted: equivalent to 1 (gain acts as a learning-rate multiplier).

Equivalence is TOST at 5% against margins declared in config before the data (analysis.equivalence_margin):
statsmodels' ttost_paired for the paired rows (b, c); for a regression coefficient (a) the two one-sided
tests on its cluster-robust t statistic with G - 1 degrees of freedom (statsmodels has no TOST for a
fitted coefficient); for the bootstrap slope (d) the percentile form (the 90% interval inside the margins,
p = the larger one-sided bootstrap tail). A row is "supported" when the data show what the hypothesis
predicts (equivalence, or a 95% interval excluding the null for a predicted difference), "contradicted"
when they show the opposite, and "inconclusive" otherwise: failing to find a difference is not equivalence.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

VERDICT_COLUMNS = ("dataset", "row", "contrast", "outcome", "unit", "estimate", "ci_low", "ci_high", "null",
                   "margin", "tost_p", "equivalent", "different", "predicted", "verdict", "n")
DOSE_STEP = 4.0  # row a's contrast: a 4x larger alpha at equal effective lr
SCALE_FREE = ("signsgd", "adam")  # optimizers whose step ignores the gradient's scale (row c predicts equivalence)


def verdict_table(runs: pd.DataFrame, margins: dict, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    """Every verdict row the runs table supports (main runs and intervention runs concatenated).

    margins: {test_loss, test_acc (points), log_lr}. Rows whose arms are missing are left out.
    """
    rows = []
    for dataset, part in runs.groupby("dataset"):
        part = plain_runs(part)
        rows += dose_rows(part, margins)
        rows += matched_rows(part, margins)
        rows += optimizer_rows(part, margins)
        rows += optimum_shift_rows(part, margins, seed=seed, n_boot=n_boot)
    table = pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))
    if len(table):
        table["verdict"] = [_verdict(r) for r in table.itertuples()]
    return table


# --- the rows --------------------------------------------------------------------------------------------


def dose_rows(runs: pd.DataFrame, margins: dict) -> list[dict]:
    """Row a: per dose rule, the effect of log alpha on test loss at equal log effective lr."""
    import statsmodels.formula.api as smf

    out = []
    grid = runs[(runs["phase"] == "grid") & (runs["optimizer"] == "sgd")]
    # Healthy cells only (as soap.analysis.effective_lr): a (method, alpha, lr) cell in which a seed diverged
    # is dropped whole, its survivors being a selected subset at the edge of stability.
    grid = grid.groupby(["method", "feedback_scale", "lr"]).filter(lambda cell: not cell["diverged"].any())
    for method, part in grid.groupby("method"):
        if part["feedback_scale"].nunique() < 2:
            continue
        data = pd.DataFrame({"y": part["test_loss"], "x": np.log(part["lr"] * part["feedback_gain"]),
                             "log_alpha": np.log(part["feedback_scale"]), "seed": part["seed"]}).dropna()
        groups = data["seed"].nunique()
        df = min(4, data["x"].nunique() - 1)
        if groups < 3 or df < 1:
            continue
        smooth = f"bs(x, df={df})" if df >= 3 else ("x + I(x**2)" if df == 2 else "x")
        fit = smf.ols(f"y ~ {smooth} + log_alpha", data).fit(
            cov_type="cluster", cov_kwds={"groups": data["seed"].astype(int)}, use_t=True)
        step = math.log(DOSE_STEP)
        estimate, se = fit.params["log_alpha"] * step, fit.bse["log_alpha"] * step
        out.append(_coefficient_row(runs, "a", f"{method}: 4x alpha at equal effective lr", estimate, se,
                                    groups - 1, margins["test_loss"], len(data)))
    return out


def matched_rows(runs: pd.DataFrame, margins: dict) -> list[dict]:
    """Row b: bp_matched - sign, paired by seed, at sign's best grid lr among those with matched runs."""
    matched = runs[(runs["phase"] == "matched") & (runs["method"] == "bp")]
    sign = runs[(runs["phase"] == "grid") & (runs["method"] == "sign") & (runs["optimizer"] == "sgd")
                & (runs["feedback_scale"] == 1.0)]
    if matched.empty or sign.empty:
        return []
    shared = sign[sign["lr"].isin(set(matched["lr"]))]
    lr = _best_lr(shared)
    if lr is None:
        return []
    return _paired_rows(runs, "b", f"bp_matched - sign at lr {lr:.4g}", matched[matched["lr"] == lr],
                        sign[sign["lr"] == lr], margins, predicted="equivalent")


def optimizer_rows(runs: pd.DataFrame, margins: dict) -> list[dict]:
    """Row c: sign - sign_scaled under each optimizer, paired by seed at the pair's best grid lr."""
    out = []
    grid = runs[(runs["phase"] == "grid") & (runs["feedback_scale"] == 1.0)]
    for optimizer, part in grid.groupby("optimizer"):
        sign, scaled = part[part["method"] == "sign"], part[part["method"] == "sign_scaled"]
        if sign.empty or scaled.empty:
            continue
        lr = _best_lr(pd.concat([sign, scaled[scaled["lr"].isin(set(sign["lr"]))]]))
        if lr is None:
            continue
        predicted = "equivalent" if optimizer in SCALE_FREE else "different"
        out += _paired_rows(runs, "c", f"sign - sign_scaled under {optimizer} at lr {lr:.4g}",
                            sign[sign["lr"] == lr], scaled[scaled["lr"] == lr], margins, predicted=predicted)
    return out


def optimum_shift_rows(runs: pd.DataFrame, margins: dict, seed: int = 0, n_boot: int = 2000) -> list[dict]:
    """Row d: slope of log(lr*_bp / lr*_v) on log(gain_v) across rule variants, bootstrap over seeds."""
    grid = runs[(runs["phase"] == "grid") & (runs["optimizer"] == "sgd")]
    variants = [key for key in grid.groupby(["method", "feedback_scale"]).groups if key[0] != "bp"]
    if (grid["method"] == "bp").sum() == 0 or len(variants) < 3:
        return []
    seeds = np.sort(grid["seed"].unique())
    if len(seeds) < 3:
        return []
    cells = _cells(grid)  # (method, alpha, lr) x seed of validation loss
    healthy = grid[~grid["diverged"]]
    gains = healthy.groupby(["method", "feedback_scale", "lr"])["feedback_gain"].median()

    def slope(chosen: np.ndarray) -> float:
        return _slope(*optimum_shift_points(cells[chosen].mean(axis=1), gains))

    estimate = slope(seeds)
    rng = np.random.default_rng(seed)
    draws = np.array([slope(rng.choice(seeds, len(seeds), replace=True)) for _ in range(n_boot)])
    draws = draws[np.isfinite(draws)]
    if not np.isfinite(estimate) or len(draws) < n_boot / 2:
        return []
    low, high = np.quantile(draws, [0.025, 0.975])
    margin = margins["log_lr"]
    tost_p = max(np.mean(draws <= 1 - margin), np.mean(draws >= 1 + margin))
    return [_row(runs, "d", "optimum shift: slope of log(lr*_bp / lr*) on log gain", "log lr*", "slope",
                 estimate, low, high, 1.0, margin, tost_p, "equivalent", len(grid))]


def optimum_shift_points(curves: pd.Series, gains: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """x = log gain_v, y = log(lr*_bp / lr*_v) per variant v, from seed-averaged validation-loss curves and
    median gains of healthy runs (both indexed (method, alpha, lr)): gain_v is taken at v's grid lr
    nearest lr*_v."""
    optima = {key: _optimum(part.droplevel([0, 1])) for key, part in curves.groupby(level=[0, 1])}
    bp = [v for k, v in optima.items() if k[0] == "bp"]
    if not bp or not np.isfinite(bp[0]):
        return np.array([]), np.array([])
    xs, ys = [], []
    for (method, alpha), log_lr in optima.items():
        if method == "bp" or not np.isfinite(log_lr) or (method, alpha) not in gains.index.droplevel(2):
            continue
        measured = gains.loc[(method, alpha)]
        gain = measured.iloc[np.argmin(np.abs(np.log(measured.index.to_numpy(dtype=float)) - log_lr))]
        if np.isfinite(gain) and gain > 0:
            xs.append(math.log(gain))
            ys.append(bp[0] - log_lr)
    return np.array(xs), np.array(ys)


# --- pieces ----------------------------------------------------------------------------------------------


def plain_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs at the study's main refresh period with one lr for every layer (bp_matched aside), with the
    columns older runs tables may lack filled in."""
    runs = runs.copy()
    runs["optimizer"] = runs.get("optimizer", "sgd")
    runs["feedback_scale"] = runs.get("feedback_scale", 1.0)
    runs["diverged"] = runs["diverged"].astype(bool)
    keep = np.ones(len(runs), dtype=bool)
    if "refresh_period" in runs:
        keep &= (runs["refresh_period"] == runs["refresh_period"].mode().iloc[0]).to_numpy()
    for column in [c for c in runs.columns if c.startswith("lr_scale_l")]:
        keep &= ((runs[column] == 1.0) | (runs["phase"] == "matched")).to_numpy()
    return runs[keep]


def _best_lr(runs: pd.DataFrame) -> float | None:
    """The lr of lowest mean validation loss over seeds and methods, among lrs where no run diverged
    (chosen on validation data, so the test-set contrast is not selected on)."""
    healthy = runs.groupby("lr").filter(lambda g: not g["diverged"].any())
    if healthy.empty:
        return None
    return float(healthy.groupby("lr")["val_loss"].mean().idxmin())


def _paired_rows(runs, row, contrast, first, second, margins, predicted) -> list[dict]:
    """first - second paired by seed on test loss and test accuracy (points): mean, t interval, TOST."""
    from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

    pairs = first.set_index("seed")[["test_loss", "test_acc"]].merge(
        second.set_index("seed")[["test_loss", "test_acc"]], left_index=True, right_index=True,
        suffixes=("_1", "_2")).dropna()
    if len(pairs) < 3:
        return []
    out = []
    for outcome, unit, scale, margin in (("test_loss", "nats", 1.0, margins["test_loss"]),
                                         ("test_acc", "points", 100.0, margins["test_acc"])):
        x1, x2 = pairs[f"{outcome}_1"].to_numpy() * scale, pairs[f"{outcome}_2"].to_numpy() * scale
        stats_ = DescrStatsW(x1 - x2)
        low, high = stats_.tconfint_mean(0.05)
        tost_p = ttost_paired(x1, x2, -margin, margin)[0]
        out.append(_row(runs, row, contrast, outcome, unit, stats_.mean, low, high, 0.0, margin, tost_p,
                        predicted, len(pairs)))
    return out


def _coefficient_row(runs, row, contrast, estimate, se, df, margin, n) -> dict:
    half = stats.t.ppf(0.975, df) * se
    # TOST on a coefficient: H0 estimate <= -margin (upper tail) and H0 estimate >= margin (lower tail)
    tost_p = max(stats.t.sf((estimate + margin) / se, df), stats.t.cdf((estimate - margin) / se, df))
    return _row(runs, row, contrast, "test_loss", "nats", estimate, estimate - half, estimate + half, 0.0,
                margin, tost_p, "equivalent", n)


def _row(runs, row, contrast, outcome, unit, estimate, low, high, null, margin, tost_p, predicted, n) -> dict:
    return {"dataset": runs["dataset"].iloc[0], "row": row, "contrast": contrast, "outcome": outcome,
            "unit": unit, "estimate": float(estimate), "ci_low": float(low), "ci_high": float(high),
            "null": null, "margin": float(margin), "tost_p": float(tost_p), "equivalent": bool(tost_p < 0.05),
            "different": bool(low > null or high < null), "predicted": predicted, "verdict": "", "n": int(n)}


def _verdict(row) -> str:
    if row.predicted == "equivalent":
        return "supported" if row.equivalent else "contradicted" if row.different else "inconclusive"
    return "supported" if row.different else "contradicted" if row.equivalent else "inconclusive"


def _cells(grid: pd.DataFrame) -> pd.DataFrame:
    """Validation loss, (method, alpha, lr) x seed; a diverged run counts as the worst loss of its curve,
    so a divergent lr is never an optimum (NaN would drop it from the mean)."""
    values = grid.assign(val=grid["val_loss"].where(~grid["diverged"]))
    table = values.set_index(["method", "feedback_scale", "lr", "seed"])["val"].unstack("seed")
    worst = np.nanmax(table.to_numpy()) if np.isfinite(table.to_numpy()).any() else 1.0
    return table.fillna(worst)


def _optimum(curve: pd.Series) -> float:
    """log lr* of one curve (index lr): vertex of the parabola through its minimum and neighbours in log
    lr, clipped to them. NaN when the minimum is at an edge of the grid: lr* is then only bounded (beyond
    the edge), and taking the edge would pull the slope towards 0."""
    curve = curve.sort_index()
    x, y = np.log(curve.index.to_numpy(dtype=float)), curve.to_numpy()
    if len(x) < 3 or not np.isfinite(y).any():
        return math.nan
    i = int(np.nanargmin(y))
    if i == 0 or i == len(x) - 1:
        return math.nan
    a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
    return float(np.clip(-b / (2 * a), x[i - 1], x[i + 1])) if a > 0 else float(x[i])


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])
