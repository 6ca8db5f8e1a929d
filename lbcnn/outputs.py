"""Output safety for every writing command: check first, lock, write atomically.

A long search must never die at the end because its ``--out`` was bad, and
two processes must never interleave their files in one run folder. So every
command validates its output path before any compute (``prepare_run_dir`` /
``check_out_file``), holds a ``RunLock`` while it writes into a run folder,
and writes each file atomically with the permissions the umask asks for.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import stat
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
    refuse_non_regular(path, "output")
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


def refuse_non_regular(path, what: str) -> None:
    """An existing ``path`` that is a device, FIFO or socket (itself or through a link) is
    never replaced or opened: a write would replace the node, a read of a FIFO would hang."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ConfigError(f"{what} {path} is {_node_kind(mode)}, not a regular file; "
                          f"give a file name")


def _node_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


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
    path = Path(text).expanduser()
    _check_name_lengths(path, what)
    return path


def _check_name_lengths(path: Path, what: str) -> None:
    """A name longer than the file system takes fails in every later call with
    ENAMETOOLONG: say so once, before anything is created."""
    anchor = Path(path.anchor or ".")
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
        path_max = os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(f"{what}: the name {part[:40]!r}... is {len(os.fsencode(part))} "
                              f"bytes; this file system takes at most {name_max}")
    if len(os.fsencode(str(path.absolute()))) >= path_max:
        raise ConfigError(f"{what}: the path is longer than this file system's {path_max} "
                          f"bytes")


@contextlib.contextmanager
def _os_guard(what: str, path):
    """OSErrors while checking a path (a loop of links, no permission) as one line."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None


def check_out_file(path, what: str = "--out", overwrite: bool = True) -> Path:
    """Validate an output *file* path before any compute; returns it as a Path."""
    path = _check_path_text(path, what)
    with _os_guard(what, path):
        if path.is_dir():
            raise ConfigError(f"{what} {path} is a folder; give a file name")
        refuse_non_regular(path, what)
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


# folders this process created while checking outputs: removed again if still empty when a
# command fails, so a refused or failed run leaves nothing behind (``remove_empty_created``)
_CREATED: list[Path] = []


def _check_creatable(anchor: Path, folder: Path, what: str, shown: Path) -> None:
    """The folder does not exist yet: create it (the command will write there anyway)."""
    _check_writable_dir(anchor, what, shown)
    missing = []
    probe = folder
    while probe != anchor and not probe.exists():
        missing.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {shown}: cannot create {folder} ({exc.strerror or exc})") from None
    _CREATED.extend(missing)


def remove_empty_created() -> None:
    """Remove the folders output checks created that are still empty (deepest first)."""
    while _CREATED:
        folder = _CREATED.pop(0)
        try:
            folder.rmdir()
        except OSError:
            pass


def forget_created() -> None:
    _CREATED.clear()


def prepare_run_dir(path, what: str = "--out", force: bool = False,
                    resume: bool = False, resumable: bool = True,
                    not_empty_hint: str | None = None) -> Path:
    """Validate and create a run folder before any compute.

    A non-empty folder is refused unless ``force`` (start over in it) or
    ``resume`` (continue what is there); ``resume`` on a missing folder is
    the caller's to refuse, since only it knows what a resumable run holds.
    """
    path = _check_path_text(path, what)
    with _os_guard(what, path):
        if path.exists() and not path.is_dir():
            refuse_non_regular(path, what)
            raise ConfigError(f"{what} {path} is a file; give a folder")
        anchor = _first_existing(path)
        if not anchor.is_dir():
            raise ConfigError(f"{what} {path}: {anchor} is a file, not a folder")
        if path.is_dir():
            if any(p.name != LOCK_NAME for p in path.iterdir()) and not (force or resume):
                hint = not_empty_hint or ("pass --force to overwrite its files" + (
                    " or --resume to continue the run in it" if resumable else ""))
                raise ConfigError(f"{what} {path} is not empty; {hint}")
            _check_writable_dir(path, what, path)
        else:
            _check_creatable(anchor, path, what, path)
    return path


def _move_into(src: Path, dst: Path) -> None:
    """Move ``src``'s files into the existing folder ``dst``, sub-folders merged, each file
    replaced atomically; files of ``dst`` that ``src`` lacks are kept."""
    for item in sorted(src.iterdir()):
        target = dst / item.name
        if item.is_dir() and target.is_dir():
            _move_into(item, target)
        else:
            os.replace(item, target)


@contextlib.contextmanager
def staged_folder(out):
    """Write a folder's files into a hidden sibling, then move them into ``out`` only when
    all are written: a failure leaves ``out`` as it was, never half-written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~current_umask())
        if not out.exists():
            os.rename(stage, out)
            return
        _move_into(stage, out)
        shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


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
