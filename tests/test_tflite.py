"""Issue 32: the fully-integer TFLite export, run in TensorFlow Lite Micro's reference
interpreter (and LiteRT's reference kernels), checked against the integer engine on real
MNIST test images; TFLite's rescaling against small integer oracles; the bundle, the
documented op lists, and one-line refusals."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tflite_micro")
pytest.importorskip("ai_edge_litert")

from lbcnn.deploy.tflite_builder import ModelBuilder, Quant, describe, lbcnn_metadata  # noqa: E402
from lbcnn.deploy.tflite_export import build_tflite  # noqa: E402
from lbcnn.deploy.tflite_runtime import Runner  # noqa: E402
from lbcnn.engine import NumpyEngine, compile_plan  # noqa: E402
from lbcnn.engine import requant  # noqa: E402
from lbcnn.errors import ConfigError  # noqa: E402

torch.set_num_threads(1)
DOC = Path(__file__).resolve().parents[1] / "docs" / "tflite.md"
N_TEST = 300


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lbcnn", *args], capture_output=True, text=True,
                          timeout=600)


def _index(data: bytes, name: str) -> int:
    return next(i for i, t in enumerate(describe(data)["tensors"]) if t["name"] == name)


# -- TFLite's rescaling against integer oracles ------------------------------------------
def _srdhm_ref(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul, written from its definition."""
    if a == b == -(2 ** 31):
        return 2 ** 31 - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    q = abs(ab + nudge) // (1 << 31)
    return q if ab + nudge >= 0 else -q


def _rdbpot_ref(x: int, e: int) -> int:
    mask = (1 << e) - 1
    rem, thr = x & mask, (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def test_multiply_by_quantized_multiplier_matches_the_integer_definitions():
    rng = np.random.default_rng(0)
    for _ in range(40):
        m = float(np.exp(rng.uniform(np.log(1e-6), np.log(4.0))))
        q, shift = requant.quantize_multiplier(m)
        assert 2 ** 30 <= q < 2 ** 31 and q * 2.0 ** (shift - 31) == pytest.approx(m, rel=1e-9)
        xs = rng.integers(-(2 ** 24), 2 ** 24, 50)
        got = requant.mbqm32(xs, q, shift)
        want = [_rdbpot_ref(_srdhm_ref(int(x) << max(shift, 0), q), max(-shift, 0)) for x in xs]
        assert got.tolist() == want
        # the 16x8 variant: one rounding with the 16-bit multiplier, ties toward +inf
        r = requant.reduced_multiplier(q)
        t = 15 - shift
        want64 = [(int(x) * r + (1 << (t - 1))) >> t for x in xs]
        assert requant.mbqm64(xs, q, shift).tolist() == want64
    # a power of two is floor(x / 2^k + 1/2), exactly
    xs = np.arange(-5000, 5000)
    for k in (1, 3, 9):
        q, s = requant.quantize_multiplier(2.0 ** -k)
        assert np.array_equal(requant.mbqm64(xs, q, s), np.floor(xs / 2 ** k + 0.5).astype(int))


def test_int4_packing_low_nibble_first_and_runs_in_tflm():
    from lbcnn.deploy.tflite_builder import pack_int4, unpack_int4
    assert pack_int4([1, -2, 7]) == bytes([0xE1, 0x07])
    v = np.random.default_rng(1).integers(-8, 8, 101)
    assert np.array_equal(unpack_int4(pack_int4(v), v.size), v)
    # an int8-input FULLY_CONNECTED with packed int4 weights == the same weights as int8
    w = np.random.default_rng(2).integers(-7, 8, (5, 36)).astype(np.int8)
    outs = {}
    for wd in ("int4", "int8"):
        mb = ModelBuilder()
        x = mb.tensor("input", (1, 6, 6, 1), "int8", quant=Quant(1 / 255, -128))
        f = mb.reshape(x, "flat", (1, 36))
        y = mb.fully_connected(f, w, 0.01, np.arange(5) * 100, "int32", "out", "int8",
                               Quant(0.05, 3), weight_dtype=wd)
        data = mb.finish([x], [y])
        outs[wd] = Runner(data, "tflm").run(np.arange(72, dtype=np.uint8).reshape(2, 6, 6, 1))
    assert np.array_equal(outs["int4"], outs["int8"])


def test_constant_buffers_are_16_byte_aligned_and_shared():
    import flatbuffers

    from lbcnn.deploy.tflite_builder import load_schema
    fb = load_schema()
    mb = ModelBuilder()
    x = mb.tensor("input", (1, 4, 4, 1), "int8", quant=Quant(1 / 255, -128))
    a = mb.tensor("a", (3,), "int64", np.array([1, 2, 3]))
    b = mb.tensor("b", (3,), "int64", np.array([1, 2, 3]))
    mb.add_metadata("lbcnn", b'{"x":1}')
    data = mb.finish([x], [x])
    assert mb.tensors[a].buffer == mb.tensors[b].buffer   # equal bytes, one buffer
    m = fb.Model.GetRootAsModel(data, 0)
    for j in range(m.BuffersLength()):
        buf = m.Buffers(j)
        if buf.DataLength():
            o = flatbuffers.number_types.UOffsetTFlags.py_type(buf._tab.Offset(4))
            assert buf._tab.Vector(o) % 16 == 0, j


# -- LB-CNN on real images ---------------------------------------------------------------
@pytest.fixture(scope="module")
def lb_models(mnist, tmp_path_factory):
    """Small LB-CNNs on 1,000 MNIST training images: a float head (8-bit per tensor at
    export), a one-layer nl=2 model (two convs, the ReLU fused on the first) with a
    per-class 6-bit head, a 4-bit head."""
    from lbcnn.heads.quantize import apply_quantization
    from lbcnn.models.lbcnn import LBCNN
    d = tmp_path_factory.mktemp("tfl")
    x, y = mnist.x_train[:1000], mnist.y_train[:1000]
    plain = LBCNN(filters=(4, 2), random_state=0, device="cpu").fit(x, y)
    nl2 = LBCNN(filters=(3,), nl=2, random_state=1, device="cpu").fit(x, y)
    apply_quantization(nl2, bits=6, per_class=True)
    nl2.save(d / "nl2_q6c.npz")
    q4 = LBCNN(filters=(4, 2), random_state=2, device="cpu").fit(x, y)
    apply_quantization(q4, bits=4)
    q4.meta_ = {"dataset": "mnist"}
    q4.save(d / "q4.npz")
    return {"plain": plain, "nl2_q6c": d / "nl2_q6c.npz", "q4": d / "q4.npz", "dir": d}


@pytest.mark.parametrize("which", ["plain", "nl2_q6c"])
def test_lbcnn_tflm_equals_engine_with_tflite_rounding(lb_models, mnist, which):
    model = lb_models[which]
    data, graph, plan = build_tflite(model)
    x = mnist.x_test[:N_TEST]
    tflm = Runner(data, "tflm", preserve=True)
    feats = tflm.trace(x, [_index(data, "features")])[_index(data, "features")]
    logits = tflm.run(x)
    assert np.array_equal(feats, NumpyEngine(plan).features(x))       # exact features
    same = NumpyEngine(compile_plan(model, rounding="tflite")).scores(x)
    assert np.array_equal(logits, same)                                # identical logits
    exact = NumpyEngine(plan).scores(x)
    assert (logits.argmax(1) == exact.argmax(1)).mean() >= 0.99        # ties only
    rq = graph.details["requant"]
    acc = feats.astype(np.int64) @ plan.head["weight_q"].astype(np.int64) + plan.head["bias_q"]
    real = acc * rq["effective"][None, :]          # the logit in LSB before rounding
    # within half an LSB, plus the 16-bit multiplier's error for per-class scales
    assert np.all(np.abs(logits - real) <= 0.5 + np.abs(real) * 2.0 ** -14 + 1e-9)
    if rq["multiplier"].size == 1:
        assert np.all(np.abs(logits - acc / 2.0 ** rq["shift_k"]) <= 0.5)
    # LiteRT's reference FULLY_CONNECTED rescales in double precision
    lit = Runner(data, "litert").run(x)
    want = np.clip(requant.litert_fc_rescale(acc, rq["effective"][None, :]), -32768, 32767)
    assert np.array_equal(lit, want)
    assert np.abs(lit - logits).max() <= 1
    if which == "nl2_q6c":
        assert any(op["op"] == "DEPTHWISE_CONV_2D" for op in describe(data)["ops"])
        assert graph.details["per_class_scales"]


def test_calibrated_logit_step_still_identical_to_the_engine(lb_models, mnist):
    """Calibrated on a few training images, the logit step is finer than the worst case's,
    and the engine with TFLite rounding follows TFLite Micro through ties and saturation."""
    from lbcnn.deploy.tflite_common import TfliteOptions
    model = lb_models["plain"]
    cal = mnist.x_train[-20:]
    data, graph, _ = build_tflite(model, options=TfliteOptions(calibration=cal))
    _, coarse, _ = build_tflite(model)
    assert graph.details["logit_shift_k"] < coarse.details["logit_shift_k"] - 4
    assert "worst-case bound" in coarse.notes[0] and not graph.notes
    x = mnist.x_test[:N_TEST]
    logits = Runner(data, "tflm").run(x)
    same = NumpyEngine(compile_plan(model, rounding="tflite", calibration=cal)).scores(x)
    assert np.array_equal(logits, same)
    # push the step below the margin so some logits saturate: still identical
    plan = compile_plan(model)
    peak = requant.calibration_peak(plan, cal)
    rq = requant.head_requant(plan.head, plan.head["input_scale"], peak=peak / 64)
    acc = NumpyEngine(plan).scores(x)
    assert (np.abs(requant.apply_head_requant(acc, rq)) == 32767).any() or rq["shift_k"] == 0


def test_c_with_tflite_rounding_returns_tflm_logits(lb_models, mnist, tmp_path):
    from c_harness import CC, host_logits
    from lbcnn.deploy.c_export import export_c
    if CC is None:
        pytest.skip("no C compiler")
    x = mnist.x_test[:100]
    for which in ("plain", "nl2_q6c"):
        data, _, _ = build_tflite(lb_models[which])
        tflm = Runner(data, "tflm").run(x)
        plan = compile_plan(lb_models[which], rounding="tflite")
        d = tmp_path / which
        export_c(plan, d, measure=False)
        for flag in ("-DLBCNN_STREAM", "-DLBCNN_FULL_MAPS"):
            _, logits = host_logits(d, x, flag)
            assert np.array_equal(logits, tflm), (which, flag)


def test_four_bit_head_falls_back_to_int8_quoting_tflm(lb_models, mnist):
    from lbcnn.models import load_model
    model = load_model(lb_models["q4"])
    data, graph, plan = build_tflite(compile_plan(lb_models["q4"]))
    assert plan.head["bits"] == 4
    assert graph.details["head_weights"] == "int8"
    assert "INT16 with filter type: INT4 not supported" in graph.notes[-1]
    w = describe(data)["tensors"][_index(data, "logits/w")]
    assert w["dtype"] == "int8"
    x = mnist.x_test[:100]
    assert np.array_equal(Runner(data, "tflm").run(x),
                          NumpyEngine(compile_plan(lb_models["q4"], rounding="tflite")).scores(x))
    assert model is not None


def _documented_ops(family: str) -> list[str]:
    text = DOC.read_text()
    m = re.search(rf"^- {family} ops: (.+)$", text, re.M)
    assert m, f"docs/tflite.md lists no ops for {family}"
    return re.findall(r"`([A-Z0-9_]+)`", m.group(1))


def test_lbcnn_cli_bundle_evaluate_info(lb_models, mnist, data_dir, tmp_path):
    src, out = lb_models["q4"], tmp_path / "tf"
    r = run_cli("export", str(src), "--format", "tflite", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["ops"] == _documented_ops("LB-CNN")
    assert "INT4 not supported" in r.stderr and summary["arena_bytes"] > 0
    data = (out / "model.tflite").read_bytes()
    assert lbcnn_metadata(data)["dataset"] == "mnist"
    assert [op["op"] for op in describe(data)["ops"]][:2] == ["QUANTIZE", "DEPTHWISE_CONV_2D"]
    cc = (out / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_lbcnn_model[]" in cc
    assert f"g_lbcnn_model_len = {len(data)};" in cc and cc.count("0x") == len(data)
    readme = (out / "README.md").read_text()
    assert f"MicroMutableOpResolver<{len(summary['ops'])}>" in readme
    assert f"{summary['arena_bytes']:,} bytes" in readme
    # the reported arena is what TFLite Micro needs: it runs there, and not in 64 bytes less
    x = mnist.x_test[:3]
    Runner(data, "tflm", arena_size=summary["arena_bytes"]).run(x)
    with pytest.raises(Exception, match="cannot load"):
        Runner(data, "tflm", arena_size=summary["arena_bytes"] - 64).run(x)
    r = run_cli("evaluate", str(out), "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    # the export calibrated the logit step on 500 training images, seeded by the model's seed
    cal = mnist.x_train[np.sort(np.random.default_rng(0).choice(60000, 500, replace=False))]
    eng = NumpyEngine(compile_plan(src, rounding="tflite", calibration=cal))
    assert np.array_equal(Runner(data, "tflm").run(mnist.x_test[:200]), eng.scores(mnist.x_test[:200]))
    assert ev["kind"] == "tflite" and ev["interpreter"] == "tflm" and ev["n"] == 10000
    assert ev["correct"] == int((eng.predict(mnist.x_test) == mnist.y_test).sum())
    r = run_cli("info", str(out / "model.tflite"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["arena"]["total"] == summary["arena_bytes"]
    assert info["live_activation_peak"] == info["arena"]["head"]   # a chain: planner = peak
    assert info["op_types"] == summary["ops"]
    # the lossy int8 graph, calibrated on the recorded dataset's training images, runs int4
    r = run_cli("export", str(src), "--format", "tflite", "--activations", "int8",
                "--calibration-images", "100", "--out", str(tmp_path / "tf8"), "--json")
    assert r.returncode == 0, r.stderr
    s8 = json.loads(r.stdout)
    assert s8["ops"] == _documented_ops("LB-CNN int8")
    assert "100 calibration images" in s8["notes"][0] and "stored as int4" in s8["notes"][1]
    assert s8["bytes"] < 0.7 * summary["bytes"]


def test_refusals_are_one_line(mnist, tmp_path):
    from lbcnn.models.lbcnn import LBCNN
    deep = LBCNN(filters=(2, 2, 2), random_state=0, device="cpu").fit(mnist.x_train[:300],
                                                                       mnist.y_train[:300])
    deep.save(tmp_path / "deep.npz")
    r = run_cli("export", str(tmp_path / "deep.npz"), "--format", "tflite",
                "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "layer 3 of 3 (" in r.stderr
    assert "exceeds int16" in r.stderr
    with pytest.raises(ConfigError, match="16-bit weights"):
        build_tflite(deep.set_params(filters=(2, 2)).fit(mnist.x_train[:300],
                                                          mnist.y_train[:300]), bits=16)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(40))
    r = run_cli("evaluate", str(bad), "--dataset", "mnist")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("export", str(tmp_path / "deep.npz"), "--format", "tflite", "--out",
                str(tmp_path / "x.tflite"))
    assert r.returncode == 2 and "give a folder name" in r.stderr


def test_lowbit_is_refused_naming_the_layer(tmp_path):
    from test_lowbit import frozen_model

    from lbcnn.deploy.tflite_lowbit import unmapped_layer
    resized = frozen_model(input_shape=(20, 20, 1))
    resized.save(tmp_path / "lowbit.npz")
    r = run_cli("export", str(tmp_path / "lowbit.npz"), "--format", "tflite",
                "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "layer 'resize' (20x20 -> 16x16" in r.stderr and "--format c or onnx" in r.stderr
    assert not (tmp_path / "o").exists()
    # without a resize, the first dense layer is what does not map
    plan = compile_plan(frozen_model(input_shape=(16, 16, 1)))
    assert unmapped_layer(plan).startswith("layer 'dense0' adds its bias after")
    with pytest.raises(ConfigError, match="layer 'dense0'"):
        build_tflite(plan)


def test_export_folder_and_recorded_metadata_are_checked(lb_models, mnist, tmp_path):
    from lbcnn.deploy.tflite_common import TfliteOptions, builder_for
    from lbcnn.errors import DataError
    from lbcnn.io.artefacts import open_predictor

    out = tmp_path / "tf"
    out.mkdir()
    (out / "README.md").write_text("mine")
    r = run_cli("export", str(lb_models["q4"]), "--format", "tflite", "--out", str(out))
    assert r.returncode == 2 and "not empty" in r.stderr and "--force" in r.stderr
    assert (out / "README.md").read_text() == "mine"
    plan = compile_plan(lb_models["q4"])
    good = builder_for(plan)(plan, TfliteOptions()).finish(
        json.dumps({"format": "lbcnn-tflite", "classes": list(range(10)),
                    "class_names": [f"digit {i}" for i in range(10)]}).encode())
    (tmp_path / "good.tflite").write_bytes(good)
    pred = open_predictor(tmp_path / "good.tflite")
    assert pred.class_names[3] == "digit 3" and pred.input_shape == (28, 28, 1)
    assert np.array_equal(pred.predict(mnist.x_test[:20]),
                          NumpyEngine(compile_plan(lb_models["q4"], rounding="tflite")).predict(
                              mnist.x_test[:20]))
    for record, why in [(b"[1, 2]", "must be a JSON object"),
                        (json.dumps({"class_names": ["a"] * 10}).encode(), "non-unique"),
                        (json.dumps({"classes": [0, 1]}).encode(), "2 labels for 10 outputs"),
                        (json.dumps({"split": {"kind": "guess"}}).encode(), "split"),
                        (b"{\"a\": " * 40 + b"1" + b"}" * 40, "nested")]:
        bad = builder_for(plan)(plan, TfliteOptions()).finish(record)
        (tmp_path / "bad.tflite").write_bytes(bad)
        with pytest.raises(DataError, match=why):
            open_predictor(tmp_path / "bad.tflite")


# -- CBCNN and hybrid --------------------------------------------------------------------
@pytest.fixture(scope="module")
def binary_models(mnist):
    from lbcnn.models.hybrid import Hybrid
    from lbcnn.train.cbcnn import train_cbcnn
    x, y = mnist.x_train, mnist.y_train
    cb = train_cbcnn(mnist, preset=None, blocks=(8, 8), dense=(16,), epochs=1, train_size=1000,
                     batch_size=50, lr_start=1e-2, lr_end=1e-3, progress=False, seed=0,
                     device="cpu")["model"]
    cb.net.eval()
    hy = Hybrid(epochs=1, threshold=0.5).fit(x[:500], y[:500], x[500:700], y[500:700])
    return {"cbcnn": cb, "hybrid": hy}


def test_cbcnn_binary_layers_bit_exact(binary_models, mnist):
    from lbcnn.engine.cbcnn_plan import unpack_features
    model = binary_models["cbcnn"]
    data, graph, plan = build_tflite(model)
    assert graph.ops == _documented_ops("CBCNN")
    x = mnist.x_test[:N_TEST]
    eng = NumpyEngine(plan)
    want = unpack_features(plan, eng.features_packed(x))
    for interp in ("tflm", "litert"):
        r = Runner(data, interp, preserve=True)
        fi = _index(data, "features16")
        got = r.trace(x, [fi])[fi].reshape(len(x), -1)
        assert set(np.unique(got)) <= {-1, 1}
        # the last hidden layer is dense: no negated channels reach the head
        assert np.array_equal(got, want), interp
        logits = r.run(x)
        assert (logits.argmax(1) == eng.predict_index(x)).mean() >= 0.98, interp
    # the +-2 binary-layer weights in int4: TFLite Micro runs them, bit for bit the same
    from lbcnn.deploy.tflite_common import TfliteOptions
    data4, graph4, _ = build_tflite(model, options=TfliteOptions(weights="int4"))
    assert graph4.details["binary_weights"] == "int4" and "runs them" in graph4.notes[0]
    assert describe(data4)["tensors"][_index(data4, "l0_sign/w")]["dtype"] == "int4"
    n_binary = sum(int(np.prod(t["shape"])) for t in describe(data)["tensors"]
                   if t["name"].endswith("_sign/w"))
    assert len(data) - len(data4) >= 0.45 * n_binary        # a byte a weight -> half a byte
    fi = _index(data4, "features16")
    got = Runner(data4, "tflm", preserve=True).trace(x, [fi])[fi].reshape(len(x), -1)
    assert np.array_equal(got, want)


def test_cbcnn_negated_channels_feed_the_head(mnist):
    """No hidden dense layer: flipped BN channels of the last conv reach the head negated,
    and the head's weights undo it."""
    from lbcnn.engine.cbcnn_plan import unpack_features
    from lbcnn.train.cbcnn import train_cbcnn
    cb = train_cbcnn(mnist, preset=None, blocks=(6, 6), dense=(), epochs=1, train_size=600,
                     batch_size=50, lr_start=1e-2, lr_end=1e-3, progress=False, seed=1,
                     device="cpu")["model"]
    cb.net.eval()
    with torch.no_grad():  # make sure some channels have gamma < 0 (flipped thresholds)
        for m in cb.net.features:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight[::2] *= -1
    data, _, plan = build_tflite(cb)
    assert any(op.get("flip") is not None and np.any(op["flip"]) for op in plan.ops)
    x = mnist.x_test[:100]
    eng = NumpyEngine(plan)
    fi = _index(data, "features16")
    got = Runner(data, "tflm", preserve=True).trace(x, [fi])[fi].reshape(len(x), -1)
    flip = plan.ops[-1]["flip"]
    sign = np.tile(np.where(flip, -1, 1), got.shape[1] // flip.size)
    assert np.array_equal(got * sign, unpack_features(plan, eng.features_packed(x)))
    assert (Runner(data, "tflm").run(x).argmax(1) == eng.predict_index(x)).mean() >= 0.98


def test_hybrid_binary_part_bit_exact_and_otsu_refused(binary_models, mnist):
    from lbcnn.engine.hybrid_plan import unpack_hybrid_features
    model = binary_models["hybrid"]
    data, graph, plan = build_tflite(model)
    assert graph.ops == _documented_ops("Hybrid")
    x = mnist.x_test[:N_TEST]
    eng = NumpyEngine(plan)
    fi = _index(data, "features")
    r = Runner(data, "tflm", preserve=True)
    got = r.trace(x, [fi])[fi].reshape(len(x), -1)
    assert np.array_equal(got, unpack_hybrid_features(plan, eng.features_packed(x)))
    assert (r.run(x).argmax(1) == eng.predict_index(x)).mean() >= 0.97
    model.body_.threshold = "otsu"
    with pytest.raises(ConfigError, match="layer 'binarize' \\(Otsu"):
        build_tflite(model)
    model.body_.threshold = 0.5


# -- the lossy int8 mode -----------------------------------------------------------------
def test_int8_mode_matches_an_int8_oracle_and_runs_int4(lb_models, mnist):
    """Each conv: the engine's exact +-1 sum of the int8 inputs, TFLite's 32-bit
    MultiplyByQuantizedMultiplier by 2^-k, clamped to int8 (the int8 kernels' arithmetic)."""
    from lbcnn.deploy.tflite_common import TfliteOptions
    from lbcnn.engine.numpy_engine import maxpool4s2, sign_dwconv3
    from lbcnn.models.lbcnn import LBCNN
    cal = mnist.x_train[-200:]
    x = mnist.x_test[:N_TEST]
    plan = compile_plan(lb_models["q4"])
    data, graph, _ = build_tflite(plan, options=TfliteOptions(activations="int8",
                                                              calibration=cal))
    assert graph.details["head_weights"] == "int4" and "TFLite Micro runs it" in graph.notes[-1]
    assert describe(data)["tensors"][_index(data, "logits/w")]["dtype"] == "int4"
    h, prev_k = x.astype(np.int64), 0
    for i, op in enumerate(plan.ops):
        if op["type"] == "sign_dwconv3":
            k = graph.details["conv_shifts"][sum(o["type"] == "sign_dwconv3" for o in plan.ops[:i])]
            q, s = requant.quantize_multiplier(2.0 ** -(k - prev_k))
            h = np.clip(requant.mbqm32(sign_dwconv3(h, op, np.int64), q, s), -128, 127)
            prev_k = k
        else:
            h = maxpool4s2(h, op)
    fi = _index(data, "features")
    got = Runner(data, "tflm", preserve=True).trace(x, [fi])[fi]
    assert np.array_equal(got, h.reshape(len(x), -1))
    logits = Runner(data, "tflm").run(x)
    assert (logits.argmax(1) == NumpyEngine(plan).predict_index(x)).mean() >= 0.95
    # a three-layer model, refused as int16, maps as int8
    deep = LBCNN(filters=(2, 2, 2), random_state=0, device="cpu").fit(mnist.x_train[:300],
                                                                       mnist.y_train[:300])
    data, graph, plan = build_tflite(deep, options=TfliteOptions(activations="int8",
                                                                 calibration=cal))
    assert len(graph.details["conv_shifts"]) == 3
    assert (Runner(data, "tflm").run(x).argmax(1) ==
            NumpyEngine(plan).predict_index(x)).mean() >= 0.9
    with pytest.raises(ConfigError, match="calibration images"):
        build_tflite(plan, options=TfliteOptions(activations="int8"))
