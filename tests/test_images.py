"""Issue 31 (item 5) and issue 34 (data items): image files as they really come, one
pipeline for folders and predict, and the generated C's frame preparation tested equal to
it byte for byte."""
from __future__ import annotations

import os
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lbcnn.data import load_dataset
from lbcnn.data.images import (ImageError, area_resize, decode, overlaps, prepare,
                               require_regular_file)
from lbcnn.deploy.c_common import CFLAGS, c_template, find_cc
from lbcnn.errors import ConfigError, DataError
from lbcnn.preprocess import rgb_to_y

CC = find_cc()


def area_oracle(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """The exact mean of the source area each output pixel covers, rounded half up, with
    fractions: the definition, one pixel at a time."""
    H, W = x.shape[:2]
    x3 = x.reshape(H, W, -1)
    out = np.zeros((h, w, x3.shape[2]), np.uint8)

    def cover(i, n_out, n_in):      # [(source index, fraction of it covered)]
        lo, hi = Fraction(i * n_in, n_out), Fraction((i + 1) * n_in, n_out)
        return [(j, min(hi, j + 1) - max(lo, j)) for j in range(int(lo), -(-hi.numerator // hi.denominator))
                if min(hi, j + 1) > max(lo, j)]

    for oy in range(h):
        for ox in range(w):
            area = Fraction(H * W, h * w)
            for c in range(x3.shape[2]):
                s = sum(fr * fc * int(x3[r, q, c]) for r, fr in cover(oy, h, H)
                        for q, fc in cover(ox, w, W))
                mean = s / area
                out[oy, ox, c] = int(mean + Fraction(1, 2))   # floor(mean + 1/2): half up
    return out.reshape((h, w) + x.shape[2:])


@pytest.mark.parametrize("src,dst", [((7, 5), (3, 4)), ((5, 5), (8, 3)), ((13, 9), (4, 4)),
                                     ((4, 6), (4, 6)), ((1, 9), (2, 2)), ((31, 17), (16, 5))])
def test_area_resize_equals_the_exact_mean(src, dst, rng):
    x = rng.integers(0, 256, src + (3,), dtype=np.uint8)
    assert np.array_equal(area_resize(x, dst), area_oracle(x, *dst))
    assert np.array_equal(area_resize(x[..., 0], dst), area_oracle(x[..., 0], *dst))
    assert overlaps(dst[0], src[0]).sum(axis=1).tolist() == [src[0]] * dst[0]


def test_channels_come_after_the_resize(rng):
    x = rng.integers(0, 256, (21, 14, 3), dtype=np.uint8)
    gray = prepare(x, (6, 5), 1)
    assert np.array_equal(gray, rgb_to_y(area_resize(x, (6, 5))[None])[0])
    g = rng.integers(0, 256, (9, 9), dtype=np.uint8)
    assert np.array_equal(prepare(g, (3, 3), 3), np.repeat(area_resize(g, (3, 3))[..., None], 3, 2))


def _save(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_exif_sixteen_bit_and_float_rules(tmp_path):
    up = np.zeros((20, 30, 3), np.uint8)
    up[2:5] = 250                                     # a band near the top, upright
    exif = Image.Exif()
    exif[0x0112] = 6                                  # "rotate 90 degrees clockwise to show"
    Image.fromarray(up).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "side.png", exif=exif)
    got = decode(tmp_path / "side.png")
    assert got.shape == (20, 30, 3) and np.array_equal(got, up)

    v = np.array([[0, 128, 129, 257, 32896, 65535]], np.uint16)
    assert Image.open(_save(tmp_path / "g16.png", v)).mode == "I;16"
    assert decode(tmp_path / "g16.png").tolist() == [[0, 0, 1, 1, 128, 255]]   # v / 257 rounded
    ok32 = np.array([[0, 65535, 257]], np.int32)
    assert decode(_save(tmp_path / "i32.tif", ok32)).tolist() == [[0, 255, 1]]
    with pytest.raises(ImageError, match="outside 0..65535"):
        decode(_save(tmp_path / "big.tif", np.array([[0, 70000]], np.int32)))
    assert decode(_save(tmp_path / "f.tif", np.array([[0.0, 0.5, 1.0]], np.float32))).tolist() \
        == [[0, 128, 255]]
    for bad in (np.array([[0.0, 2.0]], np.float32), np.array([[np.nan, 0.5]], np.float32)):
        with pytest.raises(ImageError, match=r"must lie in \[0, 1\]"):
            decode(_save(tmp_path / "bad.tif", bad))
    la = Image.fromarray(np.full((4, 4), 77, np.uint8)).convert("LA")
    la.save(tmp_path / "la.png")
    assert decode(tmp_path / "la.png").shape == (4, 4)


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w x h pixels (8-bit gray) and holds no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_pixel_limit_fifo_and_devices_refused_before_reading(tmp_path):
    huge = _png_header_only(tmp_path / "huge.png", 20000, 20000)      # 400 megapixels
    with pytest.raises(ImageError, match="megapixels") as e:
        decode(huge)
    assert e.value.reason == "too large"
    mid = _png_header_only(tmp_path / "mid.png", 11000, 10000)        # past lbcnn's, not Pillow's
    with pytest.raises(ImageError, match="110 megapixels"):
        decode(mid)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="FIFO"):     # would block forever if opened
        decode(fifo)
    with pytest.raises(DataError, match="device"):
        require_regular_file("/dev/null")
    os.mkfifo(tmp_path / "data.npz")
    with pytest.raises(DataError, match="FIFO"):
        load_dataset(f"npz:{tmp_path / 'data.npz'}")


def test_folder_loader_as_photos_come(tmp_path):
    from photos import CLASSES, RARE, make_photos

    made = make_photos(tmp_path / "imgs", per_class=12, rare=1)
    os.mkfifo(tmp_path / "imgs" / CLASSES[0] / "camera.pipe")
    (tmp_path / "imgs" / "loose.jpg").write_bytes(b"x")
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}", resize=(12, 12), grayscale=True,
                      test_fraction=0.3)
    n = len(ds.y_train) + len(ds.y_test)
    assert n == made["images"] == 3 * 12 + 1 + 1             # + the 16-bit PNG
    skip = next(t for t in ds.notes if t.startswith("skipped"))
    # every reason counted, every file named (up to five)
    assert "skipped 3 file(s)" in skip and "1 not an image (square/readme.txt)" in skip
    assert "1 truncated or corrupt (star/cut.jpg)" in skip
    assert "1 not a regular file (circle/camera.pipe)" in skip
    assert any("included 2 image(s)" in t and "square/more" in t for t in ds.notes)
    assert any("loose.jpg" in t and "no class folder" in t for t in ds.notes)
    assert len(ds.warnings) == 1 and repr(RARE) in ds.warnings[0]
    members = ds.members_train + ds.members_test
    assert made["png16"] in members and all(m in members for m in made["nested"])
    # the 16-bit scan is a real picture (its band), not a white sheet
    i = members.index(made["png16"])
    x = np.concatenate([ds.x_train, ds.x_test])[i]
    assert x.min() < 100 < 200 < x.max()


def test_gray_and_colour_mixed_needs_a_choice(tmp_path, rng):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            _save(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    _save(tmp_path / "a" / "gray.bmp", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="mixes gray and colour.*--rgb.*--grayscale") as e:
        load_dataset(str(tmp_path))
    assert "--resize" not in str(e.value)             # the size was never the problem
    assert load_dataset(str(tmp_path), rgb=True).input_shape == (8, 8, 3)
    assert load_dataset(str(tmp_path), grayscale=True).input_shape == (8, 8, 1)
    _save(tmp_path / "b" / "wide.png", rng.integers(0, 256, (8, 11, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="11x8 but .* is 8x8; pass --resize"):
        load_dataset(str(tmp_path), rgb=True)


def test_options_and_missing_folders_checked_before_any_image(tmp_path, monkeypatch):
    import lbcnn.data.folder as folder

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    monkeypatch.setattr(folder, "decode", lambda p: pytest.fail(f"read {p} before refusing"))
    cases = [
        (dict(name="imgz", resize=(28, 28)), DataError, "unknown dataset 'imgz'.*no folder"),
        (dict(name=f"folder:{tmp_path / 'nope'}"), DataError, "image folder not found"),
        (dict(name=str(tmp_path / "imgs"), test_folder=str(tmp_path / "t")), DataError,
         "--test-folder: image folder not found"),
        (dict(name=str(tmp_path / "imgs"), test_folder=str(tmp_path / "imgs"),
              test_fraction=0.3), ConfigError, "--test-folder or --test-fraction"),
        (dict(name=str(tmp_path / "imgs"), grayscale=True, rgb=True), ConfigError, "not both"),
        (dict(name="mnist", test_fraction=0.3), ConfigError, "official test set"),
        (dict(name="mnist", resize=(8, 8)), ConfigError, "apply to folder"),
        (dict(name="gtsrb", split="paper"), ConfigError, "no paper split"),
    ]
    for kw, err, msg in cases:
        name = kw.pop("name")
        with pytest.raises(err, match=msg):
            load_dataset(name, **kw)


def _prepare_harness(tmp_path: Path, shape) -> Path:
    """The export's lbcnn_prepare.c behind a stand-in model.h, built for the host: reads
    W H CH and the frame's bytes on stdin, writes the model input on stdout."""
    h, w, c = shape
    d = tmp_path / f"prep_{h}x{w}x{c}"
    d.mkdir()
    (d / "model.h").write_text(
        f"#include <stdint.h>\n#define LBCNN_HEIGHT {h}\n#define LBCNN_WIDTH {w}\n"
        f"#define LBCNN_CHANNELS {c}\n#define LBCNN_INPUT_BYTES {h * w * c}\n"
        "#define LBCNN_N_CLASSES 2\n"
        "static const char *const LBCNN_CLASS_NAMES[2] = {\"a\", \"b\"};\n"
        "int lbcnn_predict_logits(const uint8_t *image, int64_t *logits);\n")
    (d / "lbcnn_prepare.h").write_text(c_template("lbcnn_prepare.h"))
    (d / "lbcnn_prepare.c").write_text(c_template("lbcnn_prepare.c"))
    (d / "main.c").write_text(r"""#include <stdio.h>
#include <stdlib.h>
#include "lbcnn_prepare.h"
int lbcnn_predict_logits(const uint8_t *image, int64_t *logits)
{ logits[0] = image[0]; logits[1] = 128; return logits[0] < logits[1]; }
int main(void)
{
    static uint8_t out[LBCNN_INPUT_BYTES];
    int w, h, ch, rc;
    uint8_t *frame;
    if (scanf("%d %d %d", &w, &h, &ch) != 3 || getchar() != '\n') return 3;
    frame = malloc((size_t)w * h * ch);
    if (!frame || fread(frame, 1, (size_t)w * h * ch, stdin) != (size_t)w * h * ch) return 4;
    rc = ch == 3 ? lbcnn_prepare_rgb888(frame, w, h, out) : lbcnn_prepare_gray8(frame, w, h, out);
    if (rc) return 5;
    fwrite(out, 1, sizeof out, stdout);
    return 0;
}
""")
    exe = d / "prep"
    subprocess.run([CC, *CFLAGS, str(d / "lbcnn_prepare.c"), str(d / "main.c"), "-o", str(exe)],
                   check=True, capture_output=True)
    return exe


def c_prepare(exe: Path, frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    ch = 1 if frame.ndim == 2 else 3
    r = subprocess.run([str(exe)], input=f"{w} {h} {ch}\n".encode() + frame.tobytes(),
                       capture_output=True, check=True)
    return np.frombuffer(r.stdout, np.uint8)


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_c_frame_preparation_equals_the_loader(tmp_path, gtsrb):
    """The generated C gives the loader's bytes for real photos (GTSRB signs, JPEG-coded
    at several sizes as a camera would give them, colour and gray) and odd sizes."""
    from lbcnn.data.images import decode

    photos = []
    for i, (h, w) in enumerate([(32, 32), (97, 61), (240, 320), (13, 200), (481, 640), (7, 5)]):
        im = Image.fromarray(gtsrb.x_test[37 * i]).resize((w, h), Image.BICUBIC)
        path = tmp_path / f"sign{i}.jpg"
        im.save(path, quality=85)
        photos.append(decode(path))
        photos.append(decode(path)[..., 1])           # the same, as a gray sensor gives it
    for shape in [(28, 28, 1), (32, 32, 3), (12, 17, 1)]:
        exe = _prepare_harness(tmp_path, shape)
        for frame in photos:
            want = prepare(frame, shape[:2], shape[2])
            assert np.array_equal(c_prepare(exe, frame), want.ravel()), (shape, frame.shape)
    exe = _prepare_harness(tmp_path, (4, 4, 1))
    r = subprocess.run([str(exe)], input=b"0 5 1\n", capture_output=True)
    assert r.returncode == 5                          # a bad size is refused, not read
