"""Issue 31, end to end: a folder of photos as they come (sideways JPEGs with an EXIF tag, a
16-bit PNG, a nested sub-folder, a rare class, junk files) through the guide's commands,
run without --seed and from another working directory. Every later command reports the
test accuracy and n of the same split; the C's frame preparation gives the loader's bytes;
the CMake project and the Arduino library build (the library runs in the emulator)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lbcnn.deploy.c_common import CFLAGS, find_cc

CC = find_cc()


def _have(mod):
    try:
        __import__(mod)
    except ImportError:
        return False
    return True


MCU = all(_have(m) for m in ("ziglang", "unicorn", "elftools"))


def cmake_exe() -> str | None:
    found = shutil.which("cmake")
    sibling = Path(sys.executable).parent / "cmake"
    return found or (str(sibling) if sibling.exists() else None)


def cli(capsys, *args, rc=0):
    from lbcnn.cli import main
    got = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert got == rc, err
    return out, err


def cli_json(capsys, *args, rc=0):
    out, err = cli(capsys, *args, "--json", rc=rc)
    return json.loads(out), err


FRAME_MAIN = r"""#include <stdio.h>
#include <stdlib.h>
#include "lbcnn_prepare.h"
/* W H CH + a frame on stdin -> the prepared input, then the class index */
int main(void)
{
    static uint8_t input[LBCNN_INPUT_BYTES];
    int w, h, ch, k;
    uint8_t *frame;
    if (scanf("%d %d %d", &w, &h, &ch) != 3 || getchar() != '\n') return 3;
    frame = malloc((size_t)w * h * ch);
    if (!frame || fread(frame, 1, (size_t)w * h * ch, stdin) != (size_t)w * h * ch) return 4;
    if ((ch == 3 ? lbcnn_prepare_rgb888(frame, w, h, input)
                 : lbcnn_prepare_gray8(frame, w, h, input)) != 0) return 5;
    k = ch == 3 ? lbcnn_classify_rgb888(frame, w, h) : lbcnn_classify_gray8(frame, w, h);
    fwrite(input, 1, sizeof input, stdout);
    printf("%d", k);
    return 0;
}
"""

ARDUINO_H = r"""/* A stand-in for the Arduino core: what Classify.ino uses; Serial writes into g_serial. */
#ifndef LBCNN_ARDUINO_STAND_IN_H
#define LBCNN_ARDUINO_STAND_IN_H
#include <stddef.h>
#include <stdint.h>
extern "C" char g_serial[4096];
extern "C" unsigned g_serial_len;
class StandInSerial {
  void put(char c) { if (g_serial_len < sizeof g_serial - 1) g_serial[g_serial_len++] = c; }
public:
  void begin(unsigned long) {}
  explicit operator bool() const { return true; }
  size_t print(const char *s) { size_t n = 0; while (*s) { put(*s++); n++; } return n; }
  size_t print(unsigned long v) {
    char b[12]; int i = 0;
    do { b[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i) put(b[--i]);
    return 1;
  }
  size_t print(long v) { if (v < 0) { put('-'); v = -v; } return print((unsigned long)v); }
  size_t print(int v) { return print((long)v); }
  template <typename T> size_t println(T v) { size_t n = print(v); put('\n'); return n + 1; }
};
extern StandInSerial Serial;
unsigned long micros(void);
#endif
"""

ARDUINO_CORE = r"""#include "Arduino.h"
extern "C" { char g_serial[4096]; unsigned g_serial_len; }
StandInSerial Serial;
static unsigned long ticks;
unsigned long micros(void) { return ++ticks; }
void setup(void);
void loop(void);
extern "C" int arduino_main(void) { setup(); loop(); return (int)g_serial_len; }
"""


def build_arduino(lib: Path, work: Path) -> Path:
    """The library's src/*.c and examples/Classify/Classify.ino (as C++, with the stand-in
    Arduino.h the IDE would include first) for Cortex-M4, linked into one ELF."""
    from lbcnn.deploy.c_common import LINKER_SCRIPT
    from lbcnn.deploy.mcu.toolchain import HARNESS_C, compile_flags

    work.mkdir()
    (work / "Arduino.h").write_text(ARDUINO_H)
    (work / "core.cpp").write_text(ARDUINO_CORE)
    (work / "mem.c").write_text(HARNESS_C.split('#include "model.h"')[0] +
                                HARNESS_C.split("int64_t g_logits[LBCNN_N_CLASSES];")[1])
    (work / "link.ld").write_text(LINKER_SCRIPT)
    zig = [sys.executable, "-m", "ziglang"]
    c_flags = compile_flags("cortex-m4", "O2")
    cxx_flags = [f for f in c_flags if f != "-std=c99"] + [
        "-std=c++11", "-fno-exceptions", "-fno-rtti", f"-I{work}", f"-I{lib / 'src'}"]
    objs = []
    for src in sorted((lib / "src").glob("*.c")) + [work / "mem.c"]:
        objs.append(work / (src.stem + ".o"))
        subprocess.run([*zig, "cc", *c_flags, f"-I{lib / 'src'}", "-c", str(src), "-o",
                        str(objs[-1])], check=True, capture_output=True, text=True)
    for src, extra in ((lib / "examples" / "Classify" / "Classify.ino",
                        ["-include", "Arduino.h", "-x", "c++"]), (work / "core.cpp", [])):
        objs.append(work / (src.stem + ".o"))
        r = subprocess.run([*zig, "c++", *cxx_flags, *extra, "-c", str(src), "-o",
                            str(objs[-1])], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    elf = work / "classify.elf"
    r = subprocess.run([*zig, "cc", *c_flags[:3], "-T", str(work / "link.ld"),
                        "-Wl,--gc-sections", "-Wl,--entry=arduino_main", *map(str, objs),
                        "-o", str(elf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return elf


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_own_photos_through_the_guide(tmp_path, capsys, monkeypatch):
    from photos import CLASSES, make_photos

    from lbcnn.data.images import decode, prepare
    from lbcnn.io.artefacts import load_any

    made = make_photos(tmp_path / "photos", per_class=30, rare=2)
    monkeypatch.chdir(tmp_path)
    # the guide's search, without --seed, the folder typed with a trailing slash
    s, err = cli_json(capsys, "search", "--dataset", "photos/", "--resize", "16,16",
                      "--grayscale", "--filters", "4,2", "--trials", "3", "--out", "runs/mine")
    assert "skipped 2 file(s)" in err and "square/readme.txt" in err and "star/cut.jpg" in err
    assert "warning: class 'triangle'" in err and "included 5 image(s)" in err
    acc, n = s["test_accuracy"], s["test_size"]
    split = s["split"]
    assert split["kind"] == "fraction" and split["seed"] == 0 and n == split["n_test"] == 19
    assert acc > 0.8

    elsewhere = tmp_path / "elsewhere"     # every later command from another folder
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = tmp_path / "runs" / "mine"
    e, _ = cli_json(capsys, "evaluate", run)
    assert (e["accuracy"], e["n"]) == (acc, n) and e["same_split_as_recorded"] is True
    q, err = cli_json(capsys, "quantize", run, "--out", "q8.npz")
    assert q["before"]["test_accuracy"] == acc and q["n_test"] == n
    assert q["before"]["val_accuracy"] is None and q["validation_held_out"] is False
    q_acc = q["after"]["test_accuracy"]
    i, _ = cli_json(capsys, "info", "q8.npz", "--no-sizes")
    assert (i["test_accuracy"], i["test_size"]) == (q_acc, n) and "val_accuracy" not in i
    assert i["split"]["fingerprint"] == split["fingerprint"]
    e, _ = cli_json(capsys, "evaluate", "q8.npz")
    assert (e["accuracy"], e["n"]) == (q_acc, n)
    if _have("onnxruntime"):   # an export carries the data record too
        cli_json(capsys, "export", run, "--format", "onnx", "--out", "m.onnx")
        e, _ = cli_json(capsys, "evaluate", "m.onnx")
        assert (e["accuracy"], e["n"]) == (acc, n) and e["same_split_as_recorded"] is True

    x, err = cli_json(capsys, "export", "q8.npz", "--format", "c", "--out", "c_dir")
    assert x["test_vectors"] == 10 and x["no_test_vectors_because"] is None
    c_dir = elsewhere / "c_dir"
    assert {"CMakeLists.txt", "zephyr/module.yml", "lbcnn_prepare.c", "main.c"} <= set(x["files"])
    e, _ = cli_json(capsys, "evaluate", c_dir)
    assert (e["accuracy"], e["n"]) == (q_acc, n) and e["same_split_as_recorded"] is True
    r = subprocess.run(["make", "-C", str(c_dir), "selftest"], capture_output=True, text=True)
    assert r.returncode == 0 and "10/10 test vectors agree" in r.stdout, r.stdout + r.stderr

    # main.c prints class names
    model = load_any("q8.npz")
    photo = tmp_path / "photos" / made["sideways"][0]
    pixels = prepare(decode(photo), (16, 16), 1)
    subprocess.run([CC, *CFLAGS, str(c_dir / "model.c"), str(c_dir / "main.c"), "-o",
                    str(c_dir / "lbcnn")], check=True)
    r = subprocess.run([str(c_dir / "lbcnn")], input=pixels.tobytes(), capture_output=True)
    want = CLASSES[int(model.predict(pixels[None])[0])]
    assert r.stdout.decode().strip() == want

    # the C's frame preparation: the loader's bytes, and the model's class, for the photos
    (c_dir / "frame.c").write_text(FRAME_MAIN)
    exe = c_dir / "frame"
    subprocess.run([CC, *CFLAGS, *(str(c_dir / f) for f in ("model.c", "lbcnn_prepare.c",
                                                           "frame.c")), "-o", str(exe)],
                   check=True)
    for rel in made["sideways"][:3] + [made["png16"], made["nested"][0]]:
        raw = decode(tmp_path / "photos" / rel)
        ch = 1 if raw.ndim == 2 else 3
        out = subprocess.run([str(exe)], input=f"{raw.shape[1]} {raw.shape[0]} {ch}\n".encode()
                             + raw.tobytes(), capture_output=True, check=True).stdout
        want = prepare(raw, (16, 16), 1)
        assert out[:256] == want.tobytes(), rel
        assert int(out[256:]) == int(model.predict(want[None])[0]), rel

    cmake = cmake_exe()
    if cmake:  # the drop-in CMake project, built with the host compiler
        build = tmp_path / "cmake_build"
        for cmd in ([cmake, "-S", str(c_dir), "-B", str(build), "-DCMAKE_C_FLAGS=-Wall -Wextra "
                     "-Werror"], [cmake, "--build", str(build)]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run([str(build / "lbcnn_selftest")], capture_output=True, text=True)
        assert r.returncode == 0 and "10/10" in r.stdout
        r = subprocess.run([str(build / "lbcnn_classify")], input=pixels.tobytes(),
                           capture_output=True)
        assert r.stdout.decode().strip() == CLASSES[int(model.predict(pixels[None])[0])]
    import yaml
    module = yaml.safe_load((c_dir / "zephyr" / "module.yml").read_text())
    assert (c_dir / module["build"]["cmake"] / "CMakeLists.txt").exists()
    assert (c_dir / module["build"]["kconfig"]).exists()

    # predict: a folder and a glob, past the junk, with a count
    out, err = cli(capsys, "predict", "q8.npz", tmp_path / "photos" / "star", rc=1)
    assert "skipped: " in err and "cut.jpg" in err and "classified 30 of 31" in err
    assert sum(1 for ln in out.splitlines() if ln.endswith(")")) == 30

    if not MCU:
        return
    m, _ = cli_json(capsys, "mcu", "q8.npz", "--n", "1000", "--no-align-check")
    assert m["all_equal"] and m["n"] == n and m["accuracy"] == q_acc and m["mhz"] == 168.0
    a, _ = cli_json(capsys, "export", "q8.npz", "--format", "arduino", "--out", "Shapes")
    lib = elsewhere / "Shapes"
    props = dict(ln.split("=", 1) for ln in (lib / "library.properties").read_text().splitlines())
    assert props["name"] == "Shapes" and props["includes"] == "Shapes.h"
    assert not (lib / "src" / "main.c").exists() and not (lib / "src" / "selftest.c").exists()
    from lbcnn.deploy.mcu.emulator import Emulator
    elf = build_arduino(lib, tmp_path / "arduino")
    emu = Emulator(elf, "cortex-m4")
    emu.stop_counting()
    length, _ = emu.call("arduino_main")
    text = bytes(emu.uc.mem_read(emu.sym["g_serial"][0], length)).decode()
    assert "10/10 test vectors agree" in text, text
    names = [ln.split(": ", 1)[1] for ln in text.splitlines() if ln.startswith("test image")]
    assert len(names) == 10 and set(names) <= set(CLASSES)
    assert text.splitlines()[-1].startswith("frame: ")
