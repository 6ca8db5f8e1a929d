"""Downloads from the official sources, checksummed, cached, converted to npz.

Every downloaded file is verified: MNIST and Fashion-MNIST against the sha256
of the decompressed IDX files (the checksums the shared offline copies were
checked against), Olivetti against scikit-learn's sha256, CIFAR-10 and GTSRB
against the md5 sums their publishers' mirrors are known by.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError

_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
IDX_FILES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
_CIFAR = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a")
_GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
_GTSRB = {
    "GTSRB_Final_Training_Images.zip": "md5:513f3c79a4c5141765e10e952eaa2478",
    "GTSRB_Final_Test_Images.zip": "md5:c7e4e6327067d32654124b0fe9e82185",
    "GTSRB_Final_Test_GT.zip": "md5:fe31e9c9270bbcd7b84b7f21a9d9d9e5",
}
_OLIVETTI = ("https://ndownloader.figshare.com/files/5976027",
             "sha256:b612fb967f2dc77c9c62d3e1266e0c73d5fca46a4b8906c18e454d41af987794")


def _fetch(url: str, known_hash: str | None, folder: Path, fname: str) -> Path:
    import pooch
    try:
        return Path(pooch.retrieve(url, known_hash=known_hash, fname=fname, path=folder,
                                   progressbar=False))
    except ValueError as exc:  # pooch's checksum mismatch
        raise DataError(f"download of {fname} failed its checksum: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise DataError(f"could not download {fname} from {url} ({type(exc).__name__}); "
                        "set LBCNN_DATA to a folder holding the offline copy") from None


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse an IDX file (MNIST's format): magic, dims, big-endian payload."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError("not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError("IDX file is truncated")
    return data.reshape(dims)


def download_idx(name: str, folder: Path) -> dict[str, np.ndarray]:
    base = _MNIST_URL if name == "mnist" else _FASHION_URL
    arrays = {}
    for fname, raw_sha in IDX_FILES[name].items():
        path = _fetch(base + fname, None, folder, f"{name}-{fname}")
        raw = gzip.decompress(path.read_bytes())
        if hashlib.sha256(raw).hexdigest() != raw_sha:
            path.unlink(missing_ok=True)
            raise DataError(f"{fname} failed its sha256 check; the download was removed")
        arrays[fname] = parse_idx(raw)
    return {"x_train": arrays["train-images-idx3-ubyte.gz"],
            "y_train": arrays["train-labels-idx1-ubyte.gz"].astype(np.int64),
            "x_test": arrays["t10k-images-idx3-ubyte.gz"],
            "y_test": arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64)}


class _SafeUnpickler(pickle.Unpickler):
    """Allows only the builtins a CIFAR batch is made of; no code can run."""

    _ALLOWED = {("builtins", "dict"), ("builtins", "list"), ("builtins", "bytes"),
                ("builtins", "str"), ("builtins", "int"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(raw: bytes):
    try:
        return _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"unsafe or corrupt CIFAR batch: {exc}") from None


def download_cifar10(folder: Path) -> dict[str, np.ndarray]:
    path = _fetch(_CIFAR[0], _CIFAR[1], folder, "cifar-10-python.tar.gz")
    xs, ys = {}, {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            stem = Path(member.name).name
            if stem.startswith("data_batch_") or stem == "test_batch":
                batch = safe_unpickle(tar.extractfile(member).read())
                x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                xs[stem], ys[stem] = x, np.asarray(batch[b"labels"], dtype=np.int64)
    train = sorted(k for k in xs if k != "test_batch")
    return {"x_train": np.concatenate([xs[k] for k in train]),
            "y_train": np.concatenate([ys[k] for k in train]),
            "x_test": xs["test_batch"], "y_test": ys["test_batch"]}


def download_gtsrb(folder: Path, size: int = 32) -> dict[str, np.ndarray]:
    """Official PPM archives, whole image resized bilinearly to size x size."""
    from PIL import Image

    paths = {f: _fetch(_GTSRB_URL + f, h, folder, f) for f, h in _GTSRB.items()}

    def load(zf, name):
        with Image.open(io.BytesIO(zf.read(name))) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))

    xtr, ytr = [], []
    with zipfile.ZipFile(paths["GTSRB_Final_Training_Images.zip"]) as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".ppm")):
            xtr.append(load(zf, name))
            ytr.append(int(Path(name).parent.name))
    with zipfile.ZipFile(paths["GTSRB_Final_Test_GT.zip"]) as zf:
        rows = list(csv.DictReader(io.TextIOWrapper(zf.open("GT-final_test.csv")), delimiter=";"))
    labels = {r["Filename"]: int(r["ClassId"]) for r in rows}
    xte, yte = [], []
    with zipfile.ZipFile(paths["GTSRB_Final_Test_Images.zip"]) as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".ppm")):
            xte.append(load(zf, name))
            yte.append(labels[Path(name).name])
    return {"x_train": np.stack(xtr), "y_train": np.array(ytr, dtype=np.int64),
            "x_test": np.stack(xte), "y_test": np.array(yte, dtype=np.int64)}


def download_olivetti(folder: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    path = _fetch(_OLIVETTI[0], _OLIVETTI[1], folder, "olivettifaces.mat")
    faces = loadmat(path)["faces"].T  # 400 x 4096, column-major 64x64 images
    x = faces.reshape(400, 64, 64).transpose(0, 2, 1)
    return {"x": np.ascontiguousarray(x).astype(np.uint8), "y": np.repeat(np.arange(40), 10).astype(np.int64)}


DOWNLOADERS = {
    "mnist": lambda folder: download_idx("mnist", folder),
    "fashion_mnist": lambda folder: download_idx("fashion_mnist", folder),
    "cifar10": download_cifar10,
    "gtsrb": download_gtsrb,
    "olivetti": download_olivetti,
}
