"""C99 code generation for a lowbit :class:`~lbcnn.engine.lowbit_plan.LowBitPlan`; the C
text is ``c_templates/lowbit_model.c.in``, filled in here.

The channel paths run one at a time in one int16 map of ``(size - 2)^2`` values: every
conv and pool of a path writes over the map it reads (an output row lands on rows the
later outputs no longer read). A path's kernels are decoded from their bit stream when
the path starts (9 fields a plane, a few instructions each); the dense layers decode
their weights 32 at a time from the lane groups of ``engine.bits.pack_lanes`` (shifts
and masks per word, no per-weight sign work: the sum runs on the stored offset form
``t = i + 2^(n-1)`` and ``a (sum x t - 2^(n-1) sum x) + b sum x`` recovers the weights
``a i + b``). Static RAM: the resized image, the map, the head's input and hidden
activations; the stack holds a path's decoded kernel and a 32-byte decode buffer.
"""
from __future__ import annotations

import numpy as np

from ..binary.quantizers import integer_weight_map
from ..engine.lowbit_plan import LowBitPlan, c_arrays
from .c_common import (MAIN_C, _c_array, c_template, predict_header, register, sizes_table,
                       unpack_group_c)
from .c_project import write_c_project

MODEL_C = c_template("lowbit_model.c.in")


def _u32(name: str, words) -> str:
    vals = [f"0x{int(v):08X}u" for v in np.asarray(words, np.uint32).ravel()]
    rows = [", ".join(vals[i:i + 8]) for i in range(0, len(vals), 8)]
    return f"static const uint32_t {name}[{len(vals)}] = {{\n    " + ",\n    ".join(rows) + "\n};\n"


def _weights_c(plan: LowBitPlan) -> tuple[str, set]:
    arrays = c_arrays(plan)
    text = []
    for name, (ctype, values) in arrays.items():
        text.append(_u32(name, values) if ctype == "uint32_t" else _c_array(ctype, name, values))
    return "".join(text), set(arrays)


def _accessor(name: str, array: str, arrays: set, values, cast: str) -> str:
    """``#define NAME(i)``: the array's entry, or its one value when it is a constant."""
    if array in arrays:
        return f"#define {name}(i) (({cast}){array}[i])\n"
    v = int(np.asarray(values).ravel()[0]) if np.asarray(values).size else 0
    return f"#define {name}(i) (({cast}){v})\n"


def _resize_c(plan: LowBitPlan) -> str:
    from ..data.resize import resize_table

    h, w, _ = plan.input_shape
    size = plan.arch["size"]
    if (h, w) == (size, size):
        return "#define RESIZE_NONE 1\n"
    r0, rw = resize_table(h, size)
    c0, cw = resize_table(w, size)
    small = "uint8_t" if max(h, w) < 256 else "uint16_t"
    return ("#define RESIZE_NONE 0\n"
            f"#define RESIZE_RT {rw.shape[1]}   /* input rows an output row reads */\n"
            f"#define RESIZE_CT {cw.shape[1]}   /* input columns an output column reads */\n"
            f"#define RESIZE_AREA {h * w}u   /* H * W: the weights of an output sum to it */\n"
            "/* first input row / column of each output, and their overlaps (data.images) */\n"
            + _c_array(small, "RESIZE_R0", r0) + _c_array("uint16_t", "RESIZE_RW", rw)
            + _c_array(small, "RESIZE_C0", c0) + _c_array("uint16_t", "RESIZE_CW", cw))


def _path_body(plan: LowBitPlan, arrays: set) -> tuple[str, str, int]:
    """The statements of ``run_path(m)``, the accessor macros, and the widest kernel."""
    from ..models.lowbit import conv_inputs

    a = plan.arch
    lines, macros = [], []
    side, layer, max_cin = a["size"], 0, 1
    cin_img = plan.input_shape[2]
    for op in a["path"]:
        if op == "p":
            lines.append(f"    pool_map({side});")
            side //= 2
            continue
        c = plan.conv[layer]
        bits, mode = a["conv_bits"][layer], a["conv_modes"][layer]
        ka, kb = integer_weight_map(mode)
        n = conv_inputs(a, layer)
        max_cin = max(max_cin, n)
        macros.append(_accessor(f"CONV{layer}_SHIFT", f"CONV{layer}_SH", arrays, c["shift"], "int"))
        macros.append(_accessor(f"CONV{layer}_BIAS", f"CONV{layer}_B", arrays, c["bias"],
                                "int32_t"))
        decode = "kernel8" if bits == 8 else "kernel_bits"
        bits_arg = "" if bits == 8 else f", {bits}"
        lines.append(f"    /* conv {layer}: {bits}-bit {mode} kernels, W = {ka} i + {kb} */")
        lines.append(f"    {decode}(w, CONV{layer}_K{bits_arg}, m * {9 * n}, {n}, {ka}, {kb});")
        if layer == 0:
            first = "0" if a["first"] == "full" else f"m / {a['channels'] // cin_img}"
            lines.append(f"    conv_first({first}, {n}, w, CONV0_SHIFT(m), CONV0_BIAS(m));")
        else:
            lines.append(f"    conv_map({side}, w, CONV{layer}_SHIFT(m), CONV{layer}_BIAS(m));")
        side -= 2
        layer += 1
    macros.append(_accessor("HEADIN_MULT", "HEADIN_M", arrays, plan.head_in["mult"], "int32_t"))
    macros.append(_accessor("HEADIN_SHIFT", "HEADIN_SH", arrays, plan.head_in["shift"], "int"))
    lines.append("    {")
    lines.append("        int i;")
    lines.append("        for (i = 0; i < K; i++)")
    lines.append("            g_feat[m * K + i] = clamp_q(rshift32((int32_t)g_map[i] * "
                 "HEADIN_MULT(m), HEADIN_SHIFT(m)));")
    lines.append("    }")
    return "\n".join(lines), "".join(macros), max_cin


def _kernel_decoders(plan: LowBitPlan) -> str:
    out = []
    if any(b < 8 for b in plan.arch["conv_bits"]):
        out.append("""/* field i of a stream of n-bit two's-complement fields, least significant bit first */
static int32_t field(const uint8_t *p, int32_t i, int bits)
{
    const int32_t pos = i * bits;
    uint32_t v = p[pos >> 3];
    if ((pos & 7) + bits > 8) v |= (uint32_t)p[(pos >> 3) + 1] << 8;
    v = (v >> (pos & 7)) & ((1u << bits) - 1u);
    return (v >> (bits - 1)) ? (int32_t)v - (1 << bits) : (int32_t)v;
}

/* 9 n integer weights W = a i + b of a path's conv, from its levels' bit stream */
static void kernel_bits(int32_t *w, const uint8_t *stream, int bits, int32_t first, int n,
                        int a, int b)
{
    int t;
    for (t = 0; t < 9 * n; t++) w[t] = a * field(stream, first + t, bits) + b;
}
""")
    if any(b == 8 for b in plan.arch["conv_bits"]):
        out.append("""/* 9 n integer weights W = a i + b of a path's conv, from int8 levels */
static void kernel8(int32_t *w, const int8_t *levels, int32_t first, int n, int a, int b)
{
    int t;
    for (t = 0; t < 9 * n; t++) w[t] = a * levels[first + t] + b;
}
""")
    return "\n".join(out)


def _dense_c(plan: LowBitPlan, arrays: set) -> tuple[str, str, str, str]:
    """Dense layer functions, their decoders, the hidden buffers and the calls."""
    from ..models.lowbit import dense_dims

    a = plan.arch
    dims = dense_dims(a)
    ka, kb = integer_weight_map(a["head_mode"])
    widths = sorted({b for b in a["head_bits"] if b < 8})
    unpack = []
    for b in widths:
        unpack.append(unpack_group_c(b).replace("unpack_group(", f"unpack_group_{b}("))
        unpack.append(f"""/* the dot product of x (n values) with the next n weights of the stream, in their
 * stored offset form t = i + {1 << (b - 1)} */
static int32_t dot_{b}(struct lanes *st, const uint8_t *x, int n)
{{
    const uint8_t *t = (const uint8_t *)(const void *)st->buf;
    int32_t s = 0;
    int j = 0, i, c;
    while (j < n) {{
        if (st->pos == 32) {{
            unpack_group_{b}(st->p, st->buf);
            st->p += {b};
            st->pos = 0;
        }}
        c = 32 - st->pos;
        if (c > n - j) c = n - j;
        for (i = 0; i < c; i++) s += (int32_t)x[j + i] * t[st->pos + i];
        j += c;
        st->pos += c;
    }}
    return s;
}}
""")
    if widths:
        unpack.insert(0, "/* a stream of lane groups being decoded: 32 weights at a time */\n"
                         "struct lanes { const uint32_t *p; int pos; uint32_t buf[8]; };\n")
    if any(b == 8 for b in a["head_bits"]):
        unpack.append("""/* the dot product of x with n int8 levels */
static int32_t dot8(const int8_t *w, const uint8_t *x, int n)
{
    int32_t s = 0;
    int j;
    for (j = 0; j < n; j++) s += (int32_t)x[j] * w[j];
    return s;
}
""")
    funcs, macros, calls = [], [], []
    n = len(dims) - 1
    bufs = "".join(f"static uint8_t g_hid{i}[{dims[i + 1]}];   /* hidden layer {i} */\n"
                   for i in range(n - 1))
    for i in range(n):
        d = plan.dense[i]
        bits = a["head_bits"][i]
        last = i == n - 1
        btype = "int64_t"
        macros.append(_accessor(f"DENSE{i}_MULT", f"DENSE{i}_M", arrays, d["mult"], "int64_t"))
        macros.append(_accessor(f"DENSE{i}_SHIFT", f"DENSE{i}_SH", arrays, d["shift"], "int"))
        macros.append(_accessor(f"DENSE{i}_BIAS", f"DENSE{i}_B", arrays, d["bias"], btype))
        out_t = "int64_t *out" if last else "uint8_t *out"
        if bits < 8:
            off = 1 << (bits - 1)
            init = f"    struct lanes st;\n    st.p = DENSE{i}_W;\n    st.pos = 32;\n"
            dot = f"dot_{bits}(&st, x, NI)"
            acc = f"{ka} * (s - {off} * sx) + {kb} * sx"
        else:
            init = ""
            dot = f"dot8(DENSE{i}_W + o * NI, x, NI)"
            acc = f"{ka} * s + {kb} * sx"
        store = ("out[o] = v;" if last else "out[o] = clamp_q(v);")
        funcs.append(f"""/* dense {i}: {dims[i]} -> {dims[i + 1]}, {bits}-bit {a['head_mode']} weights W = {ka} i + {kb} */
static void dense_{i}(const uint8_t *x, {out_t})
{{
    enum {{ NI = {dims[i]}, NO = {dims[i + 1]} }};
{init}    int32_t sx = 0;
    int o, j;
    for (j = 0; j < NI; j++) sx += x[j];
    for (o = 0; o < NO; o++) {{
        const int32_t s = {dot};
        const int32_t acc = {acc};
        const int64_t v = rshift64((int64_t)acc * DENSE{i}_MULT(o), DENSE{i}_SHIFT(o)) + DENSE{i}_BIAS(o);
        {store}
    }}
    (void)sx;
}}
""")
        src = "g_feat" if i == 0 else f"g_hid{i - 1}"
        dst = "logits" if last else f"g_hid{i}"
        calls.append(f"    dense_{i}({src}, {dst});")
    return "\n".join(unpack), "".join(macros) + "\n" + "\n".join(funcs), bufs, "\n".join(calls)


def generate_lowbit_sources(plan: LowBitPlan, class_names=None) -> dict[str, str]:
    from ..models.lowbit import features_per_path

    a = plan.arch
    h, w, c = plan.input_shape
    weights, arrays = _weights_c(plan)
    body, path_macros, max_cin = _path_body(plan, arrays)
    unpack, dense, bufs, calls = _dense_c(plan, arrays)
    size = a["size"]
    text = MODEL_C
    for key, val in {"@TITLE@": f"{a['channels']} paths {a['path']}, input {size}x{size}",
                     "@IN_H@": h, "@IN_W@": w, "@IN_C@": c, "@SIZE@": size,
                     "@PATHS@": a["channels"], "@K@": features_per_path(a),
                     "@QMAX@": (1 << a["act_bits"]) - 1,
                     "@WEIGHTS@": weights + "\n" + path_macros,
                     "@RESIZE@": _resize_c(plan), "@MAPMAX@": (size - 2) ** 2,
                     "@HIDDEN_BUFFERS@": bufs, "@UNPACK@": _kernel_decoders(plan) + "\n" + unpack,
                     "@MAXCIN@": max_cin, "@PATH_BODY@": body, "@DENSE@": dense,
                     "@HEAD_CALLS@": calls}.items():
        text = text.replace(key, str(val))
    model_h = predict_header("integer-only lowbit inference", (h, w, c), plan.n_classes,
                             plan.n_features, class_names, "the predicted class index")
    return {"model.h": model_h, "model.c": text, "main.c": MAIN_C}


def export_lowbit_c(plan, out_dir, measure: bool = True, test_vectors=None,
                    class_names=None, layout: str = "c", record=None) -> dict:
    return write_c_project(plan, out_dir, generate_lowbit_sources(plan, class_names), _readme,
                           measure, test_vectors, layout, record)


def _readme(plan, wb: dict, sizes: dict | None) -> str:
    a = plan.arch
    h, w, c = plan.input_shape
    lines = [
        "# lowbit integer inference (generated C99)", "",
        "`int lbcnn_predict(const uint8_t *image)` takes H*W*C uint8 pixels in (H, W, C) order "
        "and returns the class index; `lbcnn_predict_logits(image, logits)` also writes the "
        "integer class scores (int64, equal to the NumPy engine's; one unit is "
        f"{plan.logit_scale:.6g} of a real logit). Class names: `LBCNN_CLASS_NAMES` in "
        "`model.h`. No malloc, no libm, no float, no libc; static scratch (not reentrant).", "",
        f"- input {h}x{w}x{c} uint8, resized to {a['size']}x{a['size']} by the exact integer "
        "area resize",
        f"- {a['channels']} channel paths `{a['path']}` (c: 3x3 valid conv, p: 2x2 max pool), "
        f"kernels {','.join(map(str, a['conv_bits']))} bits, computed one path at a time in "
        f"one int16 map of {(a['size'] - 2) ** 2} values",
        f"- head {plan.n_features} -> {' -> '.join(map(str, a['hidden'] + [plan.n_classes]))}, "
        f"{','.join(map(str, a['head_bits']))}-bit weights ({a['head_mode']}), "
        f"{a['act_bits']}-bit activations",
        f"- weights: {wb['conv']:,} B kernels + {wb['conv_consts']:,} B conv shifts/biases + "
        f"{wb['head_in']:,} B head-input multipliers + {wb['dense']:,} B dense weights + "
        f"{wb['dense_consts']:,} B dense multipliers/shifts/biases = **{wb['total']:,} bytes** "
        "(what `lbcnn info` counts; the resize tables are apart)", ""]
    return "\n".join(lines + sizes_table(sizes))


register(LowBitPlan, export_lowbit_c)

__all__ = ["export_lowbit_c", "generate_lowbit_sources"]
