"""The lowbit family's pieces against small oracles: LSQ quantizers, the exact integer
resize in batches, fixed-point multipliers, architecture checks, LB-CNN kernels as initial paths,
and the model file (issue 30, part 2)."""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from lbcnn.binary.quantizers import (LSQActivation, LSQWeight, get_quantizer, integer_weight_map,
                                     list_quantizers, make_quantizer, weight_levels)
from lbcnn.data.resize import resize_images, resize_table, resize_torch
from lbcnn.errors import ConfigError, DataError
from lbcnn.models.lowbit import LowBitCNN, architecture
from lbcnn.models.lowbit_int import fixed_point


# -- quantizers ----------------------------------------------------------------------------
@pytest.mark.parametrize("bits,mode,levels", [
    (1, "symnz", [-0.5, 0.5]), (2, "symnz", [-1.5, -0.5, 0.5, 1.5]), (2, "int", [-1, 0, 1]),
    (3, "int", [-3, -2, -1, 0, 1, 2, 3]), (3, "symnz", [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]),
])
def test_weight_level_grids_and_their_integers(bits, mode, levels):
    lo, hi, off = weight_levels(bits, mode)
    assert [i + off for i in range(lo, hi + 1)] == levels
    a, b = integer_weight_map(mode)
    # the integer weight is the level times a: odd integers for the zero-free grid
    assert [a * i + b for i in range(lo, hi + 1)] == [int(a * v) for v in levels]


def test_lsq_weight_rounds_to_its_grid_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    w = torch.randn(3, 1, 3, 3, requires_grad=True)
    q = make_quantizer("lsq_weight", shape=w.shape, bits=3, mode="symnz")
    out = q(w)
    step = q.effective_step().detach()
    lv = q.levels(w)
    # the oracle: clamp(round(w / s - 0.5), -4, 3) + 0.5, times the channel's step
    ref = (torch.clamp(torch.round(w.detach() / step - 0.5), -4, 3) + 0.5) * step
    assert torch.allclose(out, ref) and torch.equal(lv, torch.clamp(
        torch.round(w.detach() / step - 0.5), -4, 3).long())
    assert out.detach().unique().numel() <= 3 * 8        # 8 levels a channel
    out.sum().backward()
    inside = (w.detach() / step - 0.5 >= -4.5) & (w.detach() / step - 0.5 <= 3.5)
    assert torch.equal(w.grad != 0, inside)              # STE: gradient 1 inside the range
    assert q.step.grad is not None and torch.isfinite(q.step.grad).all()


def test_lsq_activation_is_unsigned_n_bit():
    a = LSQActivation(bits=4)
    x = torch.linspace(0, 3, 50)
    y = a(x)
    s = a.effective_step().detach()
    assert torch.allclose(y, torch.clamp(torch.round(x / s), 0, 15) * s)
    assert bool(a.initialized)


def test_quantizer_registry_names_both_kinds():
    assert {"lsq_weight", "lsq_activation", "ste_sign", "identity"} <= set(list_quantizers())
    assert isinstance(make_quantizer("lsq_activation", bits=8), LSQActivation)
    assert isinstance(make_quantizer("lsq_weight", shape=(2, 3), bits=2, mode="int"), LSQWeight)
    with pytest.raises(ConfigError, match="learned step"):
        get_quantizer("lsq_weight")
    with pytest.raises(ConfigError, match="int weights take 2..8 bits"):
        weight_levels(1, "int")


# -- the integer resize -----------------------------------------------------------------------
def _oracle_resize(img, size):
    """The overlap-weighted mean of each output cell, rounded half up, in Fractions."""
    H, W = img.shape
    out = np.zeros((size, size), np.int64)
    for i in range(size):
        for j in range(size):
            total = Fraction(0)
            for y in range(H):
                ry = max(Fraction(0), min(Fraction((i + 1) * H, size), Fraction(y + 1))
                         - max(Fraction(i * H, size), Fraction(y)))
                for x in range(W):
                    rx = max(Fraction(0), min(Fraction((j + 1) * W, size), Fraction(x + 1))
                             - max(Fraction(j * W, size), Fraction(x)))
                    total += ry * rx * int(img[y, x])
            mean = total / (Fraction(H, size) * Fraction(W, size))
            out[i, j] = int(mean + Fraction(1, 2))            # half up (mean >= 0)
    return out


@pytest.mark.parametrize("h,w,size", [(7, 5, 3), (5, 5, 4), (4, 6, 7)])
def test_resize_is_the_rational_mean(h, w, size, rng):
    x = rng.integers(0, 256, (2, h, w), dtype=np.uint8)
    y = resize_images(x, size)
    for k in range(2):
        assert np.array_equal(y[k], _oracle_resize(x[k], size))


@pytest.mark.parametrize("n_in,n_out", [(28, 16), (32, 16), (28, 20), (7, 3), (16, 28), (5, 5)])
def test_resize_tables_hold_the_overlaps(n_in, n_out):
    from lbcnn.data.images import overlaps

    t = overlaps(n_out, n_in)
    first, w = resize_table(n_in, n_out)
    full = np.zeros_like(t)
    for r in range(n_out):
        full[r, first[r]:first[r] + w.shape[1]] = w[r]
    assert np.array_equal(full, t) and (first + w.shape[1] <= n_in).all()


def test_batch_resize_is_the_loaders_resize_in_numpy_and_torch(rng):
    from lbcnn.data.images import area_resize

    x = rng.integers(0, 256, (6, 28, 24, 3), dtype=np.uint8)
    y = resize_images(x, 16)
    assert all(np.array_equal(y[k], area_resize(x[k], (16, 16))) for k in range(6))
    yt = resize_torch(torch.from_numpy(x).permute(0, 3, 1, 2).float(), 16)
    assert np.array_equal(y, yt.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    flat = np.full((1, 28, 28), 200, np.uint8)
    assert (resize_images(flat, 16) == 200).all()
    with pytest.raises(DataError, match="uint8"):
        resize_images(x.astype(np.float32), 16)


def test_fixed_point_multipliers():
    m, e = fixed_point(np.array([0.37, 3.0, -1.25, 0.0, 1e-30, 5e6]), 16, 30)
    assert (np.abs(m) < 2**15).all() and (e >= 0).all() and (e <= 30).all()
    np.testing.assert_allclose(m[:3] / 2.0 ** e[:3], [0.37, 3.0, -1.25], rtol=1e-4)
    assert m[3] == 0 and m[4] == 0                     # too small for 30 bits: zero
    assert m[5] == 2**15 - 1 and e[5] == 0             # too large: saturates


# -- architecture ------------------------------------------------------------------------------
@pytest.mark.parametrize("change,message", [
    ({"path": "pcc"}, "starting with c"), ({"path": "ccxc"}, "string of c"),
    ({"size": 6, "path": "ccpcp"}, "too small"), ({"conv_bits": (2, 3)}, "3 convs but 2"),
    ({"conv_bits": (9,)}, r"1\.\.8"), ({"hidden": (4, 4, 4)}, "0 to 2 hidden"),
    ({"head_bits": (1,)}, r"2\.\.8"), ({"head_bits": (2, 2, 2)}, "need 2 head bit"),
    ({"first": "depthwise", "channels": 4, "input_channels": 3}, "multiple of 3"),
    ({"conv_mode": "int", "conv_bits": (1,)}, "1-bit kernels"), ({"act_bits": 9}, "activation"),
])
def test_architecture_refusals_are_one_line(change, message):
    kw = dict(input_channels=1, size=16, channels=4, first="full", path="ccpcp",
              conv_bits=(8,), conv_mode="auto", conv_scale="channel", conv_norm="bn",
              hidden=(8,), head_bits=(2, 4), head_mode="symnz", act_bits=8, n_classes=10)
    kw.update(change)
    with pytest.raises(ConfigError, match=message) as err:
        architecture(**kw)
    assert "\n" not in str(err.value)


def test_auto_conv_modes_and_broadcast_bits():
    a = architecture(1, 16, 4, "full", "ccpcp", (1, 2, 5), "auto", "channel", "bn", (), (3,),
                     "symnz", 8, 10)
    assert a["conv_modes"] == ["symnz", "int", "int"] and a["head_bits"] == [3]
    b = architecture(1, 16, 4, "full", "ccpcp", 4, "auto", "channel", "bn", (8, 8), 6, "int",
                     8, 10)
    assert b["conv_bits"] == [4, 4, 4] and b["head_bits"] == [6, 6, 6]


# -- LB-CNN kernels as the paths' initial kernels ----------------------------------------------
def test_lbcnn_kernels_follow_each_final_channel_down_its_path():
    from lbcnn.models.lbcnn import LBCNN, LBCNNBody
    from lbcnn.train.qat_init import lbcnn_kernels

    lb = LBCNN(filters=(2, 3), nl=2)
    lb.body_ = LBCNNBody.random((16, 16, 1), (2, 3), nl=2, seed=5)
    arch = architecture(1, 20, 6, "full", "ccpccp", (1,), "auto", "channel", "bn", (), (4,),
                        "symnz", 8, 10)
    ks = lbcnn_kernels(lb, arch)
    k0, k1 = lb.body_.kernels
    for f in range(6):
        c, j = divmod(f, 3)                   # final channel c * 3 + j descends from channel c
        assert np.array_equal(ks[0][f, 0], k0["conv"][:, :, 0, c])
        assert np.array_equal(ks[1][f, 0], k0["extras"][0][:, :, c, 0])
        assert np.array_equal(ks[2][f, 0], k1["conv"][:, :, c, j])
        assert np.array_equal(ks[3][f, 0], k1["extras"][0][:, :, f, 0])
    bad = architecture(1, 20, 4, "full", "ccpccp", (1,), "auto", "channel", "bn", (), (4,),
                       "symnz", 8, 10)
    with pytest.raises(ConfigError, match="6 final channels, not 4"):
        lbcnn_kernels(lb, bad)


# -- the model file ---------------------------------------------------------------------------
def frozen_model(input_shape=(20, 20, 1), n_classes=5, seed=0, **kw):
    """An untrained network with batch-norm statistics from random images, frozen: every
    integer path of the pipeline, without training time."""
    from lbcnn.models.lowbit_int import freeze
    from lbcnn.train.qat_init import estimate_norm_statistics

    rng = np.random.default_rng(seed)
    m = LowBitCNN(**{"size": 16, "channels": 3, "hidden": (6,), "conv_bits": (3,),
                     "head_bits": (3, 5), **kw})
    torch.manual_seed(seed)
    net = m.build_net(input_shape[2], n_classes)
    x = torch.from_numpy(rng.integers(0, 256, (64, input_shape[2], m.size, m.size))).float()
    with torch.no_grad():
        for p in net.conv_norm.parameters():
            p.uniform_(-1.0, 1.0)            # negative batch-norm scales flip kernels
    estimate_norm_statistics(net, x / 255.0)
    m.frozen_ = freeze(net, x, input_shape)
    m.net_ = net
    m.classes_ = np.arange(n_classes)
    m.input_shape_ = tuple(input_shape)
    return m


@pytest.mark.parametrize("kw", [
    {"conv_bits": (1,), "head_bits": (2, 7)}, {"conv_bits": (2, 4, 8), "head_bits": (8, 3)},
    {"conv_bits": (5,), "hidden": (), "head_bits": (6,), "head_mode": "int"},
])
def test_model_file_round_trip_packs_low_bit_levels(tmp_path, kw, rng):
    from lbcnn.models import load_model

    m = frozen_model(**kw)
    m.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        config = json.loads(z["__config__"].tobytes())
        stored = {k: z[k] for k in z.files}
    packed = config.get("packed", {})
    for i, b in enumerate(m.arch_["conv_bits"]):
        assert (f"conv/{i}/levels" in packed) == (b < 8)
    for i, b in enumerate(m.arch_["head_bits"]):
        name = f"dense/{i}/levels"
        assert (name in packed) == (b < 8)
        if b < 8:
            assert stored[name].dtype == np.uint8 and stored[name].size == -(
                -m.frozen_["dense"][i]["w"].size * b // 8)
    back = load_model(tmp_path / "m.npz")
    x = rng.integers(0, 256, (20, 20, 20), dtype=np.uint8)
    assert np.array_equal(back.decision_function(x), m.decision_function(x))
    assert back.get_params()["conv_bits"] == m.arch_["conv_bits"]


def _rewrite(path, out, edit):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(arrays.pop("__config__").tobytes())
    edit(config, arrays)
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    np.savez(out, **arrays)


@pytest.mark.parametrize("edit,message", [
    (lambda c, a: c["net"].update(path="cc?"), "damaged lowbit architecture"),
    (lambda c, a: c["net"].update(conv_modes=["int"]), "conv_modes"),
    (lambda c, a: a.update({"conv/0/shift": np.full(3, 40, np.int8)}), "shifts in 0..30"),
    (lambda c, a: a.pop("dense/1/mult"), "missing"),
    (lambda c, a: a.update({"dense/1/levels": np.full((5, 6), -128, np.int8)}), "levels outside"),
    (lambda c, a: c.update(classes=[0, 1]), "net.n_classes"),
])
def test_damaged_lowbit_file_is_one_line(tmp_path, edit, message):
    from lbcnn.models import load_model

    m = frozen_model(head_bits=(3, 8), head_mode="int")   # int8 levels stop at -127
    m.save(tmp_path / "m.npz")
    _rewrite(tmp_path / "m.npz", tmp_path / "bad.npz", edit)
    with pytest.raises(DataError, match=message) as err:
        load_model(tmp_path / "bad.npz")
    assert "\n" not in str(err.value)


def test_estimator_refuses_pixels_it_cannot_read(rng):
    m = frozen_model()
    x = rng.normal(size=(3, 20, 20)).astype(np.float32)
    with pytest.raises(ValueError, match="8-bit pixels"):
        m.predict(x)
    ok = m.predict((rng.integers(0, 256, (3, 20, 20)) / 255.0).astype(np.float32))
    assert ok.shape == (3,)


def test_estimator_parameters_follow_scikit_learn():
    """get_params / set_params / clone: the hyperparameters as given, nothing fitted copied.
    (scikit-learn's generic checks feed real-valued tabular data; this family reads 8-bit
    pixels, so they do not apply.)"""
    from sklearn.base import clone

    est = LowBitCNN(channels=5, hidden=(7,), conv_bits=(2, 4, 8))
    params = est.get_params()
    assert params["channels"] == 5 and params["conv_bits"] == (2, 4, 8)
    fitted = frozen_model()
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params() and not hasattr(twin, "frozen_")
    assert est.set_params(channels=9).channels == 9
