"""Vectorized NumPy execution of an :class:`IntegerPlan`: integers only.

The reference that generated C is checked against. Conv maps are int32 (or
int64 when the plan's bounds need it); the head sums int8 x integer products
into exact int64 accumulators. The binary (XNOR) path uses
``np.bitwise_count`` on packed uint64 words.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError
from .bits import unpack_neg_bits
from .plan import IntegerPlan
from .registry import register_runner, runner_for


# -- XNOR-popcount ops (for binary-activation layers) -----------------------
def xnor_popcount_dense(a_packed: np.ndarray, w_packed: np.ndarray, n_bits: int) -> np.ndarray:
    """``out[i, j] = sum_b a[i,b] * w[j,b]`` for +-1 vectors packed by ``pack_signs_u64``.

    ``out = 2 * popcount(xnor(a, w)) - N``; both operands pad with 0 bits,
    whose xnor is 1, so the pad count is subtracted.
    """
    a = np.asarray(a_packed, dtype=np.uint64)
    w = np.asarray(w_packed, dtype=np.uint64)
    if a.shape[-1] != w.shape[-1] or a.shape[-1] * 64 < n_bits:
        raise ConfigError(f"packed widths disagree: {a.shape[-1]} and {w.shape[-1]} words "
                          f"for {n_bits} bits")
    pad = a.shape[-1] * 64 - n_bits
    out = np.empty((a.shape[0], w.shape[0]), dtype=np.int32)
    step = max(1, (1 << 22) // max(1, w.size))
    for s in range(0, a.shape[0], step):
        x = ~(a[s:s + step, None, :] ^ w[None, :, :])
        pc = np.bitwise_count(x).sum(-1, dtype=np.int32) - pad
        out[s:s + step] = 2 * pc - n_bits
    return out


def xnor_popcount_conv2d(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """'valid' 3x3 (or kxk) conv of +-1 maps ``a`` (n, H, W, C) with +-1 filters
    ``w`` (k, kh, kw, C) by im2col + :func:`xnor_popcount_dense`."""
    from .plan import pack_signs_u64

    n, hh, ww, c = a.shape
    k, kh, kw, c2 = w.shape
    if c != c2:
        raise ConfigError(f"conv channels disagree: {c} vs {c2}")
    ho, wo = hh - kh + 1, ww - kw + 1
    cols = np.stack([a[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], 3)
    cols = cols.reshape(n * ho * wo, kh * kw * c)
    out = xnor_popcount_dense(pack_signs_u64(cols), pack_signs_u64(w.reshape(k, -1)),
                              kh * kw * c)
    return out.reshape(n, ho, wo, k)


# -- plan ops ---------------------------------------------------------------------
def sign_dwconv3(x: np.ndarray, op: dict, dtype) -> np.ndarray:
    """(n, H, W, C) integers -> (n, H, W, C*m): sums and differences of nine taps."""
    h, w, c = op["in_shape"]
    m = op["multiplier"]
    co = c * m
    neg = unpack_neg_bits(op["neg_bits"], 9, co)
    if op["relu_in"]:
        x = np.maximum(x, 0)
    if m > 1:
        x = np.repeat(x, m, axis=3)
    xp = np.zeros((x.shape[0], h + 2, w + 2, co), dtype=dtype)
    xp[:, 1:-1, 1:-1] = x
    out = np.zeros((x.shape[0], h, w, co), dtype=dtype)
    for t in range(9):
        dy, dx = divmod(t, 3)
        win = xp[:, dy:dy + h, dx:dx + w]
        pos, ng = ~neg[t], neg[t]
        # add where the tap is +1, subtract where it is -1
        out[..., pos] += win[..., pos]
        out[..., ng] -= win[..., ng]
    return out


def maxpool4s2(x: np.ndarray, op: dict) -> np.ndarray:
    """4x4 / 2 'same' max pool: window j covers [2j-1, 2j+2], clipped."""
    n, h, w, c = x.shape
    ho, wo = op["out_shape"][:2]
    low = np.iinfo(x.dtype).min
    xp = np.full((n, 2 * ho + 2, 2 * wo + 2, c), low, dtype=x.dtype)
    xp[:, 1:h + 1, 1:w + 1] = x
    r = xp[:, 0:2 * ho:2]
    for dy in range(1, 4):
        r = np.maximum(r, xp[:, dy:dy + 2 * ho:2])
    out = r[:, :, 0:2 * wo:2]
    for dx in range(1, 4):
        out = np.maximum(out, r[:, :, dx:dx + 2 * wo:2])
    return out


def run_ops(plan: IntegerPlan, x: np.ndarray) -> np.ndarray:
    """uint8 images -> (n, d) integer features (the head's input); for a CBCNN
    or hybrid plan, (n, words) packed +-1 features."""
    return runner_for(plan).run_ops(plan, x)


def head_scores(plan: IntegerPlan, feats: np.ndarray) -> np.ndarray:
    """Exact integer class scores (int64); argmax is the prediction."""
    return runner_for(plan).scores(plan, feats)


def _run_lbcnn_ops(plan: IntegerPlan, x: np.ndarray) -> np.ndarray:
    dtype = np.int64 if plan.act_dtype == "int64" else np.int32
    h = x.astype(dtype)
    for op in plan.ops:
        kind = op["type"]
        if kind == "sign_dwconv3":
            h = sign_dwconv3(h, op, dtype)
        elif kind == "maxpool4s2":
            h = maxpool4s2(h, op)
        else:
            raise ConfigError(f"the NumPy engine has no kernel for op {kind!r}")
    return h.reshape(len(h), -1)


def _lbcnn_scores(plan: IntegerPlan, feats: np.ndarray) -> np.ndarray:
    hd = plan.head
    f = feats.astype(np.int64)
    q = hd["weight_q"].astype(np.int64)
    acc = f @ q + hd["bias_q"][None, :]
    if "requant" in hd:  # TFLite's int16 logits (engine.requant.with_tflite_rounding)
        from .requant import apply_head_requant
        return apply_head_requant(acc, hd["requant"])
    if hd["rescale"] == "fixed-point":
        acc = acc * hd["mult"][None, :]
    return acc


class NumpyEngine:
    """``NumpyEngine(plan).predict(images)`` -- integer-only inference."""

    def __init__(self, plan: IntegerPlan, batch_size: int = 256):
        self.plan = plan
        self.batch_size = batch_size

    def _check(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if x.dtype != np.uint8:
            raise DataError(f"the integer engine takes uint8 pixels, got {x.dtype}")
        if tuple(x.shape[1:]) != tuple(self.plan.input_shape):
            raise DataError(f"images have shape {tuple(x.shape[1:])} but the plan expects "
                            f"{tuple(self.plan.input_shape)}")
        return x

    def features_packed(self, x) -> np.ndarray:
        """CBCNN and Hybrid plans: the head's input as packed uint64 words (n, words)."""
        x = self._check(x)
        parts = [run_ops(self.plan, x[s:s + self.batch_size])
                 for s in range(0, len(x), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 1), np.uint64)

    def features(self, x) -> np.ndarray:
        unpack = runner_for(self.plan).features
        if unpack is not None:
            return unpack(self.plan, self.features_packed(x))
        x = self._check(x)
        out = np.empty((len(x), self.plan.n_features), dtype=np.int32
                       if self.plan.act_dtype != "int64" else np.int64)
        for s in range(0, len(x), self.batch_size):
            out[s:s + self.batch_size] = run_ops(self.plan, x[s:s + self.batch_size])
        return out

    def scores(self, x) -> np.ndarray:
        x = self._check(x)
        out = np.empty((len(x), self.plan.n_classes), dtype=np.int64)
        for s in range(0, len(x), self.batch_size):
            out[s:s + self.batch_size] = head_scores(
                self.plan, run_ops(self.plan, x[s:s + self.batch_size]))
        return out

    def predict_index(self, x) -> np.ndarray:
        return self.scores(x).argmax(1)

    def predict(self, x) -> np.ndarray:
        return self.plan.classes[self.predict_index(x)]


def agreement(model, plan: IntegerPlan, x, batch_size: int = 1000) -> dict:
    """Compare the integer engine with the float model carrying the plan's
    dequantized head, and bound the possible disagreements.

    The integer scores are exact. The float model rounds ``f * s_in`` and
    sums ``d`` float32 products, so its score for class c is off by at most
    ``gamma_c = (d + 2) u sum_i |f_i s_in w_ic| + u |b_c|`` (u = 2^-24, the
    standard dot-product error bound). Predictions can differ only on images
    whose two best exact scores are closer than ``gamma_1 + gamma_2``; those
    are counted as ``at_risk``. Exact ties are resolved to the lowest class
    index by both engines.
    """
    from .plan import dequantized_model

    ref = dequantized_model(model, plan)
    eng = NumpyEngine(plan)
    hd = plan.head
    u = 2.0 ** -24
    d = plan.n_features
    s = hd["scale"].reshape(-1) if hd["scale"].size > 1 else float(hd["scale"])
    w_abs = np.abs(ref.coef_.astype(np.float64))
    n_same = n_risk = n_diff_risk = 0
    x = np.asarray(x)
    for a in range(0, len(x), batch_size):
        xb = x[a:a + batch_size]
        feats = eng.features(xb)
        acc = head_scores(plan, feats)
        p_int = acc.argmax(1)
        p_flt = ref.decision_function(xb).argmax(1)
        exact = (feats.astype(np.int64) @ hd["weight_q"].astype(np.int64)
                 + hd["bias_q"]).astype(np.float64) * hd["input_scale"] * s
        fs = np.abs(feats.astype(np.float64)) * hd["input_scale"]
        gamma = (d + 2) * u * (fs @ w_abs) + u * np.abs(ref.intercept_.astype(np.float64))
        top2 = np.argsort(-exact, axis=1, kind="stable")[:, :2]
        rows = np.arange(len(xb))
        gap = exact[rows, top2[:, 0]] - exact[rows, top2[:, 1]]
        risk = gap <= gamma[rows, top2[:, 0]] + gamma[rows, top2[:, 1]]
        same = p_int == p_flt
        n_same += int(same.sum())
        n_risk += int(risk.sum())
        n_diff_risk += int((~same & risk).sum())
    n = len(x)
    return {"n": n, "agree": n_same, "disagree": n - n_same, "at_risk": n_risk,
            "disagreements_explained_by_bound": n_diff_risk,
            "agreement": n_same / max(n, 1)}


register_runner("lbcnn", _run_lbcnn_ops, _lbcnn_scores)
