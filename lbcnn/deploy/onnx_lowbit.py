"""ONNX export of a lowbit model (``models.lowbit``): the integer pipeline, exactly.

Input ``images``: uint8 NHWC raw pixels. Output ``logits``: float64 (N, classes) holding
the integer logits of the integer engine and the C (one unit = ``lbcnn_logit_scale`` of a
real logit, in the metadata). Every value is an integer below 2^53 carried in float64, so
the graph computes the very integers:

- the exact area resize (``data.images``) as two ``MatMul`` with the integer overlaps, then
  ``Floor((2 t + H W) / (2 H W))`` (the rounded quotient of integers below 2^52 never
  crosses an integer, so the floor is exact);
- each 3x3 'valid' conv as nine (or 9 x planes) ``Slice`` x per-path weight ``Mul`` + ``Add``
  (onnxruntime has no float64 ``Conv``); a path's first conv reads the planes it reads in C;
- ``rshift(x, e) = Floor((x + floor(2^e / 2)) / 2^e)`` with per-channel constants, ``Clip``
  for ReLU and saturation, ``MaxPool`` 2x2;
- dense layers as ``MatMul`` with the integer weights, the fixed-point requantization
  as above (products below 2^47).
"""
from __future__ import annotations

import json

import numpy as np

from ..models.lowbit import LowBitCNN
from .onnx_common import OPSET, class_names, import_onnx, provenance_json, register_onnx_builder


def build_lowbit_onnx(model, input_channels=None):
    onnx = import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    from ..data.images import overlaps

    fz = model.frozen_
    a = fz["arch"]
    H, W, C = fz["input_shape"]
    m, size = a["channels"], a["size"]
    nodes, inits = [], []
    qmax = float((1 << a["act_bits"]) - 1)

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, list(inputs), [output], **attrs))
        return output

    def rshift(x, e, shape, tag):
        e = np.asarray(e, np.int64)
        init(f"{tag}_half", (np.floor(np.exp2(e) / 2)).astype(np.float64).reshape(shape))
        init(f"{tag}_pow", np.exp2(e).astype(np.float64).reshape(shape))
        t = node("Div", [node("Add", [x, f"{tag}_half"], f"{tag}_plus"), f"{tag}_pow"], f"{tag}_div")
        return node("Floor", [t], f"{tag}_floor")

    init("zero", np.array(0.0))
    init("map_max", np.array(32767.0))
    init("qmax", np.array(qmax))
    x = node("Cast", ["images"], "x64", to=TensorProto.DOUBLE)
    x = node("Transpose", [x], "x_nchw", perm=[0, 3, 1, 2])
    if (H, W) != (size, size):
        init("resize_rows", overlaps(size, H).astype(np.float64))               # (S, H)
        init("resize_cols_t", overlaps(size, W).T.astype(np.float64))           # (W, S)
        init("resize_two", np.array(2.0))
        init("resize_area", np.array(float(H * W)))
        init("resize_den", np.array(float(2 * H * W)))
        t = node("MatMul", [node("MatMul", ["resize_rows", x], "rs_rows"), "resize_cols_t"],
                 "rs_both")
        num = node("Add", [node("Mul", [t, "resize_two"], "rs_2t"), "resize_area"], "rs_num")
        # floor of a quotient of integers below 2^52 is exact after float64 rounding
        x = node("Floor", [node("Div", [num, "resize_den"], "rs_div")], "resized")
    layer, side = 0, size
    for op in a["path"]:
        if op == "p":
            x = node("MaxPool", [x], f"pool{side}", kernel_shape=[2, 2], strides=[2, 2])
            side //= 2
            continue
        c = fz["conv"][layer]
        w = np.asarray(c["w"], np.float64)                                   # (M, cin, 3, 3)
        o = side - 2
        if layer == 0 and a["first"] == "depthwise":
            init("dw_planes", np.arange(m, dtype=np.int64) // (m // C))
            x = node("Gather", [x, "dw_planes"], "dw_input", axis=1)
        terms = []
        for ci in range(w.shape[1]):
            for dy in range(3):
                for dx in range(3):
                    tag = f"c{layer}_{ci}_{dy}{dx}"
                    init(f"{tag}_start", np.array([ci if layer == 0 and a["first"] == "full"
                                                   else 0, dy, dx], np.int64))
                    end_c = ci + 1 if layer == 0 and a["first"] == "full" else m
                    init(f"{tag}_end", np.array([end_c, dy + o, dx + o], np.int64))
                    init(f"{tag}_axes", np.array([1, 2, 3], np.int64))
                    win = node("Slice", [x, f"{tag}_start", f"{tag}_end", f"{tag}_axes"],
                               f"{tag}_win")
                    init(f"{tag}_w", w[:, ci, dy, dx].reshape(1, m, 1, 1))
                    terms.append(node("Mul", [win, f"{tag}_w"], f"{tag}_prod"))
        acc = terms[0]
        for i, t in enumerate(terms[1:]):
            acc = node("Add", [acc, t], f"c{layer}_acc{i}")
        init(f"c{layer}_bias", np.asarray(c["bias"], np.float64).reshape(1, m, 1, 1))
        v = node("Add", [rshift(acc, c["shift"], (1, m, 1, 1), f"c{layer}_rs"), f"c{layer}_bias"],
                 f"c{layer}_pre")
        x = node("Clip", [v, "zero", "map_max"], f"c{layer}_out")
        side, layer = o, layer + 1
    k = side * side
    f = node("Flatten", [x], "features", axis=1)                              # (N, M*k), m-major
    init("hin_mult", np.repeat(np.asarray(fz["head_in"]["mult"], np.float64), k).reshape(1, -1))
    q = rshift(node("Mul", [f, "hin_mult"], "hin_prod"),
               np.repeat(fz["head_in"]["shift"], k), (1, -1), "hin_rs")
    q = node("Clip", [q, "zero", "qmax"], "head_input")
    n = len(fz["dense"])
    for i, d in enumerate(fz["dense"]):
        init(f"d{i}_w", np.asarray(d["w"], np.float64).T)
        init(f"d{i}_mult", np.asarray(d["mult"], np.float64).reshape(1, -1))
        init(f"d{i}_bias", np.asarray(d["bias"], np.float64).reshape(1, -1))
        acc = node("Mul", [node("MatMul", [q, f"d{i}_w"], f"d{i}_acc"), f"d{i}_mult"], f"d{i}_prod")
        v = node("Add", [rshift(acc, d["shift"], (1, -1), f"d{i}_rs"), f"d{i}_bias"],
                 "logits" if i == n - 1 else f"d{i}_pre")
        q = v if i == n - 1 else node("Clip", [v, "zero", "qmax"], f"d{i}_out")
    graph = helper.make_graph(
        nodes, "lowbit",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", H, W, C])],
        [helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["N", a["n_classes"]])],
        inits)
    om = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                           producer_name="lbcnn")
    om.ir_version = 8
    meta = getattr(model, "meta_", {}) or {}
    classes = getattr(model, "classes_", np.arange(a["n_classes"]))
    for key, value in (("lbcnn_family", "lowbit"),
                       ("lbcnn_classes", ",".join(str(int(c)) for c in classes)),
                       ("lbcnn_class_names", json.dumps(class_names(model))),
                       ("lbcnn_dataset", json.dumps(meta.get("dataset"))),
                       ("lbcnn_provenance", provenance_json(model)),
                       ("lbcnn_logit_scale", repr(float(fz["logit_scale"]))),
                       ("lbcnn_input", "uint8 NHWC raw pixels; resize inside; logits are the "
                                       "integer model's, exact in float64")):
        entry = om.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(om, full_check=True)
    return om


register_onnx_builder(LowBitCNN, build_lowbit_onnx)

__all__ = ["build_lowbit_onnx"]
