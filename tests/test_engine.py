"""Integer engine (issue 5): plan, NumPy engine, XNOR-popcount, generated C."""
import re
import subprocess

import numpy as np
import pytest

from lbcnn.deploy.c_common import CFLAGS, POPCOUNT_C, find_cc
from lbcnn.deploy.c_export import export_c
from lbcnn.engine import (NumpyEngine, agreement, compile_plan, dequantized_model,
                          pack_signs_u64, xnor_popcount_conv2d, xnor_popcount_dense)
from lbcnn.errors import ConfigError
from lbcnn.models.lbcnn import LBCNN, LBCNNBody

CC = find_cc()
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler found")


def build_and_run(out_dir, images) -> np.ndarray:
    exe = out_dir / "lbcnn"
    subprocess.run([CC, *CFLAGS, str(out_dir / "model.c"), str(out_dir / "main.c"),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    res = subprocess.run([str(exe)], input=np.ascontiguousarray(images).tobytes(),
                         capture_output=True, check=True)
    return np.array([int(v) for v in res.stdout.split()])


def synthetic(rng, n, shape, k):
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, k, size=n)
    return x, y


@pytest.fixture(scope="module")
def mnist_small(mnist):
    model = LBCNN(filters=(8, 2), random_state=0, device="cpu").fit(
        mnist.x_train[:3000], mnist.y_train[:3000])
    return model, compile_plan(model)


# -- XNOR-popcount --------------------------------------------------------------
@pytest.mark.parametrize("n_bits", [1, 63, 64, 65, 200])
def test_xnor_dense_matches_multiply_oracle(rng, n_bits):
    a = rng.choice([-1, 1], size=(7, n_bits)).astype(np.int8)
    w = rng.choice([-1, 1], size=(5, n_bits)).astype(np.int8)
    got = xnor_popcount_dense(pack_signs_u64(a), pack_signs_u64(w), n_bits)
    assert np.array_equal(got, a.astype(np.int32) @ w.T.astype(np.int32))


def test_xnor_conv_matches_multiply_oracle(rng):
    a = rng.choice([-1, 1], size=(2, 6, 5, 3)).astype(np.int8)
    w = rng.choice([-1, 1], size=(4, 3, 3, 3)).astype(np.int8)
    got = xnor_popcount_conv2d(a, w)
    want = np.zeros((2, 4, 3, 4), dtype=np.int32)
    for i in range(4):
        for j in range(3):
            patch = a[:, i:i + 3, j:j + 3, :].reshape(2, -1).astype(np.int32)
            want[:, i, j] = patch @ w.reshape(4, -1).T.astype(np.int32)
    assert np.array_equal(got, want)


@needs_cc
@pytest.mark.parametrize("builtin", [False, True])
def test_c_xnor_dot_matches_oracle(tmp_path, rng, builtin):
    n_bits = 150
    a = rng.choice([-1, 1], size=(6, n_bits)).astype(np.int8)
    w = rng.choice([-1, 1], size=(6, n_bits)).astype(np.int8)
    pa, pw = pack_signs_u64(a), pack_signs_u64(w)
    words = pa.shape[1]

    def arr(name, p):
        vals = ", ".join(f"UINT64_C({int(v)})" for v in p.ravel())
        return f"static const uint64_t {name}[] = {{{vals}}};\n"

    src = ("#include <stdint.h>\n#include <stdio.h>\n" + POPCOUNT_C + arr("A", pa) + arr("W", pw)
           + "int main(void) { int i; for (i = 0; i < 6; i++) printf(\"%d\\n\", "
           f"(int)lbcnn_xnor_dot(A + i * {words}, W + i * {words}, {words}, {n_bits})); "
           "return 0; }\n")
    (tmp_path / "x.c").write_text(src)
    flags = [*CFLAGS] + (["-DLBCNN_USE_BUILTIN_POPCOUNT"] if builtin else [])
    subprocess.run([CC, *flags, str(tmp_path / "x.c"), "-o", str(tmp_path / "x")], check=True,
                   capture_output=True, text=True)
    out = subprocess.run([str(tmp_path / "x")], capture_output=True, text=True, check=True)
    got = np.array([int(v) for v in out.stdout.split()])
    assert np.array_equal(got, (a.astype(np.int32) * w).sum(1))


# -- plan and NumPy engine --------------------------------------------------------
def test_plan_states_bounds_and_widths(mnist_small):
    _, plan = mnist_small
    info = plan.describe()
    assert info["activation_dtype"] == "int16"
    assert [op["bound"] for op in info["ops"] if op["type"] == "sign_dwconv3"] == [9 * 255, 81 * 255]
    assert info["head"]["feature_bound"] == 81 * 255
    assert info["head"]["partial_dtype"] == "int32"
    assert info["head"]["chunk"] * 81 * 255 * info["head"]["q_max"] < 2 ** 31


@pytest.mark.parametrize("filters,nl,shape", [((3,), 1, (9, 8, 2)), ((2, 2), 2, (11, 13, 1)),
                                              ((2, 1, 2), 1, (10, 7, 3))])
def test_numpy_features_are_the_float_body_exactly(rng, filters, nl, shape):
    body = LBCNNBody.random(shape, filters, nl, seed=3)
    x = rng.integers(0, 256, size=(20, *shape), dtype=np.uint8)
    model = LBCNN(filters=filters, nl=nl, device="cpu")
    model.body_, model.classes_ = body, np.arange(3)
    model.coef_ = rng.normal(size=(body.n_features, 3)).astype(np.float32)
    model.intercept_ = np.zeros(3, np.float32)
    feats = NumpyEngine(compile_plan(model)).features(x)
    ref = body.transform(x, device="cpu").astype(np.float64) / body.input_scale
    assert np.array_equal(feats, np.rint(ref))


def test_numpy_engine_equals_float_model_on_mnist_test(mnist, mnist_small):
    model, plan = mnist_small
    res = agreement(model, plan, mnist.x_test)
    assert res["n"] == 10000
    assert res["disagree"] == 0, res
    pred = NumpyEngine(plan).predict(mnist.x_test[:2000])
    assert np.array_equal(pred, dequantized_model(model, plan).predict(mnist.x_test[:2000]))


def test_per_class_scale_head(rng, mnist, mnist_small):
    model, plan = mnist_small
    q = plan.head["weight_q"]
    scale = float(plan.head["scale"]) * rng.uniform(0.5, 2.0, size=q.shape[1])
    head = {"weight_q": q, "bias_q": np.zeros(q.shape[1], np.int64), "scale": scale, "bits": 8}
    plan2 = compile_plan(model, head=head)
    assert plan2.describe()["head"]["rescale"] == "fixed-point"
    res = agreement(model, plan2, mnist.x_test[:2000])
    assert res["agreement"] >= 0.999, res


# -- refusals ---------------------------------------------------------------------
def test_unsupported_model_is_refused():
    with pytest.raises(ConfigError, match="unsupported model or layer"):
        compile_plan(object())


def test_unsupported_layer_is_refused(rng):
    body = LBCNNBody.random((8, 8, 1), (2,), 1, seed=0)
    body.kernels[0]["conv"] = np.ones((5, 5, 1, 2), np.int8)
    model = LBCNN(filters=(2,))
    model.body_, model.classes_ = body, np.arange(2)
    model.coef_ = np.ones((body.n_features, 2), np.float32)
    with pytest.raises(ConfigError, match="unsupported kernel shape"):
        compile_plan(model)
    body.kernels[0]["conv"] = np.zeros((3, 3, 1, 2), np.int8)
    with pytest.raises(ConfigError, match="not all"):
        compile_plan(model)


def test_unbounded_accumulator_is_refused(rng):
    body = LBCNNBody.random((256, 256, 1), (4, 4, 4), 3, seed=0)  # features up to 255 * 9^9
    model = LBCNN(filters=(4, 4, 4), nl=3)
    model.body_, model.classes_ = body, np.arange(2)
    model.coef_ = rng.normal(size=(body.n_features, 2)).astype(np.float32)
    model.intercept_ = np.zeros(2, np.float32)
    with pytest.raises(ConfigError, match="exceeds int64"):
        compile_plan(model, bits=16)


# -- generated C --------------------------------------------------------------------
@needs_cc
def test_c_matches_python_on_mnist(tmp_path, mnist, mnist_small):
    model, plan = mnist_small
    summary = export_c(plan, tmp_path)
    assert {"model.h", "model.c", "main.c", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    src = re.sub(r"/\*.*?\*/", "", (tmp_path / "model.c").read_text(), flags=re.S)
    # the only include besides model.h: the compiler's ACLE header, on Cortex-M SIMD32 only
    src = src.replace("#include <arm_acle.h>", "")
    for banned in ("malloc", "float", "double", "math.h", "#include <"):
        assert banned not in src
    x = mnist.x_test[:2000]
    got = build_and_run(tmp_path, x)
    assert len(got) == 2000
    assert np.array_equal(got, NumpyEngine(plan).predict(x))
    assert np.array_equal(got, dequantized_model(model, plan).predict(x))
    if summary["sizes"]:
        assert summary["sizes"]["flash"] > plan.weight_bytes()["total"]
        assert "flash" in (tmp_path / "README.md").read_text()


@needs_cc
@pytest.mark.parametrize("filters,nl,shape,k", [((5,), 1, (13, 11, 2), 3),
                                                ((3, 2), 2, (15, 12, 1), 4)])
def test_c_matches_python_on_synthetic(tmp_path, rng, filters, nl, shape, k):
    x, y = synthetic(rng, 300, shape, k)
    model = LBCNN(filters=filters, nl=nl, random_state=1, device="cpu").fit(x[:200], y[:200])
    model.intercept_ = rng.normal(size=k).astype(np.float32) * 1e-3  # exercise the bias
    plan = compile_plan(model)
    export_c(plan, tmp_path, measure=False)
    got = build_and_run(tmp_path, x)
    assert np.array_equal(got, NumpyEngine(plan).predict(x))
    res = agreement(model, plan, x)
    assert res["disagree"] == res["disagreements_explained_by_bound"] == 0, res


@needs_cc
def test_c_per_class_scale_matches_numpy(tmp_path, rng):
    x, y = synthetic(rng, 200, (10, 10, 1), 3)
    model = LBCNN(filters=(4,), random_state=2, device="cpu").fit(x, y)
    plan0 = compile_plan(model)
    head = {"weight_q": plan0.head["weight_q"], "bias_q": np.array([5, -7, 11]),
            "scale": float(plan0.head["scale"]) * np.array([0.7, 1.0, 1.9]), "bits": 8}
    plan = compile_plan(model, head=head)
    export_c(plan, tmp_path, measure=False)
    assert np.array_equal(build_and_run(tmp_path, x), NumpyEngine(plan).predict(x))


def test_model_file_with_stored_quantized_head(tmp_path, mnist, mnist_small):
    quant = pytest.importorskip("lbcnn.heads.quantize")
    from lbcnn.models.lbcnn import save_lbcnn

    model, _ = mnist_small
    import copy
    m = copy.deepcopy(model)
    quant.apply_quantization(m, bits=8, per_class=True)
    save_lbcnn(m, tmp_path / "q.npz")
    plan = compile_plan(tmp_path / "q.npz")
    assert plan.describe()["head"]["rescale"] == "fixed-point"
    res = agreement(m, plan, mnist.x_test[:1000])
    assert res["agreement"] >= 0.999, res
