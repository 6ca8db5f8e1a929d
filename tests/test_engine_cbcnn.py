"""Integer engine for the CBCNN family (issue 5): plan, NumPy engine, generated C."""
import copy
import re
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lbcnn.deploy.c_common import CFLAGS, find_cc
from lbcnn.deploy.c_export import export_c
from lbcnn.engine import NumpyEngine, compile_plan, pack_signs_u64
from lbcnn.engine.cbcnn_plan import CBCNNPlan, cbcnn_agreement, xnor_conv3
from lbcnn.errors import ConfigError
from lbcnn.models.cbcnn import CBCNN, save_cbcnn

CC = find_cc()
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler found")


def build_and_run(out_dir, images, extra=()) -> np.ndarray:
    exe = out_dir / "cbcnn"
    subprocess.run([CC, *CFLAGS, *extra, str(out_dir / "model.c"), str(out_dir / "main.c"),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    res = subprocess.run([str(exe)], input=np.ascontiguousarray(images).tobytes(),
                         capture_output=True, check=True)
    return np.array([int(v) for v in res.stdout.split()])


def model_features_hwc(model, x) -> np.ndarray:
    """The float model's +-1 features, reordered from its (C, H, W) flatten to (H, W, C)."""
    f = model.forward_features(x)
    if model.net.dense:
        return None
    h = model.net.input_shape[0] >> len(model.net.blocks)
    w = model.net.input_shape[1] >> len(model.net.blocks)
    return f.reshape(len(f), -1, h, w).transpose(0, 2, 3, 1).reshape(len(f), -1)


@pytest.fixture(scope="module")
def tiny(mnist):
    torch.set_num_threads(1)
    from lbcnn.train.cbcnn import train_cbcnn

    r = train_cbcnn(mnist, preset=None, blocks=(8, 8, 8), dense=(16,), epochs=3,
                    train_size=3000, batch_size=50, lr_start=1e-2, lr_end=1e-3,
                    progress=False, seed=0, device="cpu")
    model = r["model"]
    model.net.eval()
    return model, compile_plan(model)


def random_model(shape=(13, 11, 2), blocks=(70, 5), dense=(9,), k=3, seed=0, gamma_zero=True):
    """An untrained CBCNN with random BN statistics in the range of each layer's sums,
    negative and zero gammas included."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = CBCNN(None, blocks, dense, shape, k)
    net = model.net
    c_in = shape[2]
    bns = [m for m in net.features if isinstance(m, torch.nn.BatchNorm2d)]
    bns += [m for m in net.head_hidden if isinstance(m, torch.nn.BatchNorm1d)] + [net.out_bn]
    fans = [9 * c_in * 0.5] + [9 * b for b in blocks[:-1]]
    fans += [net.num_features] + list(dense)
    with torch.no_grad():
        for bn, fan in zip(bns, fans):
            n = bn.num_features
            sd = float(fan) ** 0.5
            bn.running_mean.copy_(torch.randn(n, generator=g) * sd)
            bn.running_var.copy_(torch.rand(n, generator=g) * fan + 0.5)
            bn.weight.copy_(torch.randn(n, generator=g))
            bn.bias.copy_(torch.randn(n, generator=g))
            if gamma_zero and bn is not net.out_bn and n > 2:
                bn.weight[0] = 0.0
                bn.bias[1] = -abs(float(bn.bias[1])) - 0.1
                bn.weight[1] = 0.0
    net.eval()
    return model


# -- kernels ----------------------------------------------------------------------
@pytest.mark.parametrize("h,w,c,co", [(5, 4, 3, 2), (6, 7, 64, 3), (4, 3, 70, 5)])
def test_xnor_conv3_valid_taps_match_zero_padded_conv(rng, h, w, c, co):
    a = rng.choice([-1, 1], size=(2, h, w, c)).astype(np.int8)
    wt = rng.choice([-1, 1], size=(co, 3, 3, c)).astype(np.int8)
    op = {"in_shape": (h, w, c), "w_packed": pack_signs_u64(wt).reshape(co, -1)}
    got = xnor_conv3(pack_signs_u64(a), op)
    want = F.conv2d(torch.from_numpy(a).permute(0, 3, 1, 2).double(),
                    torch.from_numpy(wt).permute(0, 3, 1, 2).double(), padding=1)
    assert np.array_equal(got, want.permute(0, 2, 3, 1).numpy().astype(np.int32))


# -- plan and NumPy engine on a trained model ---------------------------------------
def test_plan_describes_cbcnn(tiny):
    _, plan = tiny
    assert isinstance(plan, CBCNNPlan)
    info = plan.describe()
    assert [op["type"] for op in info["ops"]] == ["sign_conv3", "xnor_conv3", "xnor_conv3",
                                                  "xnor_dense"]
    assert info["bounds"]["stages"] == [9 * 255, 72, 72, 72]
    assert info["head"]["fixed_point_shift"] >= 16
    assert info["bounds"]["first_layer_exact"], info["bounds"]
    assert plan.weight_bytes()["total"] < 4000


def test_numpy_engine_equals_float_model_on_mnist(mnist, tiny):
    model, plan = tiny
    x = mnist.x_test[:2000]
    res = cbcnn_agreement(model, plan, x)
    assert res["n"] == 2000
    assert res["disagree"] == 0, res
    assert res["hidden_bits_differ"] == 0, res
    pred = NumpyEngine(plan).predict(x)
    assert np.array_equal(pred, model.predict(x))
    assert model.score(x, mnist.y_test[:2000]) > 0.4  # a real, non-constant classifier
    assert len(np.unique(pred)) == 10


def test_fixed_point_head_within_stated_bound(mnist, tiny):
    model, plan = tiny
    x = mnist.x_test[:500]
    eng = NumpyEngine(plan)
    from lbcnn.engine.cbcnn_plan import cbcnn_head_sums
    a = cbcnn_head_sums(plan, eng.features_packed(x)).astype(np.int64)
    hd = plan.head
    exact = a * hd["scale"] + hd["bias"]
    score = eng.scores(x).astype(np.float64) / 2.0 ** hd["shift"]
    assert np.all(np.abs(score - exact) <= (np.abs(a) + 1) * 2.0 ** -(hd["shift"] + 1))
    logits = model.decision_function(x).astype(np.float64)
    assert np.allclose(logits, exact, rtol=1e-5, atol=1e-5)


def test_perturbed_bn_flips_and_constants(mnist, tiny):
    """Negative gamma (flip), gamma == 0 (constant channel), shifted means."""
    model, _ = tiny
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for bn in [mod for mod in m.net.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]:
            n = bn.num_features
            bn.weight.mul_(torch.where(torch.rand(n, generator=g) < 0.4, -1.0, 1.0))
            bn.running_mean.add_(torch.randn(n, generator=g) * bn.running_var.sqrt() * 0.3)
            if bn is not m.net.out_bn:
                bn.weight[0] = 0.0
                bn.bias[0] = -0.5
    plan = compile_plan(m)
    assert any(op["flip"].any() for op in plan.ops)
    x = mnist.x_test[:1000]
    res = cbcnn_agreement(m, plan, x)
    assert res["disagree"] == 0 and res["hidden_bits_differ"] == 0, res


def test_features_equal_model_features_without_dense(rng):
    model = random_model(shape=(9, 10, 1), blocks=(6, 3), dense=(), k=4, seed=1)
    x = rng.integers(0, 256, size=(300, 9, 10, 1), dtype=np.uint8)
    plan = compile_plan(model)
    assert np.array_equal(NumpyEngine(plan).features(x), model_features_hwc(model, x))
    assert np.array_equal(NumpyEngine(plan).predict(x), model.predict(x))


def test_random_model_multiword_channels(rng):
    model = random_model()
    plan = compile_plan(model)
    x = rng.integers(0, 256, size=(400, 13, 11, 2), dtype=np.uint8)
    res = cbcnn_agreement(model, plan, x)
    assert res["disagree"] == 0 and res["hidden_bits_differ"] == 0, res


def test_model_file_compiles(tmp_path, mnist, tiny):
    model, plan = tiny
    save_cbcnn(model, tmp_path / "m.npz")
    plan2 = compile_plan(tmp_path / "m.npz")
    x = mnist.x_test[:300]
    assert np.array_equal(NumpyEngine(plan2).scores(x), NumpyEngine(plan).scores(x))


# -- refusals ----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,reason", [
    ({"scale": True}, "scale=True"),
    ({"preprocess": {"equalize": True}}, "equalize"),
    ({"preprocess": {"standardize": True}}, "standardize"),
    ({"preprocess": {"input_scale": -1.0}}, "input_scale"),
])
def test_refusals_name_the_reason(kwargs, reason):
    model = CBCNN(None, (4,), (), (8, 8, 1), 2, **kwargs)
    with pytest.raises(ConfigError, match=reason):
        compile_plan(model)


# -- generated C ---------------------------------------------------------------------
@needs_cc
@pytest.mark.parametrize("builtin", [False, True])
def test_c_matches_numpy_on_mnist(tmp_path, mnist, tiny, builtin):
    model, plan = tiny
    summary = export_c(plan, tmp_path, measure=not builtin)
    assert {"model.h", "model.c", "main.c", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    src = re.sub(r"/\*.*?\*/", "", (tmp_path / "model.c").read_text(), flags=re.S)
    for banned in ("malloc", "float", "double", "math.h", "#include <"):
        assert banned not in src
    x = mnist.x_test[:2000]
    got = build_and_run(tmp_path, x, ["-DLBCNN_USE_BUILTIN_POPCOUNT"] if builtin else [])
    assert len(got) == 2000
    assert np.array_equal(got, NumpyEngine(plan).predict(x))
    assert np.array_equal(got, model.predict(x))
    if summary["sizes"]:
        assert summary["sizes"]["flash"] > plan.weight_bytes()["packed_weights"]
        assert "CBCNN" in (tmp_path / "README.md").read_text()


@needs_cc
@pytest.mark.parametrize("shape,blocks,dense,k", [((13, 11, 2), (70, 5), (9,), 3),
                                                  ((9, 10, 1), (6, 3), (), 4),
                                                  ((16, 16, 3), (65, 66), (70, 8), 5)])
def test_c_matches_numpy_on_random_models(tmp_path, rng, shape, blocks, dense, k):
    model = random_model(shape, blocks, dense, k, seed=2)
    plan = compile_plan(model)
    export_c(model, tmp_path, measure=False)
    x = rng.integers(0, 256, size=(300, *shape), dtype=np.uint8)
    got = build_and_run(tmp_path, x)
    assert np.array_equal(got, NumpyEngine(plan).predict(x))
    assert np.array_equal(got, model.predict(x))


def test_first_layer_rounding_risk_is_reported(rng):
    """A first-layer threshold a hair above an integer: the float model's rounding of
    p * input_scale could decide that integer either way, and the plan says so."""
    from lbcnn.engine.cbcnn_plan import first_layer_at_risk

    model = random_model(shape=(8, 8, 1), blocks=(4,), dense=(), k=2, seed=4, gamma_zero=False)
    bn = model.net.features[2]
    with torch.no_grad():
        bn.weight[0], bn.bias[0] = 1.0, 0.0
        bn.running_mean[0] = 37.0001 * model.preprocess.input_scale
    plan = compile_plan(model)
    b = plan.bounds
    assert not b["first_layer_exact"] and b["first_layer_risky_channels"] >= 1
    assert 37 in plan.ops[0]["risk_values"].tolist()
    x = rng.integers(0, 40, size=(200, 8, 8, 1), dtype=np.uint8)
    w = torch.from_numpy(plan.ops[0]["weight"]).permute(0, 3, 1, 2).double()
    s = F.max_pool2d(F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2).double(), w, padding=1), 2)
    ch = plan.ops[0]["risk_channels"]
    want = (s[:, ch] == torch.as_tensor(plan.ops[0]["risk_values"]).double().view(1, -1, 1, 1))
    assert np.array_equal(first_layer_at_risk(plan, x), want.flatten(1).any(1).numpy())
    assert want.any()
    res = cbcnn_agreement(model, plan, x)
    assert res["first_layer_at_risk"] == int(want.flatten(1).any(1).sum())
    assert res["disagree"] == res["disagreements_explained_by_bound"]


@needs_cc
def test_cli_export_c_for_cbcnn(tmp_path, mnist, tiny):
    from lbcnn.cli import main

    model, plan = tiny
    save_cbcnn(model, tmp_path / "m.npz")
    assert main(["export", str(tmp_path / "m.npz"), "--format", "c", "--out",
                 str(tmp_path / "c")]) == 0
    x = mnist.x_test[:1000]
    assert np.array_equal(build_and_run(tmp_path / "c", x), NumpyEngine(plan).predict(x))
