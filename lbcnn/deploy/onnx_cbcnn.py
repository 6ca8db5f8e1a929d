"""Export a CBCNN (``lbcnn.models.cbcnn``) to ONNX, node by node.

Same input convention as the LB-CNN export (``onnx_lbcnn``): ``images`` is
uint8 NHWC ``(N, H, W, C)`` raw pixels; the graph does the preprocessing.
Output ``logits``: float32 ``(N, classes)``, what ``CBCNN.decision_function``
returns (argmax = the class index).

- Preprocessing: ``y_channel`` is ``preprocess.rgb_to_y`` in int64:
  ``s = 299 R + 587 G + 114 B``, then ``s / 1000`` rounded half to even with
  ``Div`` / ``Mod`` (a 1-channel source passes through: export with
  ``input_channels=1``); ``standardize`` is per image in float64
  with ``ReduceMean`` (eq 2, ``max(sigma, 1/sqrt(P))``); otherwise one ``Mul``
  by ``input_scale`` in float32. ``equalize`` (eq 1) runs per image and
  channel in float64: ``cdf(v)`` counts the pixels ``<= v`` for the 256
  levels (a ``LessOrEqual`` against a level vector, summed over the image:
  P x 256 compares per image), then the same ``rint((cdf - cdf_min) /
  (P - cdf_min) * 255)`` look-up table as ``preprocess.equalize_hist``,
  applied with ``GatherElements``; a constant image passes unchanged.
- Weights are int8 +-1 initializers and a ``Cast`` to float (exact).
- Block = ``Conv`` 3x3 pad 1 -> ``MaxPool`` 2x2/2 -> BN -> sign. The first
  block's BN (real-valued input) is an explicit affine ``Mul`` + ``Add``
  (``alpha = gamma / sqrt(var + eps)``, ``beta - mean * alpha``, float32,
  as torch's eval BN); every later BN + sign is its folded integer threshold
  (``models.cbcnn.fold_bn_sign``, exact for integer inputs): ``Mul`` by the
  per-channel direction m = +-1, ``GreaterOrEqual`` against ``m * t``.
- sign(0) = +1 everywhere (ONNX ``Sign(0)`` is 0, so it is not used):
  ``Where(x >= 0, 1, -1)``.
- NCHW ``Flatten`` -- the same (C, H, W) order as ``torch.flatten`` in the net.
- Dense layers are ``MatMul`` with the transposed +-1 weight; the final BN
  is affine.

Only ``scale=False`` networks (pure +-1 weights) are exported.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from ..errors import ConfigError
from ..models.cbcnn import CBCNN
from .onnx_common import OPSET, class_names, import_onnx, provenance_json, register_onnx_builder


def _affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """float32 (alpha, beta) of an eval BN, computed as torch's CPU kernel does."""
    with torch.no_grad():
        invstd = 1.0 / torch.sqrt(bn.running_var.float() + bn.eps)
        gamma = bn.weight.float() if bn.weight is not None else torch.ones_like(invstd)
        beta = bn.bias.float() if bn.bias is not None else torch.zeros_like(invstd)
        alpha = invstd * gamma
        shift = beta - bn.running_mean.float() * alpha
    return alpha.numpy().astype(np.float32), shift.numpy().astype(np.float32)


def _equalize(node, init, x64: str, H: int, W: int, C: int) -> str:
    """Per-image, per-channel histogram equalization of float64 NHWC integers 0..255."""
    from onnx import TensorProto

    P = H * W
    init("eq_levels", np.arange(256, dtype=np.float64))
    init("eq_flat", np.array([0, 0, P, 1], np.int64))      # (N, C, P, 1)
    init("eq_nchw", np.array([-1, C, H, W], np.int64))
    init("eq_axis2", np.array([2], np.int64))
    init("eq_axis3", np.array([3], np.int64))
    init("eq_P", np.array(float(P), np.float64))
    init("eq_one", np.array(1.0, np.float64))
    init("eq_255", np.array(255.0, np.float64))
    init("eq_lo", np.array(0.0, np.float64))
    xc = node("Transpose", [x64], "eq_x_nchw", perm=[0, 3, 1, 2])
    x4 = node("Reshape", [xc, "eq_flat"], "eq_x4")                       # (N, C, P, 1)
    le = node("LessOrEqual", [x4, "eq_levels"], "eq_le")                   # (N, C, P, 256)
    counts = node("Cast", [le], "eq_le_f", to=TensorProto.FLOAT)           # exact below 2^24
    cdf = node("Cast", [node("ReduceSum", [counts, "eq_axis2"], "eq_cdf_f", keepdims=0)],
               "eq_cdf", to=TensorProto.DOUBLE)                            # (N, C, 256)
    x3 = node("Squeeze", [x4, "eq_axis3"], "eq_x3")                       # (N, C, P)
    lowest = node("ReduceMin", [x3], "eq_min", axes=[2], keepdims=1)       # (N, C, 1)
    at_min = node("Cast", [node("LessOrEqual", [x3, lowest], "eq_at_min_b")], "eq_at_min",
                  to=TensorProto.DOUBLE)
    cdf_min = node("ReduceSum", [at_min, "eq_axis2"], "eq_cdf_min", keepdims=1)
    span = node("Max", [node("Sub", ["eq_P", cdf_min], "eq_span0"), "eq_one"], "eq_span")
    ratio = node("Div", [node("Sub", [cdf, cdf_min], "eq_num"), span], "eq_ratio")
    lut = node("Clip", [node("Round", [node("Mul", [ratio, "eq_255"], "eq_scaled")], "eq_rint"),
                        "eq_lo", "eq_255"], "eq_lut")                       # (N, C, 256)
    idx = node("Cast", [x3], "eq_idx", to=TensorProto.INT64)
    mapped = node("GatherElements", [lut, idx], "eq_mapped", axis=2)        # (N, C, P)
    constant = node("Equal", [cdf_min, "eq_P"], "eq_constant")             # P == cdf_min
    out = node("Where", [constant, x3, mapped], "eq_out")
    out = node("Reshape", [out, "eq_nchw"], "eq_out_nchw")
    return node("Transpose", [out], "eq_f64", perm=[0, 2, 3, 1])


def build_cbcnn_onnx(model, input_channels: int | None = None):
    """The ONNX ``ModelProto`` of a ``CBCNN`` estimator (checked with ``full_check``)."""
    onnx = import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    from ..binary.quantizers import sign_pm1
    from ..models.cbcnn import fold_bn_sign

    net, pre = model.net, model.preprocess
    if net.scale:
        raise ConfigError("ONNX export of a CBCNN supports scale=False networks only "
                          "(+-1 weights without a per-channel scale H)")
    H, W, C = net.input_shape
    if pre.y_channel:
        cin = 3 if input_channels is None else int(input_channels)
        if cin not in (1, 3) or C != 1:
            raise ConfigError(f"y_channel takes 1 or 3 input channels to 1, got {cin} -> {C}")
    else:
        cin = C if input_channels is None else int(input_channels)
        if cin != C:
            raise ConfigError(f"the network takes {C} channels, not {input_channels}")
    k = net.n_classes
    nodes, inits = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, list(inputs), [output], **attrs))
        return output

    def pm1_weight(tag, w):
        init(f"{tag}_w_int8", sign_pm1(w.detach().float()).numpy().astype(np.int8))
        return node("Cast", [f"{tag}_w_int8"], f"{tag}_w", to=TensorProto.FLOAT)

    def sign(src, tag):  # sign(0) = +1
        ge = node("GreaterOrEqual", [src, "zero"], f"{tag}_ge")
        return node("Where", [ge, "one", "minus_one"], tag)

    def threshold(src, bn, tag, shape):
        t, flip = fold_bn_sign(bn, integer=True)
        m = np.where(flip.numpy(), -1.0, 1.0).astype(np.float32)
        mt = (m * t.numpy().astype(np.float32)).astype(np.float32)  # -t for flipped: x <= t
        init(f"{tag}_dir", m.reshape(shape))
        init(f"{tag}_thr", mt.reshape(shape))
        xm = node("Mul", [src, f"{tag}_dir"], f"{tag}_xm")
        ge = node("GreaterOrEqual", [xm, f"{tag}_thr"], f"{tag}_ge")
        return node("Where", [ge, "one", "minus_one"], tag)

    def affine(src, bn, tag, shape):
        a, b = _affine(bn)
        init(f"{tag}_alpha", a.reshape(shape))
        init(f"{tag}_beta", b.reshape(shape))
        return node("Add", [node("Mul", [src, f"{tag}_alpha"], f"{tag}_mul"), f"{tag}_beta"], tag)

    init("zero", np.array(0.0, np.float32))
    init("one", np.array(1.0, np.float32))
    init("minus_one", np.array(-1.0, np.float32))

    # -- preprocessing (NHWC) -------------------------------------------------
    cur = "images"
    if pre.y_channel and cin == 3:
        from ..preprocess import LUMA_PERMILLE
        init("luma", LUMA_PERMILLE.reshape(1, 1, 1, 3))
        for name, v in (("y_1000", 1000), ("y_500", 500), ("y_2", 2), ("y_1", 1), ("y_axis3", [3])):
            init(name, np.array(v, np.int64))
        xi = node("Cast", [cur], "x_i64", to=TensorProto.INT64)
        s_ = node("ReduceSum", [node("Mul", [xi, "luma"], "y_terms"), "y_axis3"], "y_s", keepdims=1)
        q = node("Div", [s_, "y_1000"], "y_q")                  # s >= 0: Div truncates = floor
        r = node("Mod", [s_, "y_1000"], "y_r")
        odd = node("Equal", [node("Mod", [q, "y_2"], "y_q2"), "y_1"], "y_q_odd")
        up = node("Or", [node("Greater", [r, "y_500"], "y_above"),
                         node("And", [node("Equal", [r, "y_500"], "y_half"), odd], "y_tie_up")],
                  "y_up")
        y = node("Add", [q, node("Cast", [up], "y_up_i", to=TensorProto.INT64)], "y_i64")
        cur = node("Cast", [y], "y_f64", to=TensorProto.DOUBLE)  # integers 0..255, exact
    if pre.equalize:
        cur = _equalize(node, init, cur if cur != "images" else
                        node("Cast", [cur], "x_f64", to=TensorProto.DOUBLE), H, W, C)
    if pre.standardize:
        x64 = cur if cur != "images" else node("Cast", [cur], "x_f64", to=TensorProto.DOUBLE)
        p = H * W * C
        init("std_floor", np.array(1.0 / np.sqrt(p), np.float64))
        mu = node("ReduceMean", [x64], "std_mu", axes=[1, 2, 3], keepdims=1)
        d = node("Sub", [x64, mu], "std_d")
        var = node("ReduceMean", [node("Mul", [d, d], "std_d2")], "std_var",
                   axes=[1, 2, 3], keepdims=1)
        sigma = node("Max", [node("Sqrt", [var], "std_sigma"), "std_floor"], "std_den")
        cur = node("Cast", [node("Div", [d, sigma], "std_x64")], "x_in", to=TensorProto.FLOAT)
    else:
        xf = node("Cast", [cur], "x_f32", to=TensorProto.FLOAT)
        init("input_scale", np.array(pre.input_scale, np.float32))
        cur = node("Mul", [xf, "input_scale"], "x_in")
    cur = node("Transpose", [cur], "x_nchw", perm=[0, 3, 1, 2])

    # -- binary blocks (NCHW) -------------------------------------------------
    mods = list(net.features)
    for i in range(0, len(mods), 4):
        conv, bn = mods[i], mods[i + 2]
        b = i // 4
        w = pm1_weight(f"conv{b}", conv.weight)
        cur = node("Conv", [cur, w], f"conv{b}", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                   strides=[1, 1])
        cur = node("MaxPool", [cur], f"pool{b}", kernel_shape=[2, 2], strides=[2, 2])
        shape = (1, -1, 1, 1)
        if b == 0:  # real-valued input: explicit BN, then sign
            cur = sign(affine(cur, bn, f"bn{b}", shape), f"act{b}")
        else:       # integer pre-activations: folded threshold
            cur = threshold(cur, bn, f"act{b}", shape)
    cur = node("Flatten", [cur], "features", axis=1)  # NCHW order == torch.flatten

    mods = list(net.head_hidden)
    for i in range(0, len(mods), 3):
        lin, bn = mods[i], mods[i + 1]
        j = i // 3
        init(f"dense{j}_w_int8", sign_pm1(lin.weight.detach().float()).numpy().T.astype(np.int8))
        w = node("Cast", [f"dense{j}_w_int8"], f"dense{j}_w", to=TensorProto.FLOAT)
        cur = threshold(node("MatMul", [cur, w], f"dense{j}"), bn, f"dense_act{j}", (1, -1))
    init("classifier_w_int8",
         sign_pm1(net.classifier.weight.detach().float()).numpy().T.astype(np.int8))
    w = node("Cast", ["classifier_w_int8"], "classifier_w", to=TensorProto.FLOAT)
    cur = node("MatMul", [cur, w], "classifier")
    a, bb = _affine(net.out_bn)
    init("out_bn_alpha", a.reshape(1, -1))
    init("out_bn_beta", bb.reshape(1, -1))
    node("Add", [node("Mul", [cur, "out_bn_alpha"], "out_bn_mul"), "out_bn_beta"], "logits")

    graph = helper.make_graph(
        nodes, "cbcnn",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", H, W, cin])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        inits)
    om = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                           producer_name="lbcnn")
    om.ir_version = 8
    for key, value in (("lbcnn_family", "cbcnn"),
                       ("lbcnn_preprocess", pre.to_json()),
                       ("lbcnn_classes", ",".join(str(c) for c in range(k))),
                       ("lbcnn_class_names", json.dumps(class_names(model))),
                       ("lbcnn_dataset", json.dumps((getattr(model, "meta_", {}) or {}).get("dataset"))),
                       ("lbcnn_provenance", provenance_json(model)),
                       ("lbcnn_input", "uint8 NHWC raw pixels; preprocessing inside")):
        entry = om.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(om, full_check=True)
    return om


register_onnx_builder(CBCNN, build_cbcnn_onnx)
