"""Native model files: one ``.npz`` holding a JSON config and named arrays.

No pickle anywhere: ``np.load(..., allow_pickle=False)`` reads it, and the
config is versioned so older files keep loading or fail with a clear message.
Writes are atomic (temporary file, then rename).
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError

FORMAT = "lbcnn-model"
VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.") as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_model_file(path, config: dict, arrays: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    config = {"format": FORMAT, "version": VERSION, **config}
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__config__"] = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".npz",
                                     prefix=f".{path.name}.") as tmp:
        np.savez(tmp, **payload)
    os.replace(tmp.name, path)
    return path


def load_model_file(path) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"model file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read model file {path}: corrupt or not an lbcnn model ({exc})") from None
    if "__config__" not in arrays:
        raise DataError(f"{path} is not an lbcnn model file (no config)")
    try:
        config = json.loads(arrays.pop("__config__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: model config is corrupt") from None
    if config.get("format") != FORMAT:
        raise DataError(f"{path} is not an lbcnn model file")
    if int(config.get("version", 0)) > VERSION:
        raise DataError(f"{path} was written by a newer lbcnn (format version {config['version']})")
    return config, arrays


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
