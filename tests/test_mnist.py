"""Real MNIST from the data root: the write-up's numbers at its settings (784-256-256-10 tanh, batch 64,
one epoch of plain SGD)."""

import pytest

from soap.config import TrainConfig
from soap.population import train_population


@pytest.fixture(scope="module")
def one_epoch(data_root):
    members = [dict(method="bp", lr=0.1, seed=0), dict(method="fa", lr=0.1, seed=0),
               dict(method="bp", lr=0.01, seed=0), dict(method="sign", lr=0.01, seed=0)]
    config = TrainConfig.from_dict(dict(dataset="mnist", data_root=str(data_root), download=False,
                                        members=members, device="cpu"))
    return train_population(config, progress=False).runs.set_index(["method", "lr"])


def test_bp_and_fa_learn_mnist_in_one_epoch(one_epoch):
    assert one_epoch.loc[("bp", 0.1), "val_acc"] > 0.93
    assert one_epoch.loc[("fa", 0.1), "val_acc"] > 0.88
    assert one_epoch.loc[("bp", 0.1), "val_loss"] < one_epoch.loc[("fa", 0.1), "val_loss"]
    assert not one_epoch["diverged"].any()


def test_sign_beats_bp_at_a_learning_rate_too_small_for_bp(one_epoch):
    # The write-up's observation, and the reason: sign feedback amplifies the hidden error signal.
    assert one_epoch.loc[("sign", 0.01), "val_loss"] < one_epoch.loc[("bp", 0.01), "val_loss"]
    assert one_epoch.loc[("sign", 0.01), "feedback_gain"] > 10


def test_test_set_numbers_are_reported(one_epoch):
    assert one_epoch["test_acc"].between(0.5, 1.0).all()
    assert one_epoch["test_loss"].gt(0).all()
    assert (one_epoch["examples_seen"] == 50_000 // 64 * 64).all()
