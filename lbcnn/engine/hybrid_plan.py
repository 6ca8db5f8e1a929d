"""Compile a fitted :class:`~lbcnn.models.hybrid.Hybrid` into an integer plan.

The binary part runs **bit-exactly** (same +-1 features as ``HybridBody.transform``):

* threshold -- a fixed ``t`` in [0, 1]: the model keeps ``pixel > t * 255.0``
  (float64); for an integer pixel that is ``pixel > T`` with
  ``T = floor(t * 255.0)`` computed from the same float64 product, so exact.
  Otsu: ``T`` per image from integer arithmetic (:func:`otsu_threshold_int`):
  with pixel count ``N``, bin counts ``h_i``, ``W_t = sum_{i<=t} h_i``,
  ``M_t = sum_{i<=t} i h_i`` and ``MT = M_255``, the float criterion
  ``(mu_T omega - mu)^2 / (omega (1 - omega))`` equals
  ``(MT W - M N)^2 / (N^2 W (N - W))``, so thresholds are compared by
  ``num_a * den_b > num_b * den_a`` (``num = (MT W - M N)^2`` < 2^64,
  ``den = W (N - W)`` < 2^32, products split into 32-bit halves: an exact
  ~96-bit comparison in uint64). Empty classes (``W`` = 0 or ``N``) are skipped
  (the float code sets them to -1); the first maximum wins, as ``np.argmax``.
  The exact answer differs from the model's float64 Otsu only when two
  thresholds' criteria agree to float64 rounding (about 1e-16 relative) yet
  are not equal -- :func:`otsu_agreement` counts such images (0 of the MNIST
  test set images checked in the tests).
* each 3x3 'valid' conv of +-1 maps with a +-1 kernel: the nine input bits of
  a window form a 9-bit word (bit ``3*dy + dx``, 1 = +1), the kernel likewise,
  and ``S = 2 * popcount(xnor) - 9 = 9 - 2 * popcount(win ^ k)`` (an odd
  integer in [-9, 9]; the float conv of +-1 values is exact too).
* the 2x2 average pool (stride 1, last row/column replicated) then sign with
  sign(0) = +1: ``avg = (S_a + S_b + S_c + S_d) / 4`` and dividing by 4 does not
  change the sign, so the bit is ``S_a + S_b + S_c + S_d >= 0`` on integers.
  (The float model's sum of four small integers and its /4 are exact in
  float32, so this is not an approximation of it but the same value.)

Features are the last map in row-major order (576 for 28x28 and 2 kernels),
packed little-endian: feature ``f`` is bit ``f & 63`` of word ``f >> 6``
(``pack_signs_u64``; as bytes: bit ``f & 7`` of byte ``f >> 3``).

The float MLP head (576 -> hidden sigmoid -> classes) is **approximated** in
fixed point for ``lbcnn_predict`` / :meth:`NumpyEngine.predict`: int8
per-tensor weights, int32 sums, the bias at the accumulator scale, a
256-entry uint8 sigmoid table over [-8, 8) in steps of 1/16 indexed by a
fixed-point rescale of the hidden sum, then int8 output weights times the
uint8 hidden values plus an int32 bias; argmax (first maximum wins).
:func:`hybrid_agreement` measures how often its argmax matches the float model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .bits import pack_signs_u64
from .registry import register_compiler, register_runner

LUT_SIZE = 256
LUT_STEP = 16        # table entries per unit of the pre-activation
LUT_SHIFT = 24       # fixed-point bits of the hidden-sum -> table index multiplier
MASK32 = np.uint64(0xFFFFFFFF)


# -- integer Otsu ---------------------------------------------------------------
def _mul_gt(a, b, c, d):
    """``a * b > c * d`` exactly for uint64 arrays with ``a, c < 2^64`` and ``b, d < 2^32``."""
    a, b, c, d = (np.asarray(v, dtype=np.uint64) for v in (a, b, c, d))
    s32 = np.uint64(32)
    lo1 = (a & MASK32) * b
    hi1 = (a >> s32) * b + (lo1 >> s32)
    lo2 = (c & MASK32) * d
    hi2 = (c >> s32) * d + (lo2 >> s32)
    lo1, lo2 = lo1 & MASK32, lo2 & MASK32
    return (hi1 > hi2) | ((hi1 == hi2) & (lo1 > lo2))


def otsu_threshold_int(x: np.ndarray) -> np.ndarray:
    """(n, H, W) uint8 -> (n,) int32 Otsu thresholds, integer arithmetic only
    (the algorithm of the generated C, see the module docstring)."""
    x = np.asarray(x)
    n = len(x)
    flat = x.reshape(n, -1)
    npix = flat.shape[1]
    _check_otsu_size(npix)
    idx = flat.astype(np.int64) + 256 * np.arange(n, dtype=np.int64)[:, None]
    hist = np.bincount(idx.ravel(), minlength=256 * n).reshape(n, 256).astype(np.int64)
    w = np.cumsum(hist, axis=1)
    m = np.cumsum(hist * np.arange(256, dtype=np.int64), axis=1)
    mt = m[:, -1:]
    diff = np.abs(mt * w - m * npix).astype(np.uint64)
    num = diff * diff
    den = (w * (npix - w)).astype(np.uint64)
    best = np.zeros(n, dtype=np.int32)
    bn = np.zeros(n, dtype=np.uint64)
    bd = np.zeros(n, dtype=np.uint64)
    have = np.zeros(n, dtype=bool)
    for t in range(256):
        valid = (w[:, t] > 0) & (w[:, t] < npix)
        better = valid & (~have | _mul_gt(num[:, t], bd, bn, den[:, t]))
        best[better] = t
        bn[better] = num[better, t]
        bd[better] = den[better, t]
        have |= valid
    return best


def _check_otsu_size(npix: int) -> None:
    # |MT W - M N| <= 255 N^2 must square into uint64; W (N - W) < 2^32
    if 255 * npix * npix >= 2 ** 32:
        raise ConfigError(f"integer Otsu supports images of at most 4,103 pixels, got {npix}")


def otsu_agreement(x: np.ndarray) -> dict:
    """Images whose exact integer Otsu threshold differs from the model's float one."""
    from ..models.hybrid import otsu_threshold

    x = np.asarray(x)
    if x.ndim == 4:
        x = x[..., 0]
    t_int = otsu_threshold_int(x)
    t_flt = np.array([otsu_threshold(im) for im in x], dtype=np.int32)
    return {"n": len(x), "differ": int((t_int != t_flt).sum())}


# -- the plan -------------------------------------------------------------------
@dataclass
class HybridPlan:
    input_shape: tuple[int, int, int]
    threshold: object            # "otsu" or the integer T of ``pixel > T``
    kernels: np.ndarray          # (n_kernels,) 9-bit patterns, bit 3*dy+dx = 1 for +1
    head: dict
    classes: np.ndarray
    bounds: dict = field(default_factory=dict)
    family = "hybrid"

    @property
    def output_shape(self) -> tuple[int, int]:
        h, w = self.input_shape[:2]
        k = len(self.kernels)
        return h - 2 * k, w - 2 * k

    @property
    def n_features(self) -> int:
        h, w = self.output_shape
        return h * w

    @property
    def n_classes(self) -> int:
        return int(self.head["w2_q"].shape[0])

    def weight_bytes(self) -> dict:
        kern = 2 * len(self.kernels)
        hd = self.head
        head = (int(hd["w1_q"].nbytes) + 4 * len(hd["b1_q"]) + LUT_SIZE
                + int(hd["w2_q"].nbytes) + 4 * len(hd["b2_q"]))
        return {"kernels": kern, "head": head, "total": kern + head}

    def describe(self) -> dict:
        hd = self.head
        return {"family": "hybrid", "input": {"shape": list(self.input_shape), "dtype": "uint8"},
                "threshold": self.threshold if self.threshold == "otsu" else
                {"pixel_gt": int(self.threshold)},
                "kernels_9bit": [int(k) for k in self.kernels],
                "features": self.n_features, "binary_part": "exact",
                "head": {"hidden": int(hd["w1_q"].shape[0]), "classes": self.n_classes,
                         "weights": "int8 per-tensor", "sigmoid": f"uint8 table, {LUT_SIZE} "
                         f"entries, step 1/{LUT_STEP} over [-8, 8)",
                         "index_multiplier": int(hd["mult"]), "index_shift": LUT_SHIFT,
                         "approximation": "fixed-point stand-in for the float MLP head"},
                "bounds": self.bounds, "weight_bytes": self.weight_bytes()}


def _kernel_bits(k: np.ndarray) -> int:
    return int(sum(1 << i for i, v in enumerate(np.asarray(k).ravel()) if v > 0))


def _quantize_head(net) -> dict:
    sd = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in net.state_dict().items()}
    w1, b1 = sd["hidden.weight"], sd["hidden.bias"]      # (hid, d), (hid,)
    w2, b2 = sd["out.weight"], sd["out.bias"]            # (C, hid), (C,)
    s1 = max(float(np.abs(w1).max()), 1e-12) / 127.0
    s2 = max(float(np.abs(w2).max()), 1e-12) / 127.0
    w1_q = np.clip(np.rint(w1 / s1), -127, 127).astype(np.int8)
    w2_q = np.clip(np.rint(w2 / s2), -127, 127).astype(np.int8)
    b1_q = np.rint(b1 / s1).astype(np.int64)
    # hidden h ~ lut / 255, so logit ~ s2 / 255 * (w2_q @ lut) + b2
    b2_q = np.rint(b2 * 255.0 / s2).astype(np.int64)
    mult = int(np.rint(s1 * LUT_STEP * 2.0 ** LUT_SHIFT))
    if mult <= 0:
        raise ConfigError("the hybrid head's hidden weights are too small for the fixed-point "
                          "sigmoid index")
    d = w1.shape[1]
    acc1 = 127 * d + int(np.abs(b1_q).max())
    acc2 = 127 * 255 * w2.shape[1] + int(np.abs(b2_q).max())
    if acc1 * mult + (LUT_SIZE // 2 + 1) * 2 ** LUT_SHIFT >= 2 ** 62 or acc2 >= 2 ** 31 \
            or acc1 >= 2 ** 31:
        raise ConfigError("the hybrid head's fixed-point sums would overflow")
    grid = (np.arange(LUT_SIZE) - LUT_SIZE // 2) / LUT_STEP
    lut = np.rint(255.0 / (1.0 + np.exp(-grid))).astype(np.uint8)
    return {"w1_q": w1_q, "b1_q": b1_q, "w2_q": w2_q, "b2_q": b2_q, "mult": mult, "lut": lut,
            "s1": s1, "s2": s2, "acc1_bound": acc1, "acc2_bound": acc2}


def compile_hybrid(model) -> HybridPlan:
    """A fitted Hybrid -> :class:`HybridPlan` (binary part exact, head in fixed point)."""
    body = getattr(model, "body_", None)
    if body is None or getattr(model, "net_", None) is None:
        raise ConfigError("the hybrid model is not fitted (no body_ / net_)")
    h, w = body.input_shape[:2]
    if w > 64:
        raise ConfigError(f"the hybrid engine packs an image row in one uint64: width {w} > 64")
    if body.threshold == "otsu":
        _check_otsu_size(h * w)
        thr = "otsu"
    else:
        t = float(body.threshold)
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"threshold must be 'otsu' or in [0, 1], got {body.threshold}")
        thr = int(np.floor(t * 255.0))   # pixel > t*255.0  <=>  pixel > floor(t*255.0)
    kernels = np.array([_kernel_bits(k) for k in body.kernels], dtype=np.uint16)
    head = _quantize_head(model.net_)
    if head["w1_q"].shape[1] != body.n_features:
        raise ConfigError(f"head takes {head['w1_q'].shape[1]} features, body gives "
                          f"{body.n_features}")
    bounds = {"conv_sum": 9, "pool_sum": 36, "head_hidden_sum": head["acc1_bound"],
              "head_out_sum": head["acc2_bound"]}
    return HybridPlan((int(h), int(w), 1), thr, kernels, head, np.asarray(model.classes_), bounds)


# -- NumPy execution ------------------------------------------------------------
def binarize_int(plan: HybridPlan, x: np.ndarray) -> np.ndarray:
    """(n, H, W[, 1]) uint8 -> (n, H, W) bool, True = +1."""
    x = np.asarray(x)
    if x.ndim == 4:
        x = x[..., 0]
    if plan.threshold == "otsu":
        t = otsu_threshold_int(x)[:, None, None]
    else:
        t = int(plan.threshold)
    return x.astype(np.int32) > t


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """(n, H, W) bool -> (n, H) uint64, bit x = column x."""
    wgt = np.uint64(1) << np.arange(bits.shape[2], dtype=np.uint64)
    return (bits.astype(np.uint64) * wgt).sum(axis=2, dtype=np.uint64)


def binary_stage(rows: np.ndarray, width: int, kernel: int) -> np.ndarray:
    """Packed rows (n, H) of a +-1 map ``width`` wide -> packed rows (n, H-2) of the
    next map (width - 2): XNOR-popcount conv, then bit = (sum of the 2x2 window of
    conv sums, last row/column replicated) >= 0."""
    n, h = rows.shape
    ho, wo = h - 2, width - 2
    xs = np.arange(wo, dtype=np.uint64)
    three = (rows[:, :, None] >> xs) & np.uint64(7)                  # (n, H, wo)
    win = three[:, 0:ho] | (three[:, 1:ho + 1] << np.uint64(3)) | \
        (three[:, 2:ho + 2] << np.uint64(6))                          # (n, ho, wo)
    s = 9 - 2 * np.bitwise_count(win ^ np.uint64(kernel)).astype(np.int32)
    yn = np.minimum(np.arange(ho) + 1, ho - 1)
    xn = np.minimum(np.arange(wo) + 1, wo - 1)
    z = s + s[:, :, xn] + s[:, yn] + s[:, yn][:, :, xn]
    return _pack_rows(z >= 0)


def hybrid_feature_bits(plan: HybridPlan, x: np.ndarray) -> np.ndarray:
    """uint8 images -> (n, Ho, Wo) bool feature map (True = +1)."""
    b = binarize_int(plan, x)
    rows = _pack_rows(b)
    width = b.shape[2]
    for k in plan.kernels:
        rows = binary_stage(rows, width, int(k))
        width -= 2
    xs = np.arange(width, dtype=np.uint64)
    return ((rows[:, :, None] >> xs) & np.uint64(1)).astype(bool)


def run_hybrid_ops(plan: HybridPlan, x: np.ndarray) -> np.ndarray:
    """uint8 images -> (n, ceil(F/64)) uint64 packed features (``pack_signs_u64`` order)."""
    bits = hybrid_feature_bits(plan, x).reshape(len(x), -1)
    return pack_signs_u64(np.where(bits, 1, -1).astype(np.int8))


def unpack_hybrid_features(plan: HybridPlan, packed: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(np.ascontiguousarray(packed).view(np.uint8), axis=-1,
                         bitorder="little")[:, :plan.n_features]
    return (2 * bits.astype(np.int8) - 1).astype(np.int8)


def hybrid_hidden(plan: HybridPlan, packed: np.ndarray) -> np.ndarray:
    """Packed features -> (n, hidden) uint8 table outputs (~255 * sigmoid)."""
    hd = plan.head
    f = unpack_hybrid_features(plan, packed).astype(np.int64)
    acc = f @ hd["w1_q"].astype(np.int64).T + hd["b1_q"][None, :]
    t = acc * hd["mult"] + (LUT_SIZE // 2) * 2 ** LUT_SHIFT + 2 ** (LUT_SHIFT - 1)
    idx = np.where(t < 0, 0, np.right_shift(np.maximum(t, 0), LUT_SHIFT))
    idx = np.minimum(idx, LUT_SIZE - 1)
    return hd["lut"][idx]


def hybrid_scores(plan: HybridPlan, packed: np.ndarray) -> np.ndarray:
    """Fixed-point class scores (int64); argmax is the prediction."""
    hd = plan.head
    hid = hybrid_hidden(plan, packed).astype(np.int64)
    return hid @ hd["w2_q"].astype(np.int64).T + hd["b2_q"][None, :]


def hybrid_agreement(model, plan: HybridPlan, x, batch_size: int = 1000) -> dict:
    """argmax of the fixed-point head (on the exact binary features) vs the float model."""
    from .numpy_engine import NumpyEngine

    eng = NumpyEngine(plan)
    x = np.asarray(x)
    same = 0
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        same += int((eng.predict_index(xb) == model.decision_function(xb).argmax(1)).sum())
    return {"n": len(x), "agree": same, "agreement": same / max(len(x), 1)}


__all__ = ["HybridPlan", "binary_stage", "compile_hybrid", "hybrid_agreement",
           "hybrid_feature_bits", "hybrid_scores", "otsu_agreement", "otsu_threshold_int",
           "run_hybrid_ops", "unpack_hybrid_features"]


def _is_hybrid(model) -> bool:
    from ..models.hybrid import Hybrid
    return isinstance(model, Hybrid)



register_compiler("hybrid", _is_hybrid, lambda model, head=None, bits=8: compile_hybrid(model))
register_runner("hybrid", run_hybrid_ops, hybrid_scores, unpack_hybrid_features)
