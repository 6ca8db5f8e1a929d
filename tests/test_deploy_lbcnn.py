"""Issue 3: head fine-tuning, n-bit head, bit accounting, Keras/ONNX export and
Keras-2 .h5 import -- on real MNIST images (LBCNN_DATA)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from lbcnn.errors import ConfigError, DataError
from lbcnn.models.lbcnn import LBCNN, LBCNNBody, load_lbcnn, save_lbcnn

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small(mnist):
    """An 8,2 model fitted on 2000 real MNIST images."""
    return LBCNN(filters=(8, 2)).fit(mnist.x_train[:2000], mnist.y_train[:2000])


@pytest.fixture(scope="module")
def deep(mnist):
    """Three layers (odd 7 -> 4 pooling) and nl=2 (ReLU + extra conv)."""
    return LBCNN(filters=(4, 2, 2), nl=2, random_state=3).fit(mnist.x_train[:2000],
                                                             mnist.y_train[:2000])


def _load(path):
    from lbcnn.models import load_model
    return load_model(path)


# -- quantization -------------------------------------------------------------
def _rounding_error(w, q, scale):
    return float(((w - q.astype(np.float64) * scale) ** 2).sum())


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("axis", [None, 0])
def test_mse_clipping_never_rounds_worse_than_absmax(bits, axis):
    from lbcnn.heads.quantize import quantize_tensor

    rng = np.random.default_rng(bits)
    w = (rng.laplace(size=(500, 6)) * 0.01).astype(np.float32)  # heavy-tailed, like ridge heads
    qa, sa = quantize_tensor(w, bits, axis=axis, clip="absmax")
    qm, sm = quantize_tensor(w, bits, axis=axis, clip="mse")
    assert np.all(np.asarray(sm) <= np.asarray(sa) + 1e-12)  # clipping only shrinks the step
    assert _rounding_error(w, qm, sm) <= _rounding_error(w, qa, sa)
    qmax = 2 ** (bits - 1) - 1
    assert np.abs(qm.astype(int)).max() <= qmax
    if bits <= 4:  # a heavy tail wastes most of absmax's levels at low bits
        assert _rounding_error(w, qm, sm) < 0.8 * _rounding_error(w, qa, sa)


def test_mse_clipping_brute_force_oracle():
    """The chosen scale is the best of the documented grid, checked level by level."""
    from lbcnn.heads.quantize import _CLIP_LEVELS, quantize_tensor

    w = np.random.default_rng(5).laplace(size=(64, 3)).astype(np.float32)
    _, s = quantize_tensor(w, 4, clip="mse")
    errs = []
    for level in _CLIP_LEVELS:
        step = np.float32(np.abs(w).max() * level / 7)
        errs.append(_rounding_error(w, np.clip(np.rint(w / step), -7, 7), step))
    assert _rounding_error(w, np.clip(np.rint(w / s), -7, 7), s) == pytest.approx(min(errs), rel=1e-6)


def test_output_clipping_oracle_and_identity_features_reduce_to_mse():
    from lbcnn.heads.quantize import _CLIP_LEVELS, quantize_tensor

    rng = np.random.default_rng(2)
    w = rng.laplace(size=(30, 4)).astype(np.float32)
    q_id, s_id = quantize_tensor(w, 3, axis=0, clip="output", feature_sample=np.eye(30))
    q_mse, s_mse = quantize_tensor(w, 3, axis=0, clip="mse")
    np.testing.assert_array_equal(s_id, s_mse)  # ||I e||^2 = ||e||^2
    f = rng.normal(size=(50, 30)).astype(np.float32) * rng.uniform(0.1, 5, 30).astype(np.float32)
    _, s = quantize_tensor(w, 3, axis=0, clip="output", feature_sample=f)
    for c in range(4):  # per class: the best level of the grid for that class's logit error
        col = w[:, c].astype(np.float64)

        def logit_err(step):
            return float(((f @ (col - np.clip(np.rint(col / step), -3, 3) * step)) ** 2).sum())
        best = min(logit_err(np.float32(np.abs(col).max() * lv / 3)) for lv in _CLIP_LEVELS)
        assert logit_err(s[c]) == pytest.approx(best, rel=1e-5)
    with pytest.raises(ConfigError, match="needs a sample"):
        quantize_tensor(w, 3, clip="output")
    with pytest.raises(DataError, match="feature sample"):
        quantize_tensor(w, 3, clip="output", feature_sample=np.ones((5, 7)))


def test_feature_stats_sample_is_centred_training_rows(small, mnist):
    from lbcnn.heads.quantize import training_feature_stats

    x = mnist.x_train[:300]
    mu, sample = training_feature_stats(small, x, batch_size=64, sample=40, seed=3)
    full = small.body_.transform(x).astype(np.float64)
    np.testing.assert_allclose(mu, full.mean(0), rtol=1e-6, atol=1e-6)
    pick = np.sort(np.random.default_rng(3).choice(300, 40, replace=False))
    np.testing.assert_allclose(sample, (full[pick] - mu).astype(np.float32), rtol=1e-5, atol=1e-4)


def _correlated_head(d, k, seed=0, n=60):
    """Features with neighbour correlation (as overlapping windows give), a random head."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:, 1:] += 0.8 * x[:, :-1]
    w = rng.normal(size=(d, k))
    return x, w, np.abs(w).max(0) / 7


@pytest.mark.parametrize("d,k,block", [(7, 2, 16), (40, 3, 16), (150, 4, 32)])
def test_gptq_round_equals_the_textbook_obs_oracle(d, k, block):
    from lbcnn.heads.quantize import gptq_round, gptq_round_reference

    x, w, s = _correlated_head(d, k, seed=d)
    want = gptq_round_reference(w, s, 7, x.T @ x)
    assert np.array_equal(gptq_round(w, s, 7, x.T @ x, block=block, dtype=np.float64), want)
    # the float32 factorization (the default) may differ only at exact ties
    assert np.mean(gptq_round(w, s, 7, (x.T @ x).astype(np.float32), block=block) == want) > 0.99


def test_gptq_round_is_nearest_rounding_for_uncorrelated_features():
    from lbcnn.heads.quantize import gptq_round

    rng = np.random.default_rng(2)
    w, s = rng.normal(size=(30, 3)), np.float64(0.2)
    gram = np.diag(rng.uniform(0.5, 2.0, 30))  # nothing can absorb another feature's error
    assert np.array_equal(gptq_round(w, s, 7, gram), np.clip(np.rint(w / s), -7, 7))


@pytest.mark.parametrize("n,ratio", [(60, 0.2), (600, 0.7)])  # fewer images than features: more room
def test_gptq_cuts_the_logit_error_of_correlated_features(n, ratio):
    from lbcnn.heads.quantize import gptq_round

    x, w, s = _correlated_head(300, 5, seed=1, n=n)
    q = gptq_round(w, s, 7, x.T @ x)
    assert np.abs(q).max() <= 7

    def logit_err(q):
        return float(((x @ (w - q * s)) ** 2).sum())
    assert logit_err(q) < ratio * logit_err(np.clip(np.rint(w / s), -7, 7))


def test_gptq_head_needs_a_gram_and_records_its_rounding():
    from lbcnn.heads.quantize import centred_gram, quantize_head

    x, w, _ = _correlated_head(20, 3)
    w, b = w.astype(np.float32), np.zeros(3, np.float32)
    with pytest.raises(ConfigError, match="needs the Gram"):
        quantize_head(w, b, 4, rounding="gptq")
    with pytest.raises(ConfigError, match="rounding must be"):
        quantize_head(w, b, 4, rounding="stochastic")
    with pytest.raises(DataError, match="feature Gram"):
        quantize_head(w, b, 4, feature_gram=np.ones((3, 3)))
    gram = centred_gram(x, x.mean(0), chunk=7)
    np.testing.assert_allclose(gram, (x - x.mean(0)).T @ (x - x.mean(0)), rtol=1e-4, atol=1e-3)
    assert quantize_head(w, b, 4, feature_gram=gram)[0]["rounding"] == "gptq"
    assert quantize_head(w, b, 4)[0]["rounding"] == "nearest"


def test_feature_stats_gram_is_the_centred_training_gram(small, mnist):
    from lbcnn.heads.quantize import training_feature_stats

    x = mnist.x_train[:300]
    mu, _, gram = training_feature_stats(small, x, batch_size=64, sample=0, gram=True)
    full = small.body_.transform(x).astype(np.float64) - mu
    want = full.T @ full
    np.testing.assert_allclose(gram, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_pow2_mse_scales_stay_powers_of_two():
    from lbcnn.heads.quantize import quantize_tensor

    w = np.random.default_rng(1).standard_t(3, size=(200, 4)).astype(np.float32)
    _, s = quantize_tensor(w, 4, axis=0, pow2=True, clip="mse")
    assert np.all(np.log2(s) == np.rint(np.log2(s)))


def test_low_bit_head_keeps_an_8_bit_bias_and_old_files_still_load():
    from lbcnn.heads.quantize import dequantize, head_from_arrays, quantize_head

    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(40, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    meta, arrays = quantize_head(w, b, 3)
    assert meta["bias_bits"] == 8 and np.abs(arrays["head/weight_q"]).max() <= 3
    assert np.abs(dequantize(meta, arrays)[1] - b).max() <= np.abs(b).max() / 127 / 2 + 1e-6
    head_from_arrays(meta, arrays)
    old = dict(meta, bias_bits=3)  # a file written before the 8-bit bias: still valid if in range
    with pytest.raises(Exception, match="bias outside the signed 3-bit range"):
        head_from_arrays(old, arrays)
    old_arrays = dict(arrays, **{"head/bias_q": np.clip(arrays["head/bias_q"], -3, 3)})
    head_from_arrays({k: v for k, v in old.items() if k != "clip"}, old_arrays)


def test_quantized_head_round_trips_as_integers(small, mnist, tmp_path):
    from lbcnn.heads.quantize import apply_quantization

    q = apply_quantization(copy.deepcopy(small), bits=8)
    save_lbcnn(small, tmp_path / "float.npz")
    save_lbcnn(q, tmp_path / "q.npz")
    back = _load(tmp_path / "q.npz")
    assert back.head_meta_ == {"kind": "fixed", "bits": 8, "scale": "per_tensor", "pow2": False,
                               "bias_bits": 8, "bias_scale": "per_tensor", "clip": "mse",
                               "rounding": "nearest"}
    wq = back.head_arrays_["head/weight_q"]
    assert wq.dtype == np.int8 and np.abs(wq.astype(int)).max() == 127
    np.testing.assert_array_equal(back.coef_, q.coef_)
    with np.load(tmp_path / "q.npz") as z:
        assert "head/weight" not in z.files  # only the integers are stored
    assert (tmp_path / "q.npz").stat().st_size < 0.4 * (tmp_path / "float.npz").stat().st_size
    x = mnist.x_test[:1000]
    agree = np.mean(back.predict(x) == small.predict(x))
    assert agree > 0.99


def test_quantize_options_per_class_pow2_and_bias_scale():
    from lbcnn.heads.quantize import dequantize, quantize_head

    rng = np.random.default_rng(0)
    w = (rng.normal(size=(50, 4)) * [1, 10, 0.1, 3]).astype(np.float32)
    b = np.array([50.0, -20.0, 0.5, 0.0], dtype=np.float32)  # far larger than most weights
    meta, arr = quantize_head(w, b, bits=6, per_class=True, pow2=True)
    s = arr["head/scale"]
    assert s.shape == (4,) and np.all(np.log2(s) == np.round(np.log2(s)))
    assert np.abs(arr["head/weight_q"].astype(int)).max() <= 31
    wd, bd = dequantize(meta, arr)
    # per-class scales keep every column's relative error small, even the tiny one
    rel = np.abs(wd - w).max(0) / np.abs(w).max(0)
    assert np.all(rel <= 2 / 31)
    # the bias scale comes from the bias, so a large bias is not clipped
    assert abs(bd[0] - 50.0) < 50.0 / 31 * 2 and abs(bd[1] + 20.0) < 50.0 / 31 * 2
    with pytest.raises(ConfigError):
        quantize_head(w, b, bits=1)


def test_bias_correction_moves_the_mean_rounding_error_into_the_bias(small, mnist):
    """Oracle: with correction, the quantized head's logits on the mean feature
    vector equal the float head's up to the bias's own rounding; without it they
    are off by mu . (W - Wq), which for these all-positive features is large.
    On real images, fewer predictions change than without correction."""
    from lbcnn.heads.quantize import (apply_quantization, dequantize, quantize_head,
                                      training_feature_mean)

    x = mnist.x_train[:2000]
    mu = training_feature_mean(small, x)
    h = small.forward_features(x).astype(np.float64)
    np.testing.assert_allclose(mu, h.mean(0), rtol=1e-6)
    meta, arr = quantize_head(small.coef_, small.intercept_, 4, feature_mean=mu)
    assert meta["bias_corrected"] is True
    w, b = dequantize(meta, arr)
    _, arr0 = quantize_head(small.coef_, small.intercept_, 4)
    np.testing.assert_array_equal(arr["head/weight_q"], arr0["head/weight_q"])  # weights untouched
    want = mu @ small.coef_.astype(np.float64) + small.intercept_
    got = mu @ w.astype(np.float64) + b
    bias_step = float(arr["head/bias_scale"][0])
    assert np.abs(got - want).max() <= 0.5 * bias_step + 1e-4 * np.abs(want).max()
    w0, b0 = dequantize(*quantize_head(small.coef_, small.intercept_, 4))
    uncorrected = np.abs(mu @ w0.astype(np.float64) + b0 - want).max()
    assert uncorrected > 3 * np.abs(got - want).max()
    xt = mnist.x_test[:2000]
    pf = small.predict(xt)
    changed = {}
    for name, m in (("plain", None), ("corrected", mu)):
        q = apply_quantization(copy.deepcopy(small), 4, feature_mean=m)
        changed[name] = int((q.predict(xt) != pf).sum())
    assert changed["corrected"] < changed["plain"]
    with pytest.raises(DataError, match="feature mean"):
        quantize_head(small.coef_, small.intercept_, 8, feature_mean=mu[:-1])


# -- fine-tuning ----------------------------------------------------------------
def test_finetune_head_only_picks_epoch_on_validation(small, mnist):
    from lbcnn.train.head_finetune import finetune_head

    m = copy.deepcopy(small)
    kernels = [k["conv"].copy() for k in m.body_.kernels]
    x, y = mnist.x_train, mnist.y_train
    res = finetune_head(m, x[2000:8000], y[2000:8000], x[8000:9000], y[8000:9000],
                        epochs=4, batch_size=128, lr=1e-3, patience=2, seed=0)
    for k, k0 in zip(m.body_.kernels, kernels):
        np.testing.assert_array_equal(k["conv"], k0)
    assert res.feature_mode == "memory"
    assert res.history[0]["epoch"] == 0 and len(res.history) == res.epochs_run + 1
    best = max(h["val_accuracy"] for h in res.history)
    assert res.val_accuracy == best >= res.val_accuracy_start
    # the returned head is the best epoch's head: its val accuracy is reproduced
    assert m.score(x[8000:9000], y[8000:9000]) == pytest.approx(res.val_accuracy, abs=2e-3)
    assert res.val_accuracy > res.val_accuracy_start  # 6000 more images help an ELM fit on 2000
    assert not np.allclose(m.coef_, small.coef_)


def test_finetune_streamed_equals_in_memory(small, mnist):
    from lbcnn.train.head_finetune import finetune_head

    x, y = mnist.x_train, mnist.y_train
    a, b = copy.deepcopy(small), copy.deepcopy(small)
    ra = finetune_head(a, x[2000:3000], y[2000:3000], x[3000:3500], y[3000:3500], epochs=2,
                       batch_size=100, seed=1, patience=5, in_memory=True)
    rb = finetune_head(b, x[2000:3000], y[2000:3000], x[3000:3500], y[3000:3500], epochs=2,
                       batch_size=100, seed=1, patience=5, in_memory=False)
    assert (ra.feature_mode, rb.feature_mode) == ("memory", "stream")
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-5, atol=1e-6)


def test_finetune_with_shift_augmentation_streamed_equals_in_memory(small, mnist):
    from lbcnn.train.head_finetune import finetune_head

    x, y = mnist.x_train, mnist.y_train
    a, b, c = copy.deepcopy(small), copy.deepcopy(small), copy.deepcopy(small)
    kw = dict(epochs=2, batch_size=100, lr=1e-3, seed=1, patience=5)
    ra = finetune_head(a, x[2000:3000], y[2000:3000], x[3000:3500], y[3000:3500], shift=2,
                       in_memory=True, **kw)
    rb = finetune_head(b, x[2000:3000], y[2000:3000], x[3000:3500], y[3000:3500], shift=2,
                       in_memory=False, **kw)
    rc = finetune_head(c, x[2000:3000], y[2000:3000], x[3000:3500], y[3000:3500], **kw)
    # the shifted features are recomputed into the in-memory buffer each epoch ...
    for ha, hb in zip(ra.history[1:], rb.history[1:]):
        assert ha["loss"] == pytest.approx(hb["loss"], rel=1e-5)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-5, atol=1e-6)
    # ... and they are not the unshifted ones (shifted digits are harder to fit)
    assert ra.history[1]["loss"] > rc.history[1]["loss"] * 1.05
    assert ra.history[0]["val_accuracy"] == rc.history[0]["val_accuracy"]
    with pytest.raises(ConfigError, match="shift"):
        finetune_head(copy.deepcopy(small), x[:100], y[:100], x[100:200], y[100:200], shift=-1)
    assert [h["lr"] for h in ra.history[1:]] == [1e-3, 1e-3]
    rd = finetune_head(copy.deepcopy(small), x[2000:3000], y[2000:3000], x[3000:3500],
                       y[3000:3500], shift=1, rotate=10, zoom=0.1, in_memory=True, **kw)
    assert rd.history[1]["loss"] > rc.history[1]["loss"] * 1.05
    re_ = finetune_head(copy.deepcopy(small), x[2000:3000], y[2000:3000], x[3000:3500],
                        y[3000:3500], elastic=34, in_memory=True, **kw)
    assert re_.history[1]["loss"] > rc.history[1]["loss"] * 1.05
    assert re_.history[0]["val_accuracy"] == rc.history[0]["val_accuracy"]
    with pytest.raises(ConfigError, match="elastic"):
        finetune_head(copy.deepcopy(small), x[:100], y[:100], x[100:200], y[100:200], elastic=-1)
    with pytest.raises(ConfigError, match="zoom"):
        finetune_head(copy.deepcopy(small), x[:100], y[:100], x[100:200], y[100:200], zoom=1.0)


def test_finetune_refit_full_replays_chosen_epochs_on_train_plus_val(small, mnist):
    from lbcnn.train.head_finetune import finetune_head

    x, y = mnist.x_train, mnist.y_train
    args = (x[2000:3000], y[2000:3000], x[3000:3500], y[3000:3500])
    kw = dict(epochs=3, batch_size=100, lr=1e-3, seed=2, patience=5)
    plain, a, b = copy.deepcopy(small), copy.deepcopy(small), copy.deepcopy(small)
    rp = finetune_head(plain, *args, **kw)
    ra = finetune_head(a, *args, refit_full=True, in_memory=True, **kw)
    rb = finetune_head(b, *args, refit_full=True, in_memory=False, **kw)
    assert rp.best_epoch > 0 and not rp.refit_full
    # selection is untouched by the refit; the refit runs exactly the chosen epochs
    assert ra.history == rp.history and ra.best_epoch == rp.best_epoch
    assert ra.refit_full and [h["epoch"] for h in ra.refit_history] == list(range(1, ra.best_epoch + 1))
    # 1500 images per epoch instead of 1000: the mean loss covers the validation images too
    assert not np.allclose(a.coef_, plain.coef_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-5, atol=1e-6)
    assert a.score(mnist.x_test[:1000], mnist.y_test[:1000]) > 0.8


def test_finetune_cosine_schedule_anneals_per_epoch(small, mnist):
    from lbcnn.train.head_finetune import finetune_head

    x, y = mnist.x_train, mnist.y_train
    r = finetune_head(copy.deepcopy(small), x[2000:2600], y[2000:2600], x[3000:3300],
                      y[3000:3300], epochs=4, batch_size=200, lr=1e-3, patience=10,
                      lr_schedule="cosine")
    want = [1e-3 * 0.5 * (1 + np.cos(np.pi * (e - 0.5) / 4)) for e in range(1, 5)]
    np.testing.assert_allclose([h["lr"] for h in r.history[1:]], want, rtol=1e-12)
    with pytest.raises(ConfigError, match="lr_schedule"):
        finetune_head(copy.deepcopy(small), x[:100], y[:100], x[100:200], y[100:200],
                      lr_schedule="step")


def test_transform_into_buffer_equals_fresh(small, mnist):
    body = small.body_
    out = np.full((300, body.n_features), np.nan, dtype=np.float32)
    got = body.transform(mnist.x_test[:300], batch_size=128, out=out)
    assert got is out
    np.testing.assert_array_equal(out, body.transform(mnist.x_test[:300]))
    with pytest.raises(ValueError, match="out must be"):
        body.transform(mnist.x_test[:300], out=out[:10])


def test_finetune_elm_full_resolves_head(small, mnist):
    from lbcnn.train.head_finetune import finetune_head

    m = copy.deepcopy(small)
    x, y = mnist.x_train, mnist.y_train
    res = finetune_head(m, x[:4000], y[:4000], x[4000:4500], y[4000:4500], epochs=0,
                        elm_full=True)
    ref = LBCNN(filters=(8, 2)).fit(x[:4000], y[:4000], body=small.body_)
    # epoch 0 = the full-split ELM head, rescaled by the fitted temperature
    assert res.temperature > 1
    np.testing.assert_allclose(m.coef_, res.temperature * ref.coef_, rtol=1e-3,
                               atol=1e-4 * np.abs(m.coef_).max())
    np.testing.assert_array_equal(m.predict(mnist.x_test[:500]), ref.predict(mnist.x_test[:500]))
    assert res.seconds_elm > 0 and res.best_epoch == 0


def test_finetune_rejects_unknown_labels(small, mnist):
    from lbcnn.train.head_finetune import finetune_head

    with pytest.raises(DataError, match="not among"):
        finetune_head(copy.deepcopy(small), mnist.x_train[:10], np.full(10, 42),
                      mnist.x_train[10:20], mnist.y_train[10:20], epochs=1)


# -- ONNX ---------------------------------------------------------------------
@pytest.mark.parametrize("which,quant", [("small", None), ("small", "per_class_pow2"),
                                         ("deep", "per_tensor")])
def test_onnx_matches_on_2000_test_images(which, quant, request, mnist, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from lbcnn.deploy.onnx_export import export_onnx
    from lbcnn.heads.quantize import apply_quantization

    m = copy.deepcopy(request.getfixturevalue(which))
    if quant:
        apply_quantization(m, 8, per_class=quant.startswith("per_class"), pow2="pow2" in quant)
        save_lbcnn(m, tmp_path / "m.npz")
        m = _load(tmp_path / "m.npz")
    path = export_onnx(m, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = mnist.x_test[:2000]
    got = sess.run(None, {"images": x})[0]
    ours = m.decision_function(x)
    np.testing.assert_array_equal(got.argmax(1), ours.argmax(1))
    np.testing.assert_allclose(got, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())
    if quant:  # integer head in the file
        inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
        assert inits["head_w_q"].data_type == onnx.TensorProto.INT8
        assert inits["conv0_w_int8"].data_type == onnx.TensorProto.INT8


def test_onnx_same_pads():
    from lbcnn.deploy.onnx_lbcnn import same_pads

    assert same_pads(28) == (1, 1) and same_pads(7) == (1, 2) and same_pads(4) == (1, 1)


# -- Keras 3 export -------------------------------------------------------------
@pytest.mark.parametrize("which", ["small", "deep"])
def test_keras_h5_export_loads_in_keras3(which, request, mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    import h5py

    from lbcnn.deploy.keras_export import export_h5

    m = request.getfixturevalue(which)
    path = export_h5(m, tmp_path / "m.h5")
    km = keras.models.load_model(path, compile=False)
    kinds = [type(layer).__name__ for layer in km.layers]
    assert kinds[1] == "DepthwiseConv2D" and kinds[-2:] == ["Flatten", "Dense"]
    assert kinds.count("MaxPooling2D") == len(m.body_.filters)
    assert kinds.count("Activation") == len(m.body_.filters) * (m.body_.nl - 1)
    for layer in km.layers:
        if type(layer).__name__ == "DepthwiseConv2D":
            k = layer.get_weights()[0]
            assert set(np.unique(k)) == {-1.0, 1.0} and not layer.use_bias
    x = mnist.x_test[:1000]
    prob = km.predict(x.astype(np.float32) * m.body_.input_scale, verbose=0)
    assert np.mean(prob.argmax(1) == m.predict(x)) == 1.0
    with h5py.File(path) as f:
        assert f.attrs["lbcnn_input_scale"] == pytest.approx(1 / 255)


# -- Keras 2 import ------------------------------------------------------------
def _keras2_layer(cls, name, functional_prev=None, **cfg):
    base = {"name": name, "trainable": True, "dtype": "float32"}
    if cls == "DepthwiseConv2D":
        base.update({"kernel_size": [3, 3], "strides": [1, 1], "padding": "same",
                     "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1,
                     "activation": "linear", "use_bias": False,
                     "bias_initializer": {"class_name": "Zeros", "config": {}},
                     "bias_regularizer": None, "activity_regularizer": None,
                     "bias_constraint": None,
                     "depthwise_initializer": {"class_name": "GlorotUniform",
                                               "config": {"seed": None}},
                     "depthwise_regularizer": None, "depthwise_constraint": None})
    elif cls == "MaxPooling2D":
        base.update({"pool_size": [4, 4], "padding": "same", "strides": [2, 2],
                     "data_format": "channels_last"})
    elif cls == "Flatten":
        base.update({"data_format": "channels_last"})
    elif cls == "Dense":
        base.update({"activation": "softmax", "use_bias": True})
    base.update(cfg)
    layer = {"class_name": cls, "config": base}
    if functional_prev is not None:
        layer["name"] = name
        layer["inbound_nodes"] = [] if functional_prev == "" else [[[functional_prev, 0, 0, {}]]]
    return layer


def write_keras2_h5(path, model, functional=False, extra_layer=None):
    """An .h5 laid out the way Keras 2.x (tf.keras 2.4) saved LB-CNN models."""
    import h5py

    body = model.body_
    fn = functional
    layers, weights = [], {}
    prev = "input_1"
    layers.append({"class_name": "InputLayer",
                   "config": {"batch_input_shape": [None, *body.input_shape], "dtype": "float32",
                              "sparse": False, "ragged": False, "name": "input_1"},
                   **({"name": "input_1", "inbound_nodes": []} if fn else {})})
    n = 0

    def add(cls, w=None, **cfg):
        nonlocal prev, n
        name = f"{cls.lower()}_{n}"
        n += 1
        layers.append(_keras2_layer(cls, name, prev if fn else None, **cfg))
        if w:
            weights[name] = w
        prev = name

    for k in model.body_.kernels:
        add("DepthwiseConv2D", {"depthwise_kernel:0": k["conv"].astype(np.float32)},
            depth_multiplier=int(k["conv"].shape[3]))
        for e in k["extras"]:
            add("Activation", activation="relu")
            add("DepthwiseConv2D", {"depthwise_kernel:0": e.astype(np.float32)}, depth_multiplier=1)
        add("MaxPooling2D")
    if extra_layer:
        add(extra_layer)
    add("Flatten")
    add("Dense", {"kernel:0": model.coef_, "bias:0": model.intercept_},
        units=int(model.coef_.shape[1]))
    cfg = {"class_name": "Functional" if fn else "Sequential",
           "config": {"name": "model" if fn else "sequential", "layers": layers}}
    if fn:
        cfg["config"]["input_layers"] = [["input_1", 0, 0]]
        cfg["config"]["output_layers"] = [[prev, 0, 0]]
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.4.0"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(cfg).encode()
        mw = f.create_group("model_weights")
        names = [(lay.get("name") or lay["config"]["name"]) for lay in layers]
        mw.attrs["layer_names"] = np.array([s.encode() for s in names])
        for name in names:
            g = mw.create_group(name)
            ws = weights.get(name, {})
            g.attrs["weight_names"] = np.array([f"{name}/{w}".encode() for w in ws])
            for w, arr in ws.items():
                g.create_dataset(f"{name}/{w}", data=np.asarray(arr, dtype=np.float32))
    return path


@pytest.mark.parametrize("which,functional", [("small", False), ("deep", True)])
def test_keras2_h5_import_same_predictions(which, functional, request, mnist, tmp_path):
    pytest.importorskip("h5py")
    from lbcnn.deploy.keras_import import import_keras_h5
    from lbcnn.io.artefacts import load_any

    m = request.getfixturevalue(which)
    path = write_keras2_h5(tmp_path / "paper.h5", m, functional=functional)
    imp = import_keras_h5(path)
    assert imp.body_.filters == m.body_.filters and imp.body_.nl == m.body_.nl
    assert imp.body_.input_scale == pytest.approx(1 / 255)
    x = mnist.x_test[:2000]
    np.testing.assert_array_equal(imp.predict(x), m.predict(x))
    assert type(load_any(path)).__name__ == "LBCNN"


def test_keras2_h5_evaluate_cli(small, mnist, tmp_path, capsys):
    pytest.importorskip("h5py")
    from lbcnn.cli import main

    path = write_keras2_h5(tmp_path / "paper.h5", small)
    assert main(["evaluate", str(path), "--dataset", "mnist", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "mnist" and out["n"] == 10000
    assert out["accuracy"] == pytest.approx(small.score(mnist.x_test, mnist.y_test))


def test_keras2_h5_import_three_channels(tmp_path):
    pytest.importorskip("h5py")
    from lbcnn.deploy.keras_import import import_keras_h5

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    m = LBCNN(filters=(3, 2)).fit(x, rng.integers(0, 4, size=64))
    imp = import_keras_h5(write_keras2_h5(tmp_path / "rgb.h5", m))
    assert imp.body_.input_shape == (32, 32, 3)
    np.testing.assert_allclose(imp.decision_function(x), m.decision_function(x), rtol=1e-5,
                               atol=1e-5)


def test_keras2_h5_import_names_unsupported_layer(small, tmp_path):
    pytest.importorskip("h5py")
    import h5py

    from lbcnn.deploy.keras_import import import_keras_h5

    path = write_keras2_h5(tmp_path / "bn.h5", small, extra_layer="BatchNormalization")
    with pytest.raises(DataError, match=r"batchnormalization_\d+.*BatchNormalization"):
        import_keras_h5(path)
    # drifted (non +-1) kernels, as the paper's "frozen" layers could have
    path = write_keras2_h5(tmp_path / "drift.h5", small)
    with h5py.File(path, "a") as f:
        d = f["model_weights/depthwiseconv2d_0/depthwiseconv2d_0/depthwise_kernel:0"]
        d[0, 0, 0, 0] = 0.97
    with pytest.raises(DataError, match="depthwiseconv2d_0.*not exactly"):
        import_keras_h5(path)


# -- bit accounting --------------------------------------------------------------
def test_accounting_mnist_40_4_quantized_is_about_80kb():
    from lbcnn.deploy.accounting import account
    from lbcnn.heads.quantize import apply_quantization

    m = LBCNN(filters=(40, 4))
    m.body_ = LBCNNBody.random((28, 28, 1), (40, 4), seed=0)
    m.reset_classifier(10)
    m.coef_ = np.random.default_rng(0).normal(size=m.coef_.shape).astype(np.float32)
    f32 = account(m, sizes=False)
    assert f32["conv_bits"] == 9 * 40 + 9 * 160
    assert f32["paper_params_kbits_conv_elm"] == pytest.approx(1.8 + 627.2)
    assert 300_000 < f32["params_bytes"] < 330_000
    apply_quantization(m, 8)
    q = account(m, sizes=True)
    head = [r for r in q["layers"] if r["layer"] == "head"][0]
    assert head["bits_per_weight"] == 8 and head["bits"] == 627_200
    assert 75_000 < q["params_bytes"] < 85_000
    assert q["float32_head_params_bytes"] == pytest.approx(f32["params_bytes"])
    assert all(r["mac_kind"] == "add/sub only" for r in q["layers"] if r["layer"].startswith("conv"))
    assert q["file_bytes"]["native"] < 100_000
    if q["file_bytes"].get("onnx") is not None:
        assert q["file_bytes"]["onnx"] < 100_000


# -- CLI ------------------------------------------------------------------------
def test_cli_quantize_export_info(small, tmp_path, capsys):
    pytest.importorskip("onnx")
    from lbcnn.cli import main

    save_lbcnn(small, tmp_path / "m.npz", dataset="mnist")
    assert main(["quantize", str(tmp_path / "m.npz"), "--dataset", "mnist", "--bits", "8",
                 "--per-class", "--out", str(tmp_path / "q.npz"), "--json"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["head"]["scale"] == "per_class"
    assert q["head"]["bias_corrected"] is True  # on by default, from training images
    assert _load(tmp_path / "q.npz").meta_["quantize"]["bias_correction_images"] == 54000
    assert main(["quantize", str(tmp_path / "m.npz"), "--dataset", "mnist", "--bits", "8",
                 "--no-bias-correction", "--out", str(tmp_path / "q0.npz"), "--json"]) == 0
    assert "bias_corrected" not in json.loads(capsys.readouterr().out)["head"]
    assert abs(q["after"]["test_accuracy"] - q["before"]["test_accuracy"]) < 0.01
    assert main(["export", str(tmp_path / "q.npz"), "--format", "onnx",
                 "--out", str(tmp_path / "q.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == (tmp_path / "q.onnx").stat().st_size
    assert main(["info", str(tmp_path / "q.npz"), "--json", "--no-sizes"]) == 0
    info = json.loads(capsys.readouterr().out)
    # as flashed: 8-bit weights, int32 biases at the accumulator scale, int32 per-class
    # rescale multipliers
    assert info["head_bits"] == 784 * 10 * 8 + 10 * 32 + 10 * 32
    assert info["flash_weight_bits"] == pytest.approx(info["total_kbits"] * 1000)
    assert main(["info", str(tmp_path / "missing.npz")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_quantize_gptq_rounding_beats_nearest_on_training_logits(small, mnist, tmp_path,
                                                                     capsys):
    from lbcnn.cli import main

    save_lbcnn(small, tmp_path / "m.npz", dataset="mnist")
    for rounding in ("gptq", "nearest"):
        assert main(["quantize", str(tmp_path / "m.npz"), "--dataset", "mnist", "--bits", "3",
                     "--per-class", "--rounding", rounding,
                     "--out", str(tmp_path / f"{rounding}.npz"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["head"]["rounding"] == rounding
    gptq, near = _load(tmp_path / "gptq.npz"), _load(tmp_path / "nearest.npz")
    assert gptq.meta_["quantize"]["rounding"] == "gptq"
    h = small.body_.transform(mnist.x_train[:2000]).astype(np.float64)

    def logit_err(m):
        return float(((h @ (m.coef_ - small.coef_) + m.intercept_ - small.intercept_) ** 2).sum())
    assert logit_err(gptq) < 0.8 * logit_err(near)


def test_cli_finetune_run_folder(small, tmp_path, capsys):
    from lbcnn.cli import main

    run = tmp_path / "run"
    save_lbcnn(small, run / "model.npz", dataset="mnist", test_accuracy=0.5)
    assert main(["finetune", str(run), "--dataset", "mnist", "--epochs", "1", "--batch-size",
                 "256", "--out", str(tmp_path / "ft.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train_size"] == 54000 and out["val_size"] == 6000
    assert out["test_accuracy_in_source_file"] == 0.5
    back = _load(tmp_path / "ft.npz")
    assert back.meta_["finetune"]["best_epoch"] in (0, 1)
    assert back.meta_["test_accuracy"] == pytest.approx(out["test_accuracy"])
    for k, k0 in zip(back.body_.kernels, small.body_.kernels):
        np.testing.assert_array_equal(k["conv"], k0["conv"])


def test_finetune_validation_avoids_search_images(small, mnist):
    from lbcnn.data.splits import finetune_split

    m = copy.deepcopy(small)
    m.meta_ = {"dataset": "mnist", "train_size": 3000, "seed": 0}
    tr, va, how = finetune_split(mnist, m, 0.1, 0)
    used = np.union1d(*mnist.split(3000, 0.1, 0))
    assert how == "images" and len(va) == 6000 and len(tr) == 54000
    assert len(np.intersect1d(va, used)) == 0 and len(np.intersect1d(tr, va)) == 0
    m.meta_ = {}
    assert finetune_split(mnist, m, 0.1, 0)[2].startswith("yes")
