"""Figures of the intervention arms (issue 10): one captioned figure per verdict row (soap.analysis.verdict),
from the main and intervention runs tables. The report's section on them: soap.report.context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from soap.analysis.verdict import plain_runs, optimum_shift_points

# file stem -> caption (also the Snakemake report's, workflow/report/verdict_*.rst)
FIGURES = {
    "verdict_a_dose": "Dose-response (row a). Final test loss against effective learning rate lr x gain (gain "
                      "measured with the feedback scale alpha inside it) for each dose rule, one line per alpha, "
                      "mean over seeds. If the rule's scale acts only as a learning rate, the lines lie on one curve.",
    "verdict_b_matched": "bp at sign's step sizes (row b). Final test loss against nominal lr of sign, bp and "
                         "bp_matched (bp whose layer-l lr is lr x sign's gain at layer l, same seed and lr); "
                         "mean and 95% interval over seeds. If sign's advantage is its gain, bp_matched tracks sign.",
    "verdict_c_optimizers": "sign - sign_scaled under each optimizer (row c): paired difference in test loss with "
                            "its 95% interval; the band is the pre-declared equivalence margin. The hypothesis "
                            "predicts a difference under sgd and momentum, none under signsgd and adam.",
    "verdict_d_optimum_shift": "Optimum shift (row d). log(lr*_bp / lr*) against log gain per rule variant "
                               "(method, alpha), lr* from the seed-averaged validation loss on the grid; the solid "
                               "line is the fit, the dashed one slope 1 (gain acting purely as a learning rate).",
}


def write_figures(runs: pd.DataFrame, verdict: pd.DataFrame, margins: dict, out_dir) -> list[Path]:
    """One PNG per verdict row in out_dir (a panel saying so where its arm was not run); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = pd.concat([plain_runs(part) for _, part in runs.groupby("dataset")]) if len(runs) else runs
    grid = runs[(runs["phase"] == "grid") & ~runs["diverged"]]
    paths = []
    for stem, draw in (("verdict_a_dose", _dose), ("verdict_b_matched", _matched),
                       ("verdict_c_optimizers", lambda ax, g, r: _optimizers(ax, verdict, margins)),
                       ("verdict_d_optimum_shift", _optimum_shift)):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if not draw(ax, grid, runs):
            ax.axis("off")
            ax.text(0.5, 0.5, "arm not run in this study", ha="center", va="center")
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)  # atomic, like every output
        plt.close(fig)
        paths.append(path)
    return paths


def _dose(ax, grid, runs) -> bool:
    dose = grid[grid["optimizer"] == "sgd"]
    methods = [m for m, part in dose.groupby("method") if part["feedback_scale"].nunique() > 1]
    if not methods:
        return False
    for i, method in enumerate(methods):
        part = dose[dose["method"] == method].assign(elr=lambda d: d["lr"] * d["feedback_gain"])
        for alpha, curve in part.groupby("feedback_scale"):
            mean = curve.groupby("lr")[["elr", "test_loss"]].mean()
            ax.plot(mean["elr"], mean["test_loss"], marker="os^v"[i % 4], lw=1,
                    label=f"{method} alpha={alpha:g}")
    ax.set(xscale="log", xlabel="effective lr (lr x gain)", ylabel="test loss")
    ax.legend(fontsize=6, ncol=2)
    return True


def _matched(ax, grid, runs) -> bool:
    matched = runs[(runs["phase"] == "matched") & ~runs["diverged"]]
    if matched.empty:
        return False
    plain = grid[(grid["optimizer"] == "sgd") & (grid["feedback_scale"] == 1.0)]
    for label, part in (("bp", plain[plain["method"] == "bp"]), ("sign", plain[plain["method"] == "sign"]),
                        ("bp_matched", matched)):
        stats = part.groupby("lr")["test_loss"].agg(["mean", "sem", "count"])
        half = 1.96 * stats["sem"].fillna(0)
        ax.errorbar(stats.index, stats["mean"], yerr=half, marker="o", capsize=2, label=label)
    ax.set(xscale="log", xlabel="nominal lr", ylabel="test loss")
    ax.legend()
    return True


def _optimizers(ax, verdict, margins) -> bool:
    rows = verdict[(verdict["row"] == "c") & (verdict["outcome"] == "test_loss")] if len(verdict) else verdict
    if rows.empty:
        return False
    y = np.arange(len(rows))
    ax.errorbar(rows["estimate"], y, xerr=[rows["estimate"] - rows["ci_low"], rows["ci_high"] - rows["estimate"]],
                fmt="o", capsize=3)
    ax.axvspan(-margins["test_loss"], margins["test_loss"], color="0.85", zorder=0)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [f"{r.dataset}: {r.contrast}" for r in rows.itertuples()], fontsize=7)
    ax.set(xlabel="sign - sign_scaled, test loss (95% CI)")
    return True


def _optimum_shift(ax, grid, runs) -> bool:
    drawn = False
    for dataset, part in grid[grid["optimizer"] == "sgd"].groupby("dataset"):
        curves = part.groupby(["method", "feedback_scale", "lr"])["val_loss"].mean()
        gains = part.groupby(["method", "feedback_scale", "lr"])["feedback_gain"].median()
        x, y = optimum_shift_points(curves, gains)
        if len(x) < 2:
            continue
        ax.scatter(x, y, label=dataset)
        slope, intercept = np.polyfit(x, y, 1)
        line = np.linspace(min(x.min(), 0), x.max(), 2)
        ax.plot(line, intercept + slope * line, lw=1, label=f"fit, slope {slope:.2f}")
        drawn = True
    if drawn:
        ax.plot([0, ax.get_xlim()[1]], [0, ax.get_xlim()[1]], "k--", lw=0.8, label="slope 1")
        ax.set(xlabel="log gain", ylabel="log(lr*_bp / lr*)")
        ax.legend(fontsize=7)
    return drawn
