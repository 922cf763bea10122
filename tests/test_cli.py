"""The `soap` command: `soap train` writes the contract tables, bad input ends in one line, and every
command reads data where $SOAP_DATA_ROOT says."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from soap.cli import main
from soap.tables import validate_runs


def test_train_command_writes_contract_tables(tmp_path):
    out = tmp_path / "out"
    status = main(["train", "--out", str(out), "--quiet", "dataset=synthetic", "hidden=[8]",
                   "methods=[bp,fa]", "seeds=[0,1]", "epochs=0.5"])
    assert status == 0
    runs = validate_runs(pd.read_parquet(out / "runs.parquet"))
    assert len(runs) == 4 and set(runs.method) == {"bp", "fa"}
    curves = pd.read_parquet(out / "curves.parquet")
    assert set(curves.run_id) == set(runs.run_id)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["methods"] == ["bp", "fa"] and "torch" in meta["versions"] and meta["device"]


def test_train_command_reports_bad_input_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "soap.cli", "train", "--out", str(tmp_path),
                           "dataset=synthetic", "methods=[bp,sgn]"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "methods.1: 'sgn' is not one of" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("command", [
    ["train", "--out", "out", "dataset=mnist", "download=false", "epochs=0.01"],
    ["tune", "--method", "fa", "--dataset", "mnist", "--config", "study.yaml", "--quiet"],
    ["prepare-data", "--dataset", "mnist", "--no-download", "--out", "mnist.pt"],
])
def test_soap_data_root_is_where_every_command_reads_data(tmp_path, command):
    """$SOAP_DATA_ROOT wins over the configured root (offline machines keep MNIST elsewhere): pointed at
    an empty folder, each command fails naming that folder, never the config's data/ or a download."""
    import os

    import yaml

    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"data": {"root": "data", "download": False}, "gpus": 0}))
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "SOAP_DATA_ROOT": str(empty)}
    proc = subprocess.run([sys.executable, "-m", "soap.cli", *command], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and f"files missing under {empty / 'MNIST' / 'raw'}" in proc.stderr, proc.stderr
