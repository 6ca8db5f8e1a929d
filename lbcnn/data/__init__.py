"""Datasets: a registry of named sources plus ``npz:PATH`` and ``folder:PATH``.

Where a named dataset comes from, first hit wins:
1. an explicit path (``path=`` / ``--data-path``),
2. the folder in ``LBCNN_DATA``,
3. the user cache (``LBCNN_CACHE``, default ``~/.cache/lbcnn``),
4. a checksummed download from the official source, converted into the cache.

Images stay uint8 in memory (NHWC); models scale them to [0, 1] float32 as
they consume them (``Dataset.input_scale``), which keeps conv sums exact.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..settings import cache_dir, data_dir
from .splits import stratified_split, train_val_split

__all__ = ["Dataset", "load_dataset", "list_datasets", "train_val_split", "stratified_split"]


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    input_scale: float = 1.0 / 255.0
    groups_train: np.ndarray | None = None  # e.g. GTSRB tracks, held out whole
    class_names: list[str] | None = None
    test_split: str = "official"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x_train.shape[1:])

    def split(self, train_size=None, val_fraction=0.1, seed=0):
        """(train_idx, val_idx) into x_train; see ``splits.train_val_split``."""
        return train_val_split(self.y_train, train_size, val_fraction, seed, self.groups_train)


# name -> (file in LBCNN_DATA, input scale)
_BUILTIN = {
    "mnist": "mnist.npz",
    "fashion_mnist": "fashion_mnist.npz",
    "gtsrb": "gtsrb32.npz",
    "olivetti": "olivetti_faces.npz",
    "cifar10": "cifar10.npz",
}


def list_datasets() -> list[str]:
    return sorted(_BUILTIN) + ["npz:PATH", "folder:PATH"]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DataError(f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path}: corrupt or truncated npz ({exc})") from None


def _as_images(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{what} must have shape (n, H, W) or (n, H, W, 1|3), got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise DataError(f"{what} contain NaN or infinity")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{what} values must lie in [0, 1] or [0, 255], got [{lo}, {hi}]")
        return np.round(x * (255.0 if hi <= 1.0 else 1.0)).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise DataError(f"{what} integer pixels must lie in 0..255")
        return x.astype(np.uint8)
    raise DataError(f"{what} have unsupported dtype {x.dtype}")


def _as_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what} labels must be 1-D, got shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{what}: {n} images but {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{what} labels must be integers, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise DataError(f"{what} labels must be non-negative")
    return y.astype(np.int64)


def _from_arrays(name: str, arrays: dict, test_fraction: float, seed: int,
                 input_scale: float = 1.0 / 255.0, groups=None) -> Dataset:
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        xtr = _as_images(arrays["x_train"], "x_train")
        ytr = _as_labels(arrays["y_train"], len(xtr), "y_train")
        xte = _as_images(arrays["x_test"], "x_test")
        yte = _as_labels(arrays["y_test"], len(xte), "y_test")
        split = "official"
    elif {"x", "y"} <= arrays.keys():
        x = _as_images(arrays["x"], "x")
        y = _as_labels(arrays["y"], len(x), "y")
        tr, te = stratified_split(y, test_fraction, seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        split = f"stratified test_fraction={test_fraction} seed={seed}"
    else:
        raise DataError(f"{name}: expected arrays x_train, y_train, x_test, y_test (or x, y); "
                        f"found {sorted(arrays)}")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{name}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ")
    n_classes = int(max(ytr.max(initial=0), yte.max(initial=0)) + 1)
    return Dataset(name, xtr, ytr, xte, yte, n_classes, input_scale, groups, test_split=split)


def _builtin_arrays(name: str, path: str | None) -> dict:
    fname = _BUILTIN[name]
    if path is not None:
        p = Path(path)
        return _read_npz(p / fname if p.is_dir() else p)
    env = data_dir()
    if env is not None:
        if not env.is_dir():
            raise DataError(f"LBCNN_DATA points at {env}, which is not a folder")
        if (env / fname).exists():
            return _read_npz(env / fname)
        if name != "cifar10" or os.environ.get("LBCNN_OFFLINE"):
            raise DataError(f"LBCNN_DATA={env} has no {fname}; point it at the folder holding "
                            f"{fname} (e.g. ../shared/data), or unset it to use the cache/download")
    cached = cache_dir() / "data" / fname
    if cached.exists():
        return _read_npz(cached)
    if os.environ.get("LBCNN_OFFLINE"):
        raise DataError(f"{name} is not cached and LBCNN_OFFLINE is set; set LBCNN_DATA")
    from .download import DOWNLOADERS
    arrays = DOWNLOADERS[name](cache_dir() / "downloads")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, **arrays)
    os.replace(tmp.name, cached)
    return arrays


def _olivetti(arrays: dict, split: str, test_fraction: float, seed: int) -> Dataset:
    x = _as_images(arrays["x"], "x")
    y = _as_labels(arrays["y"], len(x), "y")
    # The paper (and scikit-learn) feed x / x.max(); keep that scale.
    scale = 1.0 / float(max(int(x.max()), 1))
    if split == "paper":
        perm = np.random.RandomState(0).permutation(len(x))
        tr, te = perm[:250], perm[250:]
        desc = "paper: RandomState(0).permutation(400), first 250 train, last 150 test"
    else:
        tr, te = stratified_split(y, test_fraction, seed)
        desc = f"stratified test_fraction={test_fraction} seed={seed}"
    return Dataset("olivetti", x[tr], y[tr], x[te], y[te], 40, scale, test_split=desc)


def _gtsrb_tracks(y: np.ndarray) -> np.ndarray:
    """Official order: sorted by class, 30 consecutive frames per track."""
    groups = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if not np.all(np.diff(idx) == 1):
            raise DataError("GTSRB training images are not in the official class order")
        groups[idx] = start + (np.arange(len(idx)) // 30)
        start = groups[idx].max() + 1
    return groups


def load_dataset(name: str, path: str | None = None, *, split: str = "default",
                 test_fraction: float = 0.5, seed: int = 0, resize=None,
                 grayscale: bool = False) -> Dataset:
    """Load a dataset by registry name, ``npz:PATH`` or ``folder:PATH``.

    ``split`` matters only for sources without an official test set:
    ``"paper"`` (Olivetti's 250/150) or ``"default"`` (seeded stratified split
    with ``test_fraction``).
    """
    if name.startswith("npz:"):
        ds = _from_arrays(name, _read_npz(Path(name[4:])), test_fraction, seed)
        return ds
    if name.startswith("folder:"):
        from .folder import read_folder
        x, y, classes = read_folder(Path(name[7:]), resize=resize, grayscale=grayscale)
        ds = _from_arrays(name, {"x": x, "y": y}, test_fraction, seed)
        ds.class_names = classes
        return ds
    if name not in _BUILTIN:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(list_datasets())}")
    arrays = _builtin_arrays(name, path)
    if name == "olivetti":
        return _olivetti(arrays, split, test_fraction, seed)
    groups = _gtsrb_tracks(np.asarray(arrays["y_train"])) if name == "gtsrb" else None
    ds = _from_arrays(name, arrays, test_fraction, seed, groups=groups)
    if name == "gtsrb":
        ds.n_classes = 43
    return ds
