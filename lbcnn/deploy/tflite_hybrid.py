"""TFLite graph of a Hybrid :class:`~lbcnn.engine.hybrid_plan.HybridPlan`: the binary part
bit-exact with the integer engine, the MLP head on TFLite's own ops.

* binarize (fixed threshold ``pixel > T``): ``DEPTHWISE_CONV_2D`` 1x1, weight 2, bias
  ``-2T - 1`` on the int8 input (TFLite adds the zero point back, so the accumulator is
  ``2 pixel - 2T - 1``, odd), fused ``RELU_N1_TO_1`` at output scale 1: +-1 exactly;
* each fixed +-1 kernel: ``DEPTHWISE_CONV_2D`` 3x3 VALID (``S`` in [-9, 9], rescale 1:
  exact) -> ``MIRROR_PAD`` SYMMETRIC by one row and column at the end (the engine's
  replicated last row/column) -> ``DEPTHWISE_CONV_2D`` 2x2 VALID of ones with bias 1 and
  ``RELU_N1_TO_1`` (the 2x2 sum ``z`` is even, ``z + 1 > 0`` iff ``z >= 0``: sign(0) = +1);
* ``RESHAPE`` -> ``FULLY_CONNECTED`` (int8 weights, the engine's ``w1_q``) to int8 at scale
  1/16, the engine's sigmoid-table grid over [-8, 8) -> ``LOGISTIC`` (TFLite's int8
  sigmoid, output 1/256) -> ``QUANTIZE`` to int16 -> 16x8 ``FULLY_CONNECTED`` (``w2_q``)
  to int16 logits.

The head is not the engine's: TFLite's LOGISTIC rounds its own way and its output is
``256 sigma`` where the engine's table holds ``round(255 sigma)``; both are fixed-point
stand-ins for the float MLP, so agreement is measured, not claimed. Otsu thresholds
(a per-image histogram search) have no TFLite ops and are refused.
"""
from __future__ import annotations

import numpy as np

from ..engine.hybrid_plan import LUT_STEP, HybridPlan
from ..errors import ConfigError
from .tflite_builder import ModelBuilder, Quant
from .tflite_common import TfliteGraph, TfliteOptions, register

EXACTNESS = ("binary features bit-exact (threshold, +-1 convs, 2x2 sign pooling); the MLP "
             "head uses TFLite's LOGISTIC, an approximation of the engine's sigmoid table")
INPUT_SCALE = np.float32(1.0 / 255.0)


def build_hybrid(plan: HybridPlan, options: TfliteOptions | None = None) -> TfliteGraph:
    if plan.threshold == "otsu":
        raise ConfigError("layer 'binarize' (Otsu threshold): a per-image histogram search has "
                          "no TFLite ops; train the hybrid with a fixed threshold "
                          "(--threshold 0.5) to export it as TFLite")
    h, w, _ = plan.input_shape
    mb = ModelBuilder(description="lbcnn hybrid (int8 +-1 binary part)")
    x = mb.tensor("input", (1, h, w, 1), "int8", quant=Quant(INPUT_SCALE, -128))
    inp = x
    one = Quant(1.0, 0)
    t = int(plan.threshold)
    x = mb.conv("DEPTHWISE_CONV_2D", x, np.full((1, 1, 1, 1), 2, np.int8),
                np.float32(1.0) / INPUT_SCALE, np.array([-2 * t - 1]), "int32", "binarize",
                (1, h, w, 1), one, out_dtype="int8", activation="RELU_N1_TO_1")
    for i, k in enumerate(plan.kernels):
        taps = np.array([1 if (int(k) >> b) & 1 else -1 for b in range(9)], np.int8)
        ho, wo = h - 2, w - 2
        x = mb.conv("DEPTHWISE_CONV_2D", x, taps.reshape(1, 3, 3, 1), 1.0, np.zeros(1),
                    "int32", f"k{i}_conv", (1, ho, wo, 1), one, padding="VALID")
        x = mb.mirror_pad(x, f"k{i}_pad", [[0, 0], [0, 1], [0, 1], [0, 0]], (1, ho + 1, wo + 1, 1))
        x = mb.conv("DEPTHWISE_CONV_2D", x, np.ones((1, 2, 2, 1), np.int8), 1.0, np.ones(1),
                    "int32", f"k{i}_sign", (1, ho, wo, 1), one, padding="VALID",
                    activation="RELU_N1_TO_1")
        h, w = ho, wo
    x = mb.reshape(x, "features", (1, h * w))
    hd = plan.head
    hid = mb.fully_connected(x, hd["w1_q"], hd["s1"], _int32(hd["b1_q"], "hidden bias"),
                             "int32", "hidden", "int8", Quant(1.0 / LUT_STEP, 0))
    sig = mb.unary("LOGISTIC", hid, "sigmoid", "int8", Quant(1.0 / 256.0, -128))
    sig16 = mb.unary("QUANTIZE", sig, "sigmoid16", "int16", Quant(1.0 / 256.0, 0))
    s2 = np.float32(hd["s2"])
    b2 = np.rint(hd["b2_q"].astype(np.float64) * 256.0 / 255.0).astype(np.int64)
    bound = 127 * 256 * hd["w2_q"].shape[1] + int(np.abs(b2).max())
    out_scale = np.float32(float(s2) / 256.0 * bound / 32767.0 * 1.001)
    y = mb.fully_connected(sig16, hd["w2_q"], s2, b2, "int64", "logits", "int16",
                           Quant(out_scale, 0))
    return TfliteGraph(mb, [inp], [y], EXACTNESS, [],
                       {"activations": "int8 +-1", "logit_scale": float(out_scale)})


def _int32(v, what: str) -> np.ndarray:
    v = np.asarray(v, np.int64)
    if v.size and np.abs(v).max() >= 2 ** 31:
        raise ConfigError(f"{what} does not fit int32")
    return v


register(HybridPlan, build_hybrid)
