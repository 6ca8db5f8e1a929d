"""An exported C folder as a predictor: its code is compiled and run only when it is the
code the export wrote.

``lbcnn export --format c`` records each source's SHA-256 in ``model.json``. Before
compiling, ``c_predictor`` reads ``model.h``, ``model.c`` and ``main.c`` once, checks
them against those hashes (``trust=True``, the ``--trust-c`` option, skips the check for
a folder the user vouches for), and compiles the bytes it checked in a temporary folder
that is always removed. The compiler and the program each run under a time limit, in
their own process group (killed whole on timeout), with a cap on what they may print;
the program's output must be exactly one known class a line.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..validate import check_input_shape

COMPILE_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 60.0           # for the program, plus RUN_SECONDS_PER_IMAGE per image
RUN_SECONDS_PER_IMAGE = 0.05   # a CBCNN on 32x32 takes ~1 ms an image on a laptop core
MAX_SOURCE_BYTES = 256 << 20   # a 4096 x 4096 LB-CNN head in C is far below this
_NEED = ("LBCNN_HEIGHT", "LBCNN_WIDTH", "LBCNN_CHANNELS", "LBCNN_N_CLASSES")


def _read(path: Path, what: str) -> bytes:
    from .sniff import require_regular_file
    if not path.exists():
        raise DataError(f"{path.parent}: not an lbcnn C export ({path.name} is missing)")
    require_regular_file(path, what)
    size = path.stat().st_size
    if size > MAX_SOURCE_BYTES:
        raise DataError(f"{path}: {size:,} bytes, more than an lbcnn export writes")
    return path.read_bytes()


def read_sources(folder: Path, trust: bool) -> tuple[dict, dict[str, bytes]]:
    """(model.json's record, {name: bytes}) of the sources ``evaluate`` compiles, checked
    against the recorded hashes unless ``trust``."""
    from ..deploy.c_common import source_digest
    from ..metadata import C_SOURCES_COMPILED, validate_c_record

    record = {}
    meta = folder / "model.json"
    if meta.exists():
        record = validate_c_record(_read(meta, "model.json"), str(meta))
    elif not trust:
        raise DataError(f"{folder}: no model.json with the export's source hashes; this C "
                        f"folder was not written by `lbcnn export` (re-export it, or pass "
                        f"--trust-c to compile and run its code anyway)")
    sources = {name: _read(folder / name, name) for name in C_SOURCES_COMPILED}
    if not trust:
        recorded = record.get("sources") or {}
        missing = [n for n in C_SOURCES_COMPILED if n not in recorded]
        if missing:
            raise DataError(f"{meta}: records no hash for {', '.join(missing)} (an older "
                            f"export?); re-export the model, or pass --trust-c to compile "
                            f"and run the folder's code anyway")
        changed = [n for n in C_SOURCES_COMPILED if source_digest(sources[n]) != recorded[n]]
        if changed:
            verb = "differs" if len(changed) == 1 else "differ"
            raise DataError(f"{folder}: {', '.join(changed)} {verb} from what `lbcnn export` "
                            f"wrote (SHA-256 in model.json); refusing to compile and run "
                            f"changed code: re-export, or pass --trust-c if you trust it")
    return record, sources


def parse_header(text: str, where: str) -> tuple[dict, list | None]:
    """``#define LBCNN_*`` integers and the ``LBCNN_CLASS_NAMES`` strings of a model.h."""
    from ..deploy.c_common import c_unescape

    defines = {}
    for m in re.finditer(r"^#define\s+(LBCNN_\w+)\s+(-?\d{1,18})\s*$", text, re.M):
        defines[m.group(1)] = int(m.group(2))
    m = re.search(r"LBCNN_CLASS_NAMES\[\d+\]\s*=\s*\{", text)
    names = None
    if m:
        literals, _ = _string_list(text, m.end(), where)
        try:
            names = [c_unescape(s) for s in literals]
        except ValueError as exc:
            raise DataError(f"{where}: a class name is not a valid C string ({exc})") from None
    return defines, names


_LITERAL = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def _string_list(text: str, i: int, where: str) -> tuple[list[str], int]:
    """The string literals of an initializer ``{ "a", "b" }`` from just after its brace:
    scanned literal by literal, so a ``};`` inside a name does not end the list."""
    literals = []
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            raise DataError(f"{where}: LBCNN_CLASS_NAMES is not closed")
        if text[i] == "}":
            return literals, i + 1
        m = _LITERAL.match(text, i)
        if m is None:
            raise DataError(f"{where}: LBCNN_CLASS_NAMES holds something other than strings")
        literals.append(m.group(1))
        i = m.end()


def run_bounded(cmd, stdin: bytes | None, timeout: float, max_output: int,
                cwd=None) -> tuple[int, bytes, bytes]:
    """Run ``cmd`` in its own process group: at most ``timeout`` seconds (then the whole
    group is killed) and ``max_output`` bytes on stdout and on stderr. Returns
    (status, stdout, stderr); ``TimeoutError`` or ``OverflowError`` when a limit is hit."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None else
                            subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)

    def feed():
        try:
            proc.stdin.write(stdin)
        except (BrokenPipeError, OSError):
            pass  # the program stopped reading: its status and output tell why
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    writer = threading.Thread(target=feed, daemon=True) if stdin is not None else None
    if writer is not None:
        writer.start()
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    outputs = {out_fd: bytearray(), err_fd: bytearray()}
    deadline = time.monotonic() + timeout
    try:
        open_fds = [out_fd, err_fd]
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select(open_fds, [], [], left)
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_fds.remove(fd)
                    continue
                outputs[fd] += chunk
                if len(outputs[fd]) > max_output:
                    raise OverflowError
        status = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        raise TimeoutError from None
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        proc.stdout.close()
        proc.stderr.close()
        if writer is not None:
            writer.join(timeout=5)
    return status, bytes(outputs[out_fd]), bytes(outputs[err_fd])


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def c_predictor(path: Path, trust: bool = False):
    """A ``Predictor`` over an exported C folder (see the module docstring)."""
    from ..deploy.c_common import CFLAGS, find_cc
    from .artefacts import Predictor

    record, sources = read_sources(path, trust)
    try:
        header = sources["model.h"].decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path / 'model.h'}: not UTF-8 text") from None
    defines, names = parse_header(header, str(path / "model.h"))
    if any(k not in defines for k in _NEED):
        raise DataError(f"{path}: not an lbcnn C export (model.h lacks {', '.join(_NEED)})")
    shape = check_input_shape((defines["LBCNN_HEIGHT"], defines["LBCNN_WIDTH"],
                               defines["LBCNN_CHANNELS"]), str(path / "model.h"))
    k = defines["LBCNN_N_CLASSES"]
    if not 1 <= k <= 100_000:
        raise DataError(f"{path / 'model.h'}: LBCNN_N_CLASSES = {k} is out of range")
    if record.get("input_shape") is not None and tuple(record["input_shape"]) != shape:
        raise DataError(f"{path}: model.json records input {tuple(record['input_shape'])}, "
                        f"model.h {shape}")
    classes = np.asarray(record["classes"]) if record.get("classes") is not None \
        else np.arange(k)
    if len(classes) != k:
        raise DataError(f"{path}: model.json lists {len(classes)} classes, model.h {k}")
    if record.get("class_names") is not None:
        names = record["class_names"]
    if names is not None and len(names) != k:
        names = None
    returns = record.get("returns", "label")
    if find_cc() is None:
        raise ConfigError(f"running the C export {path} needs a C compiler (cc, gcc or "
                          f"clang) on PATH")
    config = {key: v for key, v in record.items() if key != "sources"}

    def labels(x):
        return _run_c(path, sources, x, classes, returns, CFLAGS, find_cc())

    return Predictor("c", path, shape, classes, names, config, _labels=labels)


def _run_c(path: Path, sources: dict, x: np.ndarray, classes: np.ndarray, returns: str,
           cflags, cc) -> np.ndarray:
    """Compile the checked sources in a temporary folder, run them on ``x``, parse strictly."""
    with tempfile.TemporaryDirectory(prefix="lbcnn_c_") as build:
        build = Path(build)
        for name, data in sources.items():
            (build / name).write_bytes(data)
        exe = build / "lbcnn"
        try:
            # LBCNN_PRINT_LABELS: main.c prints lbcnn_predict's integers, not class names
            status, _, err = run_bounded([cc, *cflags, "-DLBCNN_PRINT_LABELS", "model.c",
                                          "main.c", "-o", str(exe)],
                                         None, COMPILE_TIMEOUT_S, 1 << 20, cwd=build)
        except TimeoutError:
            raise DataError(f"{path}: compiling took longer than {COMPILE_TIMEOUT_S:.0f} s; "
                            f"stopped") from None
        except OverflowError:
            raise DataError(f"{path}: the compiler printed more than 1 MB; stopped") from None
        if status != 0:
            first = (err.decode(errors="replace").strip().splitlines() or ["?"])[0][:300]
            raise DataError(f"{path}: the C sources do not compile with {Path(cc).name}: {first}")
        timeout = RUN_TIMEOUT_S + RUN_SECONDS_PER_IMAGE * len(x)
        try:
            status, out, _ = run_bounded([str(exe)], x.tobytes(), timeout, 24 * len(x) + 64,
                                         cwd=build)
        except TimeoutError:
            raise DataError(f"{path}: the compiled classifier ran longer than {timeout:.0f} s "
                            f"on {len(x):,} images; stopped") from None
        except OverflowError:
            raise DataError(f"{path}: the compiled classifier printed far more than one class "
                            f"a line for {len(x):,} images; stopped") from None
    if status != 0:
        raise DataError(f"{path}: the compiled classifier exited with status {status}")
    return parse_classes(out, len(x), classes, returns, path)


def parse_classes(out: bytes, n: int, classes: np.ndarray, returns: str, path) -> np.ndarray:
    """The program's stdout: exactly ``n`` lines, each one integer that names a class (an
    output index when ``returns`` is "index", else a label); anything else is an error."""
    lines = out.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) != n:
        raise DataError(f"{path}: the compiled classifier printed {len(lines)} "
                        f"line{'' if len(lines) == 1 else 's'} for {n} images")
    bad = next((ln for ln in lines if not re.fullmatch(rb"-?\d{1,18}", ln)), None)
    if bad is not None:
        raise DataError(f"{path}: the compiled classifier printed {bad[:40]!r}, not a class")
    got = np.array([int(v) for v in lines], dtype=np.int64)
    if returns == "index":
        if len(got) and (got.min() < 0 or got.max() >= len(classes)):
            raise DataError(f"{path}: the compiled classifier printed an index outside "
                            f"0..{len(classes) - 1}")
        return np.asarray(classes)[got] if len(got) else got
    unknown = np.setdiff1d(got, classes)
    if len(unknown):
        raise DataError(f"{path}: the compiled classifier printed {int(unknown[0])}, not one "
                        f"of the model's classes")
    return got
