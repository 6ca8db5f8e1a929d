"""Issue 4: deployment hooks for the CBCNN family -- ONNX export, ``info`` bit
accounting, ``evaluate`` on cbcnn/hybrid files -- on real MNIST images (LBCNN_DATA)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lbcnn.errors import ConfigError

torch.set_num_threads(1)
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

N_TEST = 2000


@pytest.fixture(scope="module")
def tiny(mnist, tmp_path_factory):
    """A CBCNN blocks 8,8,8 / dense 16 trained one epoch on 2000 real MNIST images."""
    from lbcnn.models.cbcnn import save_cbcnn
    from lbcnn.train.cbcnn import train_cbcnn

    res = train_cbcnn(mnist, preset=None, blocks=(8, 8, 8), dense=(16,), epochs=1,
                      train_size=2000, progress=False, seed=0)
    path = tmp_path_factory.mktemp("cbcnn") / "model.npz"
    save_cbcnn(res["model"], path, dataset="mnist")
    return res["model"], path


def _images(ds, n=N_TEST):
    x = ds.x_test[:n]
    return x[..., None] if x.ndim == 3 else x


def _session(model_or_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") \
        else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _cli(capsys, *argv):
    from lbcnn.cli import main
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 2)
            m.running_var.copy_(torch.rand(n, generator=g) * 2.5 + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    model.net.eval()
    return model


# -- ONNX ---------------------------------------------------------------------
def test_cli_onnx_export_round_trip(tiny, mnist, tmp_path, capsys):
    from lbcnn.models import load_model

    model, path = tiny
    out = tmp_path / "m.onnx"
    rc, stdout, err = _cli(capsys, "export", path, "--format", "onnx", "--out", out, "--json")
    assert rc == 0, err
    assert json.loads(stdout)["bytes"] == out.stat().st_size
    om = onnx.load(out)
    onnx.checker.check_model(om, full_check=True)
    meta = {p.key: p.value for p in om.metadata_props}
    assert meta["lbcnn_family"] == "cbcnn"
    inp = om.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.shape.dim[1:]] == [28, 28, 1]
    assert "Sign" not in {n.op_type for n in om.graph.node}  # Sign(0) = 0 in ONNX

    x = _images(mnist)
    logits = _session(out).run(None, {"images": x})[0]
    ref = load_model(path).decision_function(x)
    np.testing.assert_array_equal(logits.argmax(1), model.predict(x))
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)


def test_onnx_weights_are_exact_pm1(tiny):
    from onnx import numpy_helper

    from lbcnn.deploy.onnx_export import build_any

    model, _ = tiny
    om = build_any(model)
    inits = {t.name: numpy_helper.to_array(t) for t in om.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in om.graph.node if n.op_type == "Cast"}
    weight_inputs = [n.input[1] for n in om.graph.node if n.op_type in ("Conv", "MatMul")
                     and n.input[1] in casts]
    # 3 convs, 1 hidden dense, the classifier -- each a Cast of an int8 +-1 initializer
    assert len(weight_inputs) == 5
    net = model.net
    expected = [net.features[0], net.features[4], net.features[8], net.head_hidden[0],
                net.classifier]
    for name, layer in zip(weight_inputs, expected):
        w = inits[casts[name]]
        assert w.dtype == np.int8
        assert set(np.unique(w)) <= {-1, 1}
        ref = np.where(layer.weight.detach().numpy() >= 0, 1, -1)
        np.testing.assert_array_equal(w if w.ndim == 4 else w.T, ref)
    n_weights = sum(inits[casts[n]].size for n in weight_inputs)
    assert n_weights == 72 + 576 + 576 + 1152 + 160


@pytest.mark.parametrize("pre,channels", [
    ({"y_channel": True, "standardize": True}, 3),
    ({"standardize": True}, None),
    ({"y_channel": True}, 3),
    ({"y_channel": True}, 1),
    ({"equalize": True}, None),
    ({"y_channel": True, "equalize": True, "standardize": True}, 3),
])
def test_onnx_preprocessing_matches(mnist, pre, channels):
    """y_channel (BT.601 luma, rounded), histogram equalization and per-image
    standardize happen in the graph."""
    from lbcnn.deploy.onnx_export import build_any
    from lbcnn.models.cbcnn import CBCNN

    torch.manual_seed(1)
    model = _randomize_bn(CBCNN(None, (8, 8, 8), (16,), (28, 28, 1), 10, preprocess=pre))
    x = _images(mnist, 1000)
    if channels == 3:  # a colour image made from real digits
        x = np.concatenate([x, np.roll(x, 2, axis=1), 255 - x], axis=-1)
    logits = _session(build_any(model, channels)).run(None, {"images": x})[0]
    ref = model.decision_function(x)
    np.testing.assert_array_equal(logits.argmax(1), ref.argmax(1))
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)


def test_onnx_equalization_equals_equalize_hist_exactly(gtsrb):
    """The graph's equalized image (an intermediate output) is bit-identical to
    ``preprocess.equalize_hist`` after ``rgb_to_y``, on real GTSRB photos plus a
    constant image and a two-level one (the edge cases of eq 1)."""
    import onnx
    from lbcnn.deploy.onnx_export import build_any
    from lbcnn.models.cbcnn import CBCNN
    from lbcnn.preprocess import equalize_hist, rgb_to_y

    model = CBCNN(None, (4, 4), (), (32, 32, 1), 43,
                  preprocess={"y_channel": True, "equalize": True, "standardize": True})
    om = build_any(model, 3)
    om.graph.output.append(onnx.helper.make_tensor_value_info(
        "eq_f64", onnx.TensorProto.DOUBLE, ["N", 32, 32, 1]))
    x = gtsrb.x_test[:300].copy()
    x[0] = 90
    x[1] = np.where(np.arange(32)[None, :, None] < 16, 40, 41)
    got = _session(om).run(["eq_f64"], {"images": x})[0]
    want = equalize_hist(rgb_to_y(x)).astype(np.float64)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(got[0], x[0, :, :, :1])  # constant: unchanged
    assert set(np.unique(got[1])) == {0.0, 255.0}


def test_sign_of_zero_is_plus_one():
    """A conv output of exactly 0 must give +1 after the threshold, as sign_pm1 does."""
    from lbcnn.deploy.onnx_export import build_any
    from lbcnn.models.cbcnn import CBCNN

    model = CBCNN(None, (2, 2), (), (8, 8, 1), 2)
    with torch.no_grad():  # identity BNs: sign(conv) directly
        for m in model.net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.fill_(1 - m.eps)
                m.weight.fill_(1.0)
                m.bias.zero_()
    model.net.eval()
    x = np.zeros((3, 8, 8, 1), np.uint8)  # all-zero images: every pre-activation is 0
    x[1, 2:5, 2:5] = 200
    logits = _session(build_any(model)).run(None, {"images": x})[0]
    np.testing.assert_allclose(logits, model.decision_function(x), rtol=1e-5, atol=1e-6)


def test_unsupported_export_gets_a_clear_error(mnist, tmp_path, capsys):
    from lbcnn.deploy.onnx_export import build_any
    from lbcnn.models.cbcnn import CBCNN, save_cbcnn
    from lbcnn.models.hybrid import Hybrid

    scaled = CBCNN(None, (4, 4), (), (28, 28, 1), 10, scale=True)
    with pytest.raises(ConfigError, match="scale=False"):
        build_any(scaled)
    save_cbcnn(scaled, tmp_path / "scaled.npz")
    rc, _, err = _cli(capsys, "export", tmp_path / "scaled.npz", "--format", "onnx",
                      "--out", tmp_path / "scaled.onnx")
    assert rc == 2 and "scale=False" in err and "Traceback" not in err
    assert not (tmp_path / "scaled.onnx").exists()
    with pytest.raises(ConfigError, match="Hybrid"):
        build_any(Hybrid())


# -- info ---------------------------------------------------------------------
def test_info_bits_match_hand_count(tiny, capsys):
    model, path = tiny
    rc, stdout, err = _cli(capsys, "info", path, "--json")
    assert rc == 0, err
    info = json.loads(stdout)
    assert info["family"] == "cbcnn"
    # weights: conv 1*8*9, 8*8*9, 8*8*9; dense (8*3*3)*16; classifier 16*10 -- 1 bit each
    weight_bits = 72 + 576 + 576 + 1152 + 160
    bn_channels = 8 + 8 + 8 + 16 + 10
    assert info["binary_weights"] == info["weight_bits"] == weight_bits == 2536
    assert info["bn_bits"] == bn_channels * 4 * 32 == 6400
    assert info["total_bits"] == 8936 and info["total_kbits"] == pytest.approx(8.936)
    assert info["params"] == weight_bits + 4 * bn_channels
    # folded: 40 thresholds before a sign at 32 + 1 bits, the final BN as 2 float32 per class
    assert info["bn_bits_folded"] == 40 * 33 + 10 * 64
    assert info["total_kbits_folded"] == pytest.approx((2536 + 1960) / 1000)
    macs = {r["name"]: r["macs"] for r in info["layers"]}
    assert macs["features.0"] == 28 * 28 * 1 * 8 * 9
    assert macs["features.4"] == 14 * 14 * 8 * 8 * 9
    assert macs["features.8"] == 7 * 7 * 8 * 8 * 9
    assert macs["head_hidden.0"] == 72 * 16 and macs["classifier"] == 160
    assert info["real_input_macs"] == 56448
    assert info["xnor_popcount_macs"] == 112896 + 28224 + 1152 + 160
    first = info["layers"][0]
    assert first["name"] == "features.0" and not first["input_binary"]
    assert "real-valued input" in first["note"]
    assert all(r["mac_kind"] == "XNOR-popcount" for r in info["layers"]
               if r["bits_per_weight"] == 1 and r["input_binary"])
    assert info["paper_params"] == {"mnist": 480_000, "fashion_mnist": 480_000, "gtsrb": 590_000}
    fb = info["file_bytes"]
    assert fb["native"] > 0 and fb["onnx"] > 0 and fb["this_file"] == path.stat().st_size
    rc, text, err = _cli(capsys, "info", path, "--no-sizes")
    assert rc == 0, err
    assert "XNOR-popcount" in text and "8.94 kbits" in text and "0.48 M" in text


def test_lbcnn_info_and_export_unchanged(mnist, tmp_path):
    """The LB-CNN paths still go through their own code (no CBCNN keys)."""
    from lbcnn.deploy.accounting import account
    from lbcnn.deploy.onnx_export import build_any
    from lbcnn.deploy.onnx_lbcnn import build_lbcnn_onnx
    from lbcnn.models.lbcnn import LBCNN

    m = LBCNN(filters=(2, 2)).fit(mnist.x_train[:500], mnist.y_train[:500])
    info = account(m, sizes=False)
    assert "family" not in info and info["filters"] == [2, 2]
    assert build_any(m).SerializeToString() == build_lbcnn_onnx(m).SerializeToString()


# -- evaluate -----------------------------------------------------------------
def test_evaluate_cbcnn_and_hybrid_files(tiny, mnist, tmp_path, capsys):
    from lbcnn.models.hybrid import Hybrid, save_hybrid

    model, path = tiny
    rc, stdout, err = _cli(capsys, "evaluate", path, "--dataset", "mnist", "--json")
    assert rc == 0, err
    res = json.loads(stdout)
    assert res["n"] == len(mnist.y_test)
    assert res["accuracy"] == pytest.approx(model.score(mnist.x_test, mnist.y_test))

    hy = Hybrid(epochs=1, hidden=8).fit(mnist.x_train[:500], mnist.y_train[:500])
    save_hybrid(hy, tmp_path / "hy.npz")
    rc, stdout, err = _cli(capsys, "evaluate", tmp_path / "hy.npz", "--dataset", "mnist",
                           "--json")
    assert rc == 0, err
    res = json.loads(stdout)
    assert res["accuracy"] == pytest.approx(hy.score(mnist.x_test, mnist.y_test))


def test_cli_y_channel_input_channels_follow_the_dataset(tmp_path, capsys):
    """y_channel: a model trained on a gray dataset takes 1 channel, otherwise RGB."""
    from lbcnn.models.cbcnn import CBCNN, save_cbcnn

    m = CBCNN(None, (4, 4), (), (28, 28, 1), 10, preprocess={"y_channel": True})
    for ds, want in (("mnist", 1), ("gtsrb", 3), (None, 3)):
        src = tmp_path / f"{ds}.npz"
        save_cbcnn(m, src, **({"dataset": ds} if ds else {}))
        rc, _, err = _cli(capsys, "export", src, "--format", "onnx", "--out", tmp_path / "y.onnx")
        assert rc == 0, err
        dims = onnx.load(tmp_path / "y.onnx").graph.input[0].type.tensor_type.shape.dim
        assert dims[3].dim_value == want
    rc, _, err = _cli(capsys, "export", src, "--format", "h5", "--out", tmp_path / "y.h5")
    assert rc == 2 and "onnx" in err and "Traceback" not in err
