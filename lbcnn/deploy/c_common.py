"""Shared pieces of the C99 generators and the exporter registry.

Each family module (``c_lbcnn``, ``c_cbcnn``, ``c_hybrid``, ``c_lowbit``) imports this module and
registers ``{PlanClass: exporter}`` with :func:`register`; nothing here imports a
family module (the registry imports its providers by name on the first lookup), so
no module imports back up. :func:`lbcnn.deploy.c_export.export_c` is the public entry.

Every generated project has the same contract:

* ``model.h`` / ``model.c``: ``int lbcnn_predict(const uint8_t *image)`` and
  ``int lbcnn_predict_logits(const uint8_t *image, int64_t *logits)`` (the
  class index / label, and the integer engine's class scores), the class names
  as ``LBCNN_CLASS_NAMES``; const weights, static scratch, no malloc, no float,
  no libc;
* ``main.c`` (stdin images -> one class name a line), ``test_vectors.c`` +
  ``selftest.c`` when test images are given;
* the family-independent files :mod:`.c_project` adds: camera-frame preparation, build
  files for make, CMake and Zephyr, or an Arduino library, and the README.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..outputs import atomic_write_text
from ..registry import Registry

CTYPE = {"int16": "int16_t", "int32": "int32_t", "int64": "int64_t"}
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"]

# plan class -> exporter(plan, out_dir, measure=..., test_vectors=..., class_names=...)
EXPORTERS = Registry("C exporter", providers=("lbcnn.deploy.c_lbcnn", "lbcnn.deploy.c_cbcnn",
                                              "lbcnn.deploy.c_hybrid", "lbcnn.deploy.c_lowbit"))


def register(plan_cls: type, exporter: Callable) -> None:
    EXPORTERS.register(plan_cls, exporter)


def exporter_for(plan) -> Callable | None:
    return EXPORTERS.for_instance(plan)


def c_template(name: str) -> str:
    """The text of ``c_templates/name``: C sources kept as C, filled in by the generators."""
    return resources.files(__package__).joinpath("c_templates", name).read_text(encoding="utf-8")


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


MAIN_C = """/* Example: raw uint8 images (LBCNN_INPUT_BYTES each, the model's input format) on
 * stdin, one class name per line. Built with -DLBCNN_PRINT_LABELS it prints what
 * lbcnn_predict returns instead (an integer a line: how `lbcnn evaluate` reads it). */
#include <stdio.h>
#include "model.h"

int main(void)
{
    static uint8_t image[LBCNN_INPUT_BYTES];
#ifndef LBCNN_PRINT_LABELS
    static int64_t logits[LBCNN_N_CLASSES];
    int k, best;
#endif
    while (fread(image, 1, sizeof image, stdin) == sizeof image) {
#ifdef LBCNN_PRINT_LABELS
        printf("%d\\n", lbcnn_predict(image));
#else
        lbcnn_predict_logits(image, logits);
        for (best = 0, k = 1; k < LBCNN_N_CLASSES; k++)
            if (logits[k] > logits[best]) best = k;   /* first maximum: lbcnn_predict's choice */
        puts(LBCNN_CLASS_NAMES[best]);
#endif
    }
    return 0;
}
"""

SELFTEST_C = """/* Self test: the test vectors' expected classes (from the NumPy integer engine).
 * Host: cc -std=c99 -O2 model.c test_vectors.c selftest.c -o selftest && ./selftest
 * Device: call lbcnn_selftest() and check it returns 0. */
#include "model.h"
#include "test_vectors.h"

int lbcnn_selftest(void)
{
    int i, bad = 0;
    for (i = 0; i < LBCNN_N_TEST_VECTORS; i++)
        bad += lbcnn_predict(LBCNN_TEST_IMAGES[i]) != LBCNN_TEST_EXPECTED[i];
    return bad;
}

#ifndef LBCNN_SELFTEST_NO_MAIN
#include <stdio.h>
int main(void)
{
    int bad = lbcnn_selftest();
    printf("selftest: %d/%d test vectors agree\\n", LBCNN_N_TEST_VECTORS - bad, LBCNN_N_TEST_VECTORS);
    return bad != 0;
}
#endif
"""

# A ready linker script for a flat Cortex-M part: flash at 0x08000000, RAM at
# 0x20000000 (edit LENGTHs for the part). lbcnn.deploy.mcu builds with it.
LINKER_SCRIPT = """/* Cortex-M memory layout for the generated lbcnn C (edit ORIGIN/LENGTH for your part).
 * A startup file copies .data from __data_load to __data_start..__data_end and
 * zeroes __bss_start..__bss_end before calling main / lbcnn_predict. */
MEMORY
{
  FLASH (rx)  : ORIGIN = 0x08000000, LENGTH = 1024K
  RAM   (rwx) : ORIGIN = 0x20000000, LENGTH = 256K
}
SECTIONS
{
  .text   : ALIGN(4) { KEEP(*(.vectors*)) *(.text*) } > FLASH
  .rodata : ALIGN(4) { *(.rodata*) } > FLASH
  .ARM.exidx : { *(.ARM.exidx*) } > FLASH
  .data : ALIGN(4) { __data_start = .; *(.data*) __data_end = .; } > RAM AT > FLASH
  __data_load = LOADADDR(.data);
  .bss (NOLOAD) : ALIGN(8) { __bss_start = .; *(.bss*) *(COMMON) __bss_end = .; } > RAM
  __stack_top = ORIGIN(RAM) + LENGTH(RAM);
  /DISCARD/ : { *(.comment) *(.ARM.attributes) }
}
"""

# zig cc lines for the README (the same flags lbcnn.deploy.mcu uses)
ZIG_TARGETS = {
    "cortex-m4": "-target thumb-freestanding-eabihf -mcpu=cortex_m4+strict_align",
    "cortex-m0plus": "-target thumb-freestanding-eabi -mcpu=cortex_m0plus",
}
ZIG_COMMON = ("-std=c99 -O2 -ffreestanding -ffunction-sections -fdata-sections "
              "-Wall -Wextra -Werror")


def selftest_build_command(cpu: str) -> list[str]:
    """The README's Cortex-M self-test build line, as arguments after ``python -m ziglang``."""
    return (["cc", *ZIG_TARGETS[cpu].split(), *ZIG_COMMON.split(), "-T", "link_cortexm.ld",
             "-Wl,--gc-sections", "-Wl,--entry=lbcnn_selftest", "model.c", "test_vectors.c",
             "selftest.c", "-DLBCNN_SELFTEST_NO_MAIN", "-o",
             f"lbcnn_{cpu.replace('-', '_')}.elf"])


def unpack_group_c(bits: int) -> str:
    """``unpack_group(p, d)``: one group of 32 n-bit weights (n words of the layout of
    ``engine.bits.lane_planes``) into eight words of four int8 lanes holding the stored
    offset form t = w + 2^(n-1) (0 .. 2^n - 1: the plane fields OR-ed together, no sign
    work; the C takes the offset off once, at the end), straight-line."""
    from ..engine.bits import lane_planes

    planes = lane_planes(bits)
    loads, names, col = [], [], 0
    for b, _ in planes:
        names.append([f"p{col + i}" for i in range(b)])
        loads += [f"p{col + i} = p[{col + i}]" for i in range(b)]
        col += b
    lines = []
    for m in range(8):
        parts = []
        for (b, lo), words in zip(planes, names):
            per = 8 // b
            word, shift = words[m // per], (m % per) * b
            field = f"({word} >> {shift})" if shift else word
            field = f"({field} & 0x{((1 << b) - 1) * 0x01010101:08X}u)"
            parts.append(f"{field} << {lo}" if lo else field)
        lines.append(f"    d[{m}] = {' | '.join(parts)};")
    return (f"/* 32 {bits}-bit weights (planes of "
            f"{', '.join(f'{b} bits from bit {lo}' for b, lo in planes)}) -> 8 words of four "
            f"byte lanes,\n * each lane t = w + {1 << (bits - 1)} (0 .. {(1 << bits) - 1}) */\n"
            "static inline void unpack_group(const uint32_t *restrict p, "
            "uint32_t *restrict d)\n{\n"
            f"    const uint32_t {', '.join(loads)};\n" + "\n".join(lines) + "\n}\n")


def _c_array(ctype: str, name: str, values, per_line: int = 24) -> str:
    vals = [str(int(v)) for v in np.asarray(values).ravel()]
    if ctype == "int64_t":
        vals = [f"INT64_C({v})" for v in vals]
        per_line = 6
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{max(len(vals), 1)}] = {{\n    {body or '0'}\n}};\n"


def c_string(text) -> str:
    """``text`` as a C99 string literal: the one way any string reaches generated C.

    Printable ASCII stays as it is, except ``"``, ``\\`` and ``?``, which are escaped (an
    escaped ``?`` can never start a trigraph such as ``??/``, a backslash under
    ``-std=c99``); every other character goes in as its UTF-8 bytes, each a three-digit
    octal escape (three digits, so a following digit never joins the escape). Lone
    surrogates (undecodable bytes in a folder name) keep their code through
    ``surrogatepass``; ``c_unescape`` reads any such literal back to the same string.
    """
    out = []
    for byte in str(text).encode("utf-8", "surrogatepass"):
        ch = chr(byte)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


_SIMPLE_ESCAPES = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "\\": 92,
                   "'": 39, '"': 34, "?": 63}


def c_unescape(body: str) -> str:
    """The string a C99 literal's body (between the quotes) holds; ``ValueError`` for an
    escape C99 does not define, a raw quote, newline or non-ASCII character (a file
    ``c_string`` did not write)."""
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch == "\\":
            if i + 1 >= n:
                raise ValueError("a lone backslash ends the string")
            nxt = body[i + 1]
            if nxt in "01234567":
                j = i + 1
                while j < n and j < i + 4 and body[j] in "01234567":
                    j += 1
                value = int(body[i + 1:j], 8)
                if value > 0xFF:
                    raise ValueError(f"octal escape \\{body[i + 1:j]} is above \\377")
                out.append(value)
                i = j
            elif nxt == "x":
                j = i + 2
                while j < n and body[j] in "0123456789abcdefABCDEF":
                    j += 1
                if j == i + 2 or int(body[i + 2:j], 16) > 0xFF:
                    raise ValueError(f"bad hex escape \\{body[i + 1:j + 1]}")
                out.append(int(body[i + 2:j], 16))
                i = j
            elif nxt in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nxt])
                i += 2
            else:
                raise ValueError(f"unknown escape \\{nxt}")
        elif ch == '"' or ch == "\n" or not 0x20 <= ord(ch) < 0x7F:
            raise ValueError(f"raw character {ch!r} inside a string literal")
        elif body.startswith("??", i) and i + 2 < n and body[i + 2] in "=/'()!<>-":
            raise ValueError(f"trigraph {body[i:i + 3]} inside a string literal")
        else:
            out.append(ord(ch))
            i += 1
    return out.decode("utf-8", "surrogatepass")


def c_comment(text) -> str:
    """``text`` made safe inside a ``/* ... */`` comment: printable ASCII only (others as
    octal-escaped bytes, as in ``c_string``), no ``*/`` that would end it, no ``/*``
    (``-Wcomment``), no ``??``."""
    return c_string(text)[1:-1].replace("*/", "*\\/").replace("/*", "/\\*")


def class_names_c(names, k: int) -> str:
    """``LBCNN_CLASS_NAMES``: a header definition (static, so each includer has its own)."""
    names = [str(n) for n in names] if names is not None and len(names) == k else \
        [str(i) for i in range(k)]
    body = ", ".join(c_string(n) for n in names)
    return ("/* class names, index = lbcnn_predict's return value */\n"
            f"static const char *const LBCNN_CLASS_NAMES[{k}] = {{ {body} }};\n")


def header(title: str, defines: dict, decls: str, class_names, k: int) -> str:
    lines = [f"/* Generated by lbcnn.deploy.c_export -- {c_comment(title)}. */",
             "#ifndef LBCNN_MODEL_H", "#define LBCNN_MODEL_H", "", "#include <stdint.h>", ""]
    lines += [f"#define {key} {val}" for key, val in defines.items()]
    lines += ["", "#ifdef __cplusplus", 'extern "C" {', "#endif", "", decls.rstrip(), "",
              "/* the same, and the integer class scores (LBCNN_N_CLASSES int64, the NumPy\n"
              " * engine's scores; argmax = the returned index, first maximum wins) */",
              "int lbcnn_predict_logits(const uint8_t *image, int64_t *logits);", "",
              "#ifdef __cplusplus", "}", "#endif", "",
              "#if defined(__GNUC__) || defined(__clang__)",
              "__attribute__((unused))", "#endif",
              class_names_c(class_names, k).rstrip(), "", "#endif", ""]
    return "\n".join(lines)


def predict_header(title: str, input_shape, k: int, n_features: int, class_names,
                   returns: str = "the predicted class label") -> str:
    """model.h for a plan that takes H*W*C uint8 pixels: sizes, the entry points, class names."""
    h, w, c = (int(v) for v in input_shape)
    defines = {"LBCNN_HEIGHT": h, "LBCNN_WIDTH": w, "LBCNN_CHANNELS": c,
               "LBCNN_INPUT_BYTES": h * w * c, "LBCNN_N_CLASSES": k,
               "LBCNN_N_FEATURES": n_features}
    decl = ("/* image: LBCNN_INPUT_BYTES uint8 pixels in (H, W, C) order.\n"
            f" * Returns {returns}. Not reentrant (static scratch). */\n"
            "int lbcnn_predict(const uint8_t *image);")
    return header(title, defines, decl, class_names, k)


def test_vector_sources(images: np.ndarray, expected) -> dict[str, str]:
    """``test_vectors.h/.c``: a few real images with their expected class indices."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n = len(images)
    rows = ",\n".join("    { " + ", ".join(str(int(v)) for v in im.ravel()) + " }"
                      for im in images)
    h = ("/* Test vectors written by lbcnn export: real test images (the model's input format,\n"
         " * a seeded stratified sample of its test split), expected classes from the NumPy\n"
         " * integer engine. */\n#ifndef LBCNN_TEST_VECTORS_H\n#define "
         "LBCNN_TEST_VECTORS_H\n#include <stdint.h>\n#include \"model.h\"\n"
         "#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
         f"#define LBCNN_N_TEST_VECTORS {n}\n"
         "extern const uint8_t LBCNN_TEST_IMAGES[LBCNN_N_TEST_VECTORS][LBCNN_INPUT_BYTES];\n"
         "extern const int LBCNN_TEST_EXPECTED[LBCNN_N_TEST_VECTORS];\n"
         "int lbcnn_selftest(void);\n#ifdef __cplusplus\n}\n#endif\n#endif\n")
    c = ('#include "test_vectors.h"\n\n'
         f"const uint8_t LBCNN_TEST_IMAGES[LBCNN_N_TEST_VECTORS][LBCNN_INPUT_BYTES] = {{\n{rows}\n}};\n"
         "const int LBCNN_TEST_EXPECTED[LBCNN_N_TEST_VECTORS] = { "
         + ", ".join(str(int(v)) for v in expected) + " };\n")
    return {"test_vectors.h": h, "test_vectors.c": c, "selftest.c": SELFTEST_C}


def find_cc() -> str | None:
    for cc in ("gcc", "cc", "clang"):
        path = shutil.which(cc)
        if path:
            return path
    return None


def measure_sizes(out_dir: Path, cc: str | None = None, opt: str = "-O2") -> dict | None:
    """Compile model.c to an object and read ``size`` and ``-fstack-usage``."""
    cc = cc or find_cc()
    size_tool = shutil.which("size")
    if cc is None or size_tool is None:
        return None
    out_dir = Path(out_dir)
    obj = out_dir / "model.o"
    # LBCNN_STREAM: an LB-CNN's small-target layout (what a microcontroller build gets)
    flags = [f for f in CFLAGS if f != "-O2"] + [opt, "-DLBCNN_STREAM"]
    try:
        subprocess.run([cc, *flags, "-fstack-usage", "-c", str(out_dir / "model.c"), "-o",
                        str(obj)], check=True, capture_output=True, text=True, timeout=600)
        res = subprocess.run([size_tool, str(obj)], check=True, capture_output=True, text=True,
                             timeout=60)
    except subprocess.CalledProcessError as exc:
        first = (exc.stderr or "").strip().splitlines()[:1] or ["?"]
        raise ConfigError(f"the generated C does not compile with {Path(cc).name} "
                          f"({first[0][:200]}); please report it") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"measuring the generated C's size took over 10 minutes with "
                          f"{Path(cc).name}; stopped") from None
    text, data, bss = (int(v) for v in res.stdout.splitlines()[1].split()[:3])
    stack = 0
    su = out_dir / "model.su"
    if su.exists():
        # call depth is small: summing every function's frame is a safe upper bound
        stack = sum(int(m.group(1)) for m in re.finditer(r"\t(\d+)\t", su.read_text()))
        su.unlink()
    obj.unlink()
    return {"compiler": Path(cc).name, "flags": " ".join(flags), "text": text, "data": data,
            "bss": bss, "flash": text + data, "stack_estimate": stack,
            "ram": data + bss + stack}


# const objects of a generated model.c that are not weights: labels, class names, the
# tables of function pointers and stage descriptors (code, not parameters), and a lowbit
# model's input-resize tables (preprocessing)
NOT_WEIGHTS = frozenset({"LABELS", "LBCNN_CLASS_NAMES", "CONV", "CONVP", "ST", "RESIZE_R0",
                         "RESIZE_RW", "RESIZE_C0", "RESIZE_CW"})


def compiled_weight_bytes(c_dir, cc: str | None = None) -> dict[str, int]:
    """The bytes of every weight array of ``c_dir/model.c`` as a compiler lays them out:
    the streaming build (``-DLBCNN_STREAM``) compiled to an object, each read-only data
    object's symbol size (pyelftools), less :data:`NOT_WEIGHTS`. The compiled truth
    ``lbcnn info``'s flashed bits are checked against. ``-O0``: an optimizer may fold a
    small array read with constant indices into the code (its bytes still flashed, as
    literals), which would hide it from the symbol table."""
    import tempfile

    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    cc = cc or find_cc()
    if cc is None:
        from ..errors import ConfigError
        raise ConfigError("no C compiler found to measure the weight arrays")
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "model.o"
        flags = [f for f in CFLAGS if f != "-O2"] + ["-O0"]
        subprocess.run([cc, *flags, "-DLBCNN_STREAM", "-fdata-sections", "-fno-pic", "-c",
                        str(Path(c_dir) / "model.c"), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
        with open(obj, "rb") as f:
            elf = ELFFile(f)
            names = {i: sec.name for i, sec in enumerate(elf.iter_sections())}
            out = {}
            for sec in elf.iter_sections():
                if not isinstance(sec, SymbolTableSection):
                    continue
                for sym in sec.iter_symbols():
                    where = names.get(sym["st_shndx"], "") if isinstance(sym["st_shndx"], int) else ""
                    if sym["st_info"]["type"] == "STT_OBJECT" and sym.name not in NOT_WEIGHTS \
                            and where.startswith((".rodata", ".data.rel.ro")):
                        out[sym.name] = int(sym["st_size"])
    return out


def source_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def c_record(plan, files: dict[str, bytes], record: dict | None = None) -> dict:
    """``model.json``: the provenance the caller passes (dataset, class names, ...) and the
    SHA-256 of every generated source, which ``lbcnn evaluate`` / ``predict`` check before
    they compile anything in the folder."""
    from ..metadata import C_FORMAT
    shape = plan.input_shape if len(plan.input_shape) == 3 else (*plan.input_shape, 1)
    # an LB-CNN's lbcnn_predict returns the label, the other families the output index
    returns = "label" if getattr(plan, "family", "lbcnn") == "lbcnn" else "index"
    out = {"format": C_FORMAT, "version": 1, "input_shape": [int(v) for v in shape],
           "n_classes": int(plan.n_classes), "returns": returns}
    classes = getattr(plan, "classes", None)
    if classes is not None:
        out["classes"] = [int(c) for c in np.asarray(classes).reshape(-1)]
    out.update({k: v for k, v in (record or {}).items() if v is not None})
    out["sources"] = {name: source_digest(data) for name, data in sorted(files.items())}
    return out


def sizes_table(sizes: dict | None) -> list[str]:
    if not sizes:
        return ["(no C compiler or `size` found at generation time: flash/RAM not measured)", ""]
    return [
        f"Measured with `size` on `model.o` ({sizes['compiler']} {sizes['flags']}, host):", "",
        "| | bytes |", "|---|---|",
        f"| flash (text + data: code + const weights) | {sizes['flash']:,} |",
        f"| static RAM (data + bss: scratch buffers) | {sizes['data'] + sizes['bss']:,} |",
        f"| stack estimate (sum of all `-fstack-usage` frames) | {sizes['stack_estimate']:,} |",
        f"| **RAM total** | **{sizes['ram']:,}** |", "",
        "On Cortex-M, `lbcnn mcu MODEL --cpu cortex-m4` measures flash, static RAM and the "
        "peak stack from the ELF and runs the model's own test images in an emulator.", ""]


__all__ = ["CFLAGS", "CTYPE", "EXPORTERS", "NOT_WEIGHTS", "compiled_weight_bytes", "LINKER_SCRIPT",
           "MAIN_C", "POPCOUNT_C", "_c_array", "c_comment", "c_record", "c_string", "c_template",
           "c_unescape", "class_names_c", "exporter_for", "find_cc", "header", "measure_sizes",
           "register", "selftest_build_command", "sizes_table", "source_digest",
           "test_vector_sources", "unpack_group_c"]
