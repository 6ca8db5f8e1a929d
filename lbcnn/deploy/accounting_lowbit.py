"""Bit accounting of a lowbit model (``lbcnn info``): per-layer weights at their bit
widths, MACs, the static RAM of its C, and the flashed bytes of its plan's C arrays."""
from __future__ import annotations

from .accounting import _common_lines, _saved_and_onnx_sizes


def lowbit_ram_bytes(arch: dict, input_shape) -> dict:
    """Static RAM of the generated C by buffer (``c_lowbit``): the resized image, one int16
    path map, the head's input and the hidden activations (the caller's raw image and the
    int64 logits apart; the stack is measured by ``lbcnn mcu``)."""
    from ..models.lowbit import dense_dims

    c = int(input_shape[2])
    size = arch["size"]
    dims = dense_dims(arch)
    out = {"resized_image": c * size * size, "path_map": 2 * (size - 2) ** 2,
           "head_input": dims[0], "hidden": sum(dims[1:-1])}
    out["total"] = sum(out.values())
    return out


def account_lowbit(model, path=None, sizes: bool = True) -> dict:
    """The lowbit family: per-layer weights at their bits, MACs, and what the C flashes
    (the plan's arrays: kernels and dense weights packed, shifts, biases, multipliers)."""
    from ..engine.lowbit_plan import compile_lowbit
    from ..models.lowbit import profile

    arch = model.arch_
    rows = profile(arch)
    wb = compile_lowbit(model).weight_bytes()
    weight_bits = sum(r["bits"] for r in rows)
    out = {"family": "lowbit", "input_shape": list(model.frozen_["input_shape"]),
           "net": arch, "layers": rows, "weight_bits": weight_bits,
           "constant_bits": 8 * (wb["total"] - wb["conv"] - wb["dense"]),
           "total_kbits": 8 * wb["total"] / 1000, "params_bytes": wb["total"],
           "macs": sum(r["macs"] for r in rows),
           "conv_macs": sum(r["macs"] for r in rows if r["name"].startswith("conv")),
           "head_macs": sum(r["macs"] for r in rows if not r["name"].startswith(("conv", "pool"))),
           "static_ram_bytes": lowbit_ram_bytes(arch, model.frozen_["input_shape"]),
           "classes": arch["n_classes"]}
    if sizes:
        from ..models.lowbit import save_lowbit
        out["file_bytes"] = _saved_and_onnx_sizes(model, save_lowbit, path)
    return out


def render_lowbit(info: dict):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    a = info["net"]
    h, w, c = info["input_shape"]
    t = Table(title=f"lowbit: {a['channels']} paths {a['path']}, input {h}x{w}x{c} resized to "
                    f"{a['size']}x{a['size']}, head {'-'.join(map(str, a['hidden'])) or 'none'}")
    for col in ("layer", "type", "output", "weights", "bits/w", "kbits", "MACs"):
        t.add_column(col, justify="right" if col in ("weights", "bits/w", "kbits", "MACs") else "left")
    for r in info["layers"]:
        t.add_row(r["name"], r["kind"], "x".join(map(str, r["output"])), f"{r['weights']:,}",
                  str(r["bits_per_weight"]), f"{r['bits'] / 1000:.2f}", f"{r['macs']:,}")
    ram = info["static_ram_bytes"]
    lines = [
        f"weights {info['weight_bits'] / 1000:.2f} kbits at their bit widths + "
        f"{info['constant_bits'] / 1000:.2f} kbits of per-channel shifts, biases and "
        f"multipliers = {info['total_kbits']:.2f} kbits as flashed",
        f"MACs: {info['macs']:,} ({info['conv_macs']:,} in the channel paths, "
        f"{info['head_macs']:,} in the head)",
        f"static RAM of the C: {ram['total']:,} B (resized image {ram['resized_image']} + path "
        f"map {ram['path_map']} + head input {ram['head_input']} + hidden {ram['hidden']}), "
        "stack apart",
    ]
    lines += _common_lines(info)
    return Group(t, Text("\n".join(lines)))
