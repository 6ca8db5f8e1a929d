"""Native model files: one ``.npz`` holding a JSON config and named arrays.

No pickle anywhere: ``np.load(..., allow_pickle=False)`` reads it, and the
config is versioned so older files keep loading or fail with a clear message.
Writes are atomic (temporary file, then rename).

Version 2 adds bit-packed arrays: integers of 1..7 bits (an n-bit head, a lowbit kernel)
may be stored as their continuous n-bit two's-complement stream (``lbcnn.engine.bits.pack_signed``),
listed in the config's ``packed`` map (name -> bits, shape); ``load_model_file``
unpacks them before validation, so every reader sees the plain integer arrays. A file
is written as version 2 only when it holds a packed array, so files without one still
load in older releases, and an older release meets a packed file with "written by a
newer lbcnn (format version 2)" rather than a wrong shape.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..outputs import atomic_write_with, strict_json
from .sniff import sniff

FORMAT = "lbcnn-model"
VERSION = 2
PACKED_VERSION = 2   # the first version with bit-packed arrays (config "packed")
_WRITER_KEYS = ("format", "version", "packed")   # set by save_model_file, never copied


def save_model_file(path, config: dict, arrays: dict[str, np.ndarray],
                    packed: dict[str, int] | None = None) -> Path:
    """Write ``config`` and ``arrays``; ``packed`` maps array names to a bit width (1..7):
    those integer arrays are stored bit-packed (format version 2)."""
    from ..engine.bits import pack_signed

    path = Path(path)
    packed = dict(packed or {})
    body = {k: v for k, v in config.items() if k not in _WRITER_KEYS}
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    for name, value in payload.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ConfigError(f"refusing to save {path}: array {name!r} holds NaN or inf")
    # what this writes must load: the validator every loader uses checks it first
    from ..metadata import load_json
    from ..validate import validate_model
    try:
        validate_model(load_json(strict_json({"format": FORMAT, "version": 1, **body}),
                                 "the model config"), dict(payload), "the model")
    except DataError as exc:
        raise ConfigError(f"refusing to save {path}, it would not load: {exc}") from None
    spec = {}
    for name, bits in packed.items():
        value = payload[name]
        if value.dtype.kind not in "iu":
            raise ConfigError(f"cannot bit-pack array {name!r} of dtype {value.dtype}")
        spec[name] = {"bits": int(bits), "shape": [int(n) for n in value.shape]}
        payload[name] = pack_signed(value, bits)
    config = {"format": FORMAT, "version": PACKED_VERSION if spec else 1, **body}
    if spec:
        config["packed"] = spec
    payload["__config__"] = np.frombuffer(strict_json(config).encode(), dtype=np.uint8)
    atomic_write_with(path, lambda fh: np.savez(fh, **payload))
    return path


MAX_MEMBERS = 100_000


def check_npz_members(path, what: str = "model file") -> int:
    """Check an ``.npz`` file's members before any array is read; returns the bytes the
    arrays will take.

    Each ``.npy`` member's header declares a dtype and shape; ``np.load`` allocates that
    much before reading a byte of data, and a compressed member can declare gigabytes in a
    few kilobytes. So every declared size must equal the size the zip directory records
    (``np.save`` writes exactly header + data), no member may hold Python objects, and the
    total must fit the memory plan.
    """
    from numpy.lib import format as npy_format

    from ..memory import human_bytes, require
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise DataError(f"{path}: {len(infos):,} members; a {what} has far fewer")
            for info in infos:
                if not info.filename.endswith(".npy"):
                    total += info.file_size
                    continue
                name = info.filename[:-4]
                with zf.open(info) as fh:
                    version = npy_format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = npy_format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = npy_format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                    header = fh.tell()
                if dtype.hasobject:
                    raise DataError(f"{path}: array {name!r} holds Python objects")
                declared = header + math.prod(int(n) for n in shape) * dtype.itemsize
                if declared != info.file_size:
                    raise DataError(f"{path}: array {name!r} declares shape {tuple(shape)} "
                                    f"{dtype} ({human_bytes(declared)}) but its member holds "
                                    f"{human_bytes(info.file_size)}: damaged or forged")
                total += declared
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError,
            NotImplementedError) as exc:
        raise DataError(f"{path} is not a readable {what} (corrupt or truncated: "
                        f"{_first_line(exc)})") from None
    require(total, f"{path}'s arrays ({human_bytes(Path(path).stat().st_size)} on disk)",
            f"the {what} is damaged, forged or too large for this machine")
    return total


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:100] if text else type(exc).__name__


def load_model_file(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate a native model file; every failure is one ``DataError`` line."""
    from ..metadata import load_json
    from ..validate import validate_model
    from .sniff import require_regular_file

    path = Path(path)
    if not path.exists():
        raise DataError(f"model file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a model file or a run folder holding model.npz")
    require_regular_file(path, "model file")
    kind = sniff(path)
    if kind != "zip":
        raise DataError(f"{path}: not an lbcnn model file: looks like {kind}")
    check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError) as exc:
        raise DataError(f"cannot read model file {path}: corrupt or truncated "
                        f"({_first_line(exc)})") from None
    if not isinstance(arrays, dict) or "__config__" not in arrays:
        raise DataError(f"not an lbcnn model file: {path} has no lbcnn config")
    raw = arrays.pop("__config__")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise DataError(f"{path}: model config is corrupt")
    config = load_json(raw.tobytes(), f"{path}: model config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DataError(f"not an lbcnn model file: {path} has no lbcnn config")
    version = config.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise DataError(f"{path}: config 'version' must be an integer, got {version!r}")
    if version > VERSION:
        raise DataError(f"{path} was written by a newer lbcnn (format version {version})")
    unpack_arrays(config, arrays, str(path))
    validate_model(config, arrays, str(path))
    return config, arrays


def unpack_arrays(config: dict, arrays: dict, where: str) -> None:
    """Replace each array the config lists under ``packed`` by its integers, in place, and
    drop the map (what a reader sees is the plain model). ``validate.validate_packed``
    checks every entry first: a bad one is one DataError."""
    from ..engine.bits import unpack_signed
    from ..validate import validate_packed

    spec = config.pop("packed", None)
    if spec is None:
        return
    for name, (bits, shape, count) in validate_packed(spec, arrays, where).items():
        arrays[name] = unpack_signed(arrays[name], bits, count).reshape(shape)


def resolve_model_path(text) -> Path:
    """A model file, or a run folder holding ``model.npz``."""
    p = Path(text)
    if p.is_dir():
        if not (p / "model.npz").exists():
            raise DataError(f"run folder {p} has no model.npz")
        return p / "model.npz"
    if not p.exists():
        raise DataError(f"model file not found: {p}")
    return p
