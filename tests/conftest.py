import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir():
    d = Path(os.environ.get("LBCNN_DATA", SHARED))
    if not (d / "mnist.npz").exists():
        pytest.skip("real datasets not available (set LBCNN_DATA)")
    os.environ["LBCNN_DATA"] = str(d)
    return d


@pytest.fixture(scope="session")
def mnist(data_dir):
    from lbcnn.data import load_dataset
    return load_dataset("mnist")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def gtsrb(data_dir):
    from lbcnn.data import load_dataset
    return load_dataset("gtsrb")
