"""benchmarks/same_tables.py: two results folders' runs and curves tables compared bit for bit."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "same_tables.py"


def _folder(path: Path, runs: pd.DataFrame, curves: pd.DataFrame) -> Path:
    path.mkdir()
    runs.to_parquet(path / "runs.parquet")
    curves.to_parquet(path / "curves.parquet")
    return path


def _tables():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "method": ["bp", "fa", "sign"],
                         "test_loss": [0.25, np.nan, 1 / 3], "diverged": [False, True, False]})
    curves = pd.DataFrame({"run_id": ["a", "a", "b"], "examples": [64, 128, 64], "train_loss": [2.0, 1.5, np.nan]})
    return runs, curves


def _compare(a: Path, b: Path):
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)


def test_same_values_in_another_row_order_are_identical_and_nan_equals_nan(tmp_path):
    runs, curves = _tables()
    a = _folder(tmp_path / "a", runs, curves)
    b = _folder(tmp_path / "b", runs.iloc[::-1], curves.iloc[[2, 0, 1]])
    result = _compare(a, b)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("identical" in line and "another order" in line for line in lines)


def test_one_ulp_or_a_signed_zero_is_a_difference_named_by_column_and_key(tmp_path):
    runs, curves = _tables()
    changed = runs.copy()
    changed.loc[2, "test_loss"] = np.nextafter(1 / 3, 1.0)
    zero = curves.copy()
    zero.loc[1, "train_loss"], curves.loc[1, "train_loss"] = -0.0, 0.0
    result = _compare(_folder(tmp_path / "a", runs, curves), _folder(tmp_path / "b", changed, zero))
    assert result.returncode == 1
    runs_line, curves_line = result.stdout.splitlines()
    assert runs_line.startswith("runs.parquet: DIFFERENT") and "test_loss: 1 of 3 values differ" in runs_line
    assert "['c']" in runs_line
    assert "train_loss: 1 of 3 values differ" in curves_line and "['a', 128]" in curves_line


def test_a_missing_column_or_table_is_a_difference(tmp_path):
    runs, curves = _tables()
    a = _folder(tmp_path / "a", runs, curves)
    b = _folder(tmp_path / "b", runs.drop(columns="diverged"), curves)
    result = _compare(a, b)
    assert result.returncode == 1 and "only in A: ['diverged']" in result.stdout
    (b / "curves.parquet").unlink()
    assert "curves.parquet: missing" in _compare(a, b).stdout
