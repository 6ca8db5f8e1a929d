"""Compile a trained model into an integer-only inference plan.

An :class:`IntegerPlan` is a list of ops plus a quantized head, with every
intermediate value bounded at compile time:

* ``sign_dwconv3`` -- depthwise 3x3 conv with +-1 kernels, zero padding 1,
  depth multiplier ``m`` (output channel ``c*m + j``), optional ReLU on its
  input. Kernels are stored as packed *negative* bits (``np.packbits``, little
  bit order) over the ``(9, C_out)`` tap table, so ``out = sum(+-x)`` is
  additions and subtractions only. Inputs of the first conv are raw uint8
  pixels, so every output is an exact integer.
* ``maxpool4s2`` -- 4x4 / stride 2 'same' max pool (window j covers rows
  ``[2j-1, 2j+2]`` clipped), integer in, integer out.
* ``xnor_dense`` -- reserved for binary (CBCNN-style) layers:
  ``out = 2*popcount(xnor(a, w)) - N`` on packed uint64 words, with integer
  thresholds. The NumPy engine runs it; no LB-CNN plan emits it.
* the head: n-bit integer weights (int8 for n <= 8) times integer features,
  summed in int32 partial sums over chunks short enough that no int32 partial
  can overflow, then in int64. ``argmax(s_in*F@Wq*s + b) == argmax(F@Wq + b_q)``
  when the weight scale ``s`` is one positive scalar and ``b_q`` is the bias
  at the accumulator scale ``s_in*s``. Per-class scales are rescaled with a
  fixed-point multiplier ``M_c = round(2^R * s_c / max(s))`` (an exact
  integer op, approximating the float ratio to 2^-R relative).

Worst-case bounds: a conv's output is at most ``9 * max|input|``; pooling
keeps the bound; ReLU keeps it. For MNIST 40,4 that is 255 -> 2,295 ->
20,655, so activations fit int16. The head's accumulator is bounded by
``d * max|feature| * max|q| + max|b_q|``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

OP_TYPES = ("sign_dwconv3", "maxpool4s2", "xnor_dense")

# re-exported: plans and exporters of every family pack bits the same way
from .bits import (INT16_MAX, INT32_MAX, INT64_MAX, pack_neg_bits, pack_signs_u64,  # noqa: E402,F401
                   unpack_neg_bits)
from .bits import dtype_for as _dtype_for  # noqa: E402
from .registry import compiler_for, register_compiler  # noqa: E402


# -- head quantization (a stand-in until the project's quantizer lands) --------
def quantize_head(coef: np.ndarray, intercept: np.ndarray, input_scale: float,
                  bits: int = 8) -> dict:
    """Symmetric per-tensor quantization: ``q = round(W / s)``, ``s = max|W| / (2^(n-1)-1)``.

    The bias goes to the accumulator scale ``input_scale * s`` so that
    ``s_in * s * (F_int @ q + b_q)`` reproduces the dequantized head.
    """
    if not 2 <= bits <= 16:
        raise ConfigError(f"head bits must be 2..16, got {bits}")
    coef = np.asarray(coef, dtype=np.float64)
    qmax = 2 ** (bits - 1) - 1
    amax = float(np.abs(coef).max())
    scale = amax / qmax if amax > 0 else 1.0
    q = np.clip(np.rint(coef / scale), -qmax, qmax).astype(np.int8 if bits <= 8 else np.int16)
    b_q = np.rint(np.asarray(intercept, np.float64) / (input_scale * scale)).astype(np.int64)
    return {"weight_q": q, "bias_q": b_q, "scale": np.float64(scale), "bits": bits,
            "bias_scale": "accumulator"}


def head_from_arrays(arrays: dict, config: dict) -> dict | None:
    """The quantized head stored in a model file (``head/weight_q`` etc.), if any.

    ``lbcnn.heads.quantize`` stores the bias with its own scale
    (``head/bias_q * head/bias_scale``); it is moved to the accumulator scale
    ``input_scale * weight_scale`` here, rounded to an integer when the ratio
    is not one (``bias_requantized``: the engine's bias then differs from the
    stored one by at most half an accumulator step).
    """
    if "head/weight_q" not in arrays:
        return None
    meta = config.get("head", {}) or {}
    q = np.asarray(arrays["head/weight_q"])
    bits = int(meta.get("bits", 8 if q.dtype.itemsize == 1 else 16))
    scale = np.asarray(arrays["head/scale"], np.float64).reshape(-1)
    if scale.size == 1:
        scale = scale[0]
    bq = np.asarray(arrays.get("head/bias_q", np.zeros(q.shape[1])))
    head = {"weight_q": q, "bias_q": bq, "scale": scale, "bits": bits,
            "bias_scale": "accumulator"}
    if "head/bias_scale" in arrays:
        b = bq.astype(np.float64) * np.asarray(arrays["head/bias_scale"], np.float64).reshape(-1)
        b = b.astype(np.float32).astype(np.float64)  # the float value the model uses
        acc = b / (float(config["input_scale"]) * scale)
        head["bias_q"] = np.rint(acc).astype(np.int64)
        head["bias_requantized"] = bool(np.any(np.abs(acc - np.rint(acc)) > 1e-9))
    return head


def _model_head(model) -> dict | None:
    for attr in ("quantized_head_", "head_q_"):
        head = getattr(model, attr, None)
        if isinstance(head, dict) and "weight_q" in head:
            return head
    # a fixed-point head quantized in memory (heads.quantize.apply_quantization) or loaded
    # from a file: its own integers and bits, not a fresh 8-bit quantization of coef_
    meta, arrays = getattr(model, "head_meta_", None), getattr(model, "head_arrays_", None)
    if isinstance(meta, dict) and meta.get("kind") == "fixed" and isinstance(arrays, dict):
        return head_from_arrays(arrays, {"head": meta, "input_scale": model.body_.input_scale})
    return None


# -- the head as the generated C stores it --------------------------------------------
# The streaming C consumes the head one pooled row of one final channel at a time
# (rows = final channels x pooled rows), each row in two streams: "A", the weights it
# reads in whole 32-bit words (column pairs of class pairs for int8, of single classes
# for int16: a multiple of four bytes a row, so every row stays word aligned), and
# "BC", the rest (the last class when the class count is odd, the last column when the
# pooled width is odd), read one weight at a time. Nothing is padded: A + BC = d * k.
HEAD_STORAGES = ("packed", "bytes")


def head_stream_sizes(ho: int, wo: int, cf: int, k: int, bits: int) -> dict:
    """Rows and weights per row of the two C head streams (see above)."""
    p = wo // 2
    if bits <= 8:
        ra, rbc = 4 * (k // 2) * p, (k % 2) * 2 * p + (wo % 2) * k
    else:
        ra, rbc = 2 * k * p, (wo % 2) * k
    return {"rows": cf * ho, "a": ra, "bc": rbc}


def head_flash_bytes(ho: int, wo: int, cf: int, k: int, bits: int,
                     storage: str = "packed") -> int:
    """Bytes of the C's head weight arrays: 2..7-bit weights packed (32-weight groups of
    n words per stream, ``engine.bits.lane_words``), else one int8 / int16 each."""
    from .bits import PACKED_BITS, lane_words

    if storage not in HEAD_STORAGES:
        raise ConfigError(f"head storage must be one of {', '.join(HEAD_STORAGES)}")
    sz = head_stream_sizes(ho, wo, cf, k, bits)
    if storage == "packed" and bits in PACKED_BITS:
        return 4 * sum(lane_words(sz["rows"] * sz[s], bits) for s in ("a", "bc"))
    return (1 if bits <= 8 else 2) * ho * wo * cf * k


def bias_flash_bytes(bias_q) -> int:
    """Bytes per class of the C's bias: int32 when every bias fits, else int64."""
    b = np.abs(np.asarray(bias_q, dtype=np.int64))
    return 4 if b.max(initial=0) <= INT32_MAX else 8


# -- the plan -------------------------------------------------------------------
@dataclass
class IntegerPlan:
    input_shape: tuple[int, int, int]
    ops: list[dict]
    head: dict
    classes: np.ndarray
    act_dtype: str
    bounds: dict = field(default_factory=dict)
    # how the generated C stores a 2..7-bit head: "packed" (n bits a weight) or "bytes"
    # (one int8 a weight, the layout before packing: a baseline for benchmarks)
    head_storage: str = "packed"

    @property
    def n_features(self) -> int:
        return int(self.head["weight_q"].shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.head["weight_q"].shape[1])

    @property
    def final_shape(self) -> tuple[int, int, int]:
        """(rows, columns, channels) of the last pooled map: the head's input."""
        return tuple(int(v) for v in self.ops[-1]["out_shape"])

    def weight_bytes(self) -> dict:
        """Bytes of the generated C's weight arrays, as it writes them: packed +-1 kernels
        (one bit a tap, per conv stage), the head (``head_flash_bytes``), the bias at the
        accumulator scale and the per-class rescale multipliers (int32)."""
        conv = sum(max(1, int(op["neg_bits"].nbytes)) for op in self.ops
                   if op["type"] == "sign_dwconv3")
        head = head_flash_bytes(*self.final_shape, self.n_classes, self.head["bits"],
                                self.head_storage)
        bias = bias_flash_bytes(self.head["bias_q"]) * self.n_classes
        rescale = 4 * self.n_classes if self.head.get("rescale") == "fixed-point" else 0
        return {"conv_packed": conv, "head": head, "bias": bias, "rescale": rescale,
                "total": conv + head + bias + rescale}

    def describe(self) -> dict:
        """A JSON-able summary: ops, shapes, bounds and accumulator widths."""
        ops = []
        for op in self.ops:
            ops.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in op.items()
                        if not isinstance(v, np.ndarray)})
        h = self.head
        return {"input": {"shape": list(self.input_shape), "dtype": "uint8", "bound": 255},
                "activation_dtype": self.act_dtype, "ops": ops,
                "head": {"bits": h["bits"], "features": self.n_features,
                         "classes": self.n_classes, "rescale": h["rescale"],
                         "feature_bound": h["feature_bound"], "q_max": h["q_max"],
                         "partial_dtype": h["partial_dtype"], "chunk": h["chunk"],
                         "accumulator_dtype": h["acc_dtype"], "accumulator_bound": h["acc_bound"],
                         "bias_requantized": h["bias_requantized"],
                         **({"rescale_shift": h["shift"]} if h["rescale"] == "fixed-point" else {}),
                         **({"tflite_rounding": _requant_summary(h["requant"])}
                            if "requant" in h else {})},
                "weight_bytes": self.weight_bytes()}


def _requant_summary(rq: dict) -> dict:
    return {"logits": rq["out_dtype"], "output_scale": rq["output_scale_f32"],
            "k": rq["shift_k"], "multiplier": [int(v) for v in rq["multiplier"]],
            "shift": [int(v) for v in rq["shift"]]}


def _compile_head(head: dict, feature_bound: int, n_features: int, n_classes: int,
                  input_scale: float) -> dict:
    q = np.asarray(head["weight_q"])
    if not np.issubdtype(q.dtype, np.integer):
        raise ConfigError(f"quantized head weights must be integers, got {q.dtype}")
    if q.shape != (n_features, n_classes):
        raise ConfigError(f"quantized head shape {q.shape} does not match the body "
                          f"({n_features} features, {n_classes} classes)")
    bits = int(head.get("bits", 8))
    if bits > 16:
        raise ConfigError(f"a {bits}-bit head is not supported (at most 16 bits)")
    qmax_allowed = 2 ** (bits - 1) - 1
    q_max = int(np.abs(q.astype(np.int64)).max()) if q.size else 0
    if q_max > qmax_allowed:
        raise ConfigError(f"head weights reach {q_max}, beyond the {bits}-bit range")
    q = q.astype(np.int8 if bits <= 8 else np.int16)
    scale = np.asarray(head["scale"], dtype=np.float64)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ConfigError("head scales must be finite and positive (argmax would not survive)")
    b_q = np.asarray(head.get("bias_q", np.zeros(n_classes)))
    if np.issubdtype(b_q.dtype, np.floating):
        if not np.all(b_q == np.rint(b_q)):
            raise ConfigError("head/bias_q must hold integers")
    b_q = b_q.astype(np.int64).reshape(-1)
    if b_q.size == 1 and n_classes > 1:
        b_q = np.full(n_classes, int(b_q[0]), np.int64)
    if head.get("bias_scale", "accumulator") != "accumulator":
        raise ConfigError(f"bias_q at scale {head.get('bias_scale')!r} is not supported; "
                          "store it at the accumulator scale (input_scale * weight scale)")
    per_class = scale.size > 1
    if per_class and scale.shape != (n_classes,):
        raise ConfigError(f"per-class head scale has shape {scale.shape}, expected ({n_classes},)")
    # worst case: every feature at its bound, every product with the sign of q
    col_abs = np.abs(q.astype(np.int64)).sum(0)
    acc_bound = int(feature_bound) * int(col_abs.max() if col_abs.size else 0) + \
        int(np.abs(b_q).max() if b_q.size else 0)
    worst = int(feature_bound) * n_features * q_max
    if acc_bound > INT64_MAX or worst > INT64_MAX:
        raise ConfigError(f"head accumulator bound {max(acc_bound, worst):.3e} exceeds int64 "
                          f"({n_features} features up to {feature_bound} x weights up to "
                          f"{q_max}); the integer engine cannot compile this model")
    prod = int(feature_bound) * max(q_max, 1)
    if prod <= INT32_MAX:
        partial, chunk = "int32", max(1, min(n_features, INT32_MAX // prod))
    else:
        partial, chunk = "int64", n_features
    out = {"weight_q": q, "bias_q": b_q, "bits": bits, "scale": scale, "q_max": q_max,
           "feature_bound": int(feature_bound), "partial_dtype": partial, "chunk": int(chunk),
           "acc_bound": acc_bound, "acc_dtype": "int32" if acc_bound <= INT32_MAX else "int64",
           "input_scale": float(input_scale),
           "bias_requantized": bool(head.get("bias_requantized", False))}
    if per_class:
        # (acc + b_q) * M_c must stay inside int64: |acc + b_q| <= acc_bound
        room = 62 - int(acc_bound).bit_length()
        shift = min(30, room)
        if shift < 8:
            raise ConfigError("per-class head scales need a fixed-point multiplier with at least "
                              f"8 bits, but the accumulator bound {acc_bound:.3e} leaves {shift}")
        mult = np.rint(scale / scale.max() * 2.0 ** shift).astype(np.int64)
        if np.any(mult <= 0):
            raise ConfigError("a per-class head scale is too small against the largest one to "
                              "rescale in fixed point")
        out.update(rescale="fixed-point", mult=mult, shift=int(shift))
    else:
        out.update(rescale="none")
    return out


def compile_lbcnn(model, head: dict | None = None, bits: int = 8) -> IntegerPlan:
    body = getattr(model, "body_", None)
    if body is None:
        raise ConfigError("the model is not fitted (no body_)")
    ops: list[dict] = []
    h, w, c = (int(s) for s in body.input_shape)
    bound = 255  # uint8 pixels
    stage_bounds = [bound]
    for li, k in enumerate(body.kernels):
        convs = [(k["conv"], False)] + [(e, True) for e in k["extras"]]
        for ci, (kern, relu) in enumerate(convs):
            kern = np.asarray(kern)
            if kern.ndim != 4 or kern.shape[:2] != (3, 3):
                raise ConfigError(f"layer {li} conv {ci}: unsupported kernel shape {kern.shape} "
                                  "(the engine compiles 3x3 depthwise convs)")
            if kern.shape[2] != c:
                raise ConfigError(f"layer {li} conv {ci}: kernel expects {kern.shape[2]} input "
                                  f"channels, the previous layer gives {c}")
            if not np.all(np.abs(kern) == 1):
                raise ConfigError(f"layer {li} conv {ci}: kernel values are not all +-1; "
                                  "the add/subtract conv path needs sign kernels")
            m = int(kern.shape[3])
            taps = kern.reshape(9, c * m)
            bound = 9 * bound
            ops.append({"type": "sign_dwconv3", "layer": li, "in_shape": (h, w, c),
                        "multiplier": m, "relu_in": relu, "out_shape": (h, w, c * m),
                        "bound": bound, "neg_bits": pack_neg_bits(taps),
                        "neg_count_max": int((taps < 0).sum(0).max())})
            c *= m
            stage_bounds.append(bound)
        ho, wo = (h + 1) // 2, (w + 1) // 2
        ops.append({"type": "maxpool4s2", "layer": li, "in_shape": (h, w, c),
                    "out_shape": (ho, wo, c), "bound": bound})
        h, w = ho, wo
    # the C conv sums nine (x ^ mask) terms of up to |x|+1 before adding the
    # negative-tap count, so leave that margin inside the activation type
    margin = max(9 * (b + 1) + 9 for b in stage_bounds[:-1])
    act_dtype = _dtype_for(max(max(stage_bounds), margin))
    d = h * w * c
    if d != body.n_features:
        raise ConfigError(f"plan gives {d} features but the body has {body.n_features}")
    classes = np.asarray(model.classes_)
    if head is None:
        head = _model_head(model)
    if head is None:
        coef = getattr(model, "coef_", None)
        if coef is None:
            raise ConfigError("the model has no head (coef_) to quantize")
        head = quantize_head(coef, getattr(model, "intercept_", np.zeros(coef.shape[1])),
                             body.input_scale, bits)
    hplan = _compile_head(head, bound, d, len(classes), body.input_scale)
    bounds = {"input": 255, "stages": stage_bounds, "features": bound,
              "head_accumulator": hplan["acc_bound"]}
    return IntegerPlan(tuple(int(s) for s in body.input_shape), ops, hplan, classes,
                       act_dtype, bounds)


def compile_plan(model, head: dict | None = None, bits: int = 8,
                 rounding: str = "exact", calibration=None) -> IntegerPlan:
    """Compile a fitted model (or a native model file path) into an :class:`IntegerPlan`.

    ``head`` overrides the quantized head (``weight_q``, ``bias_q``, ``scale``,
    ``bits``); without it a model file's ``head/weight_q`` is used, else the
    float head is quantized per-tensor to ``bits`` bits. ``rounding="tflite"`` (LB-CNN)
    ends the head the way the exported ``.tflite`` does: int16 logits rescaled with
    TFLite's ``MultiplyByQuantizedMultiplier`` (:mod:`lbcnn.engine.requant`), the logit
    step chosen on ``calibration`` images (the ones the export used) or the worst case.
    """
    if rounding not in ("exact", "tflite"):
        raise ConfigError(f"rounding must be 'exact' or 'tflite', got {rounding!r}")
    from pathlib import Path

    if isinstance(model, (str, Path)):
        from ..io.native import load_model_file
        from ..models import load_model

        config, arrays = load_model_file(model)
        if head is None:
            head = head_from_arrays(arrays, config)
        model = load_model(model)
    plan = compiler_for(model)(model, head=head, bits=bits)
    if rounding == "tflite":
        from .requant import with_tflite_rounding
        plan = with_tflite_rounding(plan, calibration)
    return plan


def _compile_lbcnn_entry(model, head: dict | None = None, bits: int = 8) -> IntegerPlan:
    return compile_lbcnn(model, head, bits)


def _is_lbcnn(model) -> bool:
    from ..models.lbcnn import LBCNN
    return isinstance(model, LBCNN)


register_compiler("lbcnn", _is_lbcnn, _compile_lbcnn_entry)


def dequantized_model(model, plan: IntegerPlan):
    """A float copy of ``model`` whose head is the plan's dequantized head."""
    import copy

    ref = copy.copy(model)
    h = plan.head
    s = h["scale"].reshape(-1) if h["scale"].size > 1 else float(h["scale"])
    ref.coef_ = (h["weight_q"].astype(np.float64) * s).astype(np.float32)
    ref.intercept_ = (h["bias_q"].astype(np.float64) * h["input_scale"] * s).astype(np.float32)
    return ref
