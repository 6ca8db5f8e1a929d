"""Output safety for every writing command: check first, lock, write atomically.

A long search must never die at the end because its ``--out`` was bad, and
two processes must never interleave their files in one run folder. So every
command validates its output path before any compute (``prepare_run_dir`` /
``check_out_file``), holds a ``RunLock`` while it writes into a run folder,
and writes each file atomically with the permissions the umask asks for.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from .errors import ConfigError

LOCK_NAME = ".lbcnn.lock"
_umask_lock = threading.Lock()


def current_umask() -> int:
    # os.umask can only be read by setting it; the lock keeps threads from seeing 0
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    Readers see the old file or the new one, never half of one; the file gets
    ``0o666 & ~umask`` like any ``open(path, 'w')`` (a bare temporary file would
    be 0600).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_with(path, write) -> Path:
    """Atomic write through a callable that writes to a binary file object."""
    buf = io.BytesIO()
    write(buf)
    return atomic_write_bytes(path, buf.getvalue())


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        if not math.isfinite(value):
            raise ConfigError(f"refusing to write a non-finite number ({value}) as JSON")
        return value
    if isinstance(obj, Path):
        return str(obj)
    return obj


def strict_json(obj, indent: int | None = None) -> str:
    """JSON that any parser accepts: numpy scalars converted, NaN/inf refused."""
    return json.dumps(_jsonable(obj), indent=indent, allow_nan=False)


def write_json(path, obj) -> Path:
    return atomic_write_bytes(path, (strict_json(obj, indent=2) + "\n").encode())


def write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def write_csv(path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    if fieldnames is None:
        fieldnames = []
        for row in rows:
            fieldnames += [k for k in row if k not in fieldnames]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(_jsonable(rows))
    return write_text(path, buf.getvalue())


def _first_existing(path: Path) -> Path:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    return probe


def _check_writable_dir(folder: Path, what: str, shown: Path) -> None:
    """Prove the folder takes a new file: access() lies for root and for /proc."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lbcnn-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"{what} {shown}: cannot write in {folder} "
                          f"({exc.strerror or exc})") from None


def _check_path_text(path, what: str) -> Path:
    if path is None or not str(path).strip():
        raise ConfigError(f"{what} is empty; give a path")
    text = str(path)
    if "\0" in text:
        raise ConfigError(f"{what} contains a NUL byte")
    return Path(text).expanduser()


def check_out_file(path, what: str = "--out", overwrite: bool = True) -> Path:
    """Validate an output *file* path before any compute; returns it as a Path."""
    path = _check_path_text(path, what)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"{what} {path} exists; pass --force to overwrite it")
    anchor = _first_existing(path.parent)
    if not anchor.is_dir():
        raise ConfigError(f"{what} {path}: {anchor} is a file, not a folder")
    if anchor == path.parent:
        _check_writable_dir(anchor, what, path)
    else:
        _check_creatable(anchor, path.parent, what, path)
    return path


def _check_creatable(anchor: Path, folder: Path, what: str, shown: Path) -> None:
    """The folder does not exist yet: create it (the command will write there anyway)."""
    _check_writable_dir(anchor, what, shown)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {shown}: cannot create {folder} ({exc.strerror or exc})") from None


def prepare_run_dir(path, what: str = "--out", force: bool = False,
                    resume: bool = False) -> Path:
    """Validate and create a run folder before any compute.

    A non-empty folder is refused unless ``force`` (start over in it) or
    ``resume`` (continue what is there); ``resume`` on a missing folder is
    the caller's to refuse, since only it knows what a resumable run holds.
    """
    path = _check_path_text(path, what)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file; give a folder for the run")
    anchor = _first_existing(path)
    if not anchor.is_dir():
        raise ConfigError(f"{what} {path}: {anchor} is a file, not a folder")
    if path.is_dir():
        if any(p.name != LOCK_NAME for p in path.iterdir()) and not (force or resume):
            raise ConfigError(f"{what} {path} is not empty; pass --force to overwrite its "
                              f"files or --resume to continue the run in it")
        _check_writable_dir(path, what, path)
    else:
        _check_creatable(anchor, path, what, path)
    return path


class RunLock:
    """An exclusive lock on a run folder, held for the whole command.

    ``flock`` is released by the kernel when the process dies, so a run killed
    with SIGKILL leaves no stale lock behind; the PID inside is for the message.
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise ConfigError(f"run folder {self.path.parent} is in use by process {holder}; "
                              f"wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
