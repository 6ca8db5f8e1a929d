"""Compile a trained CBCNN (binary weights and activations) into an integer plan.

Ops (channel-innermost (H, W, C) maps; +-1 activations packed one bit per
channel, ``pack_signs_u64`` order, ``ceil(C/64)`` uint64 words per pixel):

* ``sign_conv3`` -- the first conv. Its input is the uint8 pixel ``p``; the
  float model sees ``p * input_scale``, so with +-1 weights its pre-activation
  is ``input_scale * S``, ``S = sum(+-p)`` an exact integer (zero padding 1).
* ``xnor_conv3`` -- a later conv on +-1 inputs. The float model pads with
  zeros, so only the valid taps count:
  ``S = 2 * popcount(xnor(a, w) restricted to valid taps) - N_valid`` with
  ``N_valid = C * (valid taps at that position)`` (fewer at the borders).
* ``xnor_dense`` -- hidden dense layers: ``S = 2*popcount(xnor(a, w)) - N``.

Each conv is followed by a 2x2 max pool on the integers (the model's block is
conv -> max-pool -> BN -> sign; pooling before the threshold is exact, and for
the first conv it commutes with the positive ``input_scale``), then BN + sign
as an integer threshold per channel: ``bit = flip ? S <= t : S >= t``
(``fold_bn_sign``; gamma < 0 flips, gamma == 0 is a constant, stored as a
threshold just outside the reachable range). The first conv's thresholds are
folded from a BN with statistics divided by ``input_scale`` (so it applies to
``S`` directly).

The head is the last binary dense then the final BN, ``logit_c = a_c * s_c + b_c``
with ``a_c`` the integer XNOR sum. It is evaluated in fixed point:
``score_c = a_c * round(s_c 2^k) + round(b_c 2^k)`` in int64, so
``|score_c / 2^k - logit_c| <= (|a_c| + 1) / 2^(k+1)``. ``argmax(score)`` can
differ from the float model's argmax only on images whose two best logits are
closer than that plus the float32 rounding of the model
(:func:`cbcnn_agreement` counts those), and on exact ties broken differently.

The first layer is the only place where the float model rounds (``p *
input_scale`` and the float32 sum of 9C terms): a bit can differ only when the
real threshold ``t / input_scale`` lies within ``first_layer_error_bound`` of
an integer; ``describe()`` reports the smallest such distance over channels
(``first_layer_margin``), so a margin larger than the bound proves the first
layer exact for every image.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .bits import dtype_for as _dtype_for, pack_signs_u64
from .registry import register_compiler, register_runner

U32 = 2.0 ** -24  # float32 unit roundoff


# -- compile --------------------------------------------------------------------
def _check_supported(model) -> None:
    net = model.net
    pre = model.preprocess
    if net.scale:
        raise ConfigError("the integer engine cannot compile a CBCNN with scale=True binary "
                          "layers: the per-channel float scale H has no integer form "
                          "(train with scale=False)")
    if pre.standardize:
        raise ConfigError("the integer engine cannot compile a CBCNN with 'standardize' "
                          "preprocessing: per-image (x - mean) / std is not an integer op "
                          "(train without standardize)")
    if pre.equalize:
        raise ConfigError("the integer engine cannot compile a CBCNN with 'equalize' "
                          "preprocessing: per-image histogram equalization (float rint of a "
                          "CDF ratio) is not compiled (train without equalize)")
    if not (np.isfinite(pre.input_scale) and pre.input_scale > 0):
        raise ConfigError(f"input_scale must be finite and positive, got {pre.input_scale}")
    if pre.y_channel and net.input_shape[2] != 1:
        raise ConfigError("y_channel preprocessing with a multi-channel network input "
                          "is not supported")
    for m in net.binary_layers():
        if m.bias is not None:
            raise ConfigError("binary layers with a bias are not supported by the integer engine")
        if m.kernel_quantizer_name != "ste_sign":
            raise ConfigError(f"kernel quantizer {m.kernel_quantizer_name!r} is not supported "
                              "(the integer engine needs sign weights)")


def _sign_np(t) -> np.ndarray:
    """+-1 int8 from a torch weight, sign(0) = +1 (``sign_pm1``)."""
    w = t.detach().cpu().numpy()
    return np.where(w >= 0, 1, -1).astype(np.int8)


def _thresholds(bn, bound: int, input_scale: float | None = None):
    """Integer thresholds (int64) and flips for ``BN + sign`` on integers in
    [-bound, bound]; with ``input_scale`` the BN is folded for ``S * input_scale``."""
    from ..models.cbcnn import fold_bn_sign

    if input_scale is not None:
        bn = copy.deepcopy(bn).cpu().double()
        bn.running_mean /= input_scale
        bn.running_var /= input_scale ** 2
        bn.eps = bn.eps / input_scale ** 2
        bn = bn.float()
    t, flip = fold_bn_sign(bn, integer=True)
    t = np.clip(t.double().cpu().numpy(), -(bound + 1), bound + 1).astype(np.int64)
    return t, flip.cpu().numpy().astype(bool)


def _bn_params(bn):
    """Running mean, running var, gamma, beta of a BN as float64 numpy."""
    mu = bn.running_mean.double().cpu().numpy()
    var = bn.running_var.double().cpu().numpy()
    gamma = bn.weight.double().detach().cpu().numpy() if bn.weight is not None else np.ones_like(mu)
    beta = bn.bias.double().detach().cpu().numpy() if bn.bias is not None else np.zeros_like(mu)
    return mu, var, gamma, beta


def _first_layer_margin(bn, input_scale: float, c_in: int) -> dict:
    """Distance of each real first-layer threshold (in S units) to the nearest
    integer, against a bound on the float model's rounding in S units."""
    mu, var, gamma, beta = _bn_params(bn)
    s = np.sqrt(var + bn.eps)
    live = gamma != 0
    t = (mu - beta * s / np.where(live, gamma, 1.0)) / input_scale
    taps = 9 * c_in
    smax = taps * 255
    # p*scale rounded, float32 sum of `taps` terms, float32 BN (a few ops on values up to
    # max(|v|, |mu|, |t|)), all in S units
    err = U32 * ((taps + 2) * smax + 8 * (smax + np.abs(mu) / input_scale + np.abs(t)))
    dist = np.abs(t - np.rint(t))
    reachable = live & (np.abs(t) <= smax + 1)
    margin = float(dist[reachable].min()) if reachable.any() else float("inf")
    bound = float(err[reachable].max()) if reachable.any() else 0.0
    risky = reachable & (dist <= err)
    return {"first_layer_margin": margin, "first_layer_error_bound": bound,
            "first_layer_exact": bool(margin > bound),
            "first_layer_risky_channels": int(risky.sum())}, \
        {"risk_channels": np.flatnonzero(risky), "risk_values": np.rint(t[risky]).astype(np.int64)}


def _fixed_point_head(a_bound: int, s: np.ndarray, b: np.ndarray) -> tuple:
    mag = a_bound * float(np.abs(s).max()) + float(np.abs(b).max()) + 1.0
    k = min(40, 62 - int(np.ceil(np.log2(mag))) - 1)
    if k < 16:
        raise ConfigError(f"the final BN's scales reach {mag:.3e}; a fixed-point head with "
                          f"at least 16 fraction bits would overflow int64")
    s_q = np.rint(s * 2.0 ** k).astype(np.int64)
    b_q = np.rint(b * 2.0 ** k).astype(np.int64)
    acc_bound = int(a_bound) * int(np.abs(s_q).max()) + int(np.abs(b_q).max())
    return k, s_q, b_q, acc_bound


def compile_cbcnn(model) -> "CBCNNPlan":
    """A fitted :class:`~lbcnn.models.cbcnn.CBCNN` -> :class:`CBCNNPlan`."""
    _check_supported(model)
    net = model.net
    net.eval()
    h, w, c = net.input_shape
    mods = list(net.features)
    ops: list[dict] = []
    bounds: dict = {"input": 255}
    first_info = {}
    for i in range(0, len(mods), 4):
        conv, pool, bn = mods[i], mods[i + 1], mods[i + 2]
        if getattr(pool, "kernel_size", 2) not in (2, (2, 2)):
            raise ConfigError("the integer engine supports 2x2 max pools only")
        wt = _sign_np(conv.weight)                      # (Co, C, 3, 3)
        co = wt.shape[0]
        w_hwc = np.ascontiguousarray(wt.transpose(0, 2, 3, 1))  # (Co, 3, 3, C)
        first = i == 0
        bound = 9 * c * (255 if first else 1)
        ho, wo = h // 2, w // 2
        if first:
            t, flip = _thresholds(bn, bound, model.preprocess.input_scale)
            first_info, risk = _first_layer_margin(bn, model.preprocess.input_scale, c)
            op = {"type": "sign_conv3", "weight": w_hwc,
                  "w_packed": pack_signs_u64(w_hwc.reshape(co, 9 * c)), **risk}
        else:
            t, flip = _thresholds(bn, bound)
            op = {"type": "xnor_conv3", "w_packed": pack_signs_u64(w_hwc).reshape(co, -1)}
        op.update({"layer": i // 4, "in_shape": (h, w, c), "out_shape": (ho, wo, co),
                   "pool": 2, "bound": bound, "threshold": t, "flip": flip,
                   "in_words": -(-c // 64), "out_words": -(-co // 64)})
        ops.append(op)
        h, w, c = ho, wo, co
    # dense layers take the packed (H, W, words) map: weights reordered from the
    # model's (C, H, W) flatten to that layout, pad bits zero on both sides
    mods = list(net.head_hidden)
    dense = [(mods[j], mods[j + 1]) for j in range(0, len(mods), 3)] + [(net.classifier, None)]
    shape = (h, w, c)
    for j, (lin, bn) in enumerate(dense):
        wt = _sign_np(lin.weight)                       # (out, in)
        out_f = wt.shape[0]
        if shape is not None:
            hh, ww, cc = shape
            w_map = wt.reshape(out_f, cc, hh, ww).transpose(0, 2, 3, 1)
            w_packed = pack_signs_u64(w_map).reshape(out_f, -1)
            n_bits = hh * ww * cc
        else:
            w_packed, n_bits = pack_signs_u64(wt), wt.shape[1]
        if bn is None:
            break
        t, flip = _thresholds(bn, n_bits)
        ops.append({"type": "xnor_dense", "layer": len(ops), "w_packed": w_packed,
                    "n_bits": n_bits, "in_words": int(w_packed.shape[1]), "out_features": out_f,
                    "out_words": -(-out_f // 64), "bound": n_bits,
                    "threshold": t, "flip": flip})
        shape = None
    bn = net.out_bn
    mu, var, gamma, beta = _bn_params(bn)
    s = gamma / np.sqrt(var + bn.eps)
    b = beta - mu * s
    k, s_q, b_q, acc_bound = _fixed_point_head(n_bits, s, b)
    head = {"type": "xnor_affine", "w_packed": w_packed, "n_bits": n_bits,
            "in_words": int(w_packed.shape[1]), "scale": s, "bias": b, "shift": k,
            "scale_q": s_q, "bias_q": b_q, "acc_bound": acc_bound,
            "feature_bound": 1, "acc_dtype": "int64"}
    act_dtype = _dtype_for(max(op["bound"] for op in ops))
    bounds.update({"stages": [op["bound"] for op in ops], "head_sum": n_bits,
                   "head_accumulator": acc_bound, **first_info})
    classes = np.arange(net.n_classes)
    return CBCNNPlan(tuple(int(v) for v in net.input_shape), ops, head, classes, act_dtype,
                     bounds, float(model.preprocess.input_scale))


# -- the plan -------------------------------------------------------------------
@dataclass
class CBCNNPlan:
    input_shape: tuple[int, int, int]
    ops: list[dict]
    head: dict
    classes: np.ndarray
    act_dtype: str
    bounds: dict = field(default_factory=dict)
    input_scale: float = 1.0 / 255.0
    family = "cbcnn"

    @property
    def n_features(self) -> int:
        return int(self.head["n_bits"])

    @property
    def n_classes(self) -> int:
        return int(self.head["w_packed"].shape[0])

    def weight_bytes(self) -> dict:
        """Bytes of the C constants: packed weight words, int32 thresholds + 1-byte flips,
        int64 head scale and bias."""
        packed = sum(int(op["w_packed"].nbytes) for op in self.ops) + int(self.head["w_packed"].nbytes)
        thr = sum(5 * len(op["threshold"]) for op in self.ops)
        head = 16 * self.n_classes
        return {"packed_weights": packed, "thresholds": thr, "head_affine": head,
                "total": packed + thr + head}

    def describe(self) -> dict:
        ops = []
        for op in self.ops:
            d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in op.items()
                 if not isinstance(v, np.ndarray)}
            ops.append(d)
        h = self.head
        return {"family": "cbcnn", "input": {"shape": list(self.input_shape), "dtype": "uint8",
                                             "bound": 255, "input_scale": self.input_scale},
                "activation_dtype": self.act_dtype, "ops": ops,
                "head": {"type": h["type"], "features": self.n_features, "classes": self.n_classes,
                         "fixed_point_shift": h["shift"], "accumulator_dtype": "int64",
                         "accumulator_bound": h["acc_bound"],
                         "approximation": "score_c = a_c*round(s_c*2^k) + round(b_c*2^k); "
                                          "|score_c/2^k - logit_c| <= (|a_c|+1)/2^(k+1)"},
                "bounds": self.bounds, "weight_bytes": self.weight_bytes()}


# -- NumPy execution ------------------------------------------------------------
def _threshold(s: np.ndarray, op: dict) -> np.ndarray:
    return np.where(op["flip"], s <= op["threshold"], s >= op["threshold"])


def _maxpool2(s: np.ndarray) -> np.ndarray:
    n, h, w, c = s.shape
    s = s[:, :h // 2 * 2, :w // 2 * 2]
    return np.maximum(np.maximum(s[:, 0::2, 0::2], s[:, 0::2, 1::2]),
                      np.maximum(s[:, 1::2, 0::2], s[:, 1::2, 1::2]))


def _tap_regions(h: int, w: int):
    """(tap, out rows, out cols, in rows, in cols) for a 3x3 'same' conv, valid taps only."""
    for t in range(9):
        dy, dx = t // 3 - 1, t % 3 - 1
        ys, xs = slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx))
        yi, xi = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
        yield t, ys, xs, yi, xi


def sign_conv3(x: np.ndarray, op: dict, dtype) -> np.ndarray:
    """(n, H, W, C) integers -> (n, H, W, Co): exact sums of +-pixels, zero padding
    (one broadcast multiply-add by a +-1 row per tap and input channel)."""
    n, h, w, c = x.shape
    wt = op["weight"].reshape(-1, 9, c).astype(dtype)   # (Co, 9, C)
    out = np.zeros((n, h, w, wt.shape[0]), dtype=dtype)
    x = x.astype(dtype)
    for t, ys, xs, yi, xi in _tap_regions(h, w):
        for ch in range(c):
            out[:, ys, xs] += x[:, yi, xi, ch:ch + 1] * wt[:, t, ch]
    return out


def xnor_conv3(a_packed: np.ndarray, op: dict) -> np.ndarray:
    """(n, H, W, words) packed +-1 -> (n, H, W, Co) int32 sums over the valid taps.

    ``2 * popcount(xnor) - N_valid`` with ``N_valid = C * taps``; computed as
    ``N_valid - 2 * popcount(a ^ w)`` (the mismatches; pad bits are 0 in both
    operands so they never mismatch)."""
    n, h, w, words = a_packed.shape
    c = op["in_shape"][2]
    co = op["w_packed"].shape[0]
    wp = op["w_packed"].reshape(co, 9, words)
    miss = np.zeros((n, h, w, co), dtype=np.int32)
    n_taps = np.zeros((h, w), dtype=np.int32)
    for t, ys, xs, yi, xi in _tap_regions(h, w):
        for k in range(words):
            miss[:, ys, xs] += np.bitwise_count(a_packed[:, yi, xi, k:k + 1] ^ wp[:, t, k])
        n_taps[ys, xs] += 1
    return (n_taps * c)[None, :, :, None] - 2 * miss


def run_cbcnn_ops(plan: CBCNNPlan, x: np.ndarray) -> np.ndarray:
    """uint8 images -> (n, words) packed +-1 features (the head's input)."""
    from .numpy_engine import xnor_popcount_dense

    dtype = {"int16": np.int16, "int32": np.int32}.get(plan.act_dtype, np.int64)
    h = x
    for op in plan.ops:
        kind = op["type"]
        if kind == "sign_conv3":
            h = pack_signs_u64(_threshold(_maxpool2(sign_conv3(h, op, dtype)), op))
        elif kind == "xnor_conv3":
            h = pack_signs_u64(_threshold(_maxpool2(xnor_conv3(h, op)), op))
        elif kind == "xnor_dense":
            s = xnor_popcount_dense(h.reshape(len(h), -1), op["w_packed"], op["n_bits"])
            h = pack_signs_u64(_threshold(s, op))
        else:
            raise ConfigError(f"the NumPy engine has no kernel for op {kind!r}")
    return h.reshape(len(h), -1)


def cbcnn_head_sums(plan: CBCNNPlan, packed: np.ndarray) -> np.ndarray:
    from .numpy_engine import xnor_popcount_dense

    hd = plan.head
    return xnor_popcount_dense(packed, hd["w_packed"], hd["n_bits"])


def cbcnn_scores(plan: CBCNNPlan, packed: np.ndarray) -> np.ndarray:
    """Fixed-point int64 scores ``a * scale_q + bias_q``; argmax is the prediction."""
    hd = plan.head
    a = cbcnn_head_sums(plan, packed).astype(np.int64)
    return a * hd["scale_q"][None, :] + hd["bias_q"][None, :]


def unpack_features(plan: CBCNNPlan, packed: np.ndarray) -> np.ndarray:
    """Packed head input -> (n, n_features) +-1 int32 in the packed (H, W, C) order."""
    bits = np.unpackbits(packed.view(np.uint8), axis=-1, bitorder="little").astype(np.int32)
    ops = plan.ops
    if ops[-1]["type"] == "xnor_dense":
        keep = bits[:, :plan.n_features]
    else:
        hh, ww, cc = ops[-1]["out_shape"]
        words = ops[-1]["out_words"]
        keep = bits.reshape(len(bits), hh, ww, words * 64)[..., :cc].reshape(len(bits), -1)
    return 2 * keep - 1


def first_layer_at_risk(plan: CBCNNPlan, x: np.ndarray) -> np.ndarray:
    """Per image: does a pooled first-layer sum hit the integer next to a threshold that
    lies within the float model's rounding bound (``risk_values``)? Only there can the
    float model's first-layer bit differ from the exact one."""
    op = plan.ops[0]
    ch = op.get("risk_channels", np.zeros(0, np.int64))
    if ch.size == 0:
        return np.zeros(len(x), dtype=bool)
    sub = {"weight": op["weight"][ch]}
    s = _maxpool2(sign_conv3(x, sub, np.int32))
    return np.any(s == op["risk_values"], axis=(1, 2, 3))


def cbcnn_agreement(model, plan: CBCNNPlan, x, batch_size: int = 500,
                    return_predictions: bool = False):
    """Integer engine vs the float model (``model.decision_function``) on images ``x``.

    ``at_risk``: images whose two best exact logits (float64 from the integer head
    sums) are closer than the fixed-point error plus a float32 bound on the model's
    final BN -- the only images where the argmaxes may differ once the hidden bits
    agree (first-layer bits are exact when ``bounds['first_layer_exact']``).
    ``first_layer_at_risk``: images where a first-layer bit may legitimately
    differ (:func:`first_layer_at_risk`); they count as at risk too.
    ``hidden_bits_differ`` counts images whose head sums differ from the model's
    (estimated from its logits).
    """
    from .numpy_engine import NumpyEngine

    eng = NumpyEngine(plan)
    hd = plan.head
    k = hd["shift"]
    s, b = hd["scale"], hd["bias"]
    n_same = n_risk = n_diff_risk = n_bits = n_first = 0
    preds = []
    x = np.asarray(x)
    for a0 in range(0, len(x), batch_size):
        xb = x[a0:a0 + batch_size]
        packed = eng.features_packed(xb)
        a = cbcnn_head_sums(plan, packed).astype(np.int64)
        score = a * hd["scale_q"] + hd["bias_q"]
        p_int = score.argmax(1)
        logits = model.decision_function(xb)
        p_flt = logits.argmax(1)
        exact = a * s + b
        err = (np.abs(a) + 1) * 2.0 ** -(k + 1) + 8 * U32 * (np.abs(a * s) + np.abs(b) + 1e-30)
        top2 = np.argsort(-exact, axis=1, kind="stable")[:, :2]
        rows = np.arange(len(xb))
        gap = exact[rows, top2[:, 0]] - exact[rows, top2[:, 1]]
        risk = gap <= err[rows, top2[:, 0]] + err[rows, top2[:, 1]]
        first = first_layer_at_risk(plan, xb if xb.ndim == 4 else xb[..., None])
        n_first += int(first.sum())
        risk = risk | first
        preds.append((p_int, p_flt))
        # the model's head sums from its logits: a = (logit - b) / s (where s != 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            a_flt = np.where(s != 0, np.rint((logits.astype(np.float64) - b) / s), a)
        n_bits += int(np.any(a_flt != a, axis=1).sum())
        same = p_int == p_flt
        n_same += int(same.sum())
        n_risk += int(risk.sum())
        n_diff_risk += int((~same & risk).sum())
    n = len(x)
    res = {"n": n, "agree": n_same, "disagree": n - n_same, "at_risk": n_risk,
           "first_layer_at_risk": n_first,
           "disagreements_explained_by_bound": n_diff_risk, "hidden_bits_differ": n_bits,
           "agreement": n_same / max(n, 1)}
    if return_predictions:
        p_int = np.concatenate([p[0] for p in preds]) if preds else np.zeros(0, np.int64)
        p_flt = np.concatenate([p[1] for p in preds]) if preds else np.zeros(0, np.int64)
        return res, p_int, p_flt
    return res


__all__ = ["CBCNNPlan", "compile_cbcnn", "cbcnn_agreement", "cbcnn_scores", "run_cbcnn_ops",
           "unpack_features", "xnor_conv3"]


def _is_cbcnn(model) -> bool:
    from ..models.cbcnn import CBCNN
    return isinstance(model, CBCNN)


register_compiler("cbcnn", _is_cbcnn, lambda model, head=None, bits=8: compile_cbcnn(model))
register_runner("cbcnn", run_cbcnn_ops, cbcnn_scores, unpack_features)
