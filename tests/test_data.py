"""Datasets: real files, the fixed split, and clear errors for missing or corrupted data."""

import shutil

import pytest
import torch

from soap.data import DATASETS, DataError, load_dataset, load_prepared, prepare_dataset, synthetic_dataset


@pytest.fixture(scope="module")
def mnist(data_root):
    return load_dataset("mnist", data_root, download=False)


def test_mnist_split_sizes_and_normalisation(mnist):
    assert mnist.train_x.shape == (50_000, 784) and mnist.val_x.shape == (10_000, 784)
    assert mnist.test_x.shape == (10_000, 784) and mnist.num_classes == 10
    assert mnist.train_x.dtype == torch.float32 and mnist.train_y.dtype == torch.int64
    pixels = torch.cat([mnist.train_x, mnist.val_x])
    assert abs(pixels.mean().item()) < 1e-3 and abs(pixels.std().item() - 1) < 1e-3
    assert torch.bincount(mnist.val_y, minlength=10).min() > 800  # a random split keeps every class


def test_split_is_fixed_and_disjoint(mnist, data_root):
    again = load_dataset("mnist", data_root, download=False)
    assert torch.equal(again.val_x, mnist.val_x)
    other = load_dataset("mnist", data_root, download=False, split_seed=1)
    assert not torch.equal(other.val_y, mnist.val_y)
    # no validation image is also a training image: compare row hashes
    train_rows = {row.numpy().tobytes() for row in mnist.train_x}
    repeated = sum(row.numpy().tobytes() in train_rows for row in mnist.val_x)
    assert repeated < 10  # MNIST's training set holds only a few exact duplicate images


def test_fashion_mnist_loads(data_root):
    fashion = load_dataset("fashion_mnist", data_root, download=False)
    assert fashion.train_x.shape == (50_000, 784) and fashion.num_classes == 10


def test_missing_files_name_the_folder_and_the_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message


def test_corrupted_file_is_caught_by_md5(tmp_path, data_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in DATASETS["mnist"].md5:
        shutil.copy(data_root / "MNIST" / "raw" / name, raw / name)
    target = raw / "t10k-labels-idx1-ubyte"
    target.chmod(0o644)
    blob = bytearray(target.read_bytes())
    blob[100] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="md5 mismatch.*t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path, download=False)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", "data")


def test_prepared_file_round_trip(tmp_path):
    path = tmp_path / "synthetic.pt"
    prepare_dataset("synthetic", "unused", path)
    loaded = load_prepared(path)
    assert torch.equal(loaded.train_x, synthetic_dataset().train_x)
    path.write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="unreadable"):
        load_prepared(path)
