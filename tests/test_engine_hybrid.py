"""Integer engine and C export for the Hybrid family (issue 6): the binary part bit-exact."""
import copy
import json
import re
import subprocess

import numpy as np
import pytest
import torch

from lbcnn.deploy.c_common import CFLAGS, find_cc
from lbcnn.deploy.c_export import export_c
from lbcnn.engine import NumpyEngine, compile_plan
from lbcnn.engine.hybrid_plan import (HybridPlan, _mul_gt, hybrid_agreement, otsu_agreement,
                                      otsu_threshold_int)
from lbcnn.errors import ConfigError
from lbcnn.models.hybrid import Hybrid, HybridBody, otsu_threshold, save_hybrid

CC = find_cc()
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler found")
N_TEST = 1000

FEATURES_MAIN = r"""
#include <stdio.h>
#include "model.h"
int main(void)
{
    static uint8_t image[LBCNN_INPUT_BYTES];
    static uint8_t bits[LBCNN_FEATURE_BYTES];
    while (fread(image, 1, sizeof image, stdin) == sizeof image) {
        lbcnn_features(image, bits);
        fwrite(bits, 1, sizeof bits, stdout);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def hybrid(mnist):
    torch.set_num_threads(1)
    x, y = mnist.x_train, mnist.y_train
    return Hybrid(epochs=2).fit(x[:2000], y[:2000], x[2000:2500], y[2000:2500])


@pytest.fixture(scope="module")
def x_test(mnist):
    return mnist.x_test[:N_TEST]


def with_threshold(model, thr):
    m = copy.copy(model)
    m.body_ = HybridBody(m.body_.input_shape, m.body_.kernels, thr)
    return m


THRESHOLDS = ["otsu", 0.5, 0.3, 0.0, 1.0, 0.2001]


def test_compile_plan_dispatches(hybrid):
    plan = compile_plan(hybrid)
    assert isinstance(plan, HybridPlan)
    assert plan.n_features == 576 and plan.output_shape == (24, 24)
    d = plan.describe()
    assert d["binary_part"] == "exact" and d["threshold"] == "otsu"
    json.dumps(d)


@pytest.mark.parametrize("thr", THRESHOLDS)
def test_numpy_features_bit_exact(hybrid, x_test, thr):
    m = with_threshold(hybrid, thr)
    plan = compile_plan(m)
    eng = NumpyEngine(plan)
    f = eng.features(x_test)
    ref = m.body_.transform(x_test)
    assert f.shape == ref.shape == (N_TEST, 576)
    np.testing.assert_array_equal(f, ref)
    # packed form: the same bits, pack_signs_u64 order
    packed = eng.features_packed(x_test)
    bits = np.unpackbits(packed.view(np.uint8), axis=1, bitorder="little")[:, :576]
    np.testing.assert_array_equal(bits, (ref > 0).astype(np.uint8))


def test_fixed_threshold_is_integer(hybrid):
    for t in (0.5, 0.2001, 0.0, 1.0):
        plan = compile_plan(with_threshold(hybrid, t))
        p = np.arange(256)
        np.testing.assert_array_equal(p > plan.threshold, p > t * 255.0)


def test_integer_otsu_matches_float(mnist):
    x = mnist.x_test[:N_TEST, ..., 0]
    t_int = otsu_threshold_int(x)
    t_flt = np.array([otsu_threshold(im) for im in x])
    np.testing.assert_array_equal(t_int, t_flt)
    assert otsu_agreement(x)["differ"] == 0


def test_integer_otsu_edge_cases():
    const = np.full((2, 28, 28), 7, np.uint8)
    const[1] = 0
    two = np.zeros((1, 28, 28), np.uint8)
    two[0, :14] = 200
    imgs = np.concatenate([const, two])
    t_int = otsu_threshold_int(imgs)
    t_flt = np.array([otsu_threshold(im) for im in imgs])
    np.testing.assert_array_equal(t_int, t_flt)


def test_mul_gt_exact():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2 ** 63, 2000, dtype=np.uint64) * np.uint64(2)
    c = rng.integers(0, 2 ** 63, 2000, dtype=np.uint64) * np.uint64(2)
    b = rng.integers(0, 2 ** 32, 2000, dtype=np.uint64)
    d = rng.integers(0, 2 ** 32, 2000, dtype=np.uint64)
    c[:100], d[:100] = a[:100], b[:100]          # ties
    want = [int(p) * int(q) > int(r) * int(s) for p, q, r, s in zip(a, b, c, d)]
    np.testing.assert_array_equal(_mul_gt(a, b, c, d), want)


def test_head_agreement(hybrid, x_test):
    """The fixed-point head is an approximation: its argmax on the exact features
    agrees with the float model on >= 98 % of 1000 MNIST test images."""
    plan = compile_plan(hybrid)
    res = hybrid_agreement(hybrid, plan, x_test)
    print("hybrid fixed-point head agreement", res)
    assert res["agreement"] >= 0.98


def test_rejects_wide_images():
    m = Hybrid()
    m.body_ = HybridBody((70, 70, 1), HybridBody.make((70, 70, 1)).kernels, 0.5)
    m.net_ = object()
    with pytest.raises(ConfigError):
        compile_plan(m)


def _build(out_dir, main_src=None):
    exe = out_dir / ("feat" if main_src else "pred")
    srcs = [str(out_dir / "model.c")]
    if main_src:
        (out_dir / "feat_main.c").write_text(main_src)
        srcs.append(str(out_dir / "feat_main.c"))
    else:
        srcs.append(str(out_dir / "main.c"))
    subprocess.run([CC, *CFLAGS, *srcs, "-o", str(exe)], check=True, capture_output=True,
                   text=True)
    return exe


@needs_cc
@pytest.mark.parametrize("thr", ["otsu", 0.5, 0.2001])
def test_c_features_bit_exact(hybrid, x_test, tmp_path, thr):
    m = with_threshold(hybrid, thr)
    plan = compile_plan(m)
    export_c(plan, tmp_path, measure=False)
    src = (tmp_path / "model.c").read_text()
    assert "malloc(" not in src and not re.search(r"\b(float|double)\s+[a-z_]", src)
    exe = _build(tmp_path, FEATURES_MAIN)
    res = subprocess.run([str(exe)], input=np.ascontiguousarray(x_test).tobytes(),
                         capture_output=True, check=True)
    c_bytes = np.frombuffer(res.stdout, np.uint8).reshape(N_TEST, 72)
    np_packed = NumpyEngine(plan).features_packed(x_test)
    np.testing.assert_array_equal(c_bytes, np_packed.view(np.uint8))
    c_pm1 = 2 * np.unpackbits(c_bytes, axis=1, bitorder="little")[:, :576].astype(np.int8) - 1
    np.testing.assert_array_equal(c_pm1, m.body_.transform(x_test))


@needs_cc
def test_c_predict_matches_numpy_engine(hybrid, x_test, tmp_path):
    plan = compile_plan(hybrid)
    export_c(plan, tmp_path, measure=False)
    exe = _build(tmp_path)
    res = subprocess.run([str(exe)], input=np.ascontiguousarray(x_test).tobytes(),
                         capture_output=True, check=True)
    c_pred = np.array([int(v) for v in res.stdout.split()])
    np.testing.assert_array_equal(c_pred, NumpyEngine(plan).predict_index(x_test))


@needs_cc
def test_cli_export_c(hybrid, x_test, tmp_path, capsys):
    from lbcnn.cli import main

    path = tmp_path / "hybrid.npz"
    save_hybrid(hybrid, path)
    out = tmp_path / "c"
    rc = main(["export", str(path), "--format", "c", "--out", str(out), "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["format"] == "c" and info["weight_bytes"] > 0
    assert "lbcnn_features" in (out / "model.h").read_text()
    assert "bit-exactly" in (out / "README.md").read_text()
    exe = _build(out, FEATURES_MAIN)
    res = subprocess.run([str(exe)], input=np.ascontiguousarray(x_test[:200]).tobytes(),
                         capture_output=True, check=True)
    c_bytes = np.frombuffer(res.stdout, np.uint8).reshape(200, 72)
    ref = hybrid.body_.transform(x_test[:200]) > 0
    np.testing.assert_array_equal(
        np.unpackbits(c_bytes, axis=1, bitorder="little")[:, :576], ref.astype(np.uint8))
