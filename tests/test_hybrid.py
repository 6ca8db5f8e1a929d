"""Hybrid family: XNOR-popcount arithmetic, geometry, training, files."""
import numpy as np
import pytest
import torch

from lbcnn.errors import ConfigError, DataError
from lbcnn.models.hybrid import (Hybrid, HybridBody, avgpool_rebinarize, binarize_images,
                                 otsu_threshold, pm1_conv_valid)


def xnor_conv_oracle(a, k):
    """'valid' conv of a +-1 map with a +-1 kernel via bits: 2 * popcount(xnor) - N."""
    h, w = a.shape
    bits_k = (k > 0).ravel()
    out = np.empty((h - 2, w - 2), dtype=np.int64)
    for i in range(h - 2):
        for j in range(w - 2):
            bits_a = (a[i:i + 3, j:j + 3] > 0).ravel()
            p = int(np.sum(~(bits_a ^ bits_k)))
            out[i, j] = 2 * p - 9
    return out


def test_xnor_popcount_equals_multiply(rng):
    a = rng.choice([-1, 1], size=(2, 9, 11)).astype(np.int8)
    k = rng.choice([-1, 1], size=(3, 3)).astype(np.int8)
    got = pm1_conv_valid(torch.from_numpy(a.astype(np.float32)), k).numpy()
    for n in range(2):
        mult = np.array([[np.sum(a[n, i:i + 3, j:j + 3] * k) for j in range(9)] for i in range(7)])
        np.testing.assert_array_equal(got[n], mult)
        np.testing.assert_array_equal(xnor_conv_oracle(a[n], k), mult)


def test_engine_xnor_conv_matches_hybrid_conv(rng):
    from lbcnn.engine.numpy_engine import xnor_popcount_conv2d
    a = rng.choice([-1, 1], size=(3, 10, 10, 1)).astype(np.int8)
    k = rng.choice([-1, 1], size=(1, 3, 3, 1)).astype(np.int8)
    packed = xnor_popcount_conv2d(a, k)[..., 0]
    float_path = pm1_conv_valid(torch.from_numpy(a[..., 0].astype(np.float32)), k[0, :, :, 0]).numpy()
    np.testing.assert_array_equal(packed, float_path)


def test_pool_keeps_size_and_rebinarizes():
    a = torch.tensor([[[3.0, -1.0, -5.0], [1.0, -3.0, 7.0], [-1.0, -1.0, 1.0]]])
    out = avgpool_rebinarize(a)
    assert out.shape == a.shape
    # window (0,0): 3-1+1-3 = 0 -> +1; (0,2) replicated edge: -5,-5,7,7 -> 0 -> +1
    assert out[0, 0, 0] == 1 and out[0, 0, 2] == 1
    assert out[0, 1, 0] == -1  # 1-3-1-1 < 0
    assert set(out.unique().tolist()) <= {-1.0, 1.0}


def test_geometry_is_576_features_for_mnist():
    body = HybridBody.make((28, 28, 1))
    assert body.output_shape == (24, 24) and body.n_features == 576
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    f = body.transform(x)
    assert f.shape == (5, 576) and set(np.unique(f).tolist()) <= {-1, 1}


def test_otsu_and_fixed_threshold():
    img = np.concatenate([np.full(50, 20), np.full(50, 200)]).astype(np.uint8).reshape(10, 10)
    t = otsu_threshold(img)
    assert 20 <= t < 200
    b = binarize_images(img[None], "otsu")
    assert (b == 1).sum() == 50
    assert (binarize_images(img[None], 0.9) == -1).all()
    with pytest.raises(ConfigError):
        binarize_images(img[None], 1.5)
    with pytest.raises(DataError):
        binarize_images(np.zeros((2, 8, 8, 3), np.uint8), 0.5)


def test_bad_kernels_and_tiny_inputs():
    with pytest.raises(ConfigError, match="exactly"):
        HybridBody((28, 28, 1), [np.zeros((3, 3))])
    with pytest.raises(ConfigError, match="too small"):
        HybridBody.make((4, 4, 1))


def test_short_real_training_beats_chance_and_round_trips(mnist, tmp_path):
    from lbcnn import load_model
    from lbcnn.models.hybrid import save_hybrid
    tr, va = mnist.split(2000, 0.1, 0)
    model = Hybrid(epochs=8, patience=8).fit(mnist.x_train[tr], mnist.y_train[tr],
                                             mnist.x_train[va], mnist.y_train[va])
    acc = model.score(mnist.x_test[:1000], mnist.y_test[:1000])
    assert acc > 0.6  # chance is 0.1
    save_hybrid(model, tmp_path / "h.npz")
    back = load_model(tmp_path / "h.npz")
    np.testing.assert_array_equal(back.predict(mnist.x_test[:200]), model.predict(mnist.x_test[:200]))
