"""Study results for the analysis and report tests: a contract-shaped runs table from hand-written
tuples (make_runs, TOY), and a results directory in the pipeline's layout (make_results: synthetic
runs, curves and tuning studies, analysed by the analysis stage itself, and optionally the verdict
stage's outputs from a synthetic factorial world with known truth; tests/conftest.py's report_full,
report_small and report_answers fixtures build them once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from soap import report
from soap.analysis.outputs import run_analysis
from soap.plots.verdict import write_figures
from soap.synthetic import SyntheticSpec, generate_runs
from soap.synthetic_factorial import FACTORIAL_WORLDS, generate_factorial_runs
from soap.verdict_files import write_verdict as write_verdict_files

METHODS = ("bp", "fa", "sign", "sign_scaled")
# A small synthetic world: three grid lrs, four seeds per phase.
SMALL = SyntheticSpec(grid_lrs=(1e-3, 1e-2, 1e-1), grid_seeds=4, tuned_seeds=4)


def make_runs(records):
    """A contract-shaped runs table from (phase, method, seed, lr, test_loss[, diverged]) tuples."""
    rows = []
    for i, rec in enumerate(records):
        phase, method, seed, lr, loss = rec[:5]
        diverged = rec[5] if len(rec) > 5 else False
        rows.append({
            "run_id": f"r{i}", "phase": phase, "dataset": "toy", "method": method, "seed": seed, "lr": lr,
            "feedback_gain": 1.0, "diverged": diverged, "final_train_loss": loss, "val_loss": loss,
            "val_acc": 0.9, "test_loss": np.nan if diverged else loss, "test_acc": 0.9,
            "examples_to_target": 100.0 * (seed + 1), "reached_target": True,
            "architecture": "mlp", "layers": "784-256-256-10 tanh",
        })
    return pd.DataFrame(rows)


# Seeds 0, 1, 2: bp losses 1.0, 2.0, 3.0; fa losses 1.5, 2.1, 3.4 -> differences 0.5, 0.1, 0.4.
BP = [1.0, 2.0, 3.0]
FA = [1.5, 2.1, 3.4]
TOY = make_runs([("tuned", "bp", s, 0.1, x) for s, x in enumerate(BP)]
                + [("tuned", "fa", s, 0.2, x) for s, x in enumerate(FA)])


# --- synthetic results --------------------------------------------------------------------------------

def _curves(runs: pd.DataFrame, n_points: int = 16) -> pd.DataFrame:
    """Decaying loss curves and alignment traces for each run; bp has zero angle and unit cosine."""
    rng = np.random.default_rng(1)
    frames = []
    for run in runs.itertuples():
        # Logged at fixed intervals, so seeds line up; a diverged run's curve stops where it diverged.
        examples = np.arange(0, run.examples_seen + 1, 250_000 / (n_points - 1))
        floor = 0.1 if np.isnan(run.final_train_loss) else run.final_train_loss
        scale = 250_000 / (3 + 2 * rng.random())
        loss = floor + (2.3 - floor) * np.exp(-examples / scale)
        aligned = run.method == "bp"
        angle = 0.0 if aligned else 80 - 30 * (1 - np.exp(-examples / scale))
        cos = 1.0 if aligned else 0.1 + 0.6 * (1 - np.exp(-examples / scale))
        frame = pd.DataFrame({"run_id": run.run_id, "examples": examples,
                              "train_loss": loss * np.exp(0.05 * rng.standard_normal(len(examples))),
                              "train_loss_ema": loss, "val_loss": loss + 0.02, "val_acc": 1 - loss / 3})
        for layer in range(3):
            frame[f"angle_l{layer}"] = angle + layer * 3
        for layer in range(2):
            frame[f"cos_l{layer}"] = cos - layer * 0.05
            frame[f"norm_ratio_l{layer}"] = run.feedback_gain
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _tuning(root: Path, runs: pd.DataFrame) -> None:
    rng = np.random.default_rng(2)
    for (dataset, method), rows in runs[runs["phase"] == "tuned"].groupby(["dataset", "method"]):
        best_lr = float(rows["lr"].iloc[0])
        for repeat in range(2):
            lr = np.exp(rng.uniform(np.log(1e-4), np.log(1.0), 12))
            value = 0.1 + 0.03 * np.log(lr / best_lr) ** 2 + 0.01 * rng.random(12)
            study = root / "tune" / dataset / method / f"r{repeat}"
            study.mkdir(parents=True)
            pd.DataFrame({"number": range(12), "value": value, "state": "COMPLETE", "params_lr": lr,
                          "datetime_start": "2025-01-01 00:00:00"}).to_csv(study / "trials.csv", index=False)
            best = int(np.argmin(value))
            (study / "best.json").write_text(json.dumps({"lr": lr[best], "value": value[best], "n_trials": 12}))


# The factorial worlds' primary test: 10 seeds and this margin give pure_step "supported" and
# direction_better (a true direction effect of 0.03 nats) "contradicted" at draw seed 0.
FACTORIAL_SEEDS = 10
FACTORIAL_MARGIN = 0.015


def write_verdict(root: Path, world: str, dataset: str = "mnist") -> Path:
    """The verdict stage's outputs in root/interventions/verdict/ (the files `soap verdict` writes, and
    the figures) from a synthetic factorial world (soap.synthetic_factorial) put through the analysis's
    study_verdict: the report is tested on what the analysis says, not on hand-written answers."""
    from dataclasses import replace

    spec = replace(FACTORIAL_WORLDS[world], seeds=FACTORIAL_SEEDS, datasets=(dataset,))
    runs = generate_factorial_runs(spec, seed=0)
    cfg = {"analysis": {"primary": {"rule": spec.rule, "outcome": "test_loss", "margin": FACTORIAL_MARGIN},
                        "equivalence_margin": {"test_loss": FACTORIAL_MARGIN, "test_acc": 0.5},
                        "seed": 0, "n_boot": 50},
           "interventions": {"factorial": [spec.rule]}, "datasets": [dataset]}
    out = root / "interventions" / "verdict"
    result = write_verdict_files(runs, cfg, out)  # the files the verdict stage writes
    write_figures(runs, result, out)
    return out


def make_results(root: Path, datasets=("mnist",), methods=METHODS, tuning=True, provenance=True,
                 factorial: str | None = None, network: tuple[str, str] = ("mlp", "784-256-256-10 tanh")) -> Path:
    """A results directory in the pipeline's layout, small enough to report on in a few seconds;
    factorial names a synthetic factorial world whose verdict outputs it holds too; network: the runs
    table's (architecture, layers)."""
    spec = SyntheticSpec(datasets=tuple(datasets),
                         direct_effect={m: SyntheticSpec().direct_effect[m] for m in methods},
                         grid_lrs=tuple(np.logspace(-4, 0, 5)), grid_seeds=3, tuned_seeds=3,
                         diverge_elr=5.0,  # sign survives the shared lr (mediation runs) but not lr = 1
                         architecture=network[0], layers=network[1])
    runs = generate_runs(spec, seed=0)
    runs.loc[runs["phase"] == "tuned", "examples_seen"] *= 2  # tuned runs train longer, as in the study
    runs["refresh_period"] = 1000
    runs["epochs"] = np.where(runs["phase"] == "tuned", 2.0, 1.0)  # examples_seen: 1 epoch of budget_examples
    root.mkdir(parents=True, exist_ok=True)
    runs.to_parquet(root / "runs.parquet", index=False)
    _curves(runs).to_parquet(root / "curves.parquet", index=False)
    if tuning:
        _tuning(root, runs)
    # The analysis stage itself writes summary.json, estimates.csv, km.csv and the report's tables: the
    # report is tested on the contract as it is, not on a copy of it (few resamples, to stay fast).
    run_analysis(root / "runs.parquet", root / "analysis", n_boot=50, curves_path=root / "curves.parquet",
                 tune_dir=root / "tune", tune_batch=4, lr_range=(1e-4, 1.0))
    if provenance:
        (root / "provenance.json").write_text(json.dumps({
            "config": {"seeds": {"grid": 3, "tuned": 3}, "budget": {"epochs": 5}, "methods": list(methods),
                       "tune": {"batch": 4, "lr_low": 1e-4, "lr_high": 1.0, "epochs": 0.25},
                       "model": {"hidden": [256, 256], "activation": "tanh"}},
            "versions": {"soap": "0.1.0", "torch": "2.5.1", "python": "3.11.9"},
            "device": ["cpu (synthetic <test>)"], "wall_time_s": 3723.0, "compute_time_s": 7021.5,
            "jobs": 12, "runs": len(runs), "started": "2025-01-01T00:00:00",
            "finished": "2025-01-01T01:02:03", "gathered": "2025-01-01T01:02:04"}))
    if factorial is not None:
        write_verdict(root, factorial, datasets[0])
    return root


def build(results: Path) -> tuple[Path, str]:
    out = report.build_report(results, results / "report.html", results / "figures")
    return out, out.read_text()
