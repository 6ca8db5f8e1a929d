"""TFLite graph of an LB-CNN :class:`~lbcnn.engine.plan.IntegerPlan` (fixed +-1 body,
n-bit head), exact by construction.

Graph (int16 activations, TFLite's 16x8 kernels):

``int8 input (s_in, zp -128)`` -> ``QUANTIZE`` to int16 (s_in, zp 0: exactly the uint8
pixel) -> per conv ``DEPTHWISE_CONV_2D`` (+-1 int8 weights at scale 1, zero int64 bias, SAME,
output scale = input scale, so the rescale is exactly 1 and every activation is the
engine's integer; a ReLU on the next conv's input is the conv's fused ``RELU``) ->
``MAX_POOL_2D`` 4x4/2 SAME (TFLite pads one row/column before, as the engine's window
``[2j-1, 2j+2]``) -> ``RESHAPE`` to (1, d) in (H, W, C) order -> ``FULLY_CONNECTED``
(int8 weights, one scale or one per class, int64 bias at the accumulator scale) to int16
logits at scale ``s_in * max(s_w) * 2^k``.

Exactness: the features and the head accumulator are the engine's integers. The logits
are ``clamp(floor(acc / 2^k + 1/2))`` (per-class scales: TFLite's 16-bit per-class
multiplier) with ``k`` leaving 4x the largest logit seen on calibration (training) images,
or, without them, the worst-case accumulator bound (nothing can saturate, but the step is
coarse); two classes whose accumulators round to the same logit tie, and TFLite takes the
first.
``compile_plan(..., rounding="tflite")`` makes the engine and the C return these logits.

What does not map: an activation bound above int16 (three or more 3x3 convs from uint8
pixels: 255 * 9^3 > 32767) and heads with more than 8 bits (TFLite weights are int8 or
int4) are refused, naming the layer. int4 head weights (heads of <= 4 bits): TFLite
Micro runs int4 FULLY_CONNECTED only with int8 inputs, so on this int16 graph the export
asks the interpreter, quotes its refusal and stores the head as int8.

``activations="int8"`` is the documented lossy alternative: the same ops without the
QUANTIZE, every conv's output rescaled by a power of two (``2^-k``, chosen so the largest
value on calibration images -- training images -- fits int8),
int8 features, an int8 (or int4) head to int8 logits. Half the arena, int4 heads run in
TFLite Micro, three-layer models map; the features are rounded, so predictions can differ
from the engine's: agreement is measured, never claimed.
"""
from __future__ import annotations

import numpy as np

from ..engine.bits import unpack_neg_bits
from ..engine.plan import IntegerPlan
from ..engine.requant import INT16_MAX, calibration_peak, head_requant
from ..errors import ConfigError
from .tflite_builder import ModelBuilder, Quant
from .tflite_common import TfliteGraph, TfliteOptions, register

EXACTNESS = ("exact features and head accumulators (int16 activations, 16x8 kernels); "
             "int16 logits = accumulators rescaled by TFLite's MultiplyByQuantizedMultiplier; "
             "argmax differs from the exact one only on logit ties (or saturation beyond 4x "
             "the calibration peak)")


def check_mappable(plan: IntegerPlan) -> None:
    """Refuse, naming the layer, what the exact int16 graph cannot hold."""
    n_layers = 1 + max(op["layer"] for op in plan.ops)
    per_layer = [sum(o["type"] == "sign_dwconv3" and o["layer"] == li for o in plan.ops)
                 for li in range(n_layers)]
    seen = [0] * n_layers
    for op in plan.ops:
        if op["type"] == "sign_dwconv3":
            li = op["layer"]
            seen[li] += 1
            if op["bound"] > INT16_MAX:
                where = f"layer {li + 1} of {n_layers}" + \
                    (f", conv {seen[li]} of {per_layer[li]}" if per_layer[li] > 1 else "")
                raise ConfigError(
                    f"{where} ({tuple(op['in_shape'])} -> {tuple(op['out_shape'])}): worst-case "
                    f"activation {op['bound']:,} exceeds int16 (TFLite's exact 16x8 kernels "
                    f"hold at most two 3x3 convs from uint8 pixels, 255 * 9^2 = 20,655); "
                    f"export it with --format c or onnx")
        if op["type"] not in ("sign_dwconv3", "maxpool4s2"):
            raise ConfigError(f"op {op['type']!r} has no TFLite mapping")
    bits = int(plan.head["bits"])
    if bits > 8:
        raise ConfigError(f"head: {bits}-bit weights; TFLite fully-connected weights are int8 "
                          f"(or int4): quantize the head with lbcnn quantize --bits 8 or fewer")


def build_lbcnn(plan: IntegerPlan, options: TfliteOptions | None = None) -> TfliteGraph:
    options = options or TfliteOptions()
    if options.activations == "int16":
        check_mappable(plan)
        cal = options.calibration
        peak = None if cal is None or not len(cal) else calibration_peak(plan, cal)
        make = lambda p, wd: _graph(p, wd, peak)  # noqa: E731
    elif options.activations == "int8":
        _check_head_bits(plan)
        shifts = int8_shifts(plan, options.calibration)
        make = lambda p, wd: _graph_int8(p, wd, shifts)  # noqa: E731
    else:
        raise ConfigError(f"activations must be int16 or int8, got {options.activations!r}")
    notes: list[str] = []
    bits = int(plan.head["bits"])
    if options.weights == "int4" and bits > 4:
        raise ConfigError(f"head: {bits}-bit weights do not fit int4 (at most 4 bits: lbcnn "
                          f"quantize --bits 4)")
    want_int4 = options.weights != "int8" and bits <= 4
    graph = make(plan, "int4" if want_int4 else "int8")
    if want_int4:
        from .tflite_runtime import try_load
        refusal = try_load(graph.finish(), np.zeros(plan.input_shape, np.uint8))
        if refusal is None:
            notes.append(f"head stored as int4 ({plan.head['bits']}-bit weights, packed two "
                         f"a byte); TFLite Micro runs it")
        else:
            notes.append(f"head stored as int8, not int4: {refusal}")
            graph = make(plan, "int8")
            graph.details["int4_refusal"] = refusal
    if options.activations == "int16" and peak is None:
        notes.insert(0, f"logit step 2^{graph.details['logit_shift_k']} accumulator units, "
                        f"from the worst-case bound (no calibration images): classes closer "
                        f"than that tie; calibrating on training images gives a finer step")
    if options.activations == "int8":
        notes.insert(0, "int8 activations: lossy (every conv output rescaled by 2^-k, shifts "
                        f"{graph.details['conv_shifts']}, chosen on "
                        f"{graph.details['calibrated_on']}); predictions may differ from the "
                        f"integer engine's")
    graph.notes = notes
    return graph


def _check_head_bits(plan: IntegerPlan) -> None:
    bits = int(plan.head["bits"])
    if bits > 8:
        raise ConfigError(f"head: {bits}-bit weights; TFLite fully-connected weights are int8 "
                          f"(or int4): quantize the head with lbcnn quantize --bits 8 or fewer")


def int8_shifts(plan: IntegerPlan, calibration) -> dict:
    """Cumulative power-of-two shifts ``K`` per conv (int8 output ``value / 2^K``) and the
    head's: the smallest that keep the largest value on the ``calibration`` images (uint8
    training images) inside int8. (Shifts from the worst-case bounds leave the int8 logits
    almost all tied: 8.7 % argmax agreement on MNIST 40,4, so calibration is required.)"""
    from ..engine.numpy_engine import maxpool4s2, sign_dwconv3

    if calibration is None or not len(calibration):
        raise ConfigError("int8 activations need calibration images (training images of the "
                          "model's dataset) to choose the rescaling shifts")
    ops = plan.ops
    x = np.asarray(calibration)
    x = (x[..., None] if x.ndim == 3 else x).astype(np.int64)
    peaks = []
    for i, op in enumerate(ops):
        if op["type"] == "sign_dwconv3":
            x = sign_dwconv3(x, op, np.int64)
            relu = i + 1 < len(ops) and ops[i + 1]["type"] == "sign_dwconv3" and \
                ops[i + 1]["relu_in"]
            peaks.append(int(np.abs(np.maximum(x, 0) if relu else x).max()))
        else:
            x = maxpool4s2(x, op)
    feats = x.reshape(len(x), -1)
    source = f"{len(feats):,} calibration images"
    shifts, k = [], 0
    for p in peaks:
        k = max(k, int(np.ceil(np.log2(max(p, 1) / 127))) if p > 127 else 0)
        shifts.append(k)
    hd = plan.head
    bias = np.rint(hd["bias_q"] / 2.0 ** k).astype(np.int64)
    f = np.clip(np.floor(feats / 2.0 ** k + 0.5), -128, 127).astype(np.int64)
    acc = np.abs(f @ hd["weight_q"].astype(np.int64) + bias).max()
    head_k = max(0, int(np.ceil(np.log2(max(int(acc), 1) / 127))))
    return {"conv": shifts, "head": head_k, "bias": bias, "source": source}


def _graph(plan: IntegerPlan, weight_dtype: str, peak: float | None = None):
    hd = plan.head
    rq = head_requant(hd, hd["input_scale"], peak=peak)
    s_in = np.float32(rq["input_scale_f32"])
    mb = ModelBuilder(description="lbcnn LB-CNN (int16 activations)")
    h, w, c = plan.input_shape
    x = mb.tensor("input", (1, h, w, c), "int8", quant=Quant(s_in, -128))
    inp = x
    act = Quant(s_in, 0)
    x = mb.unary("QUANTIZE", x, "pixels", "int16", act)
    ops = plan.ops
    for i, op in enumerate(ops):
        if op["type"] == "sign_dwconv3":
            co = op["out_shape"][2]
            neg = unpack_neg_bits(op["neg_bits"], 9, co)
            wts = np.where(neg, -1, 1).astype(np.int8).reshape(1, 3, 3, co)
            relu_next = i + 1 < len(ops) and ops[i + 1]["type"] == "sign_dwconv3" and \
                ops[i + 1]["relu_in"]
            # a zero bias all the same: TFLite Micro's 16x8 depthwise kernel crashes without one
            x = mb.conv("DEPTHWISE_CONV_2D", x, wts, 1.0, np.zeros(co, np.int64), "int64", f"conv{i}",
                        (1, *op["out_shape"]), act, multiplier=op["multiplier"],
                        activation="RELU" if relu_next else None)
        else:
            x = mb.max_pool(x, f"pool{i}", (1, *op["out_shape"]), 4, 2)
    d = plan.n_features
    x = mb.reshape(x, "features", (1, d))
    scales = np.asarray(rq["weight_scales_f32"], np.float32)
    y = mb.fully_connected(x, hd["weight_q"].T, scales, hd["bias_q"], "int64", "logits",
                           "int16", Quant(rq["output_scale_f32"], 0), weight_dtype=weight_dtype)
    details = {"activations": "int16", "head_weights": weight_dtype,
               "logit_scale": rq["output_scale_f32"], "logit_shift_k": rq["shift_k"],
               "logit_step": "calibrated" if peak is not None else "worst-case bound",
               "per_class_scales": bool(scales.size > 1), "requant": rq}
    return TfliteGraph(mb, [inp], [y], EXACTNESS, [], details)


def _graph_int8(plan: IntegerPlan, weight_dtype: str, shifts: dict):
    hd = plan.head
    s_in = np.float32(hd["input_scale"])
    mb = ModelBuilder(description="lbcnn LB-CNN (int8 activations, lossy)")
    h, w, c = plan.input_shape
    x = mb.tensor("input", (1, h, w, c), "int8", quant=Quant(s_in, -128))
    inp = x
    ops = plan.ops
    ci = 0
    scale = s_in
    for i, op in enumerate(ops):
        if op["type"] == "sign_dwconv3":
            co = op["out_shape"][2]
            neg = unpack_neg_bits(op["neg_bits"], 9, co)
            wts = np.where(neg, -1, 1).astype(np.int8).reshape(1, 3, 3, co)
            relu_next = i + 1 < len(ops) and ops[i + 1]["type"] == "sign_dwconv3" and \
                ops[i + 1]["relu_in"]
            scale = np.float32(s_in * np.float32(2.0 ** shifts["conv"][ci]))   # exact: 2^K
            ci += 1
            x = mb.conv("DEPTHWISE_CONV_2D", x, wts, 1.0, np.zeros(co, np.int32), "int32",
                        f"conv{i}", (1, *op["out_shape"]), Quant(scale, 0),
                        multiplier=op["multiplier"], activation="RELU" if relu_next else None)
        else:
            x = mb.max_pool(x, f"pool{i}", (1, *op["out_shape"]), 4, 2)
    x = mb.reshape(x, "features", (1, plan.n_features))
    ws = np.atleast_1d(np.asarray(hd["scale"], np.float64)).astype(np.float32)
    out_scale = np.float32(float(scale) * float(ws.max()) * 2.0 ** shifts["head"])
    if np.abs(shifts["bias"]).max() >= 2 ** 31:
        raise ConfigError("head bias does not fit int32 at the int8 features' scale")
    y = mb.fully_connected(x, hd["weight_q"].T, ws, shifts["bias"], "int32", "logits", "int8",
                           Quant(out_scale, 0), weight_dtype=weight_dtype)
    details = {"activations": "int8", "head_weights": weight_dtype, "logit_scale": float(out_scale),
               "conv_shifts": list(shifts["conv"]), "head_shift": shifts["head"],
               "calibrated_on": shifts["source"], "per_class_scales": bool(ws.size > 1)}
    return TfliteGraph(mb, [inp], [y], EXACTNESS_INT8, [], details)


EXACTNESS_INT8 = ("lossy: int8 activations, every conv output rescaled by a power of two; "
                  "argmax agreement with the integer engine is measured")


register(IntegerPlan, build_lbcnn)
