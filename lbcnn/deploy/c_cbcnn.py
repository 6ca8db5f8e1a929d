"""C99 code generation for a CBCNN :class:`~lbcnn.engine.cbcnn_plan.CBCNNPlan`.

Same contract as the LB-CNN generator (``lbcnn.deploy.c_lbcnn``):
``int lbcnn_predict(const uint8_t *image)``, const packed weights, static
scratch, no malloc / float / libm / libc; ``main.c`` and the bench harness are
shared. +-1 activations are packed one bit per channel into uint64 words,
``ceil(C/64)`` words per pixel (pad bits 0), so each binary conv tap is a run of
``LBCNN_POPCOUNT64(a ^ w)`` (mismatches) and each dense row one of
``LBCNN_POPCOUNT64(~(a ^ w))`` (``lbcnn_xnor_dot``). Every conv computes its
four pre-pool sums for all channels, takes the max, compares it with the
channel's integer threshold and sets one output bit; the pre-pool map is never
stored. Between conv layers only a ring of four output rows is kept: a layer's
output row oy needs its input rows 2oy-1 .. 2oy+2, which are made on demand. The first conv's sign bits are unpacked to 0/-1 masks in static RAM at
each call (``(p ^ m) - m`` = +-p, no multiply).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..engine.cbcnn_plan import CBCNNPlan
from .c_common import MAIN_C, POPCOUNT_C, _c_array, predict_header, register, sizes_table
from .c_project import write_c_project

INT32_MAX = 2 ** 31 - 1


def _u64_array(name: str, words, per_line: int = 4) -> str:
    vals = [f"UINT64_C(0x{int(v):016x})" for v in np.asarray(words, dtype=np.uint64).ravel()]
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    body = ",\n    ".join(lines)
    return f"static const uint64_t {name}[{max(len(vals), 1)}] = {{\n    {body or '0'}\n}};\n"


def _u8_array(name: str, values) -> str:
    return _c_array("uint8_t", name, np.asarray(values).astype(np.uint8))


FIRST_CONV = r"""
/* layer @L@: ({H}, {W}, {C}) uint8 -> sign conv 3x3 (zero padding 1) -> 2x2 max pool
 * -> threshold -> ({HO}, {WO}, {CO}) bits. S = sum of +-pixel, exact, |S| <= @B@.
 * acc[co] for one position; m: 0 (+1 tap) or -1 (-1 tap), (p ^ m) - m = +-p. */
static void conv_sums_@L@(const uint8_t *img, int y, int x, int32_t *restrict acc)
{
    enum { H = @H@, W = @W@, C = @C@, CO = @CO@ };
    int dy, dx, c, co;
    for (co = 0; co < CO; co++) acc[co] = 0;
    for (dy = -1; dy <= 1; dy++) {
        if (y + dy < 0 || y + dy >= H) continue;
        for (dx = -1; dx <= 1; dx++) {
            const uint8_t *p;
            const int8_t *m;
            if (x + dx < 0 || x + dx >= W) continue;
            p = img + ((y + dy) * W + (x + dx)) * C;
            m = g_m@L@ + ((dy + 1) * 3 + (dx + 1)) * C * CO;
            for (c = 0; c < C; c++, m += CO) {
                int32_t v = p[c];
                for (co = 0; co < CO; co++) acc[co] += (v ^ m[co]) - m[co];
            }
        }
    }
}

static void unpack_@L@(void)
{
    enum { C = @C@, CO = @CO@, WW = @WW@ };
    int co, k;
    for (co = 0; co < CO; co++)
        for (k = 0; k < 9 * C; k++)
            g_m@L@[k * CO + co] = (int8_t)((int)((W@L@[co * WW + (k >> 6)] >> (k & 63)) & 1u) - 1);
}
"""

XNOR_CONV = r"""
/* layer @L@: ({H}, {W}, {C}) bits -> xnor conv 3x3 over the valid taps
 * (S = 2*popcount(xnor) - N_valid = N_valid - 2*popcount(a ^ w): pad bits are 0 in
 * both, so they never mismatch; |S| <= @B@) -> 2x2 max pool -> threshold -> bits.
 * Weights (tap, co, word). */
static void conv_sums_@L@(const uint64_t *a, int y, int x, int32_t *restrict acc)
{
    enum { H = @H@, W = @W@, C = @C@, CO = @CO@, WD = @WD@ };
    int32_t nt = 0;
    int dy, dx, co, k;
    for (co = 0; co < CO; co++) acc[co] = 0;
    for (dy = -1; dy <= 1; dy++) {
        if (y + dy < 0 || y + dy >= H) continue;
        for (dx = -1; dx <= 1; dx++) {
            const uint64_t *p, *q;
            if (x + dx < 0 || x + dx >= W) continue;
            p = a + ((y + dy) * W + (x + dx)) * WD;
            q = W@L@ + ((dy + 1) * 3 + (dx + 1)) * CO * WD;
            for (co = 0; co < CO; co++, q += WD) {
                int32_t miss = 0;
                for (k = 0; k < WD; k++) miss += LBCNN_POPCOUNT64(p[k] ^ q[k]);
                acc[co] += miss;
            }
            nt++;
        }
    }
    for (co = 0; co < CO; co++) acc[co] = nt * C - 2 * acc[co];
}

static void unpack_@L@(void) { }
"""

ROW_STAGE = r"""
/* output row oy of layer @L@ (@WO@ positions x @OWD@ words): the four pre-pool sums of
 * every channel, their max against the channel's threshold, one bit each */
static void row_@L@(const @SRC_T@ *src, uint64_t *dst, int oy)
{
    enum { WO = @WO@, CO = @CO@, OWD = @OWD@ };
    int32_t *s0 = g_acc, *s1 = g_acc + CO, *s2 = g_acc + 2 * CO, *s3 = g_acc + 3 * CO;
    int ox, co, k;
    for (k = 0; k < WO * OWD; k++) dst[k] = 0;
    for (ox = 0; ox < WO; ox++) {
        uint64_t *o = dst + ox * OWD;
        conv_sums_@L@(src, 2 * oy, 2 * ox, s0);
        conv_sums_@L@(src, 2 * oy, 2 * ox + 1, s1);
        conv_sums_@L@(src, 2 * oy + 1, 2 * ox, s2);
        conv_sums_@L@(src, 2 * oy + 1, 2 * ox + 1, s3);
        for (co = 0; co < CO; co++) {
            int32_t s = s0[co];
            if (s1[co] > s) s = s1[co];
            if (s2[co] > s) s = s2[co];
            if (s3[co] > s) s = s3[co];
            if (F@L@[co] ? s <= T@L@[co] : s >= T@L@[co])
                o[co >> 6] |= (uint64_t)1 << (co & 63);
        }
    }
}
"""

NEED_FN = r"""
/* layer @L@'s output rows up to r, in its ring of four rows (row i in slot i & 3): its
 * consumer's output row oy reads rows 2oy-1 .. 2oy+2 only */
static void need_@L@(int r)
{
    while (g_next@L@ <= r) {
@PULL@        row_@L@(@SRC@, g_ring@L@ + (g_next@L@ & 3) * @ROWW@, g_next@L@);
        g_next@L@++;
    }
}
"""

DENSE_STAGE = r"""
/* layer @L@: dense xnor over @N@ bits (@WD@ words) -> threshold -> @CO@ bits */
static void stage_@L@(const uint64_t *src, uint64_t *dst)
{
    int j, k;
    for (k = 0; k < @OWD@; k++) dst[k] = 0;
    for (j = 0; j < @CO@; j++) {
        int32_t s = lbcnn_xnor_dot(src, W@L@ + j * @WD@, @WD@, @N@);
        if (F@L@[j] ? s <= T@L@[j] : s >= T@L@[j])
            dst[j >> 6] |= (uint64_t)1 << (j & 63);
    }
}
"""


def _fill(template: str, values: dict) -> str:
    for k, v in values.items():
        template = template.replace(f"@{k}@", str(v))
    return template


def generate_cbcnn_sources(plan, class_names=None) -> dict[str, str]:
    """The C sources (model.h, model.c, main.c) for a CBCNN plan."""
    for op in plan.ops:
        if op["bound"] > INT32_MAX // 2:
            raise ConfigError(f"layer {op['layer']} sums reach {op['bound']}, beyond the int32 "
                              "arithmetic of the generated C")
    hd = plan.head
    h0, w0, c0 = plan.input_shape
    k, d = plan.n_classes, plan.n_features
    weights, stages, calls, sizes, scratch, acc = [], [], [], [0, 0], [], 0
    conv_idx = [li for li, op in enumerate(plan.ops) if op["type"] in ("sign_conv3", "xnor_conv3")]
    if conv_idx != list(range(len(conv_idx))):
        raise ConfigError("the C generator needs the conv layers before the dense ones")
    rings, unpacks, cur, prev_conv = [], [], None, None
    for li, op in enumerate(plan.ops):
        th = np.clip(op["threshold"], -INT32_MAX, INT32_MAX)
        if op["type"] in ("sign_conv3", "xnor_conv3"):
            h, w, c = op["in_shape"]
            ho, wo, co = op["out_shape"]
            vals = {"L": li, "H": h, "W": w, "C": c, "HO": ho, "WO": wo, "CO": co,
                    "B": op["bound"], "OWD": op["out_words"], "WD": op["in_words"],
                    "WW": op["w_packed"].shape[1],
                    "SRC_T": "uint8_t" if op["type"] == "sign_conv3" else "uint64_t"}
            tmpl = FIRST_CONV if op["type"] == "sign_conv3" else XNOR_CONV
            if prev_conv is not None:     # the input is the previous layer's ring
                tmpl = tmpl.replace("p = a + ((y + dy) * W + (x + dx)) * WD;",
                                    "p = a + (((y + dy) & 3) * W + (x + dx)) * WD;")
            text = tmpl.replace("{H}", str(h)).replace("{W}", str(w)).replace("{C}", str(c))
            text = text.replace("{HO}", str(ho)).replace("{WO}", str(wo)).replace("{CO}", str(co))
            stages.append(_fill(text, vals) + _fill(ROW_STAGE, vals))
            src = "g_img" if prev_conv is None else f"g_ring{prev_conv}"
            pull = ""
            if prev_conv is not None:
                pull = (f"        need_{prev_conv}(2 * g_next{li} + 2 < {h} ? 2 * g_next{li} + 2 "
                        f": {h - 1});\n")
            if li != conv_idx[-1]:        # consumed by the next conv: a ring of four rows
                roww = wo * op["out_words"]
                rings.append(f"static uint64_t g_ring{li}[{4 * roww}];  /* 4 output rows */\n"
                             f"static int g_next{li};\n")
                stages.append(_fill(NEED_FN, {"L": li, "PULL": pull, "SRC": src, "ROWW": roww}))
            else:                         # the last conv: its whole (small) map
                out_words = ho * wo * op["out_words"]
                rings.append(f"static uint64_t g_out[{out_words}];  /* the last conv's map */\n")
                calls.append(f"    for (oy = 0; oy < {ho}; oy++) {{")
                if prev_conv is not None:
                    calls.append(f"        need_{prev_conv}(2 * oy + 2 < {h} ? 2 * oy + 2 : {h - 1});")
                calls.append(f"        row_{li}({src}, g_out + oy * {wo * op['out_words']}, oy);")
                calls.append("    }")
                cur = "g_out"
            unpacks.append(f"    unpack_{li}();")
            prev_conv = li
            weights.append(f"/* layer {li} ({op['type']}): {co} filters, packed sign bits "
                           f"(1 = +1), taps (ky, kx, c) */\n")
        elif op["type"] == "xnor_dense":
            co = op["out_features"]
            vals = {"L": li, "N": op["n_bits"], "WD": op["in_words"], "CO": co,
                    "OWD": op["out_words"]}
            stages.append(_fill(DENSE_STAGE, vals))
            dst = 0 if cur != "g_map0" else 1
            sizes[dst] = max(sizes[dst], op["out_words"])
            calls.append(f"    stage_{li}({cur}, g_map{dst});")
            cur = f"g_map{dst}"
            weights.append(f"/* layer {li} (xnor_dense): {co} x {op['n_bits']} bits */\n")
        else:
            raise ConfigError(f"the C generator has no kernel for op {op['type']!r}")
        packed = op["w_packed"]
        if op["type"] == "xnor_conv3":   # (co, tap, word) -> (tap, co, word)
            packed = packed.reshape(packed.shape[0], 9, -1).transpose(1, 0, 2)
        weights.append(_u64_array(f"W{li}", packed))
        if op["type"] == "sign_conv3":
            scratch.append(f"static int8_t g_m{li}[{9 * op['in_shape'][2] * op['out_shape'][2]}];"
                           "  /* unpacked first-layer taps, 0 or -1 */\n")
        if op["type"] in ("sign_conv3", "xnor_conv3"):
            acc = max(acc, 4 * op["out_shape"][2])
        weights.append(_c_array("int32_t", f"T{li}", th))
        weights.append(_u8_array(f"F{li}", op["flip"]))
    resets = "".join(f"    g_next{li} = 0;\n" for li in conv_idx[:-1])
    calls = (["    int oy;", "    g_img = image;"] + [resets.rstrip("\n")] * bool(resets)
             + unpacks + calls)
    weights.append(f"/* head: {k} x {d} bits, then score = a * HS + HB "
                   f"(final BN in fixed point, 2^{hd['shift']}) */\n")
    weights.append(_u64_array("HW", hd["w_packed"]))
    weights.append(_c_array("int64_t", "HS", hd["scale_q"]))
    weights.append(_c_array("int64_t", "HB", hd["bias_q"]))
    maps = "".join(f"static uint64_t g_map{i}[{n}];\n" for i, n in enumerate(sizes) if n)
    maps += "static const uint8_t *g_img;  /* the image of the current call */\n"
    maps += "".join(rings)
    maps += "".join(scratch) + f"static int32_t g_acc[{acc}];  /* four pre-pool sum rows */\n"
    wd = hd["in_words"]
    model_h = predict_header("integer-only CBCNN inference", (h0, w0, c0), k, d, class_names,
                             "the predicted class index")
    model_c = f"""/* Generated by lbcnn.deploy.c_export -- integer-only CBCNN inference.
 * C99, no malloc, no libm, no float, no libc. Binary activations packed in uint64
 * words; sums int32 (bounds {plan.bounds['stages']}); head int64 (bound {hd['acc_bound']}). */
#include "model.h"
{POPCOUNT_C}
{''.join(weights)}
/* static scratch: a ring of four packed +-1 rows between conv layers (each layer's rows
 * are made when the next one needs them), the last conv's map, the dense layers' vectors */
{maps}{''.join(stages)}
/* final xnor dense + fixed-point BN, argmax (first maximum wins) */
static int head_argmax(const uint64_t *f, int64_t *logits)
{{
    int j, best = 0;
    for (j = 0; j < {k}; j++) {{
        logits[j] = (int64_t)lbcnn_xnor_dot(f, HW + j * {wd}, {wd}, {d}) * HS[j] + HB[j];
        if (logits[j] > logits[best]) best = j;
    }}
    return best;
}}

int lbcnn_predict_logits(const uint8_t *image, int64_t *logits)
{{
{chr(10).join(calls)}
    return head_argmax({cur}, logits);
}}

int lbcnn_predict(const uint8_t *image)
{{
    int64_t logits[{k}];
    return lbcnn_predict_logits(image, logits);
}}
"""
    main_c = MAIN_C
    return {"model.h": model_h, "model.c": model_c, "main.c": main_c}


def export_cbcnn_c(plan, out_dir, measure: bool = True, test_vectors=None,
                   class_names=None, layout: str = "c", record=None) -> dict:
    return write_c_project(plan, out_dir, generate_cbcnn_sources(plan, class_names), _readme,
                           measure, test_vectors, layout, record)


register(CBCNNPlan, export_cbcnn_c)


def _readme(plan, wb: dict, sizes: dict | None) -> str:
    h, w, c = plan.input_shape
    hd = plan.head
    lines = [
        "# CBCNN integer inference (generated C99)", "",
        "`int lbcnn_predict(const uint8_t *image)` takes H*W*C uint8 pixels in (H, W, C) "
        "order and returns the class index. No malloc, no libm, no float, no libc; "
        "static scratch (not reentrant).", "",
        "```sh",
        "gcc -std=c99 -O2 -Wall -Wextra -Werror model.c main.c -o lbcnn",
        f"./lbcnn < images.raw   # {h * w * c} bytes per image, one class per line",
        "```", "",
        f"- input {h}x{w}x{c} uint8 (the float model sees pixel * {plan.input_scale:.6g}); "
        f"layer sum bounds {plan.bounds['stages']}",
        "- binary layers: packed uint64 sign bits, XNOR + popcount, integer BN thresholds",
        f"- head: {plan.n_features}-bit XNOR dot, then the final BN as "
        f"`a * HS + HB` in int64 with 2^{hd['shift']} fixed point "
        "(an approximation of the float BN; see `lbcnn.engine.cbcnn_plan`)",
        f"- weights: {wb['packed_weights']:,} bytes packed bits + {wb['thresholds']:,} bytes "
        f"thresholds/flips + {wb['head_affine']:,} bytes head = **{wb['total']:,} bytes**", ""]
    lines += sizes_table(sizes)
    lines += ["Popcount: `LBCNN_POPCOUNT64`, `__builtin_popcountll` when "
              "`LBCNN_USE_BUILTIN_POPCOUNT` is defined, else a portable C99 fallback.", ""]
    return "\n".join(lines)
