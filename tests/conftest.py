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


# Hypothesis budgets: "ci" (the default) is seeded and bounded so the fuzzing suite stays under
# two minutes; `pytest --hypothesis-profile=long tests/test_fuzz.py` runs a longer hunt by hand.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.function_scoped_fixture])
    settings.register_profile("long", max_examples=1500, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.function_scoped_fixture])
    settings.load_profile("ci")
except ImportError:  # hypothesis is a test dependency; without it test_fuzz skips
    pass
