"""Builds and loads the package's C kernels on first use.

Each kernel is compiled for this machine (``-march=native``) into the user cache,
keyed by a hash of its source and flags, and written there atomically, so several
processes (``pytest -n``, Ray workers) may build it at once. Without a C compiler,
or with ``LBCNN_NATIVE=0``, callers fall back to a Python/torch path that computes
the same numbers more slowly:

- ``load()``: the LB-CNN feature kernel (``binary/_lbfeat.c``);
- ``load_gptq()``: GPTQ's per-block rounding loop (``heads/_gptq.c``).

``threads()`` is how many OpenMP threads a feature call may use: torch's count,
or less inside ``thread_limit`` (a trial running beside others).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from ..settings import cache_dir

_SOURCE = Path(__file__).with_name("_lbfeat.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99"]
_GPTQ_SOURCE = Path(__file__).resolve().parents[1] / "heads" / "_gptq.c"
_GPTQ_FLAGS = ["-O2", "-ffp-contract=off", "-shared", "-fPIC", "-std=c99"]
_lib = None
_tried = False
_gptq = None
_gptq_tried = False
_local = threading.local()


def threads() -> int:
    """OpenMP threads a feature call may use in this thread."""
    return getattr(_local, "limit", None) or torch.get_num_threads()


@contextlib.contextmanager
def thread_limit(n: int):
    """Feature calls made by this thread use at most ``n`` threads."""
    old = getattr(_local, "limit", None)
    _local.limit = max(1, int(n))
    try:
        yield
    finally:
        _local.limit = old


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(target: Path) -> bool:
    """The cached library is the one this process built: a regular file whose size and
    SHA-256 match the stamp written beside it. ``dlopen`` maps a truncated library and
    dies by SIGBUS on first use, and a foreign one runs whatever it holds, so anything
    else is rebuilt, never loaded."""
    stamp = target.with_name(target.name + ".sha256")
    try:
        if not (target.is_file() and stamp.is_file()):
            return False
        size, digest = stamp.read_text().split()
        return int(size) == target.stat().st_size and digest == _digest(target)
    except (OSError, ValueError):
        return False


def _compile(source: Path = _SOURCE, flags=None, stem: str = "lbfeat") -> Path | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    flags = _FLAGS if flags is None else flags
    src = source.read_bytes()
    key = hashlib.sha256(src + " ".join([cc, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / "native" / f"{stem}-{key}.so"
    if _intact(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / f"{stem}.so"
        proc = subprocess.run([cc, *flags, str(source), "-o", str(out), "-lm"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            warnings.warn(f"lbcnn: C kernel {source.name} did not compile, using the Python "
                          f"path: {proc.stderr.strip()[:200]}")
            return None
        stamp = Path(tmp) / "stamp"
        stamp.write_text(f"{out.stat().st_size} {_digest(out)}\n")
        os.replace(out, target)
        os.replace(stamp, target.with_name(target.name + ".sha256"))
    return target


def load():
    """The loaded library, or None when the native path is unavailable."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    from ..settings import native_enabled
    if not native_enabled():
        return None
    try:
        path = _compile()
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"lbcnn: C kernel unavailable, using torch: {exc}")
        return None
    if not hasattr(lib, "lb_features"):  # the stamp matched, yet it is not our kernel
        warnings.warn(f"lbcnn: {path} lacks lb_features; removed, using torch")
        for stale in (path, path.with_name(path.name + ".sha256")):
            stale.unlink(missing_ok=True)
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


def load_gptq():
    """The GPTQ block kernel, or None (callers then run the same loop in NumPy)."""
    global _gptq, _gptq_tried
    if _gptq_tried:
        return _gptq
    _gptq_tried = True
    from ..settings import native_enabled
    if not native_enabled():
        return None
    try:
        path = _compile(_GPTQ_SOURCE, _GPTQ_FLAGS, "gptq")
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"lbcnn: GPTQ kernel unavailable, using NumPy: {exc}")
        return None
    if not hasattr(lib, "gptq_block"):  # the stamp matched, yet it is not our kernel
        warnings.warn(f"lbcnn: {path} lacks gptq_block; removed, using NumPy")
        for stale in (path, path.with_name(path.name + ".sha256")):
            stale.unlink(missing_ok=True)
        return None
    f64 = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
    lib.gptq_block.argtypes = [f64, f64, f64, f64, ctypes.c_double, ctypes.c_int, ctypes.c_int,
                               f64, f64]
    lib.gptq_block.restype = None
    _gptq = lib
    return lib
