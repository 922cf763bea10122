"""soap.study_config: the study config's schema (train block generated from TrainConfig) and loading."""

from pathlib import Path

import pytest

from soap.config import TrainConfig
from soap.study_config import device_for, load_study_config, train_config


def test_study_train_block_defaults_are_the_dataclass_defaults():
    """One definition: the study config's train defaults are TrainConfig's, key for key."""
    import dataclasses

    from soap.study_config import PIPELINE_TRAIN_KEYS, study_schema

    filled = load_study_config(values={})["train"]
    defaults = TrainConfig().to_dict()
    expected = {k: v for k, v in defaults.items() if k not in PIPELINE_TRAIN_KEYS}
    assert filled == expected and set(expected) == set(study_schema()["properties"]["train"]["properties"])
    meanings = {f.name: f.metadata["meaning"] for f in dataclasses.fields(TrainConfig)}
    assert study_schema()["properties"]["train"]["properties"]["ema_beta"]["description"] == meanings["ema_beta"]


@pytest.mark.parametrize("study", sorted(p.name for p in (Path(__file__).parents[1] / "config").glob("*.yaml")))
def test_every_shipped_study_config_validates_over_config_yaml(study):
    # each file under config/ is used as `--configfile config/X.yaml` on top of config.yaml
    root = Path(__file__).parents[1]
    cfg = load_study_config([root / "config.yaml", root / "config" / study])
    assert cfg["methods"] and set(cfg["datasets"]) <= {"mnist", "fashion_mnist"}


def test_train_config_of_a_population_is_the_train_block_plus_what_the_pipeline_sets(monkeypatch):
    monkeypatch.setenv("SOAP_DATA_ROOT", "/elsewhere")
    cfg = load_study_config(values={"train": {"hidden": [16], "epochs": 0.5}, "gpus": 0})
    members = [{"method": "fa", "lr": 0.1, "seed": 3}, {"method": "bp", "lr": 0.2, "seed": 3}]
    config = train_config(cfg["train"], "synthetic", "tune", members, data=cfg["data"], epochs=0.25,
                          device=device_for(cfg["gpus"]))
    assert config.hidden == [16] and config.epochs == 0.25 and config.phase == "tune"
    assert config.methods == ["bp", "fa"] and config.device == "cpu" and config.data_root == "/elsewhere"
    assert [(m.method, m.lr, m.seed) for m in config.population()] == [("fa", 0.1, 3), ("bp", 0.2, 3)]
    assert device_for("auto") == "auto"


def test_gpu_jobs_hold_every_seed_of_a_phase_unless_told_and_cpu_jobs_keep_their_size():
    from soap.study_config import load_study_config, seeds_per_job

    cfg = load_study_config(values={"grid": {"seeds": 12, "seeds_per_job": 2}, "tuned": {"seeds": 7}})
    assert seeds_per_job(cfg["grid"], gpus=False) == 2
    assert seeds_per_job(cfg["grid"], gpus=True) == 12
    assert seeds_per_job(cfg["tuned"], gpus=True) == 7
    told = load_study_config(values={"grid": {"seeds": 12, "seeds_per_gpu_job": 5}})
    assert seeds_per_job(told["grid"], gpus=True) == 5
    assert seeds_per_job(told["grid"], gpus=False) == told["grid"]["seeds_per_job"]
