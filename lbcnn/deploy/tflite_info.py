"""``lbcnn info model.tflite``: ops, the op resolver, every tensor with its bytes and
lifetime, and the arena TensorFlow Lite Micro reports (``print_allocations``).

TFLite Micro's report is per category (activations = the arena "head", planned by its
greedy memory planner; persistent structs = the "tail"). The per-tensor table lists each
activation tensor's bytes and the ops it lives across, and the largest sum of tensors live
at once -- for a chain of ops, what the planner's head must hold.
"""
from __future__ import annotations

import numpy as np

from .tflite_builder import METADATA_NAME, describe, read_metadata
from .tflite_common import resolver_lines

_BYTES = {"int4": 0.5, "int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float32": 4, "int64": 8}


def tensor_table(d: dict) -> tuple[list[dict], int]:
    """Per-tensor bytes and lifetime (first, last op index); the peak of live activations."""
    n_ops = len(d["ops"])
    first: dict[int, int] = {i: -1 for i in d["inputs"]}
    last: dict[int, int] = {i: n_ops for i in d["outputs"]}
    for k, op in enumerate(d["ops"]):
        for t in op["outputs"]:
            first.setdefault(t, k)
        for t in op["inputs"]:
            if t >= 0:
                last[t] = max(last.get(t, k), k)
    rows = []
    for i, t in enumerate(d["tensors"]):
        n = int(np.prod(t["shape"])) if t["shape"] else 1
        nbytes = int(np.ceil(n * _BYTES.get(t["dtype"], 8)))
        rows.append({"index": i, "name": t["name"], "dtype": t["dtype"], "shape": t["shape"],
                     "bytes": nbytes, "constant": t["constant"],
                     "first_op": None if t["constant"] else first.get(i),
                     "last_op": None if t["constant"] else last.get(i)})
    peak = 0
    for k in range(n_ops):
        live = sum(r["bytes"] for r in rows if not r["constant"] and r["first_op"] is not None
                   and r["first_op"] <= k <= (r["last_op"] if r["last_op"] is not None else k))
        peak = max(peak, live)
    return rows, peak


def tflite_info(data: bytes, arena: bool = True) -> dict:
    from .tflite_builder import validate
    validate(data)
    d = describe(data)
    rows, peak = tensor_table(d)
    ops = []
    for op in d["ops"]:
        if op["op"] not in ops:
            ops.append(op["op"])
    from ..metadata import validate_tflite_metadata
    out_shape = d["tensors"][d["outputs"][0]]["shape"]
    meta = validate_tflite_metadata(read_metadata(data).get(METADATA_NAME),
                                    int(out_shape[-1]) if out_shape else 1,
                                    f"metadata {METADATA_NAME}")
    info = {"bytes": len(data), "ops": [op["op"] for op in d["ops"]], "op_types": ops,
            "resolver": resolver_lines(ops),
            "input": {k: d["tensors"][d["inputs"][0]][k] for k in ("dtype", "shape", "scale",
                                                                  "zero_point")},
            "output": {k: d["tensors"][d["outputs"][0]][k] for k in ("dtype", "shape", "scale",
                                                                    "zero_point")},
            "constant_bytes": sum(r["bytes"] for r in rows if r["constant"]),
            "tensors": rows, "live_activation_peak": peak,
            "metadata": {k: meta[k] for k in ("family", "dataset", "exactness", "classes")
                         if k in meta}}
    if arena:
        from .tflite_runtime import Runner
        info["arena"] = Runner(data, "tflm").allocations()
    return info


def render_tflite_info(info: dict):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"TFLite model, {info['bytes']:,} bytes: "
                    f"{' -> '.join(info['ops'])}")
    for col in ("#", "tensor", "dtype", "shape", "bytes", "kind", "live (ops)"):
        t.add_column(col, justify="right" if col in ("#", "bytes") else "left")
    for r in info["tensors"]:
        live = "" if r["constant"] else \
            f"{'in' if r['first_op'] == -1 else r['first_op']}..{r['last_op']}"
        t.add_row(str(r["index"]), r["name"], r["dtype"], "x".join(map(str, r["shape"])),
                  f"{r['bytes']:,}", "constant" if r["constant"] else "activation", live)
    lines = [f"constants: {info['constant_bytes']:,} bytes; largest sum of activations live "
             f"at once: {info['live_activation_peak']:,} bytes"]
    a = info.get("arena")
    if a:
        lines.append(f"TensorFlow Lite Micro arena: {a['total']:,} bytes = activations (head) "
                     f"{a.get('head', 0):,} + persistent (tail) {a.get('tail', 0):,} "
                     f"(64-bit host; the persistent part is smaller on a 32-bit MCU)")
        for c in a["categories"]:
            lines.append(f"  {c['name']}: {c['bytes']:,} bytes ({c['count']} {c['unit']})")
    lines.append("op resolver: " + " ".join(info["resolver"]))
    if info["metadata"].get("exactness"):
        lines.append(f"exact: {info['metadata']['exactness']}")
    return Group(t, *[Text(x) for x in lines])
