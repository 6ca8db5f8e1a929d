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
    # what a model must record to be fed the same images again
    preprocessing: dict | None = None
    # original label values when labels were remapped to 0..K-1
    label_values: list | None = None
    # things the user should be told once (skipped files, remapped labels)
    notes: list[str] | None = None
    # how the test split was drawn, so a model's later commands see the same split
    split_options: dict | None = None

    def __post_init__(self):
        if self.class_names is None:
            self.class_names = _DEFAULT_CLASS_NAMES.get(self.name) or [
                str(v) for v in (self.label_values or range(self.n_classes))]

    def provenance(self) -> dict:
        """What a model file records about its data (the model file is the source of truth)."""
        return {"dataset": self.name, "class_names": list(self.class_names),
                "preprocessing": {**(self.preprocessing or {}), **(self.split_options or {})},
                "label_values": self.label_values}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x_train.shape[1:])

    def __repr__(self) -> str:
        shape = "x".join(str(v) for v in self.input_shape)
        names = list(self.class_names or [])
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return (f"Dataset({self.name!r}: {len(self.y_train):,} train + {len(self.y_test):,} test "
                f"images {shape} {self.x_train.dtype}, {self.n_classes} classes [{shown}], "
                f"test split {self.test_split})")

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


_DEFAULT_CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
    "olivetti": [f"s{i}" for i in range(1, 41)],  # the AT&T archive's folder names
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
    if x.size == 0:  # the split checks name the problem; min() has nothing to reduce
        return x.astype(np.uint8)
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
    ytr, yte, values, notes = check_labels(name, ytr, yte)
    n_classes = len(values) if values is not None else int(ytr.max(initial=0) + 1)
    return Dataset(name, xtr, ytr, xte, yte, n_classes, input_scale, groups, test_split=split,
                   label_values=values, notes=notes)


def check_labels(name: str, y_train: np.ndarray, y_test: np.ndarray):
    """Class ids must be 0..K-1, each present in training; gaps are remapped with a note.

    Returns (y_train, y_test, original label values or None, notes).
    """
    if len(y_train) == 0:
        raise DataError(f"{name}: the training split is empty")
    if len(y_test) == 0:
        raise DataError(f"{name}: the test split is empty; add test images or raise the test "
                        f"fraction")
    seen = np.unique(y_train)
    if len(seen) < 2:
        raise DataError(f"{name}: every training image has label {int(seen[0])}; a classifier "
                        f"needs at least 2 classes")
    unseen = np.setdiff1d(np.unique(y_test), seen)
    if len(unseen):
        shown = ", ".join(str(int(v)) for v in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
        raise DataError(f"{name}: test labels {shown} never occur in training")
    if seen[-1] == len(seen) - 1:
        return y_train, y_test, None, []
    note = (f"{name}: labels {', '.join(str(int(v)) for v in seen[:6])}"
            f"{' ...' if len(seen) > 6 else ''} are not 0..{len(seen) - 1}; remapped to "
            f"0..{len(seen) - 1} (the model file stores the original values)")
    return (np.searchsorted(seen, y_train), np.searchsorted(seen, y_test),
            [int(v) for v in seen], [note])


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


def normalize_name(name: str) -> str:
    """``PATH`` to an existing folder or ``.npz`` means ``folder:PATH`` / ``npz:PATH``."""
    name = str(name)
    if name in _BUILTIN or name.startswith(("npz:", "folder:")):
        return name
    p = Path(name).expanduser()
    if p.is_dir():
        return f"folder:{name}"
    if p.suffix.lower() == ".npz" and p.is_file():
        return f"npz:{name}"
    return name


def load_dataset(name: str, path: str | None = None, *, split: str = "default",
                 test_fraction: float | None = None, seed: int = 0, resize=None,
                 grayscale: bool = False, test_folder: str | None = None) -> Dataset:
    """Load a dataset by registry name, ``npz:PATH`` or ``folder:PATH``.

    ``split`` matters only for sources without an official test set:
    ``"paper"`` (Olivetti's 250/150) or ``"default"`` (seeded stratified split
    with ``test_fraction``: 0.5 for Olivetti, 5 of 10 faces a person, else 0.2).
    ``resize`` (H, W) and ``grayscale`` apply to ``folder:`` images, and
    ``test_folder`` gives a folder source its own test images.
    """
    name = normalize_name(name)
    if test_fraction is not None and not (0.0 < float(test_fraction) < 1.0):
        raise DataError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    if split not in ("default", "paper"):
        raise DataError(f"unknown split {split!r}; choose default or paper")
    if split == "paper" and name != "olivetti":
        raise DataError(f"--split paper is Olivetti's 250/150 split; {name} has no paper split")
    if test_folder is not None and not name.startswith("folder:"):
        raise DataError("--test-folder goes with a folder: dataset")
    if (resize is not None or grayscale) and not name.startswith("folder:"):
        raise DataError("--resize and --grayscale apply to folder: datasets")
    frac = 0.2 if test_fraction is None else float(test_fraction)
    if name.startswith("npz:"):
        ds = _from_arrays(name, _read_npz(Path(name[4:])), frac, seed)
        if ds.test_split != "official":
            ds.split_options = {"test_fraction": frac, "split_seed": seed}
        return ds
    if name.startswith("folder:"):
        from .folder import read_folder
        x, y, classes, notes = read_folder(Path(name[7:]), resize=resize, grayscale=grayscale)
        if test_folder is not None:
            if test_fraction is not None:
                raise DataError("give --test-folder or --test-fraction, not both")
            xt, yt, tclasses, tnotes = read_folder(Path(test_folder), resize=resize,
                                                   grayscale=grayscale, shape=x.shape[1:],
                                                   classes=classes)
            ds = _from_arrays(name, {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt},
                              frac, seed)
            ds.test_split = f"folder {test_folder}"
            notes += tnotes
        else:
            ds = _from_arrays(name, {"x": x, "y": y}, frac, seed)
        ds.class_names = classes if ds.label_values is None else [classes[v] for v in ds.label_values]
        ds.notes = notes + (ds.notes or [])
        ds.preprocessing = {"resize": list(resize) if resize is not None else None,
                            "grayscale": bool(grayscale)}
        ds.split_options = ({"test_folder": str(test_folder)} if test_folder is not None
                            else {"test_fraction": frac, "split_seed": seed})
        return ds
    if name not in _BUILTIN:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(list_datasets())}")
    arrays = _builtin_arrays(name, path)
    if name == "olivetti":
        return _olivetti(arrays, split, 0.5 if test_fraction is None else frac, seed)
    groups = _gtsrb_tracks(np.asarray(arrays["y_train"])) if name == "gtsrb" else None
    ds = _from_arrays(name, arrays, test_fraction, seed, groups=groups)
    if name == "gtsrb":
        ds.n_classes = 43
    return ds
