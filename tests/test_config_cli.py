"""Config loading and the `soap train` command."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from soap.cli import main
from soap.config import ConfigError, TrainConfig, load_train_config
from soap.tables import validate_runs


def test_overrides_are_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: synthetic\nepochs: 2\nlrs: [0.1]\n")
    config = load_train_config(path, ["lrs=[1e-3, 0.1]", "methods=[bp, sign]", "target_loss=0.5"])
    assert config.lrs == [0.001, 0.1] and config.epochs == 2.0 and config.target_loss == 0.5
    assert len(config.population()) == 4


@pytest.mark.parametrize("values, message", [
    ({"epoch": 2}, "unknown config key.*epoch"),
    ({"lrs": 0.1}, "lrs must be a list"),
    ({"methods": ["bp", "sgn"]}, "unknown method 'sgn'"),
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"epochs": "many"}, "epochs must be of type float"),
    ({"members": [{"method": "bp"}]}, "members: each entry needs method, lr and seed"),
    ({"activation": "swish"}, "unknown activation 'swish'"),
])
def test_bad_config_values_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


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
    assert "unknown method 'sgn'" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written
