"""soap.analysis.outputs: the files the analysis stage writes, and the tuning studies it reads."""

import json

import numpy as np
import pandas as pd
import pytest

from soap.analysis.core import ESTIMATES_COLUMNS
from soap.analysis.outputs import load_tuning, run_analysis
from soap.analysis.summary import Summary
from soap.synthetic import SyntheticSpec, generate_runs


def test_run_analysis_writes_contract_files_from_csv(tmp_path):
    runs = generate_runs(SyntheticSpec(grid_seeds=4, tuned_seeds=4), seed=0)
    runs_path = tmp_path / "runs.csv"
    runs.to_csv(runs_path, index=False)
    out = tmp_path / "analysis"
    result = run_analysis(runs_path, out, seed=1, n_boot=100)

    estimates = pd.read_csv(out / "estimates.csv")
    assert tuple(estimates.columns) == ESTIMATES_COLUMNS
    assert len(estimates) == len(result.estimates)
    text = (out / "summary.json").read_text()
    json.loads(text, parse_constant=pytest.fail)  # strict JSON: no NaN or Infinity
    summary = Summary.from_json(text)
    assert summary == Summary.from_json(result.summary.to_json())  # what was written is what is read
    assert summary.n_runs == len(runs)
    assert summary.n_seeds == {"synthetic": {"grid": 4, "tuned": 4}}
    diverged = sum(e.n for e in summary.exclusions if e.estimand == "effective_lr" and e.reason == "diverged")
    assert diverged == int(runs.query("phase == 'grid'")["diverged"].sum())
    assert summary.mediation["synthetic"].design == "pooled"
    assert summary.mediation["synthetic"].lr is None and len(summary.mediation["synthetic"].lrs) > 1
    assert {r.unit for r in summary.estimates if r.estimand == "tuned"} == {"pairs"}
    assert {r.holm_family for r in summary.estimates if r.estimand == "tuned"} == {"test_loss", "test_acc"}
    km = pd.read_csv(out / "km.csv")
    assert list(km.columns) == ["dataset", "method", "examples", "survival", "ci_low", "ci_high"]
    assert km["survival"].between(0, 1).all()
    models = (out / "models.txt").read_text()
    assert "bs(log_elr, df=4)" in models and "bs(log_lr, df=4)" in models and "ACME" in models


def _study(root, dataset, method, repeat, values, best=True):
    study = root / dataset / method / f"r{repeat}"
    study.mkdir(parents=True)
    pd.DataFrame({"number": range(len(values)), "value": values, "state": "COMPLETE"}).to_csv(
        study / "trials.csv", index=False)
    if best:
        (study / "best.json").write_text(json.dumps({"lr": 0.01, "value": min(values)}))


def test_load_tuning_keys_each_study_by_its_folders(tmp_path):
    assert load_tuning(tmp_path) == (None, None)
    _study(tmp_path, "mnist", "fa", 0, [0.3, 0.2])
    _study(tmp_path, "mnist", "fa", 1, [0.4], best=False)
    trials, best = load_tuning(tmp_path)
    assert trials[["method", "repeat", "value"]].values.tolist() == [["fa", "0", 0.3], ["fa", "0", 0.2],
                                                                     ["fa", "1", 0.4]]
    assert best[["dataset", "repeat", "value"]].values.tolist() == [["mnist", "0", 0.2]]


def test_run_analysis_writes_the_report_tables_and_the_tuning_ones_with_a_tune_directory(tmp_path):
    runs = generate_runs(SyntheticSpec(grid_lrs=(1e-3, 1e-2, 1e-1), grid_seeds=3, tuned_seeds=3,
                                       direct_effect={"bp": 0.0, "fa": 0.3}), seed=0)
    runs_path = tmp_path / "runs.parquet"
    runs.to_parquet(runs_path, index=False)
    for method in ("bp", "fa"):
        _study(tmp_path / "tune", "synthetic", method, 0, [0.5, 0.4, 0.3])
    lr_low = float(runs.loc[runs["phase"] == "tuned", "lr"].min())  # a tuned lr on the lower bound
    result = run_analysis(runs_path, tmp_path / "analysis", n_boot=20, tune_dir=tmp_path / "tune", tune_batch=2,
                          lr_range=(lr_low, 10.0))
    written = {p.stem for p in (tmp_path / "analysis").glob("*.csv")}
    assert written == {"estimates", "km", *result.tables} >= {"runs_overview", "tuned_lr", "exclusions", "divergence",
                                                             "rule_comparison", "reference_levels", "tuning_budget",
                                                             "tuning_trials", "tuning_best"}
    summary = Summary.from_json((tmp_path / "analysis" / "summary.json").read_text())
    assert summary.tuning_budget_trials.startswith("TPE's startup trials (the first 2")
    assert "low" in summary.tuned_lr_edges["synthetic"].values()
    budget = pd.read_csv(tmp_path / "analysis" / "tuning_budget.csv")
    assert budget.groupby("method")["budget"].max().tolist() == [2, 2]  # 2 startup trials per study
    # bp's best after 2 of {0.5, 0.4}: (1 - 1/4) * 0.4 + 1/4 * 0.5
    assert budget.query("method == 'bp' and budget == 2")["expected_best"].item() == pytest.approx(0.425)
