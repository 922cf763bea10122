"""Config loading and the `soap train` command."""

import json
import subprocess
import sys
from pathlib import Path

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
    ({"epoch": 2}, r"'epoch' was unexpected\); known keys: dataset, data_root"),
    ({"lrs": 0.1}, "lrs: 0.1 is not of type 'array'"),
    ({"methods": ["bp", "sgn"]}, r"methods.1: 'sgn' is not one of \['bp', 'fa'"),
    ({"batch_size": 0}, "batch_size: 0 is less than the minimum of 1"),
    ({"epochs": "many"}, "epochs: 'many' is not of type 'number'"),
    ({"members": [{"method": "bp"}]}, "members.0: 'lr' is a required property"),
    ({"members": [{"method": "bp", "lr": -1, "seed": 0}]}, "members.0.lr: -1 is less than or equal to the minimum"),
    ({"activation": "swish"}, r"activation: 'swish' is not one of \['tanh'"),
    ({"ema_beta": 1.0}, "ema_beta: 1.0 is greater than or equal to the maximum of 1"),
])
def test_bad_config_values_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_constructor_and_from_dict_share_one_validator():
    with pytest.raises(ConfigError, match="hidden.1: 0 is less than the minimum of 1"):
        TrainConfig(hidden=[8, 0])
    assert TrainConfig(epochs=2, lrs=[1]).to_dict() == TrainConfig.from_dict({"epochs": 2.0, "lrs": [1.0]}).to_dict()
    assert isinstance(TrainConfig(epochs=2).epochs, float)  # equal configs fingerprint equal


def test_study_train_block_defaults_are_the_dataclass_defaults():
    """One definition: the study config's train defaults are TrainConfig's, key for key."""
    import dataclasses

    from soap.study_config import PIPELINE_TRAIN_KEYS, load_study_config, study_schema

    filled = load_study_config(values={})["train"]
    defaults = TrainConfig().to_dict()
    expected = {k: v for k, v in defaults.items() if k not in PIPELINE_TRAIN_KEYS}
    assert filled == expected and set(expected) == set(study_schema()["properties"]["train"]["properties"])
    meanings = {f.name: f.metadata["meaning"] for f in dataclasses.fields(TrainConfig)}
    assert study_schema()["properties"]["train"]["properties"]["ema_beta"]["description"] == meanings["ema_beta"]


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: synthetic\nlrs: [1e-3, 2E+1]\ntarget_loss: 5e-1\n")
    config = load_train_config(path)
    assert config.lrs == [0.001, 20.0] and config.target_loss == 0.5


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


@pytest.mark.parametrize("study", sorted(p.name for p in (Path(__file__).parents[1] / "config").glob("*.yaml")))
def test_every_shipped_study_config_validates_over_config_yaml(study):
    # each file under config/ is used as `--configfile config/X.yaml` on top of config.yaml
    from soap.study_config import load_study_config
    root = Path(__file__).parents[1]
    cfg = load_study_config([root / "config.yaml", root / "config" / study])
    assert cfg["methods"] and set(cfg["datasets"]) <= {"mnist", "fashion_mnist"}
