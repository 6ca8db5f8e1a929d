"""What a path holds, decided by its content and never by its name, so a mix-up (an ONNX
file named .npz, an image passed as the model) is reported as what the file really is."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import DataError

_MAGIC = [(b"\x89HDF\r\n\x1a\n", "HDF5"), (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"),
          (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
          (b"%PDF", "a PDF"), (b"\x7fELF", "an executable"), (b"\x93NUMPY", "a .npy array")]


def sniff(path) -> str:
    """What a path looks like: 'run folder', 'C folder', 'TFLite folder', 'folder', 'HDF5',
    'zip', 'ONNX', 'TFLite', an image kind, 'text' or 'binary'."""
    p = Path(path)
    if p.is_dir():
        if (p / "model.npz").exists():
            return "run folder"
        if (p / "model.h").exists() and (p / "model.c").exists():
            return "C folder"
        if (p / "model.tflite").is_file():
            return "TFLite folder"
        return "folder"
    if not p.exists():
        raise DataError(f"file not found: {p}")
    require_regular_file(p, "input")
    with open(p, "rb") as f:
        head = f.read(4096)
    # a TFLite flatbuffer: root offset, then the file identifier "TFL3"
    if head[4:8] == b"TFL3":
        return "TFLite"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    # an ONNX ModelProto starts with field 1 (ir_version, varint): byte 0x08
    if head[:1] == b"\x08" and (b"onnx" in head.lower() or b"lbcnn" in head or
                                p.suffix.lower() == ".onnx"):
        return "ONNX"
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError:
            pass
    return "empty" if not head else "binary"


def require_regular_file(path, what: str = "input") -> None:
    """Refuse a device, FIFO or socket before opening it: reading a FIFO waits forever
    for a writer, and a device is no lbcnn file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise DataError(f"{what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special")
        raise DataError(f"{what} {path} is {kind}, not a regular file")
