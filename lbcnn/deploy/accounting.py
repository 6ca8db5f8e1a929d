"""Bit accounting of an LB-CNN: weights, bits, MACs and file sizes per layer
(a CBCNN: ``account_cbcnn``, from its ``profile()``, at the end of this file; a lowbit
model: ``accounting_lowbit``).

Bits are what the generated C flashes (``lbcnn export --format c``, whose arrays a
test compiles and measures): kernels 1 bit per weight (+-1, packed per conv stage),
a fixed-point head n bits per weight (2..7 bits packed in 32-weight groups, 8 and 16
as int8 / int16), its bias as the int32 (int64 when one needs it) the integer engine
adds at the accumulator scale, and per-class scales as int32 fixed-point multipliers;
a per-tensor scale is not flashed (the C's argmax needs none). A float32 head counts
32 bits per weight and bias (the model file); its C export (an 8-bit head) is under
``flash``, which every family has: the weight bytes of its generated C. The conv
layers need no multiplications: every MAC there is an add or a subtract. The
paper's "Params (k-bits) Conv+ELM" figure is ``conv_bits / 1000 + d * k * 8 / 1000``
(an 8-bit head, bias not counted).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..binary.pooling import pooled_size


def _final_shape(body) -> tuple[int, int, int]:
    h, w, c = body.input_shape
    for k in body.kernels:
        c *= int(k["conv"].shape[3])
        h, w = pooled_size(h), pooled_size(w)
    return h, w, c


def _bias_bytes(model) -> int:
    """Bytes per class of the flashed bias: int32 unless the model's bias at the
    accumulator scale needs int64 (known once the head's integers exist)."""
    from ..engine.plan import bias_flash_bytes, head_from_arrays

    arrays = getattr(model, "head_arrays_", None)
    meta = getattr(model, "head_meta_", {}) or {}
    if meta.get("kind") != "fixed" or not isinstance(arrays, dict) or \
            "head/bias_q" not in arrays:
        return 4
    head = head_from_arrays(arrays, {"head": meta, "input_scale": model.body_.input_scale})
    return bias_flash_bytes(head["bias_q"])


def layer_table(model) -> list[dict]:
    body = model.body_
    h, w, c = body.input_shape
    rows = []

    def conv_bits(weights: int) -> int:   # one conv stage's taps, packed in whole bytes
        return 8 * max(1, -(-int(weights) // 8))

    for i, k in enumerate(body.kernels):
        nf = int(k["conv"].shape[3])
        rows.append({"layer": f"conv{i}", "type": f"depthwise 3x3 x{nf} (+-1)",
                     "output": [h, w, c * nf], "weights": int(k["conv"].size), "bits_per_weight": 1,
                     "bits": conv_bits(k["conv"].size), "macs": h * w * c * nf * 9,
                     "mac_kind": "add/sub only"})
        c *= nf
        for j, e in enumerate(k["extras"]):
            rows.append({"layer": f"conv{i}_{j}", "type": "relu + depthwise 3x3 x1 (+-1)",
                         "output": [h, w, c], "weights": int(e.size), "bits_per_weight": 1,
                         "bits": conv_bits(e.size), "macs": h * w * c * 9,
                         "mac_kind": "add/sub only"})
        h, w = pooled_size(h), pooled_size(w)
        rows.append({"layer": f"pool{i}", "type": "maxpool 4x4/2 same", "output": [h, w, c],
                     "weights": 0, "bits_per_weight": 0, "bits": 0, "macs": 0,
                     "mac_kind": "compare"})
    d, kcls = model.coef_.shape
    meta = getattr(model, "head_meta_", {"kind": "float32"})
    if meta.get("kind") == "fixed":
        from ..engine.bits import PACKED_BITS
        from ..engine.plan import head_flash_bytes

        nb = int(meta["bits"])
        head_bits = 8 * head_flash_bytes(h, w, c, kcls, nb)
        bb = 8 * _bias_bytes(model)
        htype = (f"dense int{nb} ({meta.get('scale')}{', pow2' if meta.get('pow2') else ''}"
                 f"{', packed' if nb in PACKED_BITS else ''})")
        btype = f"bias (int{bb} at the accumulator scale)"
        scales = ({"layer": "head scales", "type": "per-class rescale (int32 multipliers)",
                   "output": [], "weights": kcls, "bits_per_weight": 32, "bits": 32 * kcls,
                   "macs": kcls, "mac_kind": "rescale"}
                  if meta.get("scale") == "per_class" else None)
    else:
        nb = bb = 32
        head_bits = 32 * d * kcls
        htype, btype, scales = "dense float32", "bias (float32)", None
    rows.append({"layer": "head", "type": htype, "output": [kcls], "weights": d * kcls,
                 "bits_per_weight": nb, "bits": head_bits, "macs": d * kcls,
                 "mac_kind": "multiply-add"})
    rows.append({"layer": "head bias", "type": btype, "output": [kcls],
                 "weights": kcls, "bits_per_weight": bb, "bits": kcls * bb, "macs": kcls,
                 "mac_kind": "add"})
    if scales:
        rows.append(scales)
    return rows


def flash_lbcnn(model) -> dict:
    """Weight bytes of an LB-CNN's generated C, from its shape and head (no compile): equal
    to ``compile_plan(model).weight_bytes()``; a float head is exported as an 8-bit
    per-tensor head."""
    from ..engine.plan import head_flash_bytes

    body = model.body_
    conv = sum(max(1, -(-int(a.size) // 8)) for k in body.kernels
               for a in [k["conv"], *k["extras"]])
    d, kcls = model.coef_.shape
    meta = getattr(model, "head_meta_", {"kind": "float32"}) or {}
    fixed = meta.get("kind") == "fixed"
    bits = int(meta["bits"]) if fixed else 8
    head = head_flash_bytes(*_final_shape(body), kcls, bits)
    bias = _bias_bytes(model) * kcls
    rescale = 4 * kcls if fixed and meta.get("scale") == "per_class" else 0
    return {"conv_packed": conv, "head": head, "bias": bias, "rescale": rescale,
            "total": conv + head + bias + rescale, "head_bits": bits}


def flash_from_plan(model) -> dict:
    """Weight bytes of a CBCNN's or hybrid's generated C (its integer plan), or the reason
    the model has no C export."""
    from ..engine.plan import compile_plan
    from ..errors import LbcnnError

    try:
        return dict(compile_plan(model).weight_bytes())
    except LbcnnError as exc:
        return {"error": str(exc).splitlines()[0][:200]}


FLASH_NOTE = ("weights as the generated C stores them in flash (lbcnn export --format c): "
              "the bytes of its weight arrays; code, labels and scratch RAM are apart")


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
    """Per-layer accounting of any family, plus what the model file records (dataset,
    validation / test accuracy) and, with ``sizes``, the measured size of every
    export format and the flash / RAM of the C build."""
    from ..models import is_cbcnn, is_hybrid, is_lowbit

    if is_cbcnn(model):
        info = account_cbcnn(model, path, sizes)
    elif is_hybrid(model):
        info = account_hybrid(model, path, sizes)
    elif is_lowbit(model):
        from .accounting_lowbit import account_lowbit
        info = account_lowbit(model, path, sizes)
    elif hasattr(model, "body_"):
        info = account_lbcnn(model, path, sizes)
    else:
        from ..errors import ConfigError
        raise ConfigError(f"info supports the lbcnn, cbcnn, hybrid and lowbit families, not "
                          f"{type(model).__name__}")
    flash = flash_lbcnn(model) if "family" not in info else flash_from_plan(model)
    info["flash"] = flash
    if "total" in flash:
        info["flash_weight_bits"] = 8 * flash["total"]
    meta = getattr(model, "meta_", {}) or {}
    for key in ("dataset", "dataset_path", "preprocessing", "val_accuracy", "test_accuracy",
                "test_size", "class_names", "split", "refit_on_train_plus_val"):
        if meta.get(key) is not None:
            info[key] = meta[key]
    if sizes:
        info["c_build"] = c_build(model, path)
        if "ram" in info["c_build"]:
            info["c_ram_bytes"] = info["c_build"]["ram"]
            info["c_flash_bytes"] = info["c_build"]["flash"]
    return info


def c_build(model, path=None) -> dict:
    """Flash and RAM of the generated C (``lbcnn export --format c``), compiled for the
    host into a temporary folder; ``{"error": reason}`` when it cannot be built."""
    from ..errors import LbcnnError
    from .c_export import export_c

    source = path if path is not None and Path(path).suffix.lower() == ".npz" else model
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from ..engine.plan import compile_plan
            summary = export_c(compile_plan(source), Path(tmp) / "c", measure=True)
        except (LbcnnError, OSError) as exc:
            return {"error": str(exc).splitlines()[0][:200]}
        except Exception as exc:  # a compiler failure: report it, the rest of info still stands
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    wb = summary.get("weight_bytes") or {}
    out = {"weight_bytes": wb.get("total") if isinstance(wb, dict) else wb}
    if summary.get("sizes"):
        sz = summary["sizes"]
        out.update(flash=sz["flash"], ram=sz["ram"], static_ram=sz["data"] + sz["bss"],
                   stack_estimate=sz["stack_estimate"], compiler=sz["compiler"],
                   flags=sz["flags"])
    else:
        out["error"] = "no C compiler or `size` tool found: flash/RAM not measured"
    return out


def account_lbcnn(model, path=None, sizes: bool = True) -> dict:
    rows = layer_table(model)
    conv_bits = sum(r["bits"] for r in rows if r["layer"].startswith("conv"))
    head_bits = sum(r["bits"] for r in rows if r["layer"].startswith("head"))
    d, k = model.coef_.shape
    total_bits = conv_bits + head_bits
    float_bits = conv_bits + 32 * (d * k + k)
    out = {  # no "family" key: LB-CNN is the default layout (render dispatches on it)
        "filters": list(model.body_.filters), "nl": model.body_.nl,
        "input_shape": list(model.body_.input_shape), "features": d, "classes": k,
        "head": getattr(model, "head_meta_", {"kind": "float32"}),
        "layers": rows,
        "conv_bits": conv_bits, "head_bits": head_bits,
        "total_kbits": total_bits / 1000, "params_bytes": total_bits / 8,
        "float32_head_params_bytes": float_bits / 8,
        "macs": sum(r["macs"] for r in rows if r["mac_kind"] != "compare"),
        "conv_macs_add_sub_only": sum(r["macs"] for r in rows if r["layer"].startswith("conv")),
        "head_bits_per_weight": next(r["bits_per_weight"] for r in rows if r["layer"] == "head"),
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

    if info.get("family") == "cbcnn":
        return render_cbcnn(info)
    if info.get("family") == "hybrid":
        return render_hybrid(info)
    if info.get("family") == "lowbit":
        from .accounting_lowbit import render_lowbit
        return render_lowbit(info)
    t = Table(title=f"LB-CNN filters {','.join(map(str, info['filters']))}, nl {info['nl']}, "
                    f"input {'x'.join(map(str, info['input_shape']))}")
    for col in ("layer", "type", "output", "weights", "bits/w", "kbits", "MACs", "MAC kind"):
        t.add_column(col, justify="right" if col in ("weights", "bits/w", "kbits", "MACs") else "left")
    for r in info["layers"]:
        t.add_row(r["layer"], r["type"], "x".join(map(str, r["output"])), f"{r['weights']:,}",
                  str(r["bits_per_weight"]), f"{r['bits'] / 1000:.2f}", f"{r['macs']:,}",
                  r["mac_kind"])
    hb = info.get("head_bits_per_weight", 32)
    lines = [
        f"total{' as flashed' if info['head'].get('kind') == 'fixed' else ''}: "
        f"{info['total_kbits']:.2f} kbits = {human_bytes(info['params_bytes'])} of parameters "
        f"(conv {info['conv_bits'] / 1000:.2f} kbits at 1 bit/weight, head "
        f"{info['head_bits'] / 1000:.2f} kbits at {hb} bits/weight"
        f"{' (float32, as in the model file)' if info['head'].get('kind') != 'fixed' else ''})",
        f"same shape with a float32 head: {human_bytes(info['float32_head_params_bytes'])}",
        f"MACs: {info['macs']:,}, of which {info['conv_macs_add_sub_only']:,} in the conv layers "
        f"are additions/subtractions only",
        f"paper's 'Params (k-bits) Conv+ELM' (its head figure assumes an 8-bit head, bias not "
        f"counted): {info['paper_params_kbits_conv_elm']:.1f}",
    ]
    lines += _common_lines(info)
    return Group(t, Text("\n".join(lines)))


def _flash_line(info: dict) -> str | None:
    fl = info.get("flash")
    if not fl:
        return None
    if "total" not in fl:
        return f"weights as flashed (generated C): not available ({fl.get('error')})"
    parts = ", ".join(f"{k.replace('_', ' ')} {v:,} B" for k, v in fl.items()
                      if k not in ("total", "head_bits") and isinstance(v, int) and v)
    note = (f"; the C export quantizes the float head to {fl['head_bits']} bits"
            if info.get("head", {}).get("kind") == "float32" and "head_bits" in fl else "")
    return (f"weights as flashed (generated C): {8 * fl['total']:,} bits = {fl['total']:,} B "
            f"({parts}{note})")


def _common_lines(info: dict) -> list[str]:
    """Flashed weights, recorded dataset and accuracies, export sizes, the C build's
    flash and RAM."""
    from ..memory import human_bytes

    lines = [line for line in (_flash_line(info),) if line]
    rec = []
    if info.get("dataset"):
        rec.append(f"dataset {info['dataset']}"
                   + (f" ({info['dataset_path']})" if info.get("dataset_path") else ""))
    prep = info.get("preprocessing") or {}
    if prep.get("resize") or prep.get("grayscale") or prep.get("rgb"):
        rec.append("images " + ", ".join(
            ([f"area-resized to {prep['resize'][0]}x{prep['resize'][1]}"] if prep.get("resize")
             else []) + (["gray"] if prep.get("grayscale") else [])
            + (["gray -> RGB"] if prep.get("rgb") else [])))
    if isinstance(info.get("val_accuracy"), (int, float)):
        refit = " (selection, before the refit on train + validation)" \
            if info.get("refit_on_train_plus_val") else ""
        rec.append(f"validation accuracy {100 * info['val_accuracy']:.2f} %{refit}")
    if isinstance(info.get("test_accuracy"), (int, float)):
        split = info.get("split") or {}
        n = info.get("test_size") or split.get("n_test")
        how = {"fraction": f"seed {split.get('seed')}, fraction {split.get('test_fraction')}",
               "folder": f"folder {split.get('test_folder')}", "official": "official",
               "paper": "paper"}.get(split.get("kind"), "")
        detail = ", ".join(v for v in (f"n={n:,}" if n else "", how,
                                       split.get("fingerprint", "")) if v)
        rec.append(f"test accuracy {100 * info['test_accuracy']:.2f} %"
                   + (f" ({detail})" if detail else ""))
    lines.append("recorded in the model file: " + (", ".join(rec) if rec else "no dataset or "
                                                     "accuracy"))
    fb = info.get("file_bytes")
    if fb:
        parts = [f"{k} {human_bytes(v)}" if v is not None else f"{k} n/a"
                 for k, v in fb.items() if not k.endswith("_error")]
        lines.append("file sizes: " + ", ".join(parts))
    cb = info.get("c_build")
    if cb:
        if "ram" in cb:
            lines.append(f"C build (lbcnn export --format c; {cb['compiler']} {cb['flags']}, host): "
                         f"flash {cb['flash']:,} B, RAM {cb['ram']:,} B (static "
                         f"{cb['static_ram']:,} B + stack estimate {cb['stack_estimate']:,} B)")
        else:
            lines.append(f"C build: not measured ({cb['error']})")
    elif "c_build" not in info:
        lines.append("C build flash/RAM: run without --no-sizes to measure")
    return lines


# -- CBCNN ----------------------------------------------------------------------
# The CBCNN paper's parameter counts (Qi et al. 2023), for comparison.
CBCNN_PAPER_PARAMS = {"mnist": 480_000, "fashion_mnist": 480_000, "gtsrb": 590_000}
CBCNN_BN_NOTE = ("bits: binary weights 1 bit each, every BN as 4 float32 values (gamma, beta, "
                 "mean, var); bits_folded: each BN before a sign as one 32-bit threshold + "
                 "1 direction bit per channel (integer thresholds after the first block), the "
                 "final BN as 2 float32 per class (scale, shift)")


def cbcnn_layer_table(model) -> list[dict]:
    """``model.profile()`` rows with output shapes, MACs and the folded-BN bits."""
    import torch.nn as nn

    net = model.net
    h, w, c = net.input_shape
    shapes, macs = {}, {}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            cout = m.out_channels
            macs[name] = (h * w * c * cout * 9,
                          "XNOR-popcount" if m.input_binary else
                          "add/sub (real input)")
            shapes[name] = [h, w, cout]
            c, h, w = cout, h // 2, w // 2
        elif name.startswith("features.") and hasattr(m, "running_mean"):
            shapes[name] = [h, w, c]
            first = name == "features.2"
            macs[name] = (h * w * c, "compare (float thr)" if first
                          else "compare (int thr)")
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear):
            shapes[name] = [m.out_features]
            macs[name] = (m.in_features * m.out_features, "XNOR-popcount")
        elif name.startswith(("head_hidden.", "out_bn")) and hasattr(m, "running_mean"):
            shapes[name] = [m.num_features]
            macs[name] = ((m.num_features, "mul-add (float)") if name == "out_bn"
                          else (m.num_features, "compare (int thr)"))
    rows = []
    for r in model.profile():
        r = dict(r)
        r["output"] = shapes.get(r["name"], [])
        r["macs"], r["mac_kind"] = macs.get(r["name"], (0, ""))
        if r["kind"] == "batch norm":
            n = r["weights"] // 4
            r["bits_folded"] = 64 * n if r["name"] == "out_bn" else 33 * n
        else:
            r["bits_folded"] = r["bits"]
        rows.append(r)
    return rows


def _saved_and_onnx_sizes(model, save, native_path=None) -> dict:
    """Bytes of the native file and the ONNX export, written to a scratch folder."""
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save(model, tmp / "model.npz")
        sizes["native"] = (tmp / "model.npz").stat().st_size
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


def cbcnn_export_sizes(model, native_path=None) -> dict:
    from ..models.cbcnn import save_cbcnn
    return _saved_and_onnx_sizes(model, save_cbcnn, native_path)


def account_cbcnn(model, path=None, sizes: bool = True) -> dict:
    from ..models.cbcnn import profile_totals

    net = model.net
    rows = cbcnn_layer_table(model)
    totals = profile_totals(model.profile())
    binary_rows = [r for r in rows if r["bits_per_weight"] == 1]
    bn_rows = [r for r in rows if r["kind"] == "batch norm"]
    out = {
        "family": "cbcnn", "preset": getattr(model, "preset", None),
        "input_shape": list(net.input_shape), "blocks": list(net.blocks),
        "dense": list(net.dense), "classes": net.n_classes, "scale": net.scale,
        "preprocess": model.preprocess.to_dict(),
        "layers": rows, "bn_accounting": CBCNN_BN_NOTE,
        "binary_weights": totals["binary_weights"], "params": totals["params"],
        "weight_bits": sum(r["bits"] for r in binary_rows),
        "bn_bits": sum(r["bits"] for r in bn_rows),
        "bn_bits_folded": sum(r["bits_folded"] for r in bn_rows),
        "total_bits": totals["bits"], "total_kbits": totals["bits"] / 1000,
        "total_kbits_folded": sum(r["bits_folded"] for r in rows) / 1000,
        "params_bytes": totals["bits"] / 8,
        "macs": sum(r["macs"] for r in binary_rows),
        "xnor_popcount_macs": sum(r["macs"] for r in binary_rows if r["input_binary"]),
        "real_input_macs": sum(r["macs"] for r in binary_rows if not r["input_binary"]),
        "paper_params": dict(CBCNN_PAPER_PARAMS),
    }
    if sizes:
        out["file_bytes"] = cbcnn_export_sizes(model, path)
    return out


def render_cbcnn(info: dict):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from ..memory import human_bytes

    t = Table(title=f"CBCNN blocks {','.join(map(str, info['blocks']))}, dense "
                    f"{','.join(map(str, info['dense'])) or '-'}, input "
                    f"{'x'.join(map(str, info['input_shape']))}")
    for col in ("layer", "type", "output", "weights", "bits/w", "kbits", "MACs", "MAC kind"):
        t.add_column(col, justify="right" if col in ("weights", "bits/w", "kbits", "MACs") else "left")
    for r in info["layers"]:
        t.add_row(r["name"], r["kind"], "x".join(map(str, r["output"])), f"{r['weights']:,}",
                  str(r["bits_per_weight"]), f"{r['bits'] / 1000:.2f}", f"{r['macs']:,}",
                  r["mac_kind"])
    paper = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in info["paper_params"].items())
    lines = [
        f"model file parameters: {info['total_kbits']:.2f} kbits = "
        f"{human_bytes(info['params_bytes'])} (binary weights {info['weight_bits'] / 1000:.2f} "
        f"kbits, BN as float32 "
        f"{info['bn_bits'] / 1000:.2f} kbits); BN folded to thresholds: "
        f"{info['total_kbits_folded']:.2f} kbits",
        f"parameters: {info['params']:,} ({info['binary_weights']:,} binary); paper: {paper}",
        f"MACs: {info['macs']:,}, of which {info['xnor_popcount_macs']:,} XNOR-popcount and "
        f"{info['real_input_macs']:,} real input x +-1 weight (add/sub only)",
        info["bn_accounting"],
    ]
    lines += _common_lines(info)
    return Group(t, Text("\n".join(lines)))


# -- Hybrid -----------------------------------------------------------------------
def hybrid_layer_table(model) -> list[dict]:
    body = model.body_
    h, w = body.input_shape[:2]
    thr = body.threshold
    rows = [{"layer": "binarize", "type": f"threshold ({'Otsu per image' if thr == 'otsu' else thr})",
             "output": [h, w], "weights": 0, "bits_per_weight": 0, "bits": 0, "macs": h * w,
             "mac_kind": "compare"}]
    for i, k in enumerate(body.kernels):
        h, w = h - 2, w - 2
        rows.append({"layer": f"conv{i}", "type": "3x3 valid (+-1), XNOR-popcount",
                     "output": [h, w], "weights": int(k.size), "bits_per_weight": 1,
                     "bits": int(k.size), "macs": h * w * 9, "mac_kind": "XNOR-popcount"})
        rows.append({"layer": f"pool{i}", "type": "avgpool 2x2/1 + sign", "output": [h, w],
                     "weights": 0, "bits_per_weight": 0, "bits": 0, "macs": h * w * 4,
                     "mac_kind": "add"})
    d = body.n_features
    sd = {k: v for k, v in model.net_.state_dict().items()}
    hid = int(sd["hidden.weight"].shape[0])
    k = int(sd["out.weight"].shape[0])
    rows.append({"layer": "hidden", "type": "dense float32 + sigmoid", "output": [hid],
                 "weights": d * hid, "bits_per_weight": 32, "bits": 32 * d * hid,
                 "macs": d * hid, "mac_kind": "add/sub (+-1 input)"})
    rows.append({"layer": "hidden bias", "type": "bias (32-bit)", "output": [hid], "weights": hid,
                 "bits_per_weight": 32, "bits": 32 * hid, "macs": hid, "mac_kind": "add"})
    rows.append({"layer": "out", "type": "dense float32", "output": [k], "weights": hid * k,
                 "bits_per_weight": 32, "bits": 32 * hid * k, "macs": hid * k,
                 "mac_kind": "multiply-add"})
    rows.append({"layer": "out bias", "type": "bias (32-bit)", "output": [k], "weights": k,
                 "bits_per_weight": 32, "bits": 32 * k, "macs": k, "mac_kind": "add"})
    return rows


def hybrid_export_sizes(model, native_path=None) -> dict:
    from ..models.hybrid import save_hybrid
    return _saved_and_onnx_sizes(model, save_hybrid, native_path)


def account_hybrid(model, path=None, sizes: bool = True) -> dict:
    body = model.body_
    rows = hybrid_layer_table(model)
    binary_bits = sum(r["bits"] for r in rows if r["bits_per_weight"] == 1)
    float_bits = sum(r["bits"] for r in rows if r["bits_per_weight"] == 32)
    out = {
        "family": "hybrid", "input_shape": list(body.input_shape), "threshold": body.threshold,
        "kernels": len(body.kernels), "features": body.n_features,
        "hidden": int(rows[-4]["output"][0]), "classes": int(rows[-2]["output"][0]),
        "layers": rows, "binary_bits": binary_bits, "float_bits": float_bits,
        "total_kbits": (binary_bits + float_bits) / 1000,
        "params_bytes": (binary_bits + float_bits) / 8,
        "macs": sum(r["macs"] for r in rows),
        "xnor_popcount_macs": sum(r["macs"] for r in rows if r["mac_kind"] == "XNOR-popcount"),
        "c_head_note": "the C export runs the MLP in fixed point (int8 weights, a 256-entry "
                       "sigmoid table); the table above is the float model file",
    }
    if sizes:
        out["file_bytes"] = hybrid_export_sizes(model, path)
    return out


def render_hybrid(info: dict):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from ..memory import human_bytes

    h, w = info["input_shape"][:2]
    t = Table(title=f"Hybrid: {info['kernels']} fixed +-1 kernels, {info['features']} binary "
                    f"features, MLP {info['features']}-{info['hidden']}-{info['classes']}, "
                    f"input {h}x{w}")
    for col in ("layer", "type", "output", "weights", "bits/w", "kbits", "MACs", "MAC kind"):
        t.add_column(col, justify="right" if col in ("weights", "bits/w", "kbits", "MACs") else "left")
    for r in info["layers"]:
        t.add_row(r["layer"], r["type"], "x".join(map(str, r["output"])), f"{r['weights']:,}",
                  str(r["bits_per_weight"]), f"{r['bits'] / 1000:.2f}", f"{r['macs']:,}",
                  r["mac_kind"])
    lines = [
        f"model file parameters: {info['total_kbits']:.2f} kbits = "
        f"{human_bytes(info['params_bytes'])} (binary kernels {info['binary_bits']} bits at "
        f"1 bit/weight, MLP "
        f"{info['float_bits'] / 1000:.2f} kbits at 32 bits/weight (float32))",
        f"MACs: {info['macs']:,}, of which {info['xnor_popcount_macs']:,} XNOR-popcount",
        info["c_head_note"],
    ]
    lines += _common_lines(info)
    return Group(t, Text("\n".join(lines)))
