"""TensorFlow Lite's integer rescaling, bit for bit, and the LB-CNN head that follows it.

TFLite turns a float rescale ``m = s_in * s_w / s_out`` into a fixed-point multiplier
(``QuantizeMultiplier``) and applies it with ``MultiplyByQuantizedMultiplier``. Two
variants matter here, as in TFLite Micro's reference kernels (and LiteRT's convolutions):

* 32-bit (int8 kernels): ``SaturatingRoundingDoublingHighMul`` then
  ``RoundingDivideByPOT`` -- two roundings, ties away from zero;
* 64-bit (the 16x8 kernels: int16 activations, int64 accumulators): the multiplier is
  first cut to 16 bits, ``r = (q + 2^15) >> 16``, then ``(x * r + 2^(t-1)) >> t`` with
  ``t = 15 - shift`` -- one rounding, ties toward +infinity. For ``m = 2^-k`` this is
  exactly ``floor(x / 2^k + 1/2)``; for ``m = 1`` it is the identity.

LiteRT's *reference* FULLY_CONNECTED does not use either: it rescales in double
precision (``round(acc * m)``, ties away from zero), so on exact negative ties its logits
can differ from TFLite Micro's by one. :func:`litert_fc_rescale` is that variant.

:func:`with_tflite_rounding` gives an LB-CNN plan whose head ends the way the exported
``.tflite`` head does (int16 logits from ``MultiplyByQuantizedMultiplier``), so the NumPy
engine, the generated C and TFLite Micro return the same logits, not only the same class.
"""
from __future__ import annotations

import copy
import math

import numpy as np

from ..errors import ConfigError

INT16_MIN, INT16_MAX = -32768, 32767
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``QuantizeMultiplier(double)``: ``m ~= q * 2^(shift - 31)``, ``q`` in [2^30, 2^31)."""
    if m <= 0.0 or not math.isfinite(m):
        if m == 0.0:
            return 0, 0
        raise ConfigError(f"a TFLite rescale must be finite and >= 0, got {m}")
    frac, shift = math.frexp(m)                    # m = frac * 2^shift, frac in [0.5, 1)
    q = int(math.floor(frac * 2 ** 31 + 0.5))      # std::round, frac > 0
    if q == 2 ** 31:
        q //= 2
        shift += 1
    if shift < -31:                                # flushed to zero, as TFLite does
        return 0, 0
    return q, shift


def _trunc_div(a: np.ndarray, d: int) -> np.ndarray:
    return np.sign(a) * (np.abs(a) // d)           # C division: toward zero


def mbqm32(x, q: int, shift: int) -> np.ndarray:
    """``MultiplyByQuantizedMultiplier(int32 x, q, shift)`` (the int8 kernels)."""
    x = np.asarray(x, np.int64)
    left, right = max(shift, 0), max(-shift, 0)
    a = x * (1 << left)
    a = ((a - _INT32_MIN) % 2 ** 32) + _INT32_MIN   # int32 wrap, as in C
    ab = a * np.int64(q)
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    y = _trunc_div(ab + nudge, 1 << 31)             # SaturatingRoundingDoublingHighMul
    if q == _INT32_MIN:
        y = np.where(a == _INT32_MIN, _INT32_MAX, y)
    mask = np.int64((1 << right) - 1)
    threshold = (mask >> 1) + (y < 0).astype(np.int64)
    return (y >> right) + ((y & mask) > threshold).astype(np.int64)   # RoundingDivideByPOT


def reduced_multiplier(q: int) -> int:
    """The 16-bit multiplier the 16x8 kernels use in place of ``q``."""
    return (q + (1 << 15)) >> 16 if q < 0x7FFF0000 else 0x7FFF


def mbqm64(x, q: int, shift: int) -> np.ndarray:
    """``MultiplyByQuantizedMultiplier(int64 x, q, shift)`` (the 16x8 kernels)."""
    x = np.asarray(x, np.int64)
    total = 15 - shift
    r = (x * np.int64(reduced_multiplier(q)) + (np.int64(1) << np.int64(total - 1))) \
        >> np.int64(total)
    return ((r - _INT32_MIN) % 2 ** 32) + _INT32_MIN   # the kernel returns int32


def litert_fc_rescale(acc, m) -> np.ndarray:
    """LiteRT's reference FULLY_CONNECTED: ``round(double(acc) * m)``, ties away from 0."""
    v = np.asarray(acc, np.float64) * np.asarray(m, np.float64)
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


# -- the LB-CNN head as TFLite computes it ----------------------------------------------
CALIBRATION_MARGIN = 4   # logits may reach 4x the largest seen on the calibration images


def head_requant(head: dict, input_scale: float, out_max: int = INT16_MAX,
                 peak: float | None = None) -> dict:
    """How the exported 16x8 FULLY_CONNECTED rescales the exact head accumulator.

    The output scale is ``s_in * max(s_w) * 2^k`` with the smallest ``k`` for which the
    worst-case accumulator (``head['acc_bound']``) cannot saturate ``out_max`` -- or, given
    ``peak`` (the largest ``|acc_c| * s_c / max(s)`` on calibration images, training
    images), the smallest ``k`` that leaves ``CALIBRATION_MARGIN`` times that room (never
    above the worst-case ``k``). The worst case is far from real images (MNIST 40,4: bound
    3.6e9, training images 3.9e6), and a logit step of 2^17 accumulator units ties classes:
    13 of 10,000 MNIST test images, 523 of 12,630 GTSRB, against 0 and 2 with the
    calibrated step (a tie goes to the first class). Beyond the margin a logit saturates at
    int16, identically in TFLite Micro, the engine and the C. Then
    ``logit_c = clamp(mbqm64(acc_c, q_c, shift_c))`` with ``(q_c, shift_c)`` from
    ``QuantizeMultiplier`` of the float32 scales stored in the flatbuffer:
    ``double(s_in) * double(s_w[c]) / double(s_out)``, as TFLite Micro's 16x8
    FULLY_CONNECTED prepares them.

    With one weight scale the output scale sits 2^-20 (relative) below ``s_in * s_w * 2^k``:
    the rescale is then a hair above 2^-k whether a runtime multiplies the two input
    scales in float or in double, so the 16-bit multiplier is exactly 2^14 and the logit is
    exactly ``floor(acc / 2^k + 1/2)`` (at exactly 2^-k, a product rounded a hair below
    would give the multiplier 0x7FFF / 2^15 and round some x.5002 toward zero).
    """
    s_in = np.float32(input_scale)
    w = np.atleast_1d(np.asarray(head["scale"], np.float64)).astype(np.float32)
    per_class = w.size > 1
    if not np.all(np.isfinite(w)) or np.any(w <= 0) or not (np.isfinite(s_in) and s_in > 0):
        raise ConfigError("head and input scales must be finite and positive")
    bound = int(head["acc_bound"])
    if bound.bit_length() + 16 > 62:
        raise ConfigError(f"head accumulator bound {bound:.3e} is too large for TFLite's 16x8 "
                          f"rescale (x * 16-bit multiplier must fit int64)")
    nudge = 1.0 if per_class else 1.0 - 2.0 ** -20
    k_cal = None                      # None: no calibration, the worst case decides
    if peak is not None:
        k_cal = max(0, int(np.ceil(np.log2(max(CALIBRATION_MARGIN * float(peak), 1.0)
                                           / out_max))))
    for k in range(0, 63):
        out_scale = np.float32(float(s_in) * float(w.max()) * 2.0 ** k * nudge)
        mult = float(s_in) * w.astype(np.float64) / float(out_scale)
        qs = [quantize_multiplier(float(m)) for m in mult]
        # before the int16 clamp: the kernel's int32 result must not wrap
        worst = max((bound * reduced_multiplier(q) + (1 << (14 - s))) >> (15 - s) for q, s in qs)
        if (worst <= out_max or (k_cal is not None and k >= k_cal and worst < 2 ** 31)) and \
                all(s <= 7 for _, s in qs):
            break
    else:  # pragma: no cover - a bound below 2^46 always fits
        raise ConfigError(f"head accumulator bound {bound:.3e} cannot be rescaled to int16")
    if any(q == 0 for q, _ in qs):
        raise ConfigError("a head scale is below 2^-31 of the largest one: TFLite would flush "
                          "that class's logits to zero")
    if not per_class:
        q_f, s_f = quantize_multiplier(float(np.float32(s_in * w[0])) / float(out_scale))
        if (reduced_multiplier(q_f), s_f) != (reduced_multiplier(qs[0][0]), qs[0][1]) or \
                (reduced_multiplier(qs[0][0]), qs[0][1]) != (1 << 14, 1 - k):
            raise ConfigError("internal: the head rescale is not a robust 2^-k")  # pragma: no cover
    return {"kind": "tflite", "out_dtype": "int16", "shift_k": int(k),
            "calibrated": peak is not None and worst > out_max,
            "input_scale_f32": float(s_in), "weight_scales_f32": [float(v) for v in w],
            "output_scale_f32": float(out_scale),
            "multiplier": np.array([q for q, _ in qs], np.int64),
            "shift": np.array([s for _, s in qs], np.int64),
            "effective": np.asarray(mult, np.float64)}


def apply_head_requant(acc: np.ndarray, requant: dict) -> np.ndarray:
    """(n, k) exact int64 accumulators -> int16-range logits (as int64), per class."""
    acc = np.asarray(acc, np.int64)
    q, s = requant["multiplier"], requant["shift"]
    out = np.empty_like(acc)
    for c in range(acc.shape[1]):
        j = c if q.size > 1 else 0
        out[:, c] = mbqm64(acc[:, c], int(q[j]), int(s[j]))
    return np.clip(out, INT16_MIN, INT16_MAX)


def calibration_peak(plan, images) -> float:
    """The largest ``|acc_c| * s_c / max(s)`` of the exact head accumulators on ``images``."""
    from .numpy_engine import NumpyEngine

    hd = plan.head
    plain = copy.copy(plan)
    plain.head = {k: v for k, v in hd.items() if k != "requant"}
    plain.head["rescale"] = "none"
    acc = np.abs(NumpyEngine(plain).scores(np.asarray(images)).astype(np.float64))
    s = np.atleast_1d(np.asarray(hd["scale"], np.float64))
    return float((acc * (s / s.max())[None, :]).max()) if acc.size else 0.0


def with_tflite_rounding(plan, calibration=None):
    """A copy of an LB-CNN :class:`~lbcnn.engine.plan.IntegerPlan` whose scores are the
    int16 logits of the exported TFLite head (:func:`head_requant`; ``calibration``:
    the same training images the export calibrated on) instead of the exact accumulators:
    argmax then follows TFLite Micro, ties and saturation included."""
    from .plan import IntegerPlan

    if not isinstance(plan, IntegerPlan):
        raise ConfigError(f"TFLite rounding applies to LB-CNN plans, not a {type(plan).__name__}")
    peak = None if calibration is None or not len(calibration) else \
        calibration_peak(plan, calibration)
    out = copy.copy(plan)
    out.head = dict(plan.head)
    out.head["requant"] = head_requant(plan.head, plan.head["input_scale"], peak=peak)
    return out
