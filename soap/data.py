"""Datasets as normalised tensors held on the training device (no per-batch DataLoader work).

MNIST and FashionMNIST come through torchvision from a data root (downloaded when missing and the
network is reachable). A fixed-seed split takes `val_size` validation examples off the training set;
the test set is only for final numbers. `synthetic_dataset` is a small learnable task for fast tests.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from soap.files import write_atomic

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """A dataset that cannot be found, downloaded or trusted."""


@dataclass(frozen=True)
class DatasetSpec:
    torchvision_name: str
    folder: str
    mean: float  # of the training pixels in [0, 1]
    std: float
    # md5 of the uncompressed files torchvision reads, so a corrupted file is caught before training.
    md5: dict[str, str]


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("MNIST", "MNIST", 0.1307, 0.3081, {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }),
    "fashion_mnist": DatasetSpec("FashionMNIST", "FashionMNIST", 0.2860, 0.3530, {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    }),
}


@dataclass
class Splits:
    """Train/validation/test tensors: x float32 (n, features), y int64 (n,)."""

    name: str
    num_classes: int
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @property
    def input_dim(self) -> int:
        return self.train_x.shape[1]

    def to(self, device) -> "Splits":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in moved.items():
            if isinstance(value, Tensor):
                moved[key] = value.to(device)
        return Splits(**moved)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_raw_files(name: str, root: str | Path) -> None:
    """Raise DataError naming every missing or corrupted raw file of `name` under `root`."""
    spec = DATASETS[name]
    raw = Path(root) / spec.folder / "raw"
    missing = [f for f in spec.md5 if not (raw / f).is_file()]
    if missing:
        raise DataError(
            f"{name}: files missing under {raw}: {', '.join(missing)} "
            f"(expected {', '.join(spec.md5)}, as torchvision leaves them after a download)"
        )
    corrupted = [f for f, md5 in spec.md5.items() if _md5(raw / f) != md5]
    if corrupted:
        raise DataError(
            f"{name}: md5 mismatch for {', '.join(str(raw / f) for f in corrupted)}: the files are "
            "corrupted or not the official release; delete them and download again"
        )


def _torchvision_split(name: str, root: Path, train: bool, download: bool):
    import torchvision

    spec = DATASETS[name]
    dataset_class = getattr(torchvision.datasets, spec.torchvision_name)
    try:
        return dataset_class(str(root), train=train, download=download)
    # torchvision raises RuntimeError when the files are missing or fail its check, and an OSError
    # (URLError, socket errors) when the download fails.
    except (RuntimeError, OSError) as err:
        raise DataError(
            f"{name}: could not load from {root / spec.folder / 'raw'} "
            f"(expected {', '.join(spec.md5)}); download {'failed' if download else 'disabled'}: {err}"
        ) from err


def _normalise(images: Tensor, spec: DatasetSpec) -> Tensor:
    flat = images.reshape(images.shape[0], -1).to(torch.float32) / 255.0
    return (flat - spec.mean) / spec.std


def load_dataset(name: str, root: str | Path = "data", *, download: bool = True, val_size: int = 10_000,
                 split_seed: int = 0) -> Splits:
    """Load a torchvision dataset as normalised tensors with a fixed-seed train/validation split."""
    if name == "synthetic":
        return synthetic_dataset(seed=split_seed)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join([*DATASETS, 'synthetic'])}")
    spec, root = DATASETS[name], Path(root)
    raw = root / spec.folder / "raw"
    if not all((raw / f).is_file() for f in spec.md5):
        if not download:
            verify_raw_files(name, root)  # raises, naming the missing files
        log.info("downloading %s into %s", name, root)
        _torchvision_split(name, root, train=True, download=True)
        _torchvision_split(name, root, train=False, download=True)
    verify_raw_files(name, root)
    train, test = (_torchvision_split(name, root, train=t, download=False) for t in (True, False))
    train_x, train_y = _normalise(train.data, spec), train.targets.to(torch.int64)
    if not 0 < val_size < len(train_y):
        raise DataError(f"val_size must be between 1 and {len(train_y) - 1}, got {val_size}")
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    return Splits(
        name=name, num_classes=len(train.classes),
        train_x=train_x[train_idx], train_y=train_y[train_idx],
        val_x=train_x[val_idx], val_y=train_y[val_idx],
        test_x=_normalise(test.data, spec), test_y=test.targets.to(torch.int64),
    )


def synthetic_dataset(n_train: int = 2048, n_val: int = 512, n_test: int = 512, dim: int = 20,
                      num_classes: int = 4, seed: int = 0) -> Splits:
    """Gaussian inputs labelled by a fixed random tanh teacher: learnable, nonlinear, and tiny."""
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    x = torch.randn(n, dim, generator=gen)
    teacher_hidden = torch.randn(dim, 32, generator=gen) / dim**0.5
    teacher_out = torch.randn(32, num_classes, generator=gen) / 32**0.5
    y = (torch.tanh(x @ teacher_hidden * 2.0) @ teacher_out).argmax(dim=1)
    a, b = n_train, n_train + n_val
    return Splits("synthetic", num_classes, x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def save_prepared(splits: Splits, path: str | Path) -> Path:
    """Write prepared splits atomically (one file a training job loads in well under a second)."""
    payload = {f.name: getattr(splits, f.name) for f in fields(splits)}
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_prepared(path: str | Path) -> Splits:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared dataset not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return Splits(**payload)
    # What torch.load raises on a file that is not its format (zip, pickle, EOF), one whose tensors
    # are not allowed under weights_only, or a payload without the Splits fields.
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, TypeError) as err:
        raise DataError(f"prepared dataset {path} is unreadable ({err}); delete it to prepare it again") from err


def prepare_dataset(name: str, root: str | Path, out_path: str | Path, *, download: bool = True,
                    val_size: int = 10_000, split_seed: int = 0) -> Path:
    return save_prepared(load_dataset(name, root, download=download, val_size=val_size,
                                      split_seed=split_seed), out_path)
