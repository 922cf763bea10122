"""The verdict: the hypothesis "a rule's advantage over bp is its step size", tested where its predictions
can be derived, and described where they cannot (issue 19).

The identity every row rests on: under SGD a rule's feedback gain acts on the hidden layers only, and
multiplying B by alpha is exactly multiplying hidden layer l's learning rate by alpha^k_l (k_l feedback
products above l). So "feedback scale" is one more way of setting per-layer lrs, and a rule r at lr is,
under the hypothesis, bp's direction at r's per-layer steps: the cell bp@r of the factorial
(soap.analysis.decomposition). Three tables come out of `study_verdict`:

verdict.csv, rows with a derived prediction only (kind primary | secondary):

  primary           (analysis.primary: rule, outcome, margin) bp@r - r, one-sided non-inferiority at the
                    grid lr where r's validation-loss advantage over bp is largest (soap.analysis.primary).
                    Derivation: if r's advantage is its per-layer steps, then bp@r takes the same steps with
                    bp's direction, which is the exact gradient, so it matches or beats r: predicted
                    mean(bp@r - r) < margin (worse-oriented). One-sided: the hypothesis allows bp@r to win.
  non_inferiority   the same test for every other (dataset, factorial rule, outcome), each at its rule's
                    lr chosen the same way. Derivation as the primary's.
  direction_at_bp_steps  bp - r@bp, one-sided non-inferiority at the same lr. Derivation: if r's
                    advantage is only its steps, r's direction given bp's steps (r@bp) has no advantage
                    over bp: predicted mean(bp - r@bp) < margin.

The primary row is tested at 5% on its own; the secondary rows' one-sided p-values are Holm-adjusted
among the secondary rows (p_holm) and their verdict uses the adjusted p: supported when p_holm < 0.05,
contradicted when the other side's one-sided test (inferiority shown) rejects after the same adjustment,
inconclusive otherwise. The primary row's p_holm is its own p.

descriptive.csv, rows whose prediction cannot be derived, with an estimate and interval but no verdict:

  alpha_did         (issue 10's row a) the feedback-scale arm is per-layer lrs (lr * alpha^k_l on hidden
                    layer l). Its effect on a rule, minus bp's own alpha effect at the same nominal lr (a
                    difference-in-differences, paired by seed, at the rule's best validation lr at alpha 1)
                    when bp was run at that alpha as its calibration; the rule's alpha effect alone
                    otherwise (note says so). No prediction: under the hypothesis the rule is bp at other
                    per-layer steps (lr * alpha^k_l * g_l), whose response to alpha depends on where those
                    steps sit on bp's per-layer loss surface, which no run measures; 0 is not predicted
                    even for bp itself.
  optimizer         (row c) sign - sign_scaled under adam and momentum at the pair's best validation lr:
                    what the data show. Under sgd the two are one another at per-layer lrs and under
                    signsgd identical step for step: identities, checked in the trainer's tests, not
                    evidence, so those optimizers give no row. Adam is not invariant to sign's scale (it
                    jumps at the first refresh and Adam's second moment lags), and no prediction follows.
  optimum_shift     (row d) slope of log(lr*_bp / lr*_v) on log gain_v over rule variants v. The hypothesis
                    predicts the slope of bp with v's per-layer multipliers, which is not 1 when the gain
                    scales the hidden layers only (0.46 for multipliers (c^2, c, 1) in a toy); with
                    bp_matched retired no arm measures it, so the row is descriptive. Its interval is the
                    seed bootstrap's widened by the grid's discretisation (below).

bp_matched (bp at sign's gains transplanted from sign's grid run, issue 10's row b) is RETIRED in favour of
bp@sign: its gains were trajectory means that included the point before sign's first refresh, so its steps
were about g^(5/6), not sign's; bp@sign takes sign's per-layer step at every step by construction. Its runs
(phase "matched") are ignored.

Discretisation of lr*: a parabola through a grid minimum and its neighbours misplaces log lr* by 0.02 to 0.09
on a half-decade grid (ln spacing 1.15); DISCRETISATION is the upper end, scaled with the grid's spacing.
Each variant's y carries that error; bp's own enters every y alike and cancels from the slope, so the slope
moves by at most delta * sum|x - mean x| / sum (x - mean x)^2, added to both ends of the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from soap.analysis.decomposition import (OUTCOMES, decomposition_table, factorial_runs, plain_runs,
                                         require_cells)
from soap.analysis.errors import AnalysisError
from soap.analysis.paired import t_interval
from soap.analysis.primary import LEVEL, choose_lr, non_inferior, primary_test
from soap.networks import single_network_per_dataset
from soap.tables import TableError
from soap.rules import REFERENCE

__all__ = ["Verdict", "study_verdict", "answer", "plain_runs", "optimum_shift_points"]

VERDICT_COLUMNS = ("dataset", "row", "kind", "primary", "contrast", "outcome", "unit", "lr", "estimate", "ci_low",
                   "ci_high", "null", "margin", "p", "p_holm", "predicted", "verdict", "n", "diverged")
DESCRIPTIVE_COLUMNS = ("dataset", "row", "contrast", "outcome", "unit", "lr", "estimate", "ci_low", "ci_high",
                       "n", "note")
IDENTITY_OPTIMIZERS = ("sgd", "signsgd")  # sign vs sign_scaled is an identity there (trainer tests)
DISCRETISATION = 0.09  # max misplacement of log lr* by the parabola on a half-decade grid
HALF_DECADE = math.log(10) / 2


@dataclass
class Verdict:
    verdict: pd.DataFrame
    descriptive: pd.DataFrame
    decomposition: pd.DataFrame
    answer: dict


def study_verdict(runs: pd.DataFrame, primary: dict, margins: dict, factorial: list[str],
                  datasets: list[str] | None = None, source: str = "RUNS", seed: int = 0,
                  n_boot: int = 2000) -> Verdict:
    """The three tables and the answer from a runs table (main and intervention runs concatenated).

    primary: {rule, outcome, margin (None: margins[outcome])}; margins: analysis.equivalence_margin;
    factorial: interventions.factorial; datasets: their order (the primary test is on the first present).
    AnalysisError names the first factorial cell missing from `source`, or a dataset of two architectures.
    """
    rule, outcome = primary["rule"], primary["outcome"]
    margin = margins[outcome] if primary.get("margin") is None else float(primary["margin"])
    rules = list(dict.fromkeys([rule, *factorial]))
    cells = factorial_runs(runs, source)
    try:  # every row below is keyed by dataset
        single_network_per_dataset(runs, source)
    except TableError as err:
        raise AnalysisError(str(err)) from None
    present = list(cells["dataset"].unique())
    order = [d for d in (datasets or []) if d in present] + sorted(d for d in present if d not in (datasets or []))
    if not order:
        raise AnalysisError(f"no grid runs under sgd in {source}: the primary test needs the factorial arms")
    for dataset in order:
        for r in rules:
            require_cells(cells[cells["dataset"] == dataset], r, f"{source} (dataset {dataset})")
    rows, headline = [], None
    for dataset in order:
        part = cells[cells["dataset"] == dataset]
        for r in rules:
            lr = choose_lr(part, r)[0]
            for out in OUTCOMES:
                is_primary = dataset == order[0] and r == rule and out == outcome
                m = margin if out == outcome else margins[out]
                test = primary_test(part, r, out, m) if is_primary else non_inferior(part, r, out, m, lr, "bp@r", "r")
                headline = test if is_primary else headline
                rows.append(_verdict_row(dataset, "primary" if is_primary else "non_inferiority", is_primary,
                                         f"bp@{r} - {r}", test))
                test = non_inferior(part, r, out, m, lr, "bp", "r@bp")
                rows.append(_verdict_row(dataset, "direction_at_bp_steps", False, f"bp - {r}@bp", test))
    table = _holm_secondary(pd.DataFrame(rows, columns=list(VERDICT_COLUMNS)))
    decomposition = decomposition_table(runs, rules)
    plain = plain_runs(runs)
    plain = plain[plain["step_rule"] == plain["method"]]
    descriptive = pd.DataFrame(alpha_rows(plain) + optimizer_rows(plain)
                               + optimum_shift_rows(plain, seed=seed, n_boot=n_boot),
                               columns=list(DESCRIPTIVE_COLUMNS))
    return Verdict(table, descriptive, decomposition, answer(headline, decomposition, order[0]))


def _verdict_row(dataset: str, row: str, is_primary: bool, contrast: str, test: dict) -> dict:
    return {"dataset": dataset, "row": row, "kind": "primary" if is_primary else "secondary",
            "primary": is_primary, "contrast": f"{contrast} at lr {test['lr']:.4g}", "outcome": test["outcome"],
            "unit": test["unit"], "lr": test["lr"], "estimate": test["estimate"], "ci_low": test["ci_low"],
            "ci_high": test["ci_high"], "null": test["null"], "margin": test["margin"], "p": test["p"],
            "p_holm": test["p"] if is_primary else np.nan, "predicted": "non-inferior", "verdict": test["verdict"],
            "n": test["n"], "diverged": test["diverged"]}


def _holm_secondary(table: pd.DataFrame) -> pd.DataFrame:
    """Holm over the secondary rows' one-sided p-values; their verdicts from the adjusted p-values: the
    non-inferiority side (p) and the inferiority side (the opposite one-sided p, 1 - p for a t-test)."""
    secondary = (table["kind"] == "secondary") & table["p"].notna()
    if not secondary.any():
        return table
    p = table.loc[secondary, "p"].to_numpy(dtype=float)
    table.loc[secondary, "p_holm"] = multipletests(p, method="holm")[1]
    inferior = multipletests(1 - p, method="holm")[1]
    table.loc[secondary, "verdict"] = np.where(table.loc[secondary, "p_holm"] < LEVEL, "supported",
                                               np.where(inferior < LEVEL, "contradicted", "inconclusive"))
    return table


# --- the answer --------------------------------------------------------------------------------------------


def answer(test: dict, decomposition: pd.DataFrame, dataset: str) -> dict:
    """The study's answer in numbers and one sentence, from the primary test and the decomposition's total
    effect at the primary lr: r's advantage over bp there (positive: r better) and bp@r - r."""
    rule, outcome, lr, unit = test["rule"], test["outcome"], test["lr"], test["unit"]
    total = decomposition[(decomposition["dataset"] == dataset) & (decomposition["rule"] == rule)
                          & (decomposition["outcome"] == outcome) & (decomposition["effect"] == "total")
                          & np.isclose(decomposition["lr"], lr)].iloc[0]
    better = -1.0 if outcome.endswith("loss") else 1.0  # r's advantage = better * (r - bp)
    advantage = (better * total["estimate"], *sorted((better * total["ci_low"], better * total["ci_high"])))
    b = (test["estimate"], test["ci_low"], test["ci_high"])
    fmt = lambda v: f"{v[0]:+.3g} [{v[1]:+.3g}, {v[2]:+.3g}] {unit}"  # noqa: E731
    what = outcome.replace("_", " ")
    direction = {"supported": "is its step size",
                 "contradicted": "is not only its step size: its direction matters",
                 "inconclusive": f"may or may not be its step size: the data cannot tell at this size "
                                 f"({test['n']} seeds)"}[test["verdict"]]
    if test["r_beats_bp"]:
        sentence = (f"At lr {lr:.3g}, where {rule} beats bp by {fmt(advantage)} of {what} (95% interval), bp given "
                    f"{rule}'s per-layer step sizes is {fmt(b)} from {rule} (90% interval; margin "
                    f"{test['margin']:g}): {rule}'s advantage {direction}.")
    else:
        sentence = (f"{rule} beats bp at no grid lr on validation loss, so there is no advantage of {rule} to "
                    f"explain; at lr {lr:.3g}, its closest, bp given {rule}'s per-layer step sizes is {fmt(b)} "
                    f"from {rule} (90% interval; {test['verdict']}).")
    return {"dataset": dataset, "rule": rule, "outcome": outcome, "unit": unit, "lr": lr,
            "r_beats_bp": test["r_beats_bp"], "advantage": advantage[0], "advantage_ci": list(advantage[1:]),
            "estimate": b[0], "ci": [b[1], b[2]], "margin": test["margin"], "p": test["p"], "n": test["n"],
            "verdict": test["verdict"], "sentence": sentence}


# --- descriptive rows ----------------------------------------------------------------------------------------


def alpha_rows(runs: pd.DataFrame) -> list[dict]:
    """alpha_did per (dataset, rule, alpha != 1): see the module docstring."""
    out = []
    grid = runs[(runs["phase"] == "grid") & (runs["optimizer"] == "sgd")]
    for (dataset, method), part in grid.groupby(["dataset", "method"]):
        if method == REFERENCE or part["feedback_scale"].nunique() < 2:
            continue
        lr = _best_lr(part[part["feedback_scale"] == 1.0])
        if lr is None:
            continue
        bp = grid[(grid["dataset"] == dataset) & (grid["method"] == REFERENCE) & np.isclose(grid["lr"], lr)]
        at = part[np.isclose(part["lr"], lr)]
        base = _by_seed(at[at["feedback_scale"] == 1.0])
        for alpha in sorted(set(at["feedback_scale"]) - {1.0}):
            diff = _by_seed(at[at["feedback_scale"] == alpha]) - base
            calibrated = {alpha, 1.0} <= set(bp["feedback_scale"])
            if calibrated:
                diff = diff - (_by_seed(bp[bp["feedback_scale"] == alpha]) - _by_seed(bp[bp["feedback_scale"] == 1.0]))
            contrast = (f"{method}: alpha {alpha:g} vs 1" + (" minus bp's alpha effect" if calibrated else ""))
            note = "" if calibrated else "bp not run at this alpha: not calibrated on bp's own alpha effect"
            out.append(_descriptive(dataset, "alpha_did", contrast, lr, t_interval(diff.dropna().to_numpy()), note))
    return out


def optimizer_rows(runs: pd.DataFrame) -> list[dict]:
    """optimizer: sign - sign_scaled under each optimizer that is not an identity for them."""
    out = []
    grid = runs[(runs["phase"] == "grid") & (runs["feedback_scale"] == 1.0)
                & ~runs["optimizer"].isin(IDENTITY_OPTIMIZERS)]
    for (dataset, optimizer), part in grid.groupby(["dataset", "optimizer"]):
        pair = part[part["method"].isin(["sign", "sign_scaled"])]
        if pair["method"].nunique() < 2:
            continue
        lr = _best_lr(pair)
        if lr is None:
            continue
        at = pair[np.isclose(pair["lr"], lr)]
        for outcome, (unit, scale) in OUTCOMES.items():
            diff = _by_seed(at[at["method"] == "sign"], outcome) - _by_seed(at[at["method"] == "sign_scaled"], outcome)
            out.append(_descriptive(dataset, "optimizer", f"sign - sign_scaled under {optimizer}", lr,
                                    t_interval(diff.dropna().to_numpy() * scale), "", outcome, unit))
    return out


def optimum_shift_rows(runs: pd.DataFrame, seed: int = 0, n_boot: int = 2000) -> list[dict]:
    """optimum_shift per dataset: slope of log(lr*_bp / lr*_v) on log(gain_v) over rule variants v (each
    method, and each (method, alpha)), bootstrap over seeds, widened by the grid's discretisation."""
    out = []
    for dataset, grid in runs[(runs["phase"] == "grid") & (runs["optimizer"] == "sgd")].groupby("dataset"):
        variants = [key for key in grid.groupby(["method", "feedback_scale"]).groups if key[0] != REFERENCE]
        seeds = np.sort(grid["seed"].unique())
        if (grid["method"] == REFERENCE).sum() == 0 or len(variants) < 3 or len(seeds) < 3:
            continue
        cells = _cells(grid)
        gains = grid[~grid["diverged"]].groupby(["method", "feedback_scale", "lr"])["feedback_gain"].median()
        x, y = optimum_shift_points(cells.mean(axis=1), gains)
        estimate = _slope(x, y)
        rng = np.random.default_rng(seed)
        draws = np.array([_slope(*optimum_shift_points(cells[rng.choice(seeds, len(seeds))].mean(axis=1), gains))
                          for _ in range(n_boot)])
        draws = draws[np.isfinite(draws)]
        if not np.isfinite(estimate) or len(draws) < n_boot / 2:
            continue
        spacing = float(np.median(np.diff(np.log(np.unique(grid["lr"])))))
        delta = DISCRETISATION * spacing / HALF_DECADE
        centred = x - x.mean()
        widen = delta * np.abs(centred).sum() / (centred**2).sum()
        low, high = np.quantile(draws, [0.025, 0.975])
        out.append(_descriptive(dataset, "optimum_shift", "slope of log(lr*_bp / lr*) on log gain", math.nan,
                                {"estimate": estimate, "ci_low": low - widen, "ci_high": high + widen,
                                 "n": len(x)}, f"interval widened by {widen:.3g} for the grid's discretisation",
                                "log lr*", "slope"))
    return out


def optimum_shift_points(curves: pd.Series, gains: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """x = log gain_v, y = log(lr*_bp / lr*_v) per variant v, from seed-averaged validation-loss curves and
    median gains of healthy runs (both indexed (method, alpha, lr)): gain_v is taken at v's grid lr
    nearest lr*_v."""
    optima = {key: _optimum(part.droplevel([0, 1])) for key, part in curves.groupby(level=[0, 1])}
    bp = [v for k, v in optima.items() if k[0] == REFERENCE]
    if not bp or not np.isfinite(bp[0]):
        return np.array([]), np.array([])
    xs, ys = [], []
    for (method, alpha), log_lr in optima.items():
        if method == REFERENCE or not np.isfinite(log_lr) or (method, alpha) not in gains.index.droplevel(2):
            continue
        measured = gains.loc[(method, alpha)]
        gain = measured.iloc[np.argmin(np.abs(np.log(measured.index.to_numpy(dtype=float)) - log_lr))]
        if np.isfinite(gain) and gain > 0:
            xs.append(math.log(gain))
            ys.append(bp[0] - log_lr)
    return np.array(xs), np.array(ys)


# --- pieces ----------------------------------------------------------------------------------------------


def _descriptive(dataset, row, contrast, lr, interval: dict, note: str, outcome: str = "test_loss",
                 unit: str = "nats") -> dict:
    return {"dataset": dataset, "row": row, "contrast": contrast, "outcome": outcome, "unit": unit,
            "lr": float(lr), "estimate": float(interval["estimate"]), "ci_low": float(interval["ci_low"]),
            "ci_high": float(interval["ci_high"]), "n": int(interval["n"]), "note": note}


def _by_seed(rows: pd.DataFrame, outcome: str = "test_loss") -> pd.Series:
    """Per-seed mean outcome of healthy runs (a seed with a diverged run has none)."""
    value = rows[outcome].where(~rows["diverged"])
    grouped = rows.assign(value=value).groupby("seed")["value"]
    return grouped.mean().where(grouped.count() == grouped.size())


def _best_lr(runs: pd.DataFrame) -> float | None:
    """The lr of lowest mean validation loss over seeds and methods, among lrs where no run diverged
    (chosen on validation data, so the test-set contrast is not selected on)."""
    healthy = runs.groupby("lr").filter(lambda g: not g["diverged"].any())
    if healthy.empty:
        return None
    return float(healthy.groupby("lr")["val_loss"].mean().idxmin())


def _cells(grid: pd.DataFrame) -> pd.DataFrame:
    """Validation loss, (method, alpha, lr) x seed; a diverged run counts as the worst loss of its curve,
    so a divergent lr is never an optimum (NaN would drop it from the mean)."""
    values = grid.assign(val=grid["val_loss"].where(~grid["diverged"]))
    table = values.groupby(["method", "feedback_scale", "lr", "seed"])["val"].mean().unstack("seed")
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
