"""Geometry and kernels of the binary body, against small loop oracles."""
import numpy as np
import pytest
import torch

from lbcnn.binary import maxpool_same, native
from lbcnn.models.lbcnn import LBCNNBody


def pool_oracle(x):
    """TF 'same' 4x4/2 max-pool on one (H, W) map, written out by hand."""
    h, w = x.shape
    oh, ow = -(-h // 2), -(-w // 2)
    pad_h = max((oh - 1) * 2 + 4 - h, 0)
    pad_w = max((ow - 1) * 2 + 4 - w, 0)
    top, left = pad_h // 2, pad_w // 2
    out = np.empty((oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            best = -np.inf
            for di in range(4):
                for dj in range(4):
                    r, c = i * 2 + di - top, j * 2 + dj - left
                    if 0 <= r < h and 0 <= c < w:
                        best = max(best, x[r, c])
            out[i, j] = best
    return out


def conv_oracle(x, k):
    """Depthwise 3x3 zero-padded conv of one (H, W) map with one kernel."""
    h, w = x.shape
    xp = np.zeros((h + 2, w + 2))
    xp[1:-1, 1:-1] = x
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = np.sum(xp[i:i + 3, j:j + 3] * k)
    return out


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (5, 5), (7, 8), (28, 28), (13, 32)])
def test_pool_geometry_matches_oracle(h, w, rng):
    x = rng.normal(size=(2, 3, h, w)).astype(np.float32)
    got = maxpool_same(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 3, -(-h // 2), -(-w // 2))
    for n in range(2):
        for c in range(3):
            np.testing.assert_array_equal(got[n, c], pool_oracle(x[n, c]))


def test_kernels_are_pm1_and_reproducible():
    a = LBCNNBody.random((28, 28, 1), (40, 4), nl=2, seed=7)
    b = LBCNNBody.random((28, 28, 1), (40, 4), nl=2, seed=7)
    c = LBCNNBody.random((28, 28, 1), (40, 4), nl=2, seed=8)
    for ka, kb in zip(a.kernels, b.kernels):
        for x, y in zip([ka["conv"], *ka["extras"]], [kb["conv"], *kb["extras"]]):
            assert set(np.unique(x).tolist()) == {-1, 1}
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.kernels[0]["conv"], c.kernels[0]["conv"])
    assert a.kernels[0]["conv"].shape == (3, 3, 1, 40)
    assert a.kernels[1]["conv"].shape == (3, 3, 40, 4)
    assert a.output_shape == (7, 7, 160) and a.n_features == 7840
    assert a.conv_bits == 9 * 40 + 9 * 160 + 9 * 40 + 9 * 160  # main + one extra each


def body_oracle(body, img):
    """Whole body on one (H, W, C) image with the loop oracles, HWC flatten."""
    maps = [img[..., c].astype(np.float64) for c in range(img.shape[2])]
    for layer in body.kernels:
        conv = layer["conv"]
        m = conv.shape[3]
        maps = [conv_oracle(maps[c], conv[:, :, c, j]) for c in range(len(maps)) for j in range(m)]
        for extra in layer["extras"]:
            maps = [conv_oracle(np.maximum(mp, 0), extra[:, :, c, 0]) for c, mp in enumerate(maps)]
        maps = [pool_oracle(mp) for mp in maps]
    return np.stack(maps, axis=-1).reshape(-1)


@pytest.mark.parametrize("shape,filters,nl", [((9, 9, 1), (3,), 1), ((8, 7, 3), (2, 2), 1),
                                              ((11, 10, 1), (2, 1, 2), 2)])
def test_body_matches_oracle_torch_and_native(shape, filters, nl, rng, monkeypatch):
    body = LBCNNBody.random(shape, filters, nl, seed=3, input_scale=1.0)
    x = rng.integers(0, 256, size=(4, *shape), dtype=np.uint8)
    want = np.stack([body_oracle(body, im) for im in x])
    monkeypatch.setattr(native, "_tried", True)
    monkeypatch.setattr(native, "_lib", None)
    got_torch = body.transform(x)
    np.testing.assert_array_equal(got_torch, want.astype(np.float32))
    monkeypatch.setattr(native, "_tried", False)
    lib = native.load()
    if lib is None:
        pytest.skip("no C compiler: native kernel unavailable")
    got_native = body.transform(x)
    np.testing.assert_array_equal(got_native, got_torch)


def test_float_input_is_taken_as_scaled(rng):
    body = LBCNNBody.random((6, 6, 1), (2,), seed=0)
    x = rng.integers(0, 256, size=(3, 6, 6, 1), dtype=np.uint8)
    a = body.transform(x)
    b = body.transform(x.astype(np.float32) / 255.0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
