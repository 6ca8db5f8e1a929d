"""Bit accounting of an LB-CNN: weights, bits, MACs and file sizes per layer.

Kernels count 1 bit per weight (they are +-1); the head counts n bits per
weight and per bias for a fixed-point head (32 for float32), plus 32 bits per
stored scale. The conv layers need no multiplications: every MAC there is an
add or a subtract. The paper's "Params (k-bits) Conv+ELM" figure is
``conv_bits / 1000 + d * k * 8 / 1000`` (an 8-bit head, bias not counted).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..binary.pooling import pooled_size


def layer_table(model) -> list[dict]:
    body = model.body_
    h, w, c = body.input_shape
    rows = []
    for i, k in enumerate(body.kernels):
        nf = int(k["conv"].shape[3])
        rows.append({"layer": f"conv{i}", "type": f"depthwise 3x3 x{nf} (+-1)",
                     "output": [h, w, c * nf], "weights": int(k["conv"].size), "bits_per_weight": 1,
                     "bits": int(k["conv"].size), "macs": h * w * c * nf * 9,
                     "mac_kind": "add/sub only"})
        c *= nf
        for j, e in enumerate(k["extras"]):
            rows.append({"layer": f"conv{i}_{j}", "type": "relu + depthwise 3x3 x1 (+-1)",
                         "output": [h, w, c], "weights": int(e.size), "bits_per_weight": 1,
                         "bits": int(e.size), "macs": h * w * c * 9, "mac_kind": "add/sub only"})
        h, w = pooled_size(h), pooled_size(w)
        rows.append({"layer": f"pool{i}", "type": "maxpool 4x4/2 same", "output": [h, w, c],
                     "weights": 0, "bits_per_weight": 0, "bits": 0, "macs": 0,
                     "mac_kind": "compare"})
    d, kcls = model.coef_.shape
    meta = getattr(model, "head_meta_", {"kind": "float32"})
    if meta.get("kind") == "fixed":
        nb, bb = int(meta["bits"]), int(meta.get("bias_bits", meta["bits"]))
        n_scales = (kcls if meta.get("scale") == "per_class" else 1) + 1
        htype = (f"dense int{nb} ({meta.get('scale')}{', pow2' if meta.get('pow2') else ''})")
    else:
        nb = bb = 32
        n_scales = 0
        htype = "dense float32"
    rows.append({"layer": "head", "type": htype, "output": [kcls], "weights": d * kcls,
                 "bits_per_weight": nb, "bits": d * kcls * nb, "macs": d * kcls,
                 "mac_kind": "multiply-add"})
    rows.append({"layer": "head bias", "type": f"bias ({bb}-bit)", "output": [kcls],
                 "weights": kcls, "bits_per_weight": bb, "bits": kcls * bb, "macs": kcls,
                 "mac_kind": "add"})
    if n_scales:
        rows.append({"layer": "head scales", "type": "float32 scales" +
                     (" (powers of two: shifts)" if meta.get("pow2") else ""),
                     "output": [], "weights": n_scales, "bits_per_weight": 32,
                     "bits": 32 * n_scales, "macs": kcls, "mac_kind": "rescale"})
    return rows


def export_sizes(model, native_path=None) -> dict:
    """Bytes on disk of each format, exporting to a temporary folder."""
    from ..models.lbcnn import save_lbcnn

    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_lbcnn(model, tmp / "model.npz")
        sizes["native"] = (tmp / "model.npz").stat().st_size
        try:
            from .keras_export import export_h5
            export_h5(model, tmp / "model.h5")
            sizes["h5"] = (tmp / "model.h5").stat().st_size
        except Exception as exc:  # optional dependency missing or failing
            sizes["h5"] = None
            sizes["h5_error"] = str(exc).splitlines()[0][:200]
        try:
            from .onnx_export import export_onnx
            export_onnx(model, tmp / "model.onnx")
            sizes["onnx"] = (tmp / "model.onnx").stat().st_size
        except Exception as exc:
            sizes["onnx"] = None
            sizes["onnx_error"] = str(exc).splitlines()[0][:200]
    if native_path is not None and Path(native_path).exists():
        sizes["this_file"] = Path(native_path).stat().st_size
    return sizes


def account(model, path=None, sizes: bool = True) -> dict:
    rows = layer_table(model)
    conv_bits = sum(r["bits"] for r in rows if r["layer"].startswith("conv"))
    head_bits = sum(r["bits"] for r in rows if r["layer"].startswith("head"))
    d, k = model.coef_.shape
    total_bits = conv_bits + head_bits
    float_bits = conv_bits + 32 * (d * k + k)
    out = {
        "filters": list(model.body_.filters), "nl": model.body_.nl,
        "input_shape": list(model.body_.input_shape), "features": d, "classes": k,
        "head": getattr(model, "head_meta_", {"kind": "float32"}),
        "layers": rows,
        "conv_bits": conv_bits, "head_bits": head_bits,
        "total_kbits": total_bits / 1000, "params_bytes": total_bits / 8,
        "float32_head_params_bytes": float_bits / 8,
        "macs": sum(r["macs"] for r in rows if r["mac_kind"] != "compare"),
        "conv_macs_add_sub_only": sum(r["macs"] for r in rows if r["layer"].startswith("conv")),
        "paper_params_kbits_conv_elm": conv_bits / 1000 + d * k * 8 / 1000,
    }
    if sizes:
        out["file_bytes"] = export_sizes(model, path)
    return out


def render(info: dict):
    """A rich renderable: the per-layer table and a summary."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from ..memory import human_bytes

    t = Table(title=f"LB-CNN filters {','.join(map(str, info['filters']))}, nl {info['nl']}, "
                    f"input {'x'.join(map(str, info['input_shape']))}")
    for col in ("layer", "type", "output", "weights", "bits/w", "kbits", "MACs", "MAC kind"):
        t.add_column(col, justify="right" if col in ("weights", "bits/w", "kbits", "MACs") else "left")
    for r in info["layers"]:
        t.add_row(r["layer"], r["type"], "x".join(map(str, r["output"])), f"{r['weights']:,}",
                  str(r["bits_per_weight"]), f"{r['bits'] / 1000:.2f}", f"{r['macs']:,}",
                  r["mac_kind"])
    lines = [
        f"total: {info['total_kbits']:.2f} kbits = {human_bytes(info['params_bytes'])} of parameters "
        f"(conv {info['conv_bits'] / 1000:.2f} kbits, head {info['head_bits'] / 1000:.2f} kbits)",
        f"same shape with a float32 head: {human_bytes(info['float32_head_params_bytes'])}",
        f"MACs: {info['macs']:,}, of which {info['conv_macs_add_sub_only']:,} in the conv layers "
        f"are additions/subtractions only",
        f"paper's 'Params (k-bits) Conv+ELM': {info['paper_params_kbits_conv_elm']:.1f}",
    ]
    fb = info.get("file_bytes")
    if fb:
        parts = [f"{k} {human_bytes(v)}" if v is not None else f"{k} n/a"
                 for k, v in fb.items() if not k.endswith("_error")]
        lines.append("file sizes: " + ", ".join(parts))
    return Group(t, Text("\n".join(lines)))
