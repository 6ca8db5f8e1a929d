"""Builds and loads the C feature kernel on first use.

The kernel is compiled for this machine (``-march=native``) into the user cache,
keyed by a hash of its source and flags. Without a C compiler, or with
``LBCNN_NATIVE=0``, callers fall back to the torch path, which computes the
same numbers more slowly.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..settings import cache_dir

_SOURCE = Path(__file__).with_name("_lbfeat.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99"]
_lib = None
_tried = False


def _compile() -> Path | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join([cc, *_FLAGS]).encode()).hexdigest()[:16]
    target = cache_dir() / "native" / f"lbfeat-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / "lbfeat.so"
        proc = subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            warnings.warn(f"lbcnn: C kernel did not compile, using torch: {proc.stderr.strip()[:200]}")
            return None
        os.replace(out, target)
    return target


def load():
    """The loaded library, or None when the native path is unavailable."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("LBCNN_NATIVE", "1") == "0":
        return None
    try:
        path = _compile()
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        warnings.warn(f"lbcnn: C kernel unavailable, using torch: {exc}")
        return None
    f32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    i32 = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
    lib.lb_features.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.c_int, ctypes.c_int,
                                ctypes.c_int, i32, ctypes.c_int, f32, ctypes.c_float, f32,
                                ctypes.c_int]
    lib.lb_features.restype = ctypes.c_int
    _lib = lib
    return lib
