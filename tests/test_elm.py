"""ELM head: primal, dual and chunked solves against NumPy references."""
import numpy as np
import pytest

from lbcnn.heads.elm import RidgeAccumulator, one_vs_rest_targets, solve_dual


def reference(h, t, C):
    h64, t64 = h.astype(np.float64), t.astype(np.float64)
    d = h.shape[1]
    # ridge as an augmented least-squares problem, solved by lstsq
    a = np.vstack([h64, np.eye(d) / np.sqrt(C)])
    b = np.vstack([t64, np.zeros((d, t.shape[1]))])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def test_primal_matches_lstsq(rng):
    h = rng.normal(size=(300, 40)).astype(np.float32)
    y = rng.integers(0, 5, size=300)
    t = one_vs_rest_targets(y, 5)
    acc = RidgeAccumulator(40, 5, C=0.1)
    acc.update(h, t)
    w = acc.solve()
    np.testing.assert_allclose(w, reference(h, t, 0.1), rtol=1e-3, atol=1e-4)
    assert acc.solver_ == "primal-cholesky-float32"


def test_dual_matches_lstsq(rng):
    h = rng.normal(size=(30, 200)).astype(np.float32)
    t = one_vs_rest_targets(rng.integers(0, 4, size=30), 4)
    w, solver = solve_dual(h, t, C=0.5)
    np.testing.assert_allclose(w, reference(h, t, 0.5), rtol=1e-3, atol=1e-4)
    assert solver.startswith("dual")


def test_chunked_gram_equals_one_shot(rng):
    h = rng.normal(size=(1000, 64)).astype(np.float32)
    t = one_vs_rest_targets(rng.integers(0, 3, size=1000), 3)
    one = RidgeAccumulator(64, 3)
    one.update(h, t)
    chunked = RidgeAccumulator(64, 3)
    for a in range(0, 1000, 137):
        chunked.update(h[a:a + 137], t[a:a + 137])
    np.testing.assert_allclose(chunked.gram(), one.gram(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(one.gram(), h.astype(np.float64).T @ h, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(chunked.solve(), one.solve(), rtol=1e-4, atol=1e-5)


def test_float64_fallback_when_float32_cholesky_fails(rng, monkeypatch):
    # Force the float32 factorisation to report breakdown (LAPACK info > 0)
    # and check the float64 path still produces the reference solution.
    import lbcnn.heads.elm as elm

    h = rng.normal(size=(200, 30)).astype(np.float32)
    t = one_vs_rest_targets(rng.integers(0, 3, size=200), 3)
    acc = RidgeAccumulator(30, 3, C=0.2)
    acc.update(h, t)
    monkeypatch.setattr(elm.lapack, "spotrf", lambda a, **kw: (a, 5))
    w = acc.solve()
    assert acc.solver_ == "primal-cholesky-float64"
    np.testing.assert_allclose(w, reference(h, t, 0.2), rtol=1e-4, atol=1e-5)


def test_nan_features_are_refused():
    from lbcnn.errors import DataError
    acc = RidgeAccumulator(4, 2)
    with pytest.raises(DataError, match="NaN"):
        acc.update(np.array([[np.nan, 0, 0, 0]], dtype=np.float32), np.ones((1, 2), np.float32))


def test_memory_plan_refuses_huge_gram(monkeypatch):
    from lbcnn.errors import MemoryPlanError
    monkeypatch.setenv("LBCNN_MEMORY_GB", "0.01")
    with pytest.raises(MemoryPlanError, match="Gram"):
        RidgeAccumulator(20000, 10)
