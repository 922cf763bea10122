"""soap.report.inputs: what the report reads, what it says when an optional input is missing, and the
one-line errors for a required one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from study_results import build, make_results
from soap import report
from soap.tables import TableError

# The analysis's models on a handful of synthetic runs warn (Cox convergence, normality tests on few
# residuals); they are the analysis tests' concern, not the report's.
pytestmark = [pytest.mark.filterwarnings("ignore:Maximum Likelihood optimization failed"),
              pytest.mark.filterwarnings("ignore:omni_normtest is not valid")]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small(report_small):
    return report_small


def test_missing_optional_inputs_degrade_to_explanations(small):
    out, html = small
    for spec in report.FIGURES:
        assert (out.parent / "figures" / f"{spec.stem}.png").stat().st_size > 1000
    assert "provenance.json</code> is missing" in html
    assert "km.csv" in html and "trials.csv" in html
    assert "not run for this dataset (no sign and sign_scaled" in html  # the analysis's reason


def test_required_input_missing_names_the_file(tmp_path):
    results = make_results(tmp_path / "results", tuning=False)
    (results / "analysis" / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="summary.json"):
        build(results)


def test_curves_table_breaking_the_contract_is_named(tmp_path):
    results = make_results(tmp_path / "results", tuning=False)
    curves = pd.read_parquet(results / "curves.parquet")
    curves.drop(columns=["val_loss"]).to_parquet(results / "curves.parquet", index=False)
    with pytest.raises(TableError, match=r"curves.parquet is missing required column\(s\): val_loss"):
        build(results)
    pd.concat([curves, curves.iloc[:1]]).to_parquet(results / "curves.parquet", index=False)
    with pytest.raises(TableError, match=r"\(run_id, examples\) must be unique"):
        build(results)


def test_the_report_reads_the_tuning_tables_from_the_analysis_not_the_tune_directory(tmp_path):
    results = make_results(tmp_path / "results", methods=("bp", "fa"))
    trials = pd.read_csv(results / "analysis" / "tuning_trials.csv")
    shutil.rmtree(results / "tune")
    inputs = report.load_inputs(results)
    assert len(inputs.table("tuning_trials")) == len(trials) == 2 * 2 * 12  # 2 methods x 2 repeats x 12 trials
    assert inputs.summary.tuning_budget_trials.startswith("TPE's startup trials (the first 4")
    assert not [m for m in inputs.missing if "tune" in m]
    assert inputs.verdict is None


def test_a_missing_analysis_table_is_listed(tmp_path):
    results = make_results(tmp_path / "results", methods=("bp", "fa"), tuning=False, provenance=False)
    (results / "analysis" / "rule_comparison.csv").unlink()
    inputs = report.load_inputs(results)
    missing = {Path(m).name for m in inputs.missing}
    # No tuning: its trials are missing, and the tables derived from them are not listed again.
    assert missing == {"rule_comparison.csv", "tuning_trials.csv", "provenance.json"}
