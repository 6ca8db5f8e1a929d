"""TFLite graph of a CBCNN :class:`~lbcnn.engine.cbcnn_plan.CBCNNPlan`: binary weights
and activations, the binary part bit-exact with the integer engine.

Binary activations are int8 +-1 (scale 1, zero point 0, so zero padding is a real 0 as
in the engine's valid-tap sums). Each conv block (conv -> 2x2 max pool -> BN + sign,
folded by the plan into ``bit = flip ? S <= t : S >= t``) becomes:

* ``CONV_2D`` 3x3 SAME with weights ``2 * w`` (+-2) and bias ``-2t + 1`` (``-2t - 1``
  for a flipped channel), so the accumulator ``2S - 2t +- 1`` is odd, never 0; the fused
  ``RELU_N1_TO_1`` at output scale 1 (rescale ~1) turns it into its sign: +-1 exactly.
  A non-flipped channel gives ``S >= t``; a flipped one gives ``S >= t + 1``, the
  negation of its bit;
* ``MAX_POOL_2D`` 2x2/2 VALID. The sign commutes with the max for ``S >= t``
  (``max_i [S_i >= t] = [max S >= t]``); a flipped channel's ``max_i [S_i >= t+1]`` is
  the negation of ``[max S <= t]``, so its consumers' weights are negated instead.

The first conv takes the int8 input (``pixel - 128``, scale ``input_scale``): TFLite adds
the zero point back, so ``S`` is the engine's exact sum of +-pixels. Hidden dense layers
are ``FULLY_CONNECTED`` the same way (``+-2`` weights, odd bias, ``RELU_N1_TO_1``; a
flipped unit negates its weights and bias, no pooling in between). The head (last binary
dense + final BN, ``logit_c = a_c * s_c + b_c``) is ``QUANTIZE`` to int16 then a 16x8
``FULLY_CONNECTED`` with weights ``+-127`` at scale ``|s_c| / 127`` per class and the bias
``b_c`` rounded at that scale, to int16 logits: an approximation of the engine's
fixed-point head (``a_c * round(s_c 2^k) + round(b_c 2^k)``); agreement is measured.

Refused, naming the layer: ``y_channel`` on a multi-channel network, and accumulators
beyond what the int8 graph can hold.
"""
from __future__ import annotations

import numpy as np

from ..engine.cbcnn_plan import CBCNNPlan
from ..errors import ConfigError
from .tflite_builder import ModelBuilder, Quant
from .tflite_common import TfliteGraph, TfliteOptions, register

EXACTNESS = ("binary layers bit-exact (int8 +-1 activations; BN + sign as odd bias + "
             "RELU_N1_TO_1); int16 logits approximate the engine's fixed-point head")


def _unpack_signs(words: np.ndarray, n: int) -> np.ndarray:
    """(..., words) uint64 (``pack_signs_u64``) -> (..., n) int8 +-1."""
    w = np.ascontiguousarray(words, dtype="<u8")
    bits = np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little")[..., :n]
    return (2 * bits.astype(np.int8) - 1).astype(np.int8)


def _threshold_bias(op: dict) -> tuple[np.ndarray, np.ndarray]:
    """(bias for 2S, negated) per channel: odd ``-2t + 1`` or, flipped, ``-2t - 1``."""
    t = np.asarray(op["threshold"], np.int64)
    flip = np.asarray(op["flip"], bool)
    return np.where(flip, -2 * t - 1, -2 * t + 1), flip


def build_cbcnn(plan: CBCNNPlan, options: TfliteOptions | None = None) -> TfliteGraph:
    """``options.weights == "int4"``: the +-2 weights of the binary layers go in int4 (half
    the bytes; TFLite Micro unpacks them into its arena, MNIST cbcnn28: 304 KB file and 302 KB
    arena against 600 KB and 131 KB), kept when TFLite Micro loads and runs the graph, else
    int8 with the interpreter's message."""
    options = options or TfliteOptions()
    if options.weights != "int4":
        return _build(plan, "int8")
    from .tflite_runtime import try_load
    graph = _build(plan, "int4")
    refusal = try_load(graph.finish(), np.zeros(plan.input_shape, np.uint8))
    if refusal is None:
        graph.notes.append("binary-layer weights (+-2) stored as int4, packed two a byte; "
                           "TFLite Micro runs them")
        return graph
    graph = _build(plan, "int8")
    graph.notes.append(f"binary-layer weights stored as int8, not int4: {refusal}")
    return graph


def _build(plan: CBCNNPlan, weight_dtype: str) -> TfliteGraph:
    h, w, c = plan.input_shape
    s_in = np.float32(plan.input_scale)
    mb = ModelBuilder(description="lbcnn CBCNN (int8 +-1 activations)")
    x = mb.tensor("input", (1, h, w, c), "int8", quant=Quant(s_in, -128))
    inp = x
    one = Quant(1.0, 0)
    negated = np.zeros(c, bool)          # which channels of x hold the negated bit
    shape = (h, w, c)
    for i, op in enumerate(plan.ops):
        name = f"l{op['layer']}"
        if op["type"] in ("sign_conv3", "xnor_conv3"):
            ci, co = op["in_shape"][2], op["out_shape"][2]
            if op["type"] == "sign_conv3":
                wt = np.asarray(op["weight"], np.int8)                       # (Co, 3, 3, C)
                w_scale = np.float32(1.0) / s_in                             # rescale ~1
                bound = 2 * op["bound"] + 2 * int(np.abs(op["threshold"]).max()) + 1
            else:
                wt = _unpack_signs(op["w_packed"].reshape(co, 9, -1), ci).reshape(co, 3, 3, ci)
                w_scale = np.float32(1.0)
                bound = 2 * op["bound"] + 2 * int(np.abs(op["threshold"]).max()) + 1
            if bound >= 2 ** 31:
                raise ConfigError(f"layer {op['layer']} ({op['type']}): accumulator bound "
                                  f"{bound:.3e} exceeds int32")
            wt = (2 * wt * np.where(negated, -1, 1)[None, None, None, :]).astype(np.int8)
            bias, flip = _threshold_bias(op)
            hh, ww = op["in_shape"][:2]
            y = mb.conv("CONV_2D", x, wt, w_scale, bias, "int32", name + "_sign",
                        (1, hh, ww, co), one, out_dtype="int8", activation="RELU_N1_TO_1",
                        weight_dtype=weight_dtype)
            shape = op["out_shape"]
            x = mb.max_pool(y, name + "_pool", (1, *shape), 2, 2, padding="VALID")
            negated = flip
        elif op["type"] == "xnor_dense":
            x, negated, shape = _dense_layer(mb, x, op, negated, shape, name, weight_dtype)
        else:
            raise ConfigError(f"layer {op.get('layer')}: op {op['type']!r} has no TFLite mapping")
    x = _flatten(mb, x, shape)
    y, details = _head(mb, x, plan, negated, shape)
    details["binary_weights"] = weight_dtype
    return TfliteGraph(mb, [inp], [y], EXACTNESS, [], details)


def _flatten(mb, x, shape):
    if len(mb.infos[x].shape) == 2:
        return x
    return mb.reshape(x, "features", (1, int(np.prod(shape))))


def _feature_signs(negated: np.ndarray, shape) -> np.ndarray:
    """Per flattened feature: -1 where it holds the negated bit, in (H, W, C) order."""
    if len(shape) == 3:
        hh, ww, _ = shape
        return np.tile(np.where(negated, -1, 1), hh * ww)
    return np.where(negated, -1, 1)


def _dense_weights(op_or_head: dict, shape) -> np.ndarray:
    """+-1 (out, in) in the (H, W, C) feature order the reshape gives."""
    wp = op_or_head["w_packed"]
    out_f = wp.shape[0]
    if len(shape) == 3:
        hh, ww, cc = shape
        words = -(-cc // 64)
        return _unpack_signs(wp.reshape(out_f, hh, ww, words), cc).reshape(out_f, -1)
    return _unpack_signs(wp, int(op_or_head["n_bits"]))


def _dense_layer(mb, x, op, negated, shape, name, weight_dtype):
    x = _flatten(mb, x, shape)
    wt = _dense_weights(op, shape) * _feature_signs(negated, shape)[None, :]
    t = np.asarray(op["threshold"], np.int64)
    flip = np.asarray(op["flip"], bool)
    # S >= t -> 2S - 2t + 1 > 0; flipped S <= t -> -2S + 2t + 1 > 0
    sign = np.where(flip, -1, 1)
    wt = (2 * wt * sign[:, None]).astype(np.int8)
    bias = np.where(flip, 2 * t + 1, -2 * t + 1)
    if 2 * op["n_bits"] + int(np.abs(bias).max()) >= 2 ** 31:
        raise ConfigError(f"dense layer {op['layer']}: accumulator exceeds int32")
    y = mb.fully_connected(x, wt, 1.0, bias, "int32", name + "_sign", "int8", Quant(1.0, 0),
                           activation="RELU_N1_TO_1", weight_dtype=weight_dtype)
    out_f = wt.shape[0]
    return y, np.zeros(out_f, bool), (out_f,)


def _head(mb, x, plan, negated, shape):
    hd = plan.head
    wt = _dense_weights(hd, shape) * _feature_signs(negated, shape)[None, :]
    s = np.asarray(hd["scale"], np.float64)
    b = np.asarray(hd["bias"], np.float64)
    # a class with s_c = 0 (gamma 0) is its bias alone: zero weights at any sane scale
    mag = np.where(s == 0, max(float(np.abs(s).max()), 1e-6), np.abs(s))
    w_scale = (mag / 127.0).astype(np.float32)
    w_q = (127 * wt * np.where(s < 0, -1, 1)[:, None] * (s != 0)[:, None]).astype(np.int8)
    bias = np.rint(b / w_scale.astype(np.float64)).astype(np.int64)
    x16 = mb.unary("QUANTIZE", x, "features16", "int16", Quant(1.0, 0))
    n = int(hd["n_bits"])
    logit_bound = float((np.abs(s) * n + np.abs(b)).max()) * 1.001 + 1e-30
    out_scale = np.float32(logit_bound / 32767.0)
    y = mb.fully_connected(x16, w_q, w_scale, bias, "int64", "logits", "int16",
                           Quant(out_scale, 0))
    return y, {"activations": "int8 +-1", "logit_scale": float(out_scale),
               "head": "16x8 FULLY_CONNECTED, per-class scale |s_c|/127"}


register(CBCNNPlan, build_cbcnn)
