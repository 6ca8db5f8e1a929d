"""Argument helpers shared by every subcommand, and the model-file argument of the
commands that read one (finetune, quantize, export, info)."""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from ..errors import ConfigError, DataError


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def finite_float(text: str) -> float:
    """A float option that refuses NaN and infinity at parse time."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def int_in(lo: int, hi: int | None = None, what: str = "a whole number"):
    """An argparse type for whole numbers in [lo, hi]."""
    bound = f">= {lo}" if hi is None else f"from {lo} to {hi}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value
    return parse


positive_int = int_in(1)
nonneg_int = int_in(0)
bit_width = int_in(2, 16, "a bit width")
seed_int = int_in(0, 2**32 - 1, "a seed")  # numpy and torch both take 32-bit seeds
batch_int = int_in(1, 1 << 20, "a batch size")


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text!r}")
    return value


def add_data_args(p, required: bool = True, folder_options: bool = True):
    """``required=False`` for commands that read a model: its file records the dataset."""
    p.add_argument("--dataset", required=required,
                   help="mnist, fashion_mnist, gtsrb, olivetti, cifar10, npz:PATH, folder:PATH, "
                        "or a path to a folder (one sub-folder per class) or an .npz"
                        + ("" if required else "; default: the dataset recorded in the model file"))
    p.add_argument("--data-path", help="explicit file or folder for a named dataset "
                   "(otherwise LBCNN_DATA, the cache, then a download)")
    p.add_argument("--split", default="default", choices=["default", "paper"],
                   help="for sources without a test set: 'paper' is Olivetti's 250/150 split")
    if not folder_options:
        return
    g = p.add_argument_group("image folders and .npz files without a test split")
    g.add_argument("--resize", type=ints, metavar="H,W",
                   help="resize every image of a folder: dataset to H x W (bilinear)")
    g.add_argument("--grayscale", action="store_true",
                   help="convert a folder: dataset's images to one gray channel")
    g.add_argument("--test-fraction", type=fraction, metavar="F",
                   help="share of the images held out as the test split (default 0.2; "
                        "Olivetti 0.5)")
    g.add_argument("--test-folder", metavar="PATH",
                   help="a separate folder of test images, laid out like the training folder")


def say(args, message: str) -> None:
    """A note for people: on stderr, so ``--json`` output stays one parseable object."""
    print(message, file=sys.stderr)


def load_data(args, model_meta: dict | None = None, quiet: bool = False,
              warn_mismatch: bool = True):
    """The dataset the options name, or the one a model file records.

    Prints the dataset's notes (skipped files, remapped labels) and, for
    commands that read a model, warns when the dataset differs from the
    recorded one. Folder options recorded in the model are reused.
    """
    from ..data import load_dataset, normalize_name

    recorded = (model_meta or {}).get("dataset")
    name = args.dataset or recorded
    if not name:
        from ..errors import ConfigError
        raise ConfigError("--dataset is required: the model file records no dataset")
    prep = (model_meta or {}).get("preprocessing") or {}
    same = not args.dataset or normalize_name(args.dataset) == recorded
    if not same:
        prep = {}
    resize = args.resize if getattr(args, "resize", None) else prep.get("resize")
    grayscale = bool(getattr(args, "grayscale", False) or prep.get("grayscale"))
    test_fraction = getattr(args, "test_fraction", None)
    test_folder = getattr(args, "test_folder", None)
    seed = getattr(args, "seed", 0)
    if test_fraction is None and test_folder is None:
        # the split the model was trained against, so its test images stay unseen
        test_fraction, test_folder = prep.get("test_fraction"), prep.get("test_folder")
        if prep.get("split_seed") is not None:
            seed = prep["split_seed"]
    ds = load_dataset(name, args.data_path, split=args.split, seed=seed,
                      test_fraction=test_fraction, resize=resize, grayscale=grayscale,
                      test_folder=test_folder)
    if not quiet:
        for note in ds.notes or []:
            say(args, f"note: {note}")
        if warn_mismatch and args.dataset and recorded and normalize_name(args.dataset) != recorded:
            say(args, f"warning: the model was trained on {recorded} but is run on {ds.name}")
    return ds


def add_output_args(p, what: str = "run folder", resumable: bool = True) -> None:
    p.add_argument("--force", action="store_true",
                   help=f"write into a non-empty {what}, replacing the files this command writes")
    if resumable:
        p.add_argument("--resume", action="store_true",
                       help=f"continue the interrupted run in the {what} given by --out")


# -- a model given on the command line (finetune, quantize, export, info) ------------------
# config keys that save_lbcnn writes itself; everything else is carried over
_OWN_KEYS = {"format", "version", "family", "input_shape", "filters", "nl", "input_scale", "C",
             "classes", "head"}


def load_model_arg(text: str):
    from ..io.artefacts import load_any
    from ..io.native import resolve_model_path
    path = resolve_model_path(text)
    return load_any(path), path


def carried_meta(model) -> dict:
    return {k: v for k, v in getattr(model, "meta_", {}).items() if k not in _OWN_KEYS}


def dataset_for(model, args, strict: bool = False):
    """The recorded dataset unless --dataset names another; ``strict`` refuses another."""
    meta = getattr(model, "meta_", {}) or {}
    ds = load_data(args, meta, warn_mismatch=not strict)
    recorded = meta.get("dataset")
    if strict and recorded and ds.name != recorded:
        raise DataError(f"the model was trained on {recorded}; quantizing it with {ds.name}'s "
                        f"images would fit the head to another dataset")
    shape = tuple(model.body_.input_shape)
    if tuple(ds.input_shape) != shape:
        raise DataError(f"model expects images {shape} but {ds.name} has {tuple(ds.input_shape)}")
    if abs(ds.input_scale - model.body_.input_scale) > 1e-12:
        raise DataError(f"model input scale {model.body_.input_scale:.6g} differs from "
                        f"{ds.name}'s {ds.input_scale:.6g}")
    return ds


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x) == y)) if len(y) else float("nan")


def require_lbcnn(model, command: str) -> None:
    from ..models.lbcnn import LBCNN
    if not isinstance(model, LBCNN):
        raise ConfigError(f"{command} works on LB-CNN models (an ELM head); this is a "
                          f"{type(model).__name__}")
