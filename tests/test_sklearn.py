"""scikit-learn compatibility of the estimators: the estimator checks (with the checks
that cannot apply declared, with reasons), flattened input, model selection tools."""
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from lbcnn.errors import DataError
from lbcnn.models._sk import expected_failed_checks
from lbcnn.models.cbcnn import CBCNN
from lbcnn.models.hybrid import Hybrid
from lbcnn.models.lbcnn import LBCNN

# small settings so the ~55 checks run in seconds (the checks' data are tiny and tabular)
ESTIMATORS = [LBCNN(filters=(2,)),
              CBCNN(preset=None, blocks=(4,), dense=(), epochs=2, batch_size=32)]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "laid out as a 2x2 image" notes
        check(estimator)


def test_declared_checks_have_reasons():
    for est in ESTIMATORS:
        declared = expected_failed_checks(est)
        assert declared and all(len(reason) > 40 for reason in declared.values())
        # nothing broader than needed: the unfitted / init checks only for the eager CBCNN
        assert ("check_estimators_unfitted" in declared) == isinstance(est, CBCNN)


@pytest.fixture(scope="module")
def flat(mnist):
    x = mnist.x_train[:900].reshape(900, -1)
    return x, mnist.y_train[:900]


def test_flattened_rows_equal_images(mnist, flat):
    x, y = flat
    img = LBCNN(filters=(4,), device="cpu").fit(mnist.x_train[:900], y)
    rows = LBCNN(filters=(4,), device="cpu", input_shape=(28, 28, 1)).fit(x, y)
    guessed = LBCNN(filters=(4,), device="cpu").fit(x, y)   # 784 = 28 x 28: no input_shape needed
    assert rows.input_shape_ == guessed.input_shape_ == (28, 28, 1)
    np.testing.assert_array_equal(rows.decision_function(mnist.x_test[:200].reshape(200, -1)),
                                  img.decision_function(mnist.x_test[:200]))
    np.testing.assert_array_equal(guessed.predict(mnist.x_test[:200]), img.predict(mnist.x_test[:200]))
    with pytest.raises(ValueError, match="needs 756"):
        LBCNN(filters=(4,), input_shape=(28, 27)).fit(x, y)


def test_cross_val_score_grid_search_pipeline(flat):
    x, y = flat
    est = LBCNN(filters=(4,), device="cpu", input_shape=(28, 28, 1))
    scores = cross_val_score(est, x, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.75
    pipe = Pipeline([("scale", MinMaxScaler()), ("lbcnn", clone(est))])
    grid = GridSearchCV(pipe, {"lbcnn__C": [1e-3, 1e3], "lbcnn__filters": [(2,), (4,)]}, cv=3)
    grid.fit(x, y)
    assert set(grid.best_params_) == {"lbcnn__C", "lbcnn__filters"}
    assert grid.cv_results_["mean_test_score"].shape == (4,)
    # the ridge constant matters: an almost unregularised fit of 600 images scores differently
    assert len(set(np.round(grid.cv_results_["mean_test_score"], 4))) > 1
    assert grid.score(x[:300], y[:300]) > 0.75


def test_cbcnn_cross_val_score_on_rows(flat):
    x, y = flat
    est = CBCNN(preset=None, blocks=(8,), dense=(), input_shape=(28, 28, 1), epochs=2,
                batch_size=64)
    scores = cross_val_score(est, x[:450].astype(np.float32) / 255, y[:450], cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.3   # 10 classes, 2 epochs of 270 images


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 784), np.nan), "NaN"),
    (np.zeros((0, 784)), "0 sample"),
    (np.zeros(784), "2D array"),
])
def test_bad_input_raises_value_errors_that_are_lbcnn_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        LBCNN(filters=(2,)).fit(bad, np.zeros(len(bad) if bad.ndim == 2 else 1))
    with pytest.raises(DataError):   # the CLI's one-line error class, too
        LBCNN(filters=(2,)).fit(np.zeros((4, 28, 28, 1), np.uint8), [0, 1])


def test_cbcnn_one_class_is_a_clear_value_error(mnist):
    with pytest.raises(ValueError, match="at least 2 classes"):
        CBCNN(preset=None, blocks=(4,), dense=()).fit(mnist.x_train[:20], np.zeros(20, int))


def test_predict_proba_save_load_repr(mnist, tmp_path):
    x, y, xt = mnist.x_train[:600], mnist.y_train[:600], mnist.x_test[:100]
    lb = LBCNN(filters=(4,), device="cpu").fit(x, y)
    p = lb.predict_proba(xt)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    np.testing.assert_array_equal(lb.classes_[p.argmax(1)], lb.predict(xt))
    lb.save(tmp_path / "lb.npz")
    back = LBCNN.load(tmp_path / "lb.npz")
    np.testing.assert_array_equal(back.predict(xt), lb.predict(xt))
    np.testing.assert_array_equal(back.predict(xt.reshape(100, -1)), lb.predict(xt))
    assert repr(lb) == "LBCNN(device='cpu', filters=(4,))"

    cb = CBCNN(preset=None, blocks=(4,), dense=(), epochs=1).fit(x[:200], y[:200] + 10)
    assert list(cb.classes_) == list(range(10, 20))
    cb.save(tmp_path / "cb.npz")
    cb2 = CBCNN.load(tmp_path / "cb.npz")
    np.testing.assert_array_equal(cb2.predict(xt), cb.predict(xt))
    assert cb2.predict(xt).min() >= 10
    np.testing.assert_allclose(cb2.predict_proba(xt).sum(1), 1, rtol=1e-6)
    assert repr(cb).startswith("CBCNN(") and "epochs=1" in repr(cb)

    hy = Hybrid(epochs=1, hidden=8).fit(x[:300], y[:300])
    hy.save(tmp_path / "hy.npz")
    np.testing.assert_array_equal(Hybrid.load(tmp_path / "hy.npz").predict(xt), hy.predict(xt))
    assert repr(hy) == "Hybrid(epochs=1, hidden=8)"
    with pytest.raises(DataError, match="not a LBCNN"):
        LBCNN.load(tmp_path / "hy.npz")
    assert "60,000 train" in repr(mnist) and "10 classes" in repr(mnist)
