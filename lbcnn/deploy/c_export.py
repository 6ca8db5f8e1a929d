"""C99 code generation for an :class:`~lbcnn.engine.plan.IntegerPlan`.

``export_c(model_or_plan, out_dir)`` writes

* ``model.h`` / ``model.c`` -- ``int lbcnn_predict(const uint8_t *image)``;
  weights as ``const`` packed arrays, static scratch buffers sized here, no
  malloc, no libm, no float, no libc calls at all;
* ``main.c`` -- reads raw H*W*C uint8 images from stdin, prints one class a line;
* ``README.md`` -- flash bytes (``size`` on the compiled object) and RAM bytes
  (static scratch plus a stack estimate from ``-fstack-usage``).

Layout: activations are channel-innermost (H, W, C) in the plan's activation
type (int16 when the bounds allow, so the compiler can vectorize eight or
more lanes). A +-1 tap is applied as ``(x ^ m) - m`` with ``m`` in {0, -1}:
an add or a subtract, never a multiply. Each conv streams rows through a
3-row ring of channel-expanded inputs, and its last conv of a macro-layer
feeds the 4x4/2 max pool row by row through a 4-row ring, so the full
pre-pool map is never stored (nl > 1 stores one pre-pool map per extra conv).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import atomic_write_text

CTYPE = {"int16": "int16_t", "int32": "int32_t", "int64": "int64_t"}

POPCOUNT_C = r"""
/* Optional compiler popcount; the portable fallback is plain C99. */
#if defined(LBCNN_USE_BUILTIN_POPCOUNT) && (defined(__GNUC__) || defined(__clang__))
#define LBCNN_POPCOUNT64(x) ((int)__builtin_popcountll(x))
#else
static int lbcnn_popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
}
#define LBCNN_POPCOUNT64(x) lbcnn_popcount64(x)
#endif

/* sum_b a[b] * w[b] for +-1 vectors packed one bit each (1 = +1), zero
 * padded to whole words: out = 2 * popcount(xnor(a, w)) - N. */
static int32_t lbcnn_xnor_dot(const uint64_t *a, const uint64_t *w, int words, int n_bits)
{
    int32_t pc = 0;
    int k;
    for (k = 0; k < words; k++) pc += LBCNN_POPCOUNT64(~(a[k] ^ w[k]));
    pc -= words * 64 - n_bits;
    return 2 * pc - n_bits;
}
"""


MAIN_C = """/* Example: raw uint8 images (LBCNN_INPUT_BYTES each) on stdin, one class per line. */
#include <stdio.h>
#include "model.h"

int main(void)
{
    static uint8_t image[LBCNN_INPUT_BYTES];
    while (fread(image, 1, sizeof image, stdin) == sizeof image)
        printf("%d\\n", lbcnn_predict(image));
    return 0;
}
"""


def _c_array(ctype: str, name: str, values, per_line: int = 24) -> str:
    vals = [str(int(v)) for v in np.asarray(values).ravel()]
    if ctype == "int64_t":
        vals = [f"INT64_C({v})" for v in vals]
        per_line = 6
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{max(len(vals), 1)}] = {{\n    {body or '0'}\n}};\n"


def _conv_stages(plan):
    """Group plan ops into C calls: each conv, with 'pool' on the last conv of a layer."""
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
    return stages


STAGE_TEMPLATE = r"""
/* ---- stage @S@: @DESC@ ---- */
/* one input row (W x Cin) -> (W+2) x Cin*M, each channel repeated M times */
static void expand_row_@S@(const @SRC_T@ *src, act_t *dst)
{
    enum { W = @W@, Cin = @CIN@, M = @M@, Co = @CIN@ * @M@ };
    act_t *o = dst + Co;
    int k, r;
    for (k = 0; k < Co; k++) { dst[k] = 0; dst[(W + 1) * Co + k] = 0; }
    for (k = 0; k < W * Cin; k++) {
        act_t v = (act_t)src[k];
@RELU@        for (r = 0; r < M; r++) o[k * M + r] = v;
    }
}

/* out[x][co] = sum over 9 taps of +-in: (v ^ m) - m with m = 0 or -1 */
static void conv_row_@S@(const act_t *a, const act_t *b, const act_t *c, act_t *out)
{
    enum { W = @W@, Co = @CIN@ * @M@ };
    const act_t *m0 = g_mask, *m1 = g_mask + Co, *m2 = g_mask + 2 * Co,
                *m3 = g_mask + 3 * Co, *m4 = g_mask + 4 * Co, *m5 = g_mask + 5 * Co,
                *m6 = g_mask + 6 * Co, *m7 = g_mask + 7 * Co, *m8 = g_mask + 8 * Co;
    int x, co;
    for (x = 0; x < W; x++) {
        const act_t *pa = a + x * Co, *pb = b + x * Co, *pc = c + x * Co;
        act_t *o = out + x * Co;
        for (co = 0; co < Co; co++)
            o[co] = (act_t)(g_nneg[co]
                + (pa[co] ^ m0[co]) + (pa[co + Co] ^ m1[co]) + (pa[co + 2 * Co] ^ m2[co])
                + (pb[co] ^ m3[co]) + (pb[co + Co] ^ m4[co]) + (pb[co + 2 * Co] ^ m5[co])
                + (pc[co] ^ m6[co]) + (pc[co + Co] ^ m7[co]) + (pc[co + 2 * Co] ^ m8[co]));
    }
}

/* the conv over the H x W x Cin map; @POOLDESC@ */
static void conv_stage_@S@(const @SRC_T@ *src, act_t *dst)
{
    enum { H = @H@, W = @W@, Cin = @CIN@, M = @M@, Co = @CIN@ * @M@, Wp = @W@ + 2,
           Wo = (@W@ + 1) / 2, Ho = (@H@ + 1) / 2 };
    int t, co, y, j, q, k, next = 0;
    (void)next; (void)j; (void)q;
    for (co = 0; co < Co; co++) g_nneg[co] = 0;
    for (t = 0; t < 9; t++)
        for (co = 0; co < Co; co++) {
            int neg;
            k = t * Co + co;
            neg = (K@S@[k >> 3] >> (k & 7)) & 1;
            g_mask[k] = (act_t)(-neg);
            g_nneg[co] = (act_t)(g_nneg[co] + neg);
        }
    expand_row_@S@(src, g_ring);
    for (y = 0; y < H; y++) {
        const act_t *a, *b, *c;
        if (y + 1 < H)
            expand_row_@S@(src + (y + 1) * W * Cin, g_ring + ((y + 1) % 3) * Wp * Co);
        a = y > 0 ? g_ring + ((y - 1) % 3) * Wp * Co : g_zero;
        b = g_ring + (y % 3) * Wp * Co;
        c = y + 1 < H ? g_ring + ((y + 1) % 3) * Wp * Co : g_zero;
@BODY@
    }
}
"""

POOL_BODY = r"""        conv_row_@S@(a, b, c, g_row);
        /* horizontal pool: column window [2j-1, 2j+2] clipped */
        for (j = 0; j < Wo; j++) {
            int lo = 2 * j - 1 < 0 ? 0 : 2 * j - 1;
            int hi = 2 * j + 2 > W - 1 ? W - 1 : 2 * j + 2;
            act_t *o = g_hp + ((y & 3) * Wo + j) * Co;
            const act_t *s0 = g_row + lo * Co;
            for (k = 0; k < Co; k++) o[k] = s0[k];
            for (q = lo + 1; q <= hi; q++) {
                const act_t *s = g_row + q * Co;
                for (k = 0; k < Co; k++) o[k] = s[k] > o[k] ? s[k] : o[k];
            }
        }
        /* vertical pool: output row i is complete once row min(2i+2, H-1) is in */
        while (next < Ho && (2 * next + 2 > H - 1 ? H - 1 : 2 * next + 2) <= y) {
            int lo = 2 * next - 1 < 0 ? 0 : 2 * next - 1;
            int hi = 2 * next + 2 > H - 1 ? H - 1 : 2 * next + 2;
            act_t *o = dst + next * Wo * Co;
            const act_t *s0 = g_hp + (lo & 3) * Wo * Co;
            for (k = 0; k < Wo * Co; k++) o[k] = s0[k];
            for (q = lo + 1; q <= hi; q++) {
                const act_t *s = g_hp + (q & 3) * Wo * Co;
                for (k = 0; k < Wo * Co; k++) o[k] = s[k] > o[k] ? s[k] : o[k];
            }
            next++;
        }"""


def _stage_c(si: int, op: dict, pool: bool) -> str:
    h, w, c = op["in_shape"]
    src_t = "uint8_t" if si == 0 else "act_t"
    relu = "        if (v < 0) v = 0;\n" if op["relu_in"] else ""
    body = POOL_BODY if pool else "        conv_row_@S@(a, b, c, dst + y * W * Co);"
    desc = (f"layer {op['layer']}, {tuple(op['in_shape'])} -> {tuple(op['out_shape'])}"
            f"{', ReLU on input' if op['relu_in'] else ''}")
    pooldesc = ("4x4/2 'same' max pool streamed row by row into dst ((H+1)/2 x (W+1)/2 x Co)"
                if pool else "the full H x W x Co map into dst")
    text = STAGE_TEMPLATE.replace("@BODY@", body)
    for key, val in {"@S@": si, "@DESC@": desc, "@POOLDESC@": pooldesc, "@SRC_T@": src_t,
                     "@RELU@": relu, "@H@": h, "@W@": w, "@CIN@": c,
                     "@M@": op["multiplier"]}.items():
        text = text.replace(key, str(val))
    return text


def generate_sources(plan) -> dict[str, str]:
    """The C sources as strings: model.h, model.c, main.c."""
    act = CTYPE[plan.act_dtype]
    hd = plan.head
    stages = _conv_stages(plan)
    h0, w0, c0 = plan.input_shape
    k, d = plan.n_classes, plan.n_features
    # scratch sizes
    max_co = max(op["out_shape"][2] for op, _ in stages)
    ring = max(3 * (op["in_shape"][1] + 2) * op["out_shape"][2] for op, _ in stages)
    zero = max((op["in_shape"][1] + 2) * op["out_shape"][2] for op, _ in stages)
    row = max(op["in_shape"][1] * op["out_shape"][2] for op, _ in stages)
    hp = max(4 * ((op["in_shape"][1] + 1) // 2) * op["out_shape"][2] for op, _ in stages)
    masks = max(9 * op["out_shape"][2] for op, _ in stages)
    # ping-pong map buffers: stage outputs alternate between map0 and map1
    sizes = [0, 0]
    calls, stage_code = [], []
    cur = None  # None = the input image
    for si, (op, pool) in enumerate(stages):
        h, w, c = op["in_shape"]
        co = op["out_shape"][2]
        out_elems = ((h + 1) // 2) * ((w + 1) // 2) * co if pool else h * w * co
        dst = 0 if cur != 0 else 1
        sizes[dst] = max(sizes[dst], out_elems)
        calls.append(f"    conv_stage_{si}({'image' if cur is None else f'g_map{cur}'}, g_map{dst});")
        stage_code.append(_stage_c(si, op, pool))
        cur = dst
    feat_buf = f"g_map{cur}"
    bits = hd["bits"]
    wtype = "int8_t" if bits <= 8 else "int16_t"
    partial = CTYPE[hd["partial_dtype"]]
    labels = [int(c) for c in plan.classes]
    chunk = hd["chunk"] if hd["chunk"] < 16 else hd["chunk"] - hd["chunk"] % 16
    nfull, rest = d // chunk, d % chunk

    weights = []
    for si, (op, _) in enumerate(stages):
        weights.append(f"/* stage {si}: layer {op['layer']}, {op['in_shape']} -> "
                       f"{op['out_shape']}, bound {op['bound']}; bit t*Co+co set = tap -1 */\n")
        weights.append(_c_array("uint8_t", f"K{si}", op["neg_bits"]))
    weights.append(f"/* head: {bits}-bit weights, class-major ({k} x {d}) */\n")
    weights.append(_c_array(wtype, "HEAD_W", hd["weight_q"].T))
    weights.append(_c_array("int64_t", "HEAD_B", hd["bias_q"]))
    if hd["rescale"] == "fixed-point":
        weights.append(f"/* per-class fixed-point rescale, multiplier / 2^{hd['shift']} */\n")
        weights.append(_c_array("int64_t", "HEAD_M", hd["mult"]))
    weights.append(_c_array("int32_t", "LABELS", labels))

    stage_code = "\n".join(stage_code)
    maps = "".join(f"static act_t g_map{i}[{n}];\n" for i, n in enumerate(sizes) if n)
    rescale = "        acc *= HEAD_M[j];\n" if hd["rescale"] == "fixed-point" else ""
    model_h = f"""/* Generated by lbcnn.deploy.c_export -- integer-only LB-CNN inference. */
#ifndef LBCNN_MODEL_H
#define LBCNN_MODEL_H

#include <stdint.h>

#define LBCNN_HEIGHT {h0}
#define LBCNN_WIDTH {w0}
#define LBCNN_CHANNELS {c0}
#define LBCNN_INPUT_BYTES {h0 * w0 * c0}
#define LBCNN_N_CLASSES {k}
#define LBCNN_N_FEATURES {d}

/* image: LBCNN_INPUT_BYTES uint8 pixels in (H, W, C) order.
 * Returns the predicted class label. Not reentrant (static scratch). */
int lbcnn_predict(const uint8_t *image);

#endif
"""
    model_c = f"""/* Generated by lbcnn.deploy.c_export -- integer-only LB-CNN inference.
 * C99, no malloc, no libm, no float, no libc. Activations: {act}
 * (worst-case bounds {plan.bounds['stages']}); head partial sums {partial} over
 * chunks of {chunk} features, accumulator int64 (bound {hd['acc_bound']}). */
#include "model.h"

typedef {act} act_t;

{''.join(weights)}
/* static scratch, sized at generation time */
{maps}static act_t g_ring[{ring}];   /* 3 channel-expanded, zero-bordered input rows */
static act_t g_zero[{zero}];   /* the zero padding row, never written */
static act_t g_row[{row}];     /* one conv output row */
static act_t g_hp[{hp}];       /* 4 horizontally pooled rows */
static act_t g_mask[{masks}];  /* 0 or -1 per tap and channel */
static act_t g_nneg[{max_co}];  /* number of -1 taps per channel */

{stage_code}
/* features (d) x class-major weights: exact, {partial} partials then int64 */
static int head_argmax(const act_t *f)
{{
    int j, s, i, best = 0;
    int64_t bestv = 0;
    for (j = 0; j < {k}; j++) {{
        const {wtype} *w = HEAD_W + j * {d};
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
{rescale}        if (j == 0 || acc > bestv) {{ best = j; bestv = acc; }}
    }}
    return best;
}}

int lbcnn_predict(const uint8_t *image)
{{
{chr(10).join(calls)}
    return LABELS[head_argmax({feat_buf})];
}}
"""
    main_c = MAIN_C
    return {"model.h": model_h, "model.c": model_c, "main.c": main_c}


def bench_source() -> str:
    """A timing harness: argv[1] = file of raw images, argv[2] = repeats. Prints JSON."""
    return r"""#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "model.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    FILE *f;
    long n, i, r, reps, sink = 0, lat_n;
    uint8_t *buf;
    double t0, t1, *lat;
    if (argc < 3) return 2;
    f = fopen(argv[1], "rb");
    if (!f) return 2;
    fseek(f, 0, SEEK_END);
    n = ftell(f) / LBCNN_INPUT_BYTES;
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n * LBCNN_INPUT_BYTES);
    if (!buf || fread(buf, LBCNN_INPUT_BYTES, n, f) != (size_t)n) return 2;
    fclose(f);
    reps = atol(argv[2]);
    for (i = 0; i < n && i < 200; i++) sink += lbcnn_predict(buf + i * LBCNN_INPUT_BYTES);
    /* single-image latency: each call timed alone, median and mean */
    lat_n = n < 2000 ? n : 2000;
    lat = malloc(sizeof(double) * lat_n);
    for (i = 0; i < lat_n; i++) {
        t0 = now();
        sink += lbcnn_predict(buf + i * LBCNN_INPUT_BYTES);
        lat[i] = now() - t0;
    }
    qsort(lat, lat_n, sizeof(double), cmp);
    /* batch throughput: the whole file, reps times */
    t0 = now();
    for (r = 0; r < reps; r++)
        for (i = 0; i < n; i++) sink += lbcnn_predict(buf + i * LBCNN_INPUT_BYTES);
    t1 = now();
    printf("{\"latency_median_us\": %.3f, \"latency_p90_us\": %.3f, "
           "\"throughput_images_per_s\": %.1f, \"images\": %ld, \"sink\": %ld}\n",
           1e6 * lat[lat_n / 2], 1e6 * lat[(lat_n * 9) / 10],
           (double)(n * reps) / (t1 - t0), n * reps, sink);
    return 0;
}
"""


def find_cc() -> str | None:
    for cc in ("gcc", "cc", "clang"):
        path = shutil.which(cc)
        if path:
            return path
    return None


CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"]


def measure_sizes(out_dir: Path, cc: str | None = None, opt: str = "-O2") -> dict | None:
    """Compile model.c to an object and read ``size`` and ``-fstack-usage``."""
    cc = cc or find_cc()
    size_tool = shutil.which("size")
    if cc is None or size_tool is None:
        return None
    out_dir = Path(out_dir)
    obj = out_dir / "model.o"
    flags = [f for f in CFLAGS if f != "-O2"] + [opt]
    subprocess.run([cc, *flags, "-fstack-usage", "-c", str(out_dir / "model.c"), "-o", str(obj)],
                   check=True, capture_output=True, text=True)
    res = subprocess.run([size_tool, str(obj)], check=True, capture_output=True, text=True)
    text, data, bss = (int(v) for v in res.stdout.splitlines()[1].split()[:3])
    stack = 0
    su = out_dir / "model.su"
    if su.exists():
        # call depth is at most 3 (predict -> conv_stage -> helper): summing every
        # function's frame is a safe upper bound
        stack = sum(int(m.group(1)) for m in re.finditer(r"\t(\d+)\t", su.read_text()))
        su.unlink()
    obj.unlink()
    return {"compiler": Path(cc).name, "flags": " ".join(flags), "text": text, "data": data,
            "bss": bss, "flash": text + data, "stack_estimate": stack,
            "ram": data + bss + stack}


def export_c(model_or_plan, out_dir, bits: int = 8, measure: bool = True) -> dict:
    """Write model.h, model.c, main.c and README.md to ``out_dir``; return a summary."""
    from ..engine.cbcnn_plan import CBCNNPlan
    from ..engine.hybrid_plan import HybridPlan
    from ..engine.plan import IntegerPlan, compile_plan

    plan = model_or_plan if isinstance(model_or_plan, (IntegerPlan, CBCNNPlan, HybridPlan)) \
        else compile_plan(model_or_plan, bits=bits)
    if isinstance(plan, HybridPlan):
        from .c_export_hybrid import export_hybrid_c
        return export_hybrid_c(plan, out_dir, measure=measure)
    if isinstance(plan, CBCNNPlan):
        from .c_export_cbcnn import export_cbcnn_c
        return export_cbcnn_c(plan, out_dir, measure=measure)
    return write_c_project(plan, out_dir, generate_sources(plan), _readme, measure)


def write_c_project(plan, out_dir, sources: dict, readme, measure: bool = True) -> dict:
    """Write generated sources, measure flash/RAM, then the README: shared by every family."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        atomic_write_text(out_dir / name, text)
    wb = plan.weight_bytes()
    sizes = measure_sizes(out_dir) if measure else None
    summary = {"out": str(out_dir), "weight_bytes": wb, "sizes": sizes, "plan": plan.describe()}
    atomic_write_text(out_dir / "README.md", readme(plan, wb, sizes))
    return summary


def _readme(plan, wb: dict, sizes: dict | None) -> str:
    h, w, c = plan.input_shape
    hd = plan.head
    lines = [
        "# LB-CNN integer inference (generated C99)", "",
        "`int lbcnn_predict(const uint8_t *image)` takes H*W*C uint8 pixels in (H, W, C) "
        "order and returns the class label. No malloc, no libm, no float, no libc; "
        "static scratch (not reentrant).", "",
        "```sh",
        "gcc -std=c99 -O2 -Wall -Wextra -Werror model.c main.c -o lbcnn",
        f"./lbcnn < images.raw   # {h * w * c} bytes per image, one class per line",
        "```", "",
        f"- input {h}x{w}x{c} uint8; activations `{plan.act_dtype}`; worst-case stage bounds "
        f"{plan.bounds['stages']}",
        f"- head: {hd['bits']}-bit weights, {plan.n_features} features x {plan.n_classes} "
        f"classes, `{hd['partial_dtype']}` partial sums over {hd['chunk']} features, int64 "
        f"accumulator (bound {hd['acc_bound']:,}); rescale: {hd['rescale']}",
        f"- weights: {wb['conv_packed']:,} bytes packed +-1 kernels + {wb['head']:,} bytes head "
        f"= **{wb['total']:,} bytes**", ""]
    if sizes:
        lines += [
            f"Measured with `size` on `model.o` ({sizes['compiler']} {sizes['flags']}):", "",
            "| | bytes |", "|---|---|",
            f"| flash (text + data: code + const weights) | {sizes['flash']:,} |",
            f"| static RAM (data + bss: scratch buffers) | {sizes['data'] + sizes['bss']:,} |",
            f"| stack estimate (sum of all `-fstack-usage` frames) | {sizes['stack_estimate']:,} |",
            f"| **RAM total** | **{sizes['ram']:,}** |", ""]
    else:
        lines += ["(no C compiler or `size` found at generation time: flash/RAM not measured)", ""]
    lines += ["Popcount: the LB-CNN plan has no XNOR layer; binary layers use "
              "`LBCNN_POPCOUNT64`, `__builtin_popcountll` when `LBCNN_USE_BUILTIN_POPCOUNT` is "
              "defined, else a portable C99 fallback.", ""]
    return "\n".join(lines)


def cli_export_c(args) -> int:
    """``lbcnn export MODEL --format c --out DIR``."""
    import json

    from ..io import resolve_model_path
    from ..engine.plan import compile_plan

    path = resolve_model_path(args.model)
    source = path if Path(path).suffix.lower() == ".npz" else None
    if source is None:
        from ..evaluate import load_any
        source = load_any(path)
    summary = export_c(compile_plan(source), args.out)
    out = {"format": "c", "source": str(path), "out": str(args.out),
           "weight_bytes": summary["weight_bytes"]["total"], "sizes": summary["sizes"]}
    if getattr(args, "json", False):
        print(json.dumps(out))
    else:
        sz = summary["sizes"]
        extra = f", flash {sz['flash']:,} B, RAM {sz['ram']:,} B" if sz else ""
        print(f"wrote {args.out}/model.[ch], main.c, README.md "
              f"(weights {out['weight_bytes']:,} B{extra})")
    return 0
