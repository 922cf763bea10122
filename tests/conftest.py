import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST/FashionMNIST files: $SOAP_DATA_ROOT, else ../shared/data beside the repository,
    else REPO/data, downloaded there through torchvision on first use.

    Missing data is an error, not a skip: the suite always exercises real data.
    """
    if "SOAP_DATA_ROOT" in os.environ:
        root = Path(os.environ["SOAP_DATA_ROOT"])
    elif (REPO.parent / "shared" / "data" / "MNIST" / "raw").is_dir():
        root = REPO.parent / "shared" / "data"
    else:
        from soap.data import load_dataset

        root = REPO / "data"
        for name in ("mnist", "fashion_mnist"):
            load_dataset(name, root, download=True)
    if not (root / "MNIST" / "raw").is_dir():
        raise FileNotFoundError(f"real data not found at {root}; set SOAP_DATA_ROOT to the folder holding MNIST/raw")
    return root
