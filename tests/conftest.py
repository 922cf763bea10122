import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST/FashionMNIST files: $SOAP_DATA_ROOT, else ../shared/data beside the repository.

    Missing data is an error, not a skip: CI must exercise real data.
    """
    root = Path(os.environ.get("SOAP_DATA_ROOT", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw").is_dir():
        raise FileNotFoundError(f"real data not found at {root}; set SOAP_DATA_ROOT to the folder holding MNIST/raw")
    return root
