"""soap.tables: the runs and curves contracts' one-line errors, and tables written whole in either format."""

import numpy as np
import pandas as pd
import pytest

from soap.tables import TableError, read_table, validate_curves, validate_runs, write_table
from study_results import TOY


def test_a_valid_runs_table_gets_canonical_dtypes():
    runs = validate_runs(TOY.assign(seed=TOY["seed"].astype(float), diverged=["false", "0", "False"] * 2))
    assert runs["seed"].dtype == "int64" and runs["diverged"].dtype == bool and not runs["diverged"].any()


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns=["lr", "seed"]), r"toy.csv is missing required column\(s\): seed, lr"),
    (lambda t: t.assign(test_loss="high"), r"toy.csv: column 'test_loss' should hold float values"),
    (lambda t: t.assign(diverged="maybe"), r"column 'diverged' should hold bool values \(not booleans: \['maybe'\]\)"),
    (lambda t: t.assign(run_id="r0"), r"run_id must be unique; repeated: r0"),
    (lambda t: t.assign(lr=[0.1, -1.0, 0.1, 0.2, 0.2, 0.2]), r"lr must be positive and finite; 1 run\(s\), e.g. r1: -1.0"),
    (lambda t: t.assign(feedback_gain=[1.0, 1.5, 1.0, 2.0, 2.0, 2.0]), r"bp's feedback_gain must be 1"),
])
def test_a_runs_table_breaking_the_contract_is_one_line_naming_it(change, message):
    with pytest.raises(TableError, match=message) as err:
        validate_runs(change(TOY), source="toy.csv")
    assert "\n" not in str(err.value)


def test_curves_need_their_key_once():
    curves = pd.DataFrame({"run_id": ["a", "a"], "examples": [0, 64], "train_loss": 1.0, "train_loss_ema": 1.0,
                           "val_loss": 1.0, "val_acc": 0.5})
    assert validate_curves(curves) is curves
    with pytest.raises(TableError, match=r"\(run_id, examples\) must be unique; repeated: \(a, 0\)"):
        validate_curves(curves.assign(examples=0))
    with pytest.raises(TableError, match=r"missing required column\(s\): val_acc"):
        validate_curves(curves.drop(columns="val_acc"))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_table_round_trips_by_suffix_and_leaves_no_temporary_file(tmp_path, suffix):
    table = pd.DataFrame({"a": [1, 2], "b": [0.5, np.nan], "c": ["x", "y"]})
    path = write_table(table, tmp_path / "sub" / f"t{suffix}")
    pd.testing.assert_frame_equal(read_table(path), table)
    assert [p.name for p in path.parent.iterdir()] == [f"t{suffix}"]


def test_unknown_formats_are_named(tmp_path):
    with pytest.raises(TableError, match=r"t.xlsx: unknown table format '.xlsx'"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.xlsx")
    (tmp_path / "t.csv").write_bytes(b"\x00\xff\xfe")
    with pytest.raises(TableError, match=r"t.csv: not a readable csv table"):
        read_table(tmp_path / "t.csv")
    with pytest.raises(TableError, match="table not found"):
        read_table(tmp_path / "none.csv")
