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


def int_list(lo: int, hi: int, what: str = "whole numbers"):
    """An argparse type for one or more comma-separated whole numbers in [lo, hi]."""
    def parse(text: str) -> tuple[int, ...]:
        values = ints(text)
        if not values or not all(lo <= v <= hi for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} from {lo} to "
                                             f"{hi}, got {text!r}")
        return values
    return parse


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


def folds(text: str) -> int:
    """--cv K: 0 (one validation split) or 2 to 100 folds."""
    value = int_in(0, 100, "a fold count")(text)
    if value == 1:
        raise argparse.ArgumentTypeError("expected 0 (one validation split) or 2 to 100 folds, "
                                         "got '1'")
    return value


positive_int = int_in(1)
nonneg_int = int_in(0)
bit_width = int_in(2, 16, "a bit width")
seed_int = int_in(0, 2**32 - 1, "a seed")  # numpy and torch both take 32-bit seeds
batch_int = int_in(1, 1 << 20, "a batch size")


def float_in(lo: float, hi: float, what: str = "a number"):
    """An argparse type for finite numbers in [lo, hi]."""
    def parse(text: str) -> float:
        value = finite_float(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} from {lo:g} to {hi:g}, "
                                             f"got {text!r}")
        return value
    return parse


degrees = float_in(0.0, 180.0, "an angle in degrees")


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text!r}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """H,W: two whole numbers from 1 to 4096 (the largest side a model records)."""
    values = ints(text)
    if len(values) != 2 or not all(1 <= v <= 4096 for v in values):
        raise argparse.ArgumentTypeError(f"expected H,W from 1 to 4096, got {text!r}")
    return values


def add_data_args(p, required: bool = True, folder_options: bool = True,
                  dataset_help: str | None = None):
    """``required=False`` for commands that read a model: its file records the dataset
    (``dataset_help`` says what the default is otherwise)."""
    default = ("; default: the dataset recorded in the model file" if not required
               and dataset_help is None else (dataset_help or ""))
    p.add_argument("--dataset", required=required,
                   help="mnist, fashion_mnist, gtsrb, olivetti, cifar10, npz:PATH, folder:PATH, "
                        "or a path to a folder (one sub-folder per class) or an .npz" + default)
    p.add_argument("--data-path", help="explicit file or folder for a built-in dataset "
                   "(otherwise LBCNN_DATA, the cache, then a download); recorded in the model "
                   "file")
    p.add_argument("--split", default="default", choices=["default", "paper"],
                   help="for sources without a test set: 'paper' is Olivetti's 250/150 split")
    if not folder_options:
        return
    g = p.add_argument_group("image folders and .npz files without a test split")
    g.add_argument("--resize", type=image_size, metavar="H,W",
                   help="resize every image of a folder: dataset to H x W (area resize, exact "
                        "integer arithmetic; the exported C repeats it)")
    colour = g.add_mutually_exclusive_group()
    colour.add_argument("--grayscale", action="store_true",
                        help="convert a folder: dataset's images to one gray channel (BT.601 luma)")
    colour.add_argument("--rgb", action="store_true",
                        help="convert a folder: dataset's gray images to three channels")
    g.add_argument("--test-fraction", type=fraction, metavar="F",
                   help="share of the images held out as the test split, for folders, .npz "
                        "files with x and y, and olivetti (default 0.2; olivetti 0.5)")
    g.add_argument("--test-folder", metavar="PATH",
                   help="a separate folder of test images, laid out like the training folder")


def add_trust_c(p) -> None:
    p.add_argument("--trust-c", action="store_true",
                   help="compile and run an exported C folder even when its sources differ "
                        "from the SHA-256 `lbcnn export` recorded in model.json (its code "
                        "runs on this machine: only for folders you trust)")


def say(args, message: str) -> None:
    """A note for people: on stderr, so ``--json`` output stays one parseable object."""
    print(message, file=sys.stderr)


def recorded_data_options(meta: dict) -> dict:
    """The loader options a model file records (its ``split`` and ``preprocessing``;
    files written before the ``split`` record kept the split in ``preprocessing``)."""
    from pathlib import Path

    prep = meta.get("preprocessing") or {}
    split = meta.get("split") or {}
    out = {"resize": prep.get("resize"), "grayscale": bool(prep.get("grayscale")),
           "rgb": bool(prep.get("rgb")), "data_path": meta.get("data_path"),
           "test_fraction": None, "test_folder": None, "seed": None, "split": "default"}
    kind = split.get("kind")
    if kind == "fraction":
        out["test_fraction"], out["seed"] = split.get("test_fraction"), split.get("seed")
    elif kind == "folder":
        resolved = split.get("test_folder_path")
        out["test_folder"] = resolved if resolved and Path(resolved).is_dir() \
            else split.get("test_folder")
    elif kind == "paper":
        out["split"] = "paper"
    elif not split:
        out["test_fraction"], out["test_folder"] = prep.get("test_fraction"), prep.get("test_folder")
        out["seed"] = prep.get("split_seed", meta.get("seed"))
    return out


def _recorded_location(meta: dict) -> str:
    """Where the model's dataset is now: its resolved path when that still exists (any
    working directory), else the path as it was given, relative to here."""
    from pathlib import Path

    name = meta["dataset"]
    path = meta.get("dataset_path")
    kind, _, given = name.partition(":")
    if kind not in ("folder", "npz"):
        return name
    if path and Path(path).exists():
        return f"{kind}:{path}"
    if not Path(given).expanduser().exists():
        where = f"neither at {path} (where it was) nor" if path else "not"
        raise DataError(f"the model's dataset {name} is {where} at {given} from here; pass "
                        f"--dataset PATH to say where it is now")
    return name


def load_data(args, model_meta: dict | None = None, *, seed: int | None = None,
              quiet: bool = False, warn_mismatch: bool = True, strict: bool = False):
    """The dataset the options name, or the one a model file records, with its test split.

    For a command that reads a model, the recorded preprocessing and split are used unless
    the options give their own (``--resize``/``--grayscale``/``--rgb`` replace the
    preprocessing; ``--test-fraction``/``--test-folder``/a chosen ``seed`` the split), and
    the rebuilt test split is checked against the recorded fingerprint: a mismatch is an
    error when the dataset came from the model file (the data changed since), and a loud
    warning when the options chose another on purpose (an error too with ``strict``).
    ``seed``: the test split's seed when the command chose one (None: recorded, else 0).
    Prints the dataset's notes and warnings.
    """
    from ..data import load_dataset, resolve_source, source_key

    meta = model_meta or {}
    recorded = meta.get("dataset")
    given = getattr(args, "dataset", None)
    if not given and not recorded:
        raise ConfigError("--dataset is required: the model file records no dataset")
    prep_given = getattr(args, "resize", None) is not None or \
        bool(getattr(args, "grayscale", False)) or bool(getattr(args, "rgb", False))
    split_given = getattr(args, "test_fraction", None) is not None or \
        getattr(args, "test_folder", None) is not None or seed is not None
    split = getattr(args, "split", "default")
    opts = {"resize": None, "grayscale": False, "rgb": False, "test_fraction": None,
            "test_folder": None, "seed": None, "data_path": getattr(args, "data_path", None)}
    name = given
    if recorded:
        rec = recorded_data_options(meta)
        rec_kind = recorded.split(":", 1)[0] if ":" in recorded else "builtin"
        if not given:
            name = _recorded_location(meta)
        if not given or resolve_source(given)[0] == rec_kind:
            if not prep_given:
                opts.update(resize=rec["resize"], grayscale=rec["grayscale"], rgb=rec["rgb"])
            if not split_given or (seed is not None and getattr(args, "test_fraction", None)
                                   is None and getattr(args, "test_folder", None) is None):
                opts.update(test_fraction=rec["test_fraction"], test_folder=rec["test_folder"])
            opts["seed"] = rec["seed"]
            if rec["split"] == "paper" and split == "default" and not split_given:
                split = "paper"
            if opts["data_path"] is None:
                opts["data_path"] = rec["data_path"]
    if prep_given:
        opts.update(resize=getattr(args, "resize", None),
                    grayscale=bool(getattr(args, "grayscale", False)),
                    rgb=bool(getattr(args, "rgb", False)))
    for key in ("test_fraction", "test_folder"):
        if getattr(args, key, None) is not None:
            opts.update(test_fraction=None, test_folder=None)
            opts[key] = getattr(args, key)
    if seed is not None:
        opts["seed"] = seed
    ds = load_dataset(name, opts["data_path"], split=split, seed=opts["seed"],
                      test_fraction=opts["test_fraction"], resize=opts["resize"],
                      grayscale=opts["grayscale"], rgb=opts["rgb"], test_folder=opts["test_folder"])
    if recorded and not given:
        ds.name = recorded  # as the user first gave it; ds.source_path says where it is now
    if not quiet:
        for note in ds.notes or []:
            say(args, f"note: {note}")
        for warning in ds.warnings or []:
            say(args, f"warning: {warning}")
    if recorded:
        other = bool(given) and source_key(given) != source_key(recorded, meta.get("dataset_path"))
        _check_split(args, meta, ds, on_purpose=bool(given) or prep_given or split_given,
                     quiet=quiet, warn_mismatch=warn_mismatch, strict=strict)
        if other and strict and not (meta.get("split") or {}).get("fingerprint"):
            raise DataError(f"the model was trained on {recorded}; this command would fit it "
                            f"to {ds.name}'s images")
        if other and warn_mismatch and not quiet:
            say(args, f"warning: the model was trained on {recorded}"
                      f"{' (' + meta['dataset_path'] + ')' if meta.get('dataset_path') else ''} "
                      f"but is run on {ds.name}"
                      f"{' (' + ds.source_path + ')' if ds.source_path else ''}")
    return ds


def _check_split(args, meta: dict, ds, on_purpose: bool, quiet: bool, warn_mismatch: bool,
                 strict: bool = False):
    split = meta.get("split") or {}
    want = split.get("fingerprint")
    if not want:
        if not quiet and meta.get("dataset") and "split" not in meta and \
                (meta.get("preprocessing") or {}).get("test_fraction") is not None and \
                recorded_data_options(meta)["seed"] is None:
            say(args, "warning: the model file records no split seed (written by an older "
                      "lbcnn run without --seed), so its test split cannot be rebuilt: seed 0 "
                      "is used and the test images may include images it was trained on")
        return
    got = ds.test_fingerprint()
    if got == want:
        return
    sides = (f"recorded: {meta['dataset']}, {split.get('n_test', '?')} test images, {want}; "
             f"now: {ds.name}, {len(ds.y_test)} test images, {got}")
    if strict and on_purpose:
        raise DataError(f"the model was trained on {meta['dataset']}, and this command fits it "
                        f"to its own training images; the data given is another ({sides})")
    if not on_purpose:
        raise DataError(f"the test split no longer matches the model file ({sides}): the data "
                        f"or the split changed since the model was written, so some of these "
                        f"test images may have trained it"
                        + ("" if getattr(args, "dataset", None) else
                           ". Pass --dataset (and the split options) to run on the data as it "
                           "is now, with a warning"))
    if warn_mismatch and not quiet:
        say(args, f"warning: this is not the test split the model was measured on ({sides}); "
                  f"it may hold images the model was trained on, so its accuracy is not a "
                  f"held-out figure")


def add_output_args(p, what: str = "run folder", resumable: bool = True) -> None:
    # --force starts over, --resume continues: together they contradict each other
    g = p.add_mutually_exclusive_group() if resumable else p
    g.add_argument("--force", action="store_true",
                   help=f"write into a non-empty {what}, replacing the files this command writes")
    if resumable:
        g.add_argument("--resume", action="store_true",
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
    """The recorded dataset unless --dataset names another; ``strict`` refuses any data
    but the model's own (its test split's fingerprint must match)."""
    meta = getattr(model, "meta_", {}) or {}
    ds = load_data(args, meta, warn_mismatch=not strict, strict=strict)
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
