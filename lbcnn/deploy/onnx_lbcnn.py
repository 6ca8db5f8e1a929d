"""Export an LB-CNN to ONNX, built node by node with ``onnx.helper``.

Input ``images``: uint8, NHWC ``(N, H, W, C)`` -- the raw pixels, exactly what
the datasets hold. The graph casts them to float32 and runs the +-1 convs on
the integer-valued pixels (exact sums, as the native body does); the input
scale (``body_.input_scale``) is one ``Mul`` after the last pooling, which is
equivalent because conv, ReLU and max-pool commute with a positive scale.
Output ``logits``: float32 ``(N, classes)`` (argmax = the predicted class
index into ``lbcnn_classes`` in the metadata).

- Kernels are stored as int8 +-1 initializers and ``Cast`` to float, so the
  file shows (and is sized by) their binary nature.
- Depthwise conv = ``Conv`` with ``group=C``; ``MaxPool`` 4x4/2 with explicit
  pads reproducing TF/Keras 'same' (one cell before, the rest after).
- ``Transpose`` back to NHWC before ``Flatten`` so features keep the (H, W, C)
  order of the head's rows.
- The head is ``MatMul`` + ``Add``. A fixed-point head is stored as its
  int8/int16 integers plus ``Cast`` and ``Mul`` by its scale(s) (per tensor,
  or per class).
"""
from __future__ import annotations

import json

import numpy as np

from ..binary.pooling import pooled_size
from ..models.lbcnn import LBCNN
from .onnx_common import OPSET, class_names, import_onnx, provenance_json, register_onnx_builder


def same_pads(n: int) -> tuple[int, int]:
    """TF 'same' padding of a 4-wide, stride-2 window: (before, after)."""
    total = max((pooled_size(n) - 1) * 2 + 4 - n, 0)
    return total // 2, total - total // 2


def build_lbcnn_onnx(model):
    onnx = import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    body = model.body_
    H, W, C = body.input_shape
    k = len(model.classes_)
    nodes, inits = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    nodes.append(helper.make_node("Cast", ["images"], ["x_f"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]))
    cur, h, w, c = "x_nchw", H, W, C

    def dwconv(src, kernel, tag):
        kh, kw, cin, m = kernel.shape
        wt = kernel.reshape(kh, kw, cin * m).transpose(2, 0, 1)[:, None].astype(np.int8)
        init(f"{tag}_w_int8", wt)
        nodes.append(helper.make_node("Cast", [f"{tag}_w_int8"], [f"{tag}_w"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Conv", [src, f"{tag}_w"], [tag], group=cin,
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
        return tag

    for i, kern in enumerate(body.kernels):
        cur = dwconv(cur, kern["conv"], f"conv{i}")
        c *= kern["conv"].shape[3]
        for j, e in enumerate(kern["extras"]):
            nodes.append(helper.make_node("Relu", [cur], [f"relu{i}_{j}"]))
            cur = dwconv(f"relu{i}_{j}", e, f"conv{i}_{j}")
        (ph0, ph1), (pw0, pw1) = same_pads(h), same_pads(w)
        nodes.append(helper.make_node("MaxPool", [cur], [f"pool{i}"], kernel_shape=[4, 4],
                                      strides=[2, 2], pads=[ph0, pw0, ph1, pw1]))
        cur, h, w = f"pool{i}", pooled_size(h), pooled_size(w)

    nodes.append(helper.make_node("Transpose", [cur], ["pool_nhwc"], perm=[0, 2, 3, 1]))
    nodes.append(helper.make_node("Flatten", ["pool_nhwc"], ["flat"], axis=1))
    init("input_scale", np.array(body.input_scale, dtype=np.float32))
    nodes.append(helper.make_node("Mul", ["flat", "input_scale"], ["features"]))

    head = getattr(model, "head_meta_", {"kind": "float32"})
    if head.get("kind") == "fixed":
        # Cast + Mul rather than DequantizeLinear: onnxruntime's extended graph
        # optimizer fuses a per-axis DequantizeLinear -> MatMul into a lossy
        # kernel (1.6e-2 relative logit error seen with onnxruntime 1.31).
        qa = model.head_arrays_
        init("head_w_q", qa["head/weight_q"])
        init("head_w_scale", qa["head/scale"].astype(np.float32))  # (1,) or (k,)
        nodes.append(helper.make_node("Cast", ["head_w_q"], ["head_w_qf"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", ["head_w_qf", "head_w_scale"], ["head_w"]))
        init("head_b_q", qa["head/bias_q"])
        init("head_b_scale", qa["head/bias_scale"].astype(np.float32))
        nodes.append(helper.make_node("Cast", ["head_b_q"], ["head_b_qf"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", ["head_b_qf", "head_b_scale"], ["head_b"]))
    else:
        init("head_w", model.coef_.astype(np.float32))
        init("head_b", model.intercept_.astype(np.float32))
    nodes.append(helper.make_node("MatMul", ["features", "head_w"], ["head_mm"]))
    nodes.append(helper.make_node("Add", ["head_mm", "head_b"], ["logits"]))

    graph = helper.make_graph(
        nodes, "lbcnn",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", H, W, C])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        inits)
    om = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                           producer_name="lbcnn")
    om.ir_version = 8
    for key, value in (("lbcnn_input_scale", repr(float(body.input_scale))),
                       ("lbcnn_classes", ",".join(str(int(c)) for c in model.classes_)),
                       ("lbcnn_class_names", json.dumps(class_names(model))),
                       ("lbcnn_dataset", json.dumps((getattr(model, "meta_", {}) or {}).get("dataset"))),
                       ("lbcnn_provenance", provenance_json(model)),
                       ("lbcnn_input", "uint8 NHWC raw pixels; scale applied inside"),
                       *_input_color(model)):
        entry = om.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(om, full_check=True)
    return om


def _input_color(model) -> list[tuple[str, str]]:
    """A Y-channel model's input is luma: the caller converts RGB with BT.601 first."""
    if (getattr(model, "meta_", {}) or {}).get("input_color") == "y":
        return [("lbcnn_input_color", "y")]
    return []


def _build(model, input_channels=None):
    """``input_channels`` matters only for a CBCNN's ``y_channel``; an LB-CNN's graph takes
    the channels it was fitted on."""
    return build_lbcnn_onnx(model)


register_onnx_builder(LBCNN, _build)
