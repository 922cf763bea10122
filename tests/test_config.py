"""soap.config: the training config, its generated schema and YAML loading, and what config imports."""

import subprocess
import sys

import pytest

from soap.config import ConfigError, TrainConfig, load_train_config


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


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: synthetic\nlrs: [1e-3, 2E+1]\ntarget_loss: 5e-1\n")
    config = load_train_config(path)
    assert config.lrs == [0.001, 20.0] and config.target_loss == 0.5


def test_activation_names_are_the_networks_activations():
    """config names the activations itself (it sits below soap.nn): the two lists must agree."""
    from soap.config import ACTIVATIONS
    from soap.nn import ACTIVATIONS as NETWORK_ACTIVATIONS

    assert list(ACTIVATIONS) == list(NETWORK_ACTIVATIONS)


def test_second_order_settings_come_from_the_so_keys_and_are_checked_against_hidden():
    from soap.activity_propagation import ActivityPropagation

    settings = TrainConfig(hidden=[8, 8, 8], soap_eta=0.5, soap_curvature_bias=1e-4, soap_layers=[2, 0],
                           soap_warmup=3).second_order()
    assert settings == ActivityPropagation(0.5, 1e-4, (2, 0), 3) and settings.hidden_layers(3) == (0, 2)
    assert TrainConfig().second_order() == ActivityPropagation()  # the defaults are the settings' own
    with pytest.raises(ConfigError, match=r"soap_layers: .*hidden layers \[2\] do not exist"):
        TrainConfig(hidden=[8, 8], soap_layers=[2])


def test_config_imports_no_module_above_it():
    """Data flows config -> populations -> tables: importing soap.config loads no network, data, trainer
    or pipeline module (checked in a fresh interpreter, lazy imports included by building a config)."""
    above = ["soap.nn", "soap.activity_propagation", "soap.direct_feedback", "soap.data", "soap.population",
             "soap.pipeline", "soap.tuning", "soap.models"]
    code = ("import sys, soap.config as c; c.TrainConfig().validate(); c.train_schema(); "
            f"print([m for m in {above!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

