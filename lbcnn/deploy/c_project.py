"""The family-independent part of every generated C project: camera-frame preparation
(``lbcnn_prepare.[ch]``, the loader's area resize and channel conversion in C), build files
(``Makefile``, ``CMakeLists.txt``, a Zephyr module, the Cortex-M linker script), the README's
build sections, and the Arduino library layout. ``write_c_project`` writes a family's
generated sources with all of it."""
from __future__ import annotations

import re
from pathlib import Path

from ..outputs import staged_folder, strict_json
from .c_common import LINKER_SCRIPT, ZIG_COMMON, ZIG_TARGETS, c_record, c_template, \
    measure_sizes, test_vector_sources


def build_lines(h: int, w: int, c: int, has_vectors: bool) -> list[str]:
    """Host and Cortex-M build lines for the README."""
    lines = ["## Build", "", "Host:", "", "```sh",
             "make                  # or: gcc -std=c99 -O2 -Wall -Wextra -Werror model.c main.c -o lbcnn",
             f"./lbcnn < images.raw   # {h * w * c} bytes per image, one class name per line"]
    if has_vectors:
        lines += ["make selftest         # builds and runs the test vectors: exit status 0 when "
                  "all agree"]
    lines += ["```", "",
              "Cortex-M (the clang in PyPI `ziglang`, `pip install ziglang`; any arm-none-eabi "
              "gcc works the same way with `-mcpu=cortex-m4 -mthumb`). `link_cortexm.ld` is a "
              "ready linker script (flash at 0x08000000, RAM at 0x20000000: edit the lengths "
              "for your part); add your startup file and `main`, or link the self test:", "",
              "```sh"]
    srcs = "model.c test_vectors.c selftest.c -DLBCNN_SELFTEST_NO_MAIN" if has_vectors else "model.c"
    entry = "lbcnn_selftest" if has_vectors else "lbcnn_predict"
    for cpu, tgt in ZIG_TARGETS.items():
        lines.append(f"# {cpu}")
        lines.append(f"python -m ziglang cc {tgt} {ZIG_COMMON} \\\n"
                     f"    -T link_cortexm.ld -Wl,--gc-sections -Wl,--entry={entry} "
                     f"{srcs} -o lbcnn_{cpu.replace('-', '_')}.elf")
    if has_vectors:
        lines.append("# in a debugger or emulator: lbcnn_selftest() returns the number of mismatches")
    lines += ["```", "",
              "`+strict_align` keeps the M4 build free of unaligned accesses (the generated C "
              "never needs one). zig links its compiler_rt (M0+ needs `__aeabi_uidivmod`, "
              "`__aeabi_lmul`); do not pass `-nostdlib`. Cortex-M4/M7/M33 builds use the "
              "ACLE SIMD32 intrinsics (`__sadd16`, `__ssub16`, `__smlad`, `__sxtb16`, and "
              "SSUB16+SEL for lane-wise max) when `__ARM_FEATURE_SIMD32` is defined; define "
              "`LBCNN_NO_SIMD` to use the portable C. An LB-CNN runs one channel path at a "
              "time (`LBCNN_STREAM`, the default on ARM and other small targets; define "
              "`LBCNN_FULL_MAPS` for the host's full-map code, or `LBCNN_STREAM` on a host).",
              ""]
    lines += frame_lines(h, w, c) + project_lines()
    return lines


def frame_lines(h: int, w: int, c: int) -> list[str]:
    """The README's camera-frame section."""
    return [
        "## Camera frames", "",
        f"`lbcnn_prepare.h` turns a frame of any size into the model's {h}x{w}x{c} input the "
        "way lbcnn's loader prepared the training images: an area resize in exact integer "
        "arithmetic (each pixel the overlap-weighted mean of the frame pixels it covers, "
        "rounded half up), then the channels (BT.601 luma for a gray model, a copied channel "
        "for an RGB one). The bytes equal the loader's for the same pixels.", "",
        "```c",
        '#include "lbcnn_prepare.h"',
        "int k = lbcnn_classify_rgb888(frame, 160, 120);   /* RGB888 rows, any size */",
        "if (k >= 0) puts(LBCNN_CLASS_NAMES[k]);",
        "/* or: lbcnn_prepare_gray8(frame, width, height, input); lbcnn_predict(input); */",
        "```", "",
        "Frames straight from a sensor need the same orientation and colour order as the "
        "photos the model learnt from (the loader applied each photo's EXIF rotation).", ""]


def project_lines() -> list[str]:
    return [
        "## Drop into a project", "",
        "- **CMake**: `add_subdirectory(this_folder)` and `target_link_libraries(app PRIVATE "
        "lbcnn_model)` (a static library of `model.c` and `lbcnn_prepare.c`). Built on its "
        "own, `cmake -S . -B build && cmake --build build` also gives `lbcnn_classify` (and "
        "`lbcnn_selftest`, run by `ctest --test-dir build`).",
        "- **Zephyr**: list this folder in `ZEPHYR_EXTRA_MODULES` (it holds `zephyr/module.yml`) "
        "and set `CONFIG_LBCNN_MODEL=y`.",
        "- **Arduino**: `lbcnn export MODEL --format arduino --out DIR` writes an Arduino "
        "library (`library.properties`, `src/`, `examples/Classify/Classify.ino`); add it "
        "with Sketch > Include Library > Add .ZIP Library (a zip of DIR) or copy DIR into "
        "your `libraries/` folder.", ""]


def makefile(has_vectors: bool) -> str:
    text = ("# make            -> ./lbcnn: raw images on stdin, one class name per line\n"
            + ("# make selftest   -> builds and runs the test vectors\n" if has_vectors else "")
            + "CC ?= cc\nCFLAGS ?= -std=c99 -O2 -Wall -Wextra -Werror\n"
            "lbcnn: model.c main.c model.h\n\t$(CC) $(CFLAGS) model.c main.c -o $@\n")
    if has_vectors:
        text += ("selftest: model.c test_vectors.c selftest.c model.h test_vectors.h\n"
                 "\t$(CC) $(CFLAGS) model.c test_vectors.c selftest.c -o lbcnn_selftest "
                 "&& ./lbcnn_selftest\n.PHONY: selftest\n")
    return text


def cmakelists(has_vectors: bool) -> str:
    text = """# The generated classifier as a CMake library: add_subdirectory(this_folder) and
# target_link_libraries(app PRIVATE lbcnn_model). Built on its own, it also builds the
# stdin example (lbcnn_classify) and the self test (ctest).
cmake_minimum_required(VERSION 3.13)
project(lbcnn_model C)

add_library(lbcnn_model STATIC model.c lbcnn_prepare.c)
target_include_directories(lbcnn_model PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
set_target_properties(lbcnn_model PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON
                      C_EXTENSIONS OFF)

if(CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR)
  add_executable(lbcnn_classify main.c)
  target_link_libraries(lbcnn_classify PRIVATE lbcnn_model)
  set_target_properties(lbcnn_classify PROPERTIES C_STANDARD 99 C_EXTENSIONS OFF)
"""
    if has_vectors:
        text += """  add_executable(lbcnn_selftest test_vectors.c selftest.c)
  target_link_libraries(lbcnn_selftest PRIVATE lbcnn_model)
  set_target_properties(lbcnn_selftest PROPERTIES C_STANDARD 99 C_EXTENSIONS OFF)
  enable_testing()
  add_test(NAME selftest COMMAND lbcnn_selftest)
"""
    return text + "endif()\n"


ZEPHYR_MODULE = """name: lbcnn_model
build:
  cmake: zephyr
  kconfig: zephyr/Kconfig
"""

ZEPHYR_CMAKE = """# Zephyr module build: model.c and lbcnn_prepare.c as a Zephyr library.
if(CONFIG_LBCNN_MODEL)
  zephyr_library_named(lbcnn_model)
  zephyr_library_sources(${CMAKE_CURRENT_LIST_DIR}/../model.c
                         ${CMAKE_CURRENT_LIST_DIR}/../lbcnn_prepare.c)
  zephyr_include_directories(${CMAKE_CURRENT_LIST_DIR}/..)
endif()
"""

ZEPHYR_KCONFIG = """config LBCNN_MODEL
\tbool "lbcnn generated classifier"
\thelp
\t  Builds the lbcnn-generated integer-only classifier (model.c) and its camera-frame
\t  preparation (lbcnn_prepare.c); include model.h and lbcnn_prepare.h.
"""


def project_sources(has_vectors: bool) -> dict[str, str]:
    """The family-independent files of every C project: frame preparation and build files."""
    return {"lbcnn_prepare.h": c_template("lbcnn_prepare.h"),
            "lbcnn_prepare.c": c_template("lbcnn_prepare.c"),
            "link_cortexm.ld": LINKER_SCRIPT, "Makefile": makefile(has_vectors),
            "CMakeLists.txt": cmakelists(has_vectors), "zephyr/module.yml": ZEPHYR_MODULE,
            "zephyr/CMakeLists.txt": ZEPHYR_CMAKE, "zephyr/Kconfig": ZEPHYR_KCONFIG}


# what an Arduino library's src/ may hold: no main(), no build files
ARDUINO_SOURCES = ("model.h", "model.c", "lbcnn_prepare.h", "lbcnn_prepare.c", "test_vectors.h",
                   "test_vectors.c")


def arduino_name(out_dir: Path) -> str:
    """An Arduino library name from the output folder's name: letters, digits, '_'."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", Path(out_dir).resolve().name).strip("_") or "lbcnn_model"
    return name if name[0].isalpha() else f"lbcnn_{name}"


def arduino_sources(name: str, has_vectors: bool, input_shape) -> dict[str, str]:
    h, w, c = input_shape
    props = (f"name={name}\nversion=1.0.0\nauthor=lbcnn export\nmaintainer=lbcnn export\n"
             f"sentence=An integer-only image classifier ({h}x{w}x{c} input) generated by lbcnn.\n"
             "paragraph=lbcnn_classify_rgb888 / lbcnn_classify_gray8 take a camera frame of any "
             "size; lbcnn_predict takes the model's input. No malloc, no float.\n"
             f"category=Data Processing\nurl=\narchitectures=*\nincludes={name}.h\n")
    header = (f"/* {name}: the lbcnn-generated classifier as an Arduino library. */\n"
              f"#ifndef {name.upper()}_H\n#define {name.upper()}_H\n"
              '#include "model.h"\n#include "lbcnn_prepare.h"\n'
              + ('#include "test_vectors.h"\n' if has_vectors else "") + "#endif\n")
    vectors = """#ifdef LBCNN_N_TEST_VECTORS
  // real images of the model's test split, with the classes the integer engine gave them
  int agree = 0;
  for (int i = 0; i < LBCNN_N_TEST_VECTORS; i++) {
    agree += lbcnn_predict(LBCNN_TEST_IMAGES[i]) == LBCNN_TEST_EXPECTED[i];
    Serial.print("test image ");
    Serial.print(i);
    Serial.print(": ");
    Serial.println(LBCNN_CLASS_NAMES[lbcnn_predict_index(LBCNN_TEST_IMAGES[i])]);
  }
  Serial.print(agree);
  Serial.print("/");
  Serial.print(LBCNN_N_TEST_VECTORS);
  Serial.println(" test vectors agree with lbcnn's integer engine");
#endif
"""
    ino = f"""// Classify: the lbcnn model on this board, printing class names on Serial.
#include <{name}.h>

// Replace with your camera's frame: RGB888, rows packed, any width and height
// (lbcnn_classify_gray8 takes one byte a pixel).
static const int FRAME_W = 40, FRAME_H = 30;
static uint8_t frame[FRAME_W * FRAME_H * 3];

void setup() {{
  Serial.begin(115200);
  while (!Serial) {{
  }}
{vectors}  for (int i = 0; i < FRAME_W * FRAME_H * 3; i++) frame[i] = (uint8_t)(i * 37);  // a stand-in
  unsigned long t0 = micros();
  int k = lbcnn_classify_rgb888(frame, FRAME_W, FRAME_H);
  unsigned long t1 = micros();
  Serial.print("frame: ");
  Serial.print(LBCNN_CLASS_NAMES[k]);
  Serial.print(" (");
  Serial.print(t1 - t0);
  Serial.println(" us)");
}}

void loop() {{
}}
"""
    return {"library.properties": props, f"src/{name}.h": header,
            "examples/Classify/Classify.ino": ino}


def write_c_project(plan, out_dir, sources: dict, readme, measure: bool = True,
                    test_vectors: tuple | None = None, layout: str = "c",
                    record: dict | None = None) -> dict:
    """Write generated sources (+ test vectors, frame preparation, build files), measure
    flash/RAM, then the README and ``model.json`` (``record``, the model file's provenance,
    and every source's SHA-256, which ``lbcnn evaluate`` checks before compiling): shared
    by every family. ``layout="arduino"`` writes an Arduino library instead (the sources
    under ``src/``, no ``main``).

    Everything is written into a hidden sibling folder first and moved into ``out_dir``
    when complete, so a failure never leaves a half-written project behind."""
    if layout not in ("c", "arduino"):
        raise ValueError(f"unknown C project layout {layout!r}")
    out_dir = Path(out_dir)
    sources = dict(sources)
    if test_vectors is not None:
        sources.update(test_vector_sources(*test_vectors))
    for name, text in project_sources(test_vectors is not None).items():
        sources.setdefault(name, text)
    h, w, c = plan.input_shape if len(plan.input_shape) == 3 else (*plan.input_shape, 1)
    src = ""
    if layout == "arduino":
        lib = arduino_name(out_dir)
        src = "src/"
        sources = {**{f"src/{k}": v for k, v in sources.items() if k in ARDUINO_SOURCES},
                   **arduino_sources(lib, test_vectors is not None, (h, w, c))}
    files = {name: text.encode("utf-8") for name, text in sources.items()}
    with staged_folder(out_dir) as stage:
        for name, data in files.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_bytes(data)
        wb = plan.weight_bytes()
        sizes = measure_sizes(stage / src) if measure else None
        summary = {"out": str(out_dir), "weight_bytes": wb, "sizes": sizes,
                   "plan": plan.describe(),
                   "test_vectors": 0 if test_vectors is None else len(test_vectors[0]),
                   "layout": layout, "files": sorted(sources)}
        text = readme(plan, wb, sizes)
        if layout == "arduino":
            text += "\n" + "\n".join(
                ["## Arduino", "",
                 f"An Arduino library: `#include <{lib}.h>`; `examples/Classify/Classify.ino` "
                 "prints the class names of the test images and of a frame on Serial.", ""]
                + frame_lines(h, w, c))
        else:
            text += "\n" + "\n".join(build_lines(h, w, c, test_vectors is not None))
        (stage / "README.md").write_text(text, encoding="utf-8")
        record = c_record(plan, files, record)
        (stage / "model.json").write_text(strict_json(record, indent=2) + "\n",
                                          encoding="utf-8")
    return summary
