"""Datasets: a registry of named sources plus ``npz:PATH`` and ``folder:PATH``.

Where a named dataset comes from, first hit wins:
1. an explicit path (``path=`` / ``--data-path``),
2. the folder in ``LBCNN_DATA``,
3. the user cache (``LBCNN_CACHE``, default ``~/.cache/lbcnn``),
4. a checksummed download from the official source, converted into the cache.

Images stay uint8 in memory (NHWC); models scale them to [0, 1] float32 as
they consume them (``Dataset.input_scale``), which keeps conv sums exact.

Pixels in an ``.npz`` follow one rule, by dtype, for every array of the file: integer
arrays hold 0..255 (uint8 as is; any other integer type must stay in that range);
floating-point arrays hold intensities in [0, 1], scaled by 255 and rounded half to even.
Anything else is refused with the range found. Labels are checked before any cast:
whole numbers from 0 to 2**31 - 1 (the C export returns them as ``int``).

A dataset knows where it came from (``Dataset.provenance``): every model file records
it, so later commands rebuild the same test split and check its fingerprint.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..settings import cache_dir, data_dir
from .splits import stratified_split, train_val_split

__all__ = ["Dataset", "load_dataset", "list_datasets", "train_val_split", "stratified_split",
           "resolve_source"]

MAX_LABEL = 2**31 - 1


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
    # how the test split was drawn: kind (official, fraction, folder, paper), seed,
    # test_fraction, test_folder (as given) and test_folder_path (resolved)
    split_options: dict | None = None
    # the file or folder behind a folder:/npz: source, or the --data-path file, resolved
    source_path: str | None = None
    data_path: str | None = None
    # folder sources: each image's path relative to its folder (train, test)
    members_train: list[str] | None = None
    members_test: list[str] | None = None
    warnings: list[str] | None = None
    _fingerprints: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.class_names is None:
            self.class_names = _DEFAULT_CLASS_NAMES.get(self.name) or [
                str(v) for v in (self.label_values or range(self.n_classes))]

    def test_fingerprint(self) -> str:
        """The test split's members: file list and labels (folders), else an array hash."""
        if "test" not in self._fingerprints:
            h = hashlib.sha256()
            if self.members_test is not None:
                for m, y in zip(self.members_test, self.y_test):
                    h.update(f"{m}\t{self.class_names[int(y)]}\n".encode())
            else:
                _hash_arrays(h, self.x_test, self.y_test)
            self._fingerprints["test"] = "sha256:" + h.hexdigest()[:24]
        return self._fingerprints["test"]

    def fingerprint(self) -> str:
        """Every image and label, train and test, as loaded (after preprocessing)."""
        if "data" not in self._fingerprints:
            h = hashlib.sha256()
            _hash_arrays(h, self.x_train, self.y_train, self.x_test, self.y_test)
            for members in (self.members_train, self.members_test):
                h.update("\n".join(members or []).encode())
            self._fingerprints["data"] = "sha256:" + h.hexdigest()[:24]
        return self._fingerprints["data"]

    def split_record(self) -> dict:
        opts = dict(self.split_options or {"kind": "official"})
        return {**opts, "n_test": int(len(self.y_test)), "fingerprint": self.test_fingerprint()}

    def provenance(self) -> dict:
        """What a model file records about its data (the model file is the source of truth):
        the dataset as given and resolved, preprocessing, class names, and the test split."""
        return {"dataset": self.name, "dataset_path": self.source_path,
                "data_path": self.data_path, "class_names": list(self.class_names),
                "preprocessing": dict(self.preprocessing) if self.preprocessing else None,
                "label_values": self.label_values, "split": self.split_record()}

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


def _hash_arrays(h, *arrays) -> None:
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a)  # the buffer itself, no copy


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
    from .images import require_regular_file
    require_regular_file(path, "dataset file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path}: corrupt or truncated npz ({exc})") from None


def _npz_names(path: Path) -> list[str]:
    """The array names of an ``.npz`` (read from the zip directory, no array loaded)."""
    from .images import require_regular_file
    require_regular_file(path, "dataset file")
    try:
        with zipfile.ZipFile(path) as z:
            return [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path}: corrupt or truncated npz ({exc})") from None


def _as_images(x: np.ndarray, what: str) -> np.ndarray:
    """One rule by dtype (module doc): integers are 0..255, floats are [0, 1]."""
    x = np.asarray(x)
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
        if lo < 0 or hi > 1:
            raise DataError(f"{what}: floating-point pixels are intensities in [0, 1], these span "
                            f"[{lo:g}, {hi:g}]; store 0..255 pixels as uint8")
        return np.round(x.astype(np.float64) * 255.0).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())   # Python ints: no wrap-around before the check
        if lo < 0 or hi > 255:
            raise DataError(f"{what}: integer pixels must lie in 0..255, these span [{lo}, {hi}]"
                            f"{' (16-bit images: scale them to 8 bits)' if hi <= 65535 else ''}")
        return x.astype(np.uint8)
    raise DataError(f"{what} have unsupported dtype {x.dtype}; store pixels as uint8")


def _as_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """Whole numbers 0..MAX_LABEL, checked on the stored dtype before the cast to int64."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what} labels must be 1-D, got shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{what}: {n} images but {len(y)} labels")
    if len(y) == 0:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.integer):
        lo, hi = int(y.min()), int(y.max())
    elif np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{what} labels must be whole numbers, got dtype {y.dtype} with "
                            f"fractions or NaN")
        lo, hi = float(y.min()), float(y.max())
    else:
        raise DataError(f"{what} labels must be integers, got dtype {y.dtype}")
    if lo < 0:
        raise DataError(f"{what} labels must be non-negative, found {lo:g}")
    if hi > MAX_LABEL:
        shown = hi if isinstance(hi, int) else f"{hi:.6g}"
        raise DataError(f"{what} labels must be at most {MAX_LABEL:,} (the C export returns "
                        f"them as int), found {shown}")
    return y.astype(np.int64)


def _from_arrays(name: str, arrays: dict, test_fraction: float, seed: int,
                 input_scale: float = 1.0 / 255.0, groups=None) -> Dataset:
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        ytr = _as_labels(arrays["y_train"], len(arrays["x_train"]), "y_train")
        yte = _as_labels(arrays["y_test"], len(arrays["x_test"]), "y_test")
        xtr = _as_images(arrays["x_train"], "x_train")
        xte = _as_images(arrays["x_test"], "x_test")
        split = "official"
        options = {"kind": "official"}
    elif {"x", "y"} <= arrays.keys():
        y = _as_labels(arrays["y"], len(arrays["x"]), "y")
        x = _as_images(arrays["x"], "x")
        tr, te = stratified_split(y, test_fraction, seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        split = f"stratified test_fraction={test_fraction} seed={seed}"
        options = {"kind": "fraction", "test_fraction": test_fraction, "seed": seed}
    else:
        raise DataError(f"{name}: expected arrays x_train, y_train, x_test, y_test (or x, y); "
                        f"found {sorted(arrays)}")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{name}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ")
    ytr, yte, values, notes = check_labels(name, ytr, yte)
    n_classes = len(values) if values is not None else int(ytr.max(initial=0) + 1)
    return Dataset(name, xtr, ytr, xte, yte, n_classes, input_scale, groups, test_split=split,
                   label_values=values, notes=notes, split_options=options)


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


def _builtin_file(name: str, path: str | None) -> Path | None:
    """The file a built-in dataset is read from, when it is on disk (None: download)."""
    fname = _BUILTIN[name]
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"--data-path {path}: no such file or folder")
        return p / fname if p.is_dir() else p
    env = data_dir()
    if env is not None:
        if not env.is_dir():
            raise DataError(f"LBCNN_DATA points at {env}, which is not a folder")
        if (env / fname).exists():
            return env / fname
        if name != "cifar10" or os.environ.get("LBCNN_OFFLINE"):
            raise DataError(f"LBCNN_DATA={env} has no {fname}; point it at the folder holding "
                            f"{fname} (e.g. ../shared/data), or unset it to use the cache/download")
    cached = cache_dir() / "data" / fname
    return cached if cached.exists() else None


def _builtin_arrays(name: str, path: str | None) -> dict:
    fname = _BUILTIN[name]
    found = _builtin_file(name, path)
    if found is not None:
        return _read_npz(found)
    if os.environ.get("LBCNN_OFFLINE"):
        raise DataError(f"{name} is not cached and LBCNN_OFFLINE is set; set LBCNN_DATA")
    cached = cache_dir() / "data" / fname
    from .download import DOWNLOADERS
    arrays = DOWNLOADERS[name](cache_dir() / "downloads")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, **arrays)
    os.replace(tmp.name, cached)
    return arrays


def _olivetti(arrays: dict, split: str, test_fraction: float, seed: int) -> Dataset:
    y = _as_labels(arrays["y"], len(arrays["x"]), "y")
    x = _as_images(arrays["x"], "x")
    # The paper (and scikit-learn) feed x / x.max(); keep that scale.
    scale = 1.0 / float(max(int(x.max()), 1))
    if split == "paper":
        perm = np.random.RandomState(0).permutation(len(x))
        tr, te = perm[:250], perm[250:]
        desc = "paper: RandomState(0).permutation(400), first 250 train, last 150 test"
        options = {"kind": "paper"}
    else:
        tr, te = stratified_split(y, test_fraction, seed)
        desc = f"stratified test_fraction={test_fraction} seed={seed}"
        options = {"kind": "fraction", "test_fraction": test_fraction, "seed": seed}
    return Dataset("olivetti", x[tr], y[tr], x[te], y[te], 40, scale, test_split=desc,
                   split_options=options)


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


def resolve_source(name: str) -> tuple[str, str, Path | None]:
    """(kind, name, path): kind "builtin", "npz" or "folder"; the name as given, in its
    canonical form (``folder:imgs`` for ``imgs/``); the path as given (not resolved).

    A bare name that is neither a built-in dataset nor an existing folder or ``.npz``
    is refused here, naming what was looked for, before any option is judged."""
    name = str(name).strip()
    if name in _BUILTIN:
        return "builtin", name, None
    for kind in ("npz", "folder"):
        if name.startswith(kind + ":"):
            text = _clean_path(name[len(kind) + 1:])
            if not text:
                raise DataError(f"{name!r}: give a path after {kind}:")
            return kind, f"{kind}:{text}", Path(text).expanduser()
    text = _clean_path(name)
    p = Path(text).expanduser()
    if p.is_dir():
        return "folder", f"folder:{text}", p
    if p.suffix.lower() == ".npz" and os.path.lexists(p):
        return "npz", f"npz:{text}", p
    raise DataError(f"unknown dataset {name!r}: not a built-in dataset ({', '.join(sorted(_BUILTIN))})"
                    f", and no folder or .npz file at {_absolute(p)}")


def _clean_path(text: str) -> str:
    stripped = text.rstrip("/\\")
    return stripped if stripped else text[:1]


def _absolute(p: Path) -> Path:
    try:
        return p.expanduser().resolve()
    except (OSError, RuntimeError):
        return p.expanduser().absolute()


def normalize_name(name: str) -> str:
    """``PATH`` to an existing folder or ``.npz`` means ``folder:PATH`` / ``npz:PATH``;
    unknown names are returned unchanged."""
    try:
        return resolve_source(name)[1]
    except DataError:
        return str(name)


def source_key(name: str, path: str | None = None) -> str:
    """What identifies a source whatever the working directory: a built-in name, or the
    kind and the resolved path (``path`` when a model file recorded it)."""
    try:
        kind, canonical, p = resolve_source(name)
    except DataError:
        if path:
            return f"{str(name).split(':', 1)[0]}:{path}"
        return str(name)
    if p is None:
        return canonical
    return f"{kind}:{path or _absolute(p)}"


def load_dataset(name: str, path: str | None = None, *, split: str = "default",
                 test_fraction: float | None = None, seed: int | None = 0, resize=None,
                 grayscale: bool = False, test_folder: str | None = None,
                 rgb: bool = False) -> Dataset:
    """Load a dataset by registry name, ``npz:PATH`` or ``folder:PATH``.

    ``split`` matters only for sources without an official test set:
    ``"paper"`` (Olivetti's 250/150) or ``"default"`` (seeded stratified split
    with ``test_fraction``: 0.5 for Olivetti, 5 of 10 faces a person, else 0.2).
    ``resize`` (H, W), ``grayscale`` and ``rgb`` apply to ``folder:`` images (the
    pipeline of :mod:`lbcnn.data.images`), and ``test_folder`` gives a folder source its
    own test images. ``seed`` None means 0. Every option is checked, and the source
    found, before any image is read.
    """
    kind, name, src = resolve_source(name)
    seed = 0 if seed is None else int(seed)
    folder_opts = [o for o, on in (("--resize", resize is not None), ("--grayscale", grayscale),
                                   ("--rgb", rgb), ("--test-folder", test_folder is not None))
                   if on]
    if kind == "folder" and not src.is_dir():
        raise DataError(f"image folder not found: {src} (looked in {_absolute(src)})")
    if kind == "npz" and not os.path.lexists(src):
        raise DataError(f"file not found: {src} (looked in {_absolute(src)})")
    if test_folder is not None and not Path(test_folder).expanduser().is_dir():
        raise DataError(f"--test-folder: image folder not found: {test_folder} (looked in "
                        f"{_absolute(Path(test_folder))})")
    if test_fraction is not None and not (0.0 < float(test_fraction) < 1.0):
        raise DataError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    if split not in ("default", "paper"):
        raise DataError(f"unknown split {split!r}; choose default or paper")
    if split == "paper" and name != "olivetti":
        raise ConfigError(f"--split paper is Olivetti's 250/150 split; {name} has no paper split")
    if split == "paper" and test_fraction is not None:
        raise ConfigError("--split paper fixes Olivetti's 250/150 split; drop --test-fraction")
    if kind != "folder" and folder_opts:
        raise ConfigError(f"{' and '.join(folder_opts)} apply to folder: datasets (image "
                          f"folders); {name} is {'a built-in dataset' if kind == 'builtin' else 'an .npz file'}")
    if kind != "builtin" and path is not None:
        raise ConfigError(f"--data-path locates a built-in dataset's file; {name} names its own "
                          f"path")
    if grayscale and rgb:
        raise ConfigError("give --grayscale (one gray channel) or --rgb (three), not both")
    if test_folder is not None and test_fraction is not None:
        raise ConfigError("give --test-folder or --test-fraction, not both")
    if resize is not None:
        resize = tuple(int(v) for v in resize)
        if len(resize) != 2 or min(resize) < 1 or max(resize) > 4096:
            raise ConfigError(f"--resize takes H,W with sizes from 1 to 4096, got "
                              f"{','.join(map(str, resize))}")
    if kind == "builtin" and name not in ("olivetti",) and test_fraction is not None:
        raise ConfigError(f"--test-fraction: {name} has an official test set; the option is for "
                          f"sources without one (folders, .npz files with x and y, olivetti)")
    frac = 0.2 if test_fraction is None else float(test_fraction)
    if kind == "npz":
        if test_fraction is not None and {"x_test", "y_test"} <= set(_npz_names(src)):
            raise ConfigError(f"--test-fraction: {name} holds its own test split (x_test, "
                              f"y_test); the option is for files with x and y only")
        ds = _from_arrays(name, _read_npz(src), frac, seed)
        ds.source_path = str(_absolute(src))
        return ds
    if kind == "folder":
        return _folder(name, src, frac, seed, resize, grayscale, rgb, test_folder)
    arrays = _builtin_arrays(name, path)
    if name == "olivetti":
        ds = _olivetti(arrays, split, 0.5 if test_fraction is None else frac, seed)
    else:
        groups = _gtsrb_tracks(np.asarray(arrays["y_train"])) if name == "gtsrb" else None
        ds = _from_arrays(name, arrays, frac, seed, groups=groups)
        if name == "gtsrb":
            ds.n_classes = 43
    if path is not None:
        ds.data_path = str(_absolute(_builtin_file(name, path)))
    return ds


def _folder(name, src, frac, seed, resize, grayscale, rgb, test_folder) -> Dataset:
    from .folder import read_folder

    channels = 1 if grayscale else 3 if rgb else None
    train = read_folder(src, resize=resize, channels=channels)
    notes, warns = list(train.notes), list(train.warnings)
    if test_folder is not None:
        test = read_folder(Path(test_folder).expanduser(), resize=resize,
                           shape=train.x.shape[1:], classes=train.classes)
        ds = _from_arrays(name, {"x_train": train.x, "y_train": train.y, "x_test": test.x,
                                 "y_test": test.y}, frac, seed)
        ds.members_train, ds.members_test = train.members, test.members
        ds.test_split = f"folder {test_folder}"
        ds.split_options = {"kind": "folder", "test_folder": str(test_folder),
                            "test_folder_path": str(_absolute(Path(test_folder)))}
        notes += [f"test folder: {n}" for n in test.notes]
    else:
        ds = _from_arrays(name, {"x": train.x, "y": train.y}, frac, seed)
        tr, te = stratified_split(train.y, frac, seed)   # the same draw _from_arrays made
        ds.members_train = [train.members[i] for i in tr]
        ds.members_test = [train.members[i] for i in te]
    ds.class_names = train.classes if ds.label_values is None else \
        [train.classes[v] for v in ds.label_values]
    ds.notes = notes + (ds.notes or [])
    ds.warnings = warns
    ds.source_path = str(_absolute(src))
    ds.preprocessing = {"resize": list(resize) if resize is not None else None,
                        "grayscale": bool(grayscale), "rgb": bool(rgb),
                        "channels": int(train.x.shape[-1])}
    return ds
