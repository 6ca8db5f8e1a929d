"""C99 code generation for an LB-CNN :class:`~lbcnn.engine.plan.IntegerPlan` (plan to
C sources); the C text itself is in ``c_templates/lbcnn_*.c.in``, filled in here.
``c_export.export_c`` is the public entry for every family.

The LB-CNN body is depthwise all the way down: each channel depends on exactly
one channel of the layer below. The generated code therefore runs **one channel
path at a time**: for each input channel, for each of its layer-1 children, the
layer-1 map is computed (conv and 4x4/2 max pool fused, row by row) into one small
map; then each of that map's layer-2 children, and so on; the last layer's pooled
rows go straight into the head's class accumulators. No layer's full set of maps is
ever stored: the static RAM is one map per level plus a few rows, whatever the
number of filters. The head's weights are stored in the order they are consumed
(channel, pooled row, class, column).

A +-1 3x3 conv is ``out = S - 2 * T_neg`` with ``S`` the 3x3 box sum (computed
once per parent map and shared by all its children) and ``T_neg`` the sum over the
-1 taps; when more than four taps are -1, ``out = -(S - 2 * T_pos)``. So every
output is four tap loads, a few adds and a sign: additions and subtractions only.
Activations are ``act_t`` (int16 when the plan's bounds allow). On
``__ARM_FEATURE_SIMD32`` (Cortex-M4/M7/M33) and int16 activations the rows are
processed two lanes at a time with the ACLE ``__sadd16`` / ``__ssub16`` / ``__sel``
intrinsics, always on 4-byte aligned words (each padded input row is kept twice,
the second copy shifted by one element); elsewhere plain C99 loops (that a host
compiler vectorizes). Everything is exact: the result equals the NumPy integer
engine bit for bit.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..engine.bits import PACKED_BITS, pack_lanes
from ..engine.plan import INT32_MAX, IntegerPlan, bias_flash_bytes, head_stream_sizes
from .c_common import (CTYPE, MAIN_C, _c_array, c_template, predict_header, register,
                       sizes_table, unpack_group_c)
from .c_project import write_c_project

# the streaming model.c (@NAME@ placeholders), and one stage of the full-map host path
MODEL_C = c_template("lbcnn_model.c.in")
HEAD_STREAMS = c_template("lbcnn_head_streams.c.in")   # the head's streams, packed or not
FULL_STAGE_TEMPLATE = c_template("lbcnn_full_stage.c.in")
FULL_POOL_BODY = c_template("lbcnn_full_pool_body.c.in")


def _even(n: int) -> int:
    return n + (n & 1)


def _conv_stages(plan):
    """Group plan ops into conv stages: each conv, with 'pool' on the last conv of a layer."""
    stages = []
    ops = plan.ops
    for i, op in enumerate(ops):
        if op["type"] == "sign_dwconv3":
            pool = i + 1 < len(ops) and ops[i + 1]["type"] == "maxpool4s2"
            stages.append((op, pool))
        elif op["type"] == "maxpool4s2":
            if i == 0 or ops[i - 1]["type"] != "sign_dwconv3":
                raise ConfigError("the C generator needs every max pool right after a conv")
        else:
            raise ConfigError(f"the C generator has no kernel for op {op['type']!r}")
    if not stages or not stages[-1][1]:
        raise ConfigError("the C generator needs the last conv to be followed by a max pool")
    return stages


def head_streams(plan) -> tuple[np.ndarray, np.ndarray]:
    """The head weights in the order the streaming C consumes them, one row per final
    channel and pooled row (``engine.plan.head_stream_sizes``): stream A, (rows, RA), the
    weights read in 32-bit words (int8: per class pair and column pair, bytes
    w[2j][2c], w[2j][2c+1], w[2j+1][2c], w[2j+1][2c+1]; int16: per class, w[2j][c],
    w[2j+1][c]); stream BC, (rows, RBC), the rest (int8 with an odd class count: the last
    class per column pair; then, for an odd pooled width, the last column per class)."""
    hd = plan.head
    ho, wo, cf = plan.final_shape
    k = plan.n_classes
    q = hd["weight_q"].reshape(ho, wo, cf, k).transpose(2, 0, 1, 3)   # (ch, i, j, class)
    p, kp, rows = wo // 2, k // 2, cf * ho
    if hd["bits"] <= 8:
        a = q[:, :, :2 * p, :2 * kp].reshape(cf, ho, p, 2, kp, 2)      # (.., jp, jj, cp, cc)
        a = a.transpose(0, 1, 4, 2, 3, 5)                               # (ch, i, cp, jp, jj, cc)
        b = q[:, :, :2 * p, 2 * kp:].transpose(0, 1, 3, 2)              # (ch, i, odd class, j)
    else:
        a = q[:, :, :2 * p].reshape(cf, ho, p, 2, k).transpose(0, 1, 4, 2, 3)  # (ch, i, c, jp, jj)
        b = q[:, :, :0, :0]
    c = q[:, :, 2 * p:]                                                 # (ch, i, last col, c)
    bc = np.concatenate([b.reshape(rows, -1), c.reshape(rows, -1)], axis=1)
    return np.ascontiguousarray(a.reshape(rows, -1)), np.ascontiguousarray(bc)


def _u32_array(name: str, words, per_line: int = 8) -> str:
    vals = [f"0x{int(v):08X}u" for v in np.asarray(words, dtype=np.uint32).ravel()]
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    return f"static const uint32_t {name}[{len(vals)}] = {{\n    " + ",\n    ".join(lines) + "\n};\n"


def head_weights_c(plan) -> tuple[str, bool]:
    """The C arrays of the head (packed words or int8 / int16 streams), and whether packed."""
    hd = plan.head
    bits = hd["bits"]
    a, bc = head_streams(plan)
    packed = plan.head_storage == "packed" and bits in PACKED_BITS
    out = []
    if packed:
        for name, stream in (("HEAD_PA", a), ("HEAD_PBC", bc)):
            if stream.size:
                out.append(_u32_array(name, pack_lanes(stream, bits)))
        return "".join(out), True
    wtype = "int8_t" if bits <= 8 else "int16_t"
    if a.size:
        out.append(f"static const union {{ uint32_t w[{(a.size * a.itemsize + 3) // 4}]; "
                   f"{wtype} v[{a.size}]; }} HEAD_WA = {{ .v = {{\n    "
                   + ",\n    ".join(", ".join(str(int(v)) for v in a.ravel()[i:i + 24])
                                    for i in range(0, a.size, 24)) + " } };\n")
    if bc.size:
        out.append(_c_array(wtype, "HEAD_WBC", bc))
    return "".join(out), False


def _full_stage_c(si: int, op: dict, pool: bool) -> str:
    h, w, c = op["in_shape"]
    src_t = "uint8_t" if si == 0 else "act_t"
    relu = "        if (v < 0) v = 0;\n" if op["relu_in"] else ""
    body = FULL_POOL_BODY if pool else "        conv_row_@S@(a, b, c, dst + y * W * Co);"
    desc = (f"layer {op['layer']}, {tuple(op['in_shape'])} -> {tuple(op['out_shape'])}"
            f"{', ReLU on input' if op['relu_in'] else ''}")
    pooldesc = ("4x4/2 'same' max pool streamed row by row into dst ((H+1)/2 x (W+1)/2 x Co)"
                if pool else "the full H x W x Co map into dst")
    text = FULL_STAGE_TEMPLATE.replace("@BODY@", body)
    for key, val in {"@S@": si, "@DESC@": desc, "@POOLDESC@": pooldesc, "@SRC_T@": src_t,
                     "@RELU@": relu, "@H@": h, "@W@": w, "@CIN@": c,
                     "@M@": op["multiplier"]}.items():
        text = text.replace(key, str(val))
    return text


def _full_path(plan, stages, act: str) -> str:
    """The classic host path: every stage over all channels at once (channel-innermost, so
    a host compiler vectorizes across channels), full maps ping-ponged, then a class-major
    head (a RAM copy of the streamed head weights, built on the first call)."""
    hd = plan.head
    k, d = plan.n_classes, plan.n_features
    max_co = max(op["out_shape"][2] for op, _ in stages)
    ring = max(3 * (op["in_shape"][1] + 2) * op["out_shape"][2] for op, _ in stages)
    zero = max((op["in_shape"][1] + 2) * op["out_shape"][2] for op, _ in stages)
    row = max(op["in_shape"][1] * op["out_shape"][2] for op, _ in stages)
    hp = max(4 * ((op["in_shape"][1] + 1) // 2) * op["out_shape"][2] for op, _ in stages)
    masks = max(9 * op["out_shape"][2] for op, _ in stages)
    sizes, calls, code, cur = [0, 0], [], [], None
    for si, (op, pool) in enumerate(stages):
        h, w, c = op["in_shape"]
        co = op["out_shape"][2]
        out_elems = ((h + 1) // 2) * ((w + 1) // 2) * co if pool else h * w * co
        dst = 0 if cur != 0 else 1
        sizes[dst] = max(sizes[dst], out_elems)
        calls.append(f"    conv_stage_{si}({'image' if cur is None else f'g_map{cur}'}, g_map{dst});")
        code.append(_full_stage_c(si, op, pool))
        cur = dst
    partial = CTYPE[hd["partial_dtype"]]
    chunk = hd["chunk"] if hd["chunk"] < 16 else hd["chunk"] - hd["chunk"] % 16
    nfull, rest = d // chunk, d % chunk
    h, w, _ = stages[-1][0]["in_shape"]
    cf = stages[-1][0]["out_shape"][2]
    ho, wo = (h + 1) // 2, (w + 1) // 2
    eight = hd["bits"] <= 8
    maps = "".join(f"static act_t g_map{i}[{n}];\n" for i, n in enumerate(sizes) if n)
    return f"""{maps}static act_t g_ring[{ring}];   /* 3 channel-expanded, zero-bordered input rows */
static act_t g_zero[{zero}];   /* the zero padding row, never written */
static act_t g_row[{row}];     /* one conv output row */
static act_t g_hp[{hp}];       /* 4 horizontally pooled rows */
static act_t g_mask[{masks}];  /* 0 or -1 per tap and channel */
static act_t g_nneg[{max_co}];  /* number of -1 taps per channel */
static hw_t g_headw[{k * d}];   /* the head, class-major (a RAM copy of the streams) */
static int g_headw_ready;

{"".join(code)}
/* the streamed head weights (next_row) -> class-major rows (feature (i*WO + j)*CF + ch) */
static void build_headw(void)
{{
    enum {{ CF = {cf}, HO = {ho}, WO = {wo}, K = {k}, D = {d} }};
    const hw_t *wa, *wbc;
    int ch, i, c, j;
    head_rewind();
    for (ch = 0; ch < CF; ch++)
        for (i = 0; i < HO; i++) {{
            const int f0 = i * WO * CF + ch;
            next_row(&wa, &wbc);
#if HEAD_RA && {int(eight)}
            for (c = 0; c + 1 < K; c += 2)
                for (j = 0; j + 1 < WO; j += 2, wa += 4) {{
                    g_headw[c * D + f0 + j * CF] = (hw_t)(wa[0] - HEAD_OFFSET);
                    g_headw[(c + 1) * D + f0 + j * CF] = (hw_t)(wa[1] - HEAD_OFFSET);
                    g_headw[c * D + f0 + (j + 1) * CF] = (hw_t)(wa[2] - HEAD_OFFSET);
                    g_headw[(c + 1) * D + f0 + (j + 1) * CF] = (hw_t)(wa[3] - HEAD_OFFSET);
                }}
#elif HEAD_RA
            for (c = 0; c < K; c++)
                for (j = 0; j + 1 < WO; j += 2, wa += 2) {{
                    g_headw[c * D + f0 + j * CF] = wa[0];
                    g_headw[c * D + f0 + (j + 1) * CF] = wa[1];
                }}
#endif
#if HEAD_RBC && {int(eight and k % 2 == 1)}
            for (j = 0; j + 1 < WO; j += 2, wbc += 2) {{
                g_headw[(K - 1) * D + f0 + j * CF] = (hw_t)(wbc[0] - HEAD_OFFSET);
                g_headw[(K - 1) * D + f0 + (j + 1) * CF] = (hw_t)(wbc[1] - HEAD_OFFSET);
            }}
#endif
#if HEAD_RBC && {wo % 2}
            for (c = 0; c < K; c++) g_headw[c * D + f0 + (WO - 1) * CF] = (hw_t)(wbc[c] - HEAD_OFFSET);
#endif
            (void)wa;
            (void)wbc;
            (void)c;
            (void)j;
        }}
    g_headw_ready = 1;
}}

/* features (d) x class-major weights: exact, {partial} partials then int64 */
static int scores(const uint8_t *image, int64_t *logits)
{{
    const act_t *f = g_map{cur};
    int j, s, i, best = 0;
    int64_t bestv = 0;
    if (!g_headw_ready) build_headw();
{chr(10).join(calls)}
    for (j = 0; j < {k}; j++) {{
        const hw_t *w = g_headw + j * {d};
        int64_t acc = HEAD_B[j];
        for (s = 0; s < {nfull}; s++) {{
            {partial} p = 0;
            for (i = 0; i < {chunk}; i++) p += ({partial})f[s * {chunk} + i] * ({partial})w[s * {chunk} + i];
            acc += p;
        }}
        {{
            {partial} p = 0;
            for (i = 0; i < {rest}; i++) p += ({partial})f[{nfull * chunk} + i] * ({partial})w[{nfull * chunk} + i];
            acc += p;
        }}
        acc = HEAD_OUT(acc, j);
        if (logits) logits[j] = acc;
        if (j == 0 || acc > bestv) {{ best = j; bestv = acc; }}
    }}
    return best;
}}
"""


def _head_out_c(hd: dict, k: int) -> str:
    """``HEAD_OUT(acc, c)``: the class score from the exact accumulator -- itself, a
    per-class fixed-point rescale, or TFLite's int16 logit (``engine.requant``)."""
    rq = hd.get("requant")
    if rq is not None:
        mult, shift = rq["multiplier"], rq["shift"]
        if mult.size == 1:
            mult, shift = np.repeat(mult, k), np.repeat(shift, k)
        from ..engine.requant import reduced_multiplier
        red = [reduced_multiplier(int(q)) for q in mult]
        total = [15 - int(s) for s in shift]
        return ("/* TFLite rounding: the int16 logit TFLite Micro's 16x8 FULLY_CONNECTED gives,\n"
                " * MultiplyByQuantizedMultiplier(int64) with the 16-bit multiplier HEAD_RQ_M\n"
                " * and shift HEAD_RQ_T: (acc * m + 2^(t-1)) >> t (arithmetic shift, as\n"
                " * TFLite's own C++), then clamped to int16 */\n"
                + _c_array("int64_t", "HEAD_RQ_M", red) + _c_array("int32_t", "HEAD_RQ_T", total)
                + "static int64_t head_out(int64_t a, int c)\n{\n"
                "    const int64_t r = (a * HEAD_RQ_M[c] + ((int64_t)1 << (HEAD_RQ_T[c] - 1))) "
                ">> HEAD_RQ_T[c];\n"
                "    return r < -32768 ? -32768 : r > 32767 ? 32767 : r;\n}\n"
                "#define HEAD_OUT(a, c) head_out((a), (c))\n")
    if hd["rescale"] == "fixed-point":
        return (f"/* per-class fixed-point rescale, multiplier / 2^{hd['shift']} */\n"
                + _c_array("int32_t", "HEAD_M", hd["mult"])
                + "#define HEAD_OUT(a, c) ((a) * HEAD_M[c])\n")
    return "#define HEAD_OUT(a, c) (a)\n"


_ACT_MIN = {"int16_t": "(-32767 - 1)", "int32_t": "(-2147483647 - 1)", "int64_t": "INT64_MIN"}


def generate_sources(plan, class_names=None) -> dict[str, str]:
    """The C sources as strings: model.h, model.c, main.c."""
    act = CTYPE[plan.act_dtype]
    hd = plan.head
    stages = _conv_stages(plan)
    h0, w0, c0 = plan.input_shape
    k, d = plan.n_classes, plan.n_features
    bits = hd["bits"]
    wtype = "int8_t" if bits <= 8 else "int16_t"
    # per stage geometry; level s = the input of stage s (level 0 = the image)
    geo = []
    for op, pool in stages:
        h, w, cin = op["in_shape"]
        wr = _even(w)
        geo.append({"h": h, "w": w, "wr": wr, "cin": cin, "m": op["multiplier"],
                    "co": op["out_shape"][2], "relu": int(bool(op["relu_in"])), "pool": pool,
                    "oh": (h + 1) // 2 if pool else h, "ow": (w + 1) // 2 if pool else w})
    wo_last = geo[-1]["ow"]
    ho_last = geo[-1]["oh"]
    packed = plan.head_storage == "packed" and bits in PACKED_BITS
    chunk = hd["chunk"] if hd["partial_dtype"] == "int32" else 0
    if packed and chunk:
        # a packed head is summed in its stored offset form t = w + 2^(n-1) (the decoder
        # then needs no sign work; the offset times the feature sum comes off at the end),
        # so a product is bounded by the feature bound times q_max + 2^(n-1)
        chunk = min(d, INT32_MAX // (hd["feature_bound"] * (hd["q_max"] + (1 << (bits - 1)))))
    if chunk >= wo_last * ho_last:
        part = "int32_t"       # a final channel's partial sums fit int32: flush every
        flush_n = chunk // (wo_last * ho_last)   # flush_n channels
    else:
        part = "int64_t"
        flush_n = 1
    for g in geo:
        g["wp"] = g["wr"] + 2
    wpmax = geo[0]["wp"]
    wrmax = max(g["wr"] for g in geo)
    # buffers: S per level, the planes of each level >= 1, the image ring, pool rows
    bufs = []
    for s, g in enumerate(geo):
        bufs.append(f"LBCNN_BUF(g_s{s}, {g['h'] * g['wr']});   /* box sums of a level-{s} map "
                    f"({g['h']}x{g['w']}) */")
    for s, g in enumerate(geo[1:], start=1):
        n = (g["h"] + 2) * g["wp"]
        bufs.append(f"LBCNN_BUF(g_pe{s}, {n});   /* a level-{s} map, zero-padded "
                    f"({g['h'] + 2}x{g['wp']}) */")
        bufs.append(f"LBCNN_BUF(g_po{s}, LBCNN_SIMD ? {n} : 1);   /* the same shifted by one */")
    bufs += [f"LBCNN_BUF(g_ring, {6 * wpmax});   /* 3 padded image rows + copies shifted by one */",
             f"LBCNN_BUF(g_zero, {max([geo[0]['wp']] + [g['wp'] + g['wr'] for g in geo[1:] if g['pool']])});"
             "   /* zero taps (also read one plane row further), never written */",
             f"LBCNN_BUF(g_pa, {wrmax + 4});   /* conv rows / vertical max of row pairs */",
             f"LBCNN_BUF(g_pb, {wrmax + 4});",
             f"LBCNN_BUF(g_prow, {_even(max(g['ow'] for g in geo))});  /* one pooled row */"]
    weights = []
    for s, (op, _) in enumerate(stages):
        weights.append(f"/* stage {s}: layer {op['layer']}, {tuple(op['in_shape'])} -> "
                       f"{tuple(op['out_shape'])}{', ReLU on input' if op['relu_in'] else ''}, "
                       f"bound {op['bound']}; bit t*Co+co set = tap t of channel co is -1 */\n")
        weights.append(_c_array("uint8_t", f"K{s}", op["neg_bits"]))
    head_c, _ = head_weights_c(plan)
    sz = head_stream_sizes(ho_last, wo_last, geo[-1]["co"], k, bits)
    weights.append(f"/* head: {bits}-bit weights ({geo[-1]['co']} final channels x {ho_last} pooled "
                   f"rows x {k} classes x {wo_last} pooled columns), one row per final channel "
                   f"and pooled row: stream A ({sz['a']} a row), stream BC ({sz['bc']} a row)"
                   f"{f', {bits} bits a weight, 32-weight groups' if packed else ''} */\n")
    weights.append(head_c)
    weights.append(_c_array("int32_t" if bias_flash_bytes(hd["bias_q"]) == 4 else "int64_t",
                            "HEAD_B", hd["bias_q"]))
    weights.append(_head_out_c(hd, k))
    weights.append(_c_array("int32_t", "LABELS", [int(c) for c in plan.classes]))
    # the depth-first loops: ch{s} = output channel of stage s
    ns = len(geo)
    decls = "    int " + ", ".join(["c_in"] + [f"j{s}, ch{s}" for s in range(ns)]) + ";"
    loops, ind = [], "    "
    loops.append(f"{ind}for (c_in = 0; c_in < {c0}; c_in++) {{")
    for s, g in enumerate(geo):
        ind2 = ind + "    " * (s + 1)
        parent = "c_in" if s == 0 else f"ch{s - 1}"
        loops.append(f"{ind2}for (j{s} = 0; j{s} < {g['m']}; j{s}++) {{")
        loops.append(f"{ind2}    ch{s} = {parent} * {g['m']} + j{s};")
        if s > 0 and g["pool"]:
            loops.append(f"{ind2}    plane_pool_stage(&ST[{s}], ch{s}, j{s} == 0);")
        else:
            src = f"image + c_in, {c0}" if s == 0 else "0, 0"
            loops.append(f"{ind2}    run_stage(&ST[{s}], {src}, ch{s}, j{s} == 0);")
        if s + 1 == ns:
            loops.append(f"{ind2}    flush_head(0);")
    for s in reversed(range(ns)):
        loops.append(ind + "    " * (s + 1) + "}")
    loops.append(ind + "}")
    st_rows = []
    for s, g in enumerate(geo):
        pe = "0, 0" if s == 0 else f"g_pe{s}.v, g_po{s}.v"
        if s + 1 < ns:
            nx = geo[s + 1]
            dst = f"g_pe{s + 1}.v, g_po{s + 1}.v", nx["wp"], nx["relu"]
        else:
            dst = "0, 0", 0, 0
        st_rows.append(f"    {{ K{s}, g_s{s}.v, {pe}, {dst[0]}, {g['h']}, {g['w']}, {g['co']}, "
                       f"{dst[1]}, {int(g['pool'])}, {dst[2]} }}")
    calc = "int64_t" if act == "int64_t" else "int32_t"
    simd_ok = 1 if act == "int16_t" else 0
    text = MODEL_C.replace("@HEAD_STREAMS@", HEAD_STREAMS)
    for key, val in {"@ACT@": act, "@CALC@": calc, "@PART@": part, "@WT@": wtype,
                     "@ACTMIN@": _ACT_MIN[act], "@SIMD_OK@": simd_ok,
                     "@BOUNDS@": plan.bounds["stages"], "@BITS@": bits,
                     "@ACCB@": hd["acc_bound"], "@WEIGHTS@": "".join(weights),
                     "@FULL@": _full_path(plan, stages, act),
                     "@BUFFERS@": "\n".join(bufs), "@K@": k, "@WPMAX@": wpmax,
                     "@DECLS@": decls, "@LOOPS@": "\n".join(loops),
                     "@WO@": wo_last, "@NS@": ns,
                     "@RA@": sz["a"], "@RBC@": sz["bc"], "@PACKED@": int(packed),
                     "@OFFSET@": (1 << (bits - 1)) if packed else 0,
                     "@UNPACK@": unpack_group_c(bits) if packed else "",
                     "@HEAD8@": int(wtype == "int8_t"),
                     "@ANYRELU@": int(any(g["relu"] for g in geo)),
                     "@FLUSHN@": flush_n,
                     "@PLANEPOOL@": int(any(g["pool"] for g in geo[1:])),
                     "@HEAD_SIMD@": int(part == "int32_t"), "@STAGES@": ",\n".join(st_rows)}.items():
        text = text.replace(key, str(val))
    model_h = predict_header("integer-only LB-CNN inference", (h0, w0, c0), k, d, class_names,
                             "the predicted class label")
    return {"model.h": model_h, "model.c": text, "main.c": MAIN_C}


def export_lbcnn_c(plan, out_dir, measure: bool = True, test_vectors=None,
                   class_names=None, layout: str = "c", record=None) -> dict:
    return write_c_project(plan, out_dir, generate_sources(plan, class_names), _readme, measure,
                           test_vectors, layout, record)


def _readme(plan, wb: dict, sizes: dict | None) -> str:
    h, w, c = plan.input_shape
    hd = plan.head
    lines = [
        "# LB-CNN integer inference (generated C99)", "",
        "`int lbcnn_predict(const uint8_t *image)` takes H*W*C uint8 pixels in (H, W, C) "
        "order and returns the class label; `lbcnn_predict_logits(image, logits)` also "
        "writes the integer class scores (int64, equal to the NumPy engine's). Class names: "
        "`LBCNN_CLASS_NAMES` in `model.h`. No malloc, no libm, no float, no libc; static "
        "scratch (not reentrant).", "",
        "The network runs one depthwise channel path at a time (a layer-1 map, then each of "
        "its children, ...), conv and max pool fused row by row, and the last layer's pooled "
        "rows go straight into the class accumulators: the static RAM is one small map per "
        "level plus a few rows, independent of the number of filters.", "",
        f"- input {h}x{w}x{c} uint8; activations `{plan.act_dtype}`; worst-case stage bounds "
        f"{plan.bounds['stages']}",
        f"- head: {hd['bits']}-bit weights, {plan.n_features} features x {plan.n_classes} "
        f"classes, int64 accumulators (bound {hd['acc_bound']:,}); rescale: {hd['rescale']}",
        f"- weights: {wb['conv_packed']:,} bytes packed +-1 kernels + {wb['head']:,} bytes head "
        f"({hd['bits']} bits a weight"
        f"{', packed' if plan.head_storage == 'packed' and hd['bits'] in PACKED_BITS else ''}) "
        f"+ {wb['bias']:,} bytes bias + {wb['rescale']:,} bytes rescale "
        f"= **{wb['total']:,} bytes** (what `lbcnn info` counts)", ""]
    return "\n".join(lines + sizes_table(sizes))


register(IntegerPlan, export_lbcnn_c)
