"""The deployment subcommands: ``finetune``, ``quantize``, ``export``, ``info``."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..outputs import strict_json
from ..report import print_table
from .common import (add_data_args, batch_int, bit_width, fraction, load_data, nonneg_float,
                     nonneg_int, positive_float, positive_int, say, seed_int)

# config keys that save_lbcnn writes itself; everything else is carried over
_OWN_KEYS = {"format", "version", "family", "input_shape", "filters", "nl", "input_scale", "C",
             "classes", "head"}


def add_parser(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune the output layer (kernels frozen) with Adam")
    f.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder holding model.npz, or a model file")
    add_data_args(f, required=False)
    f.add_argument("--epochs", type=positive_int, default=20, help="most epochs to run")
    f.add_argument("--batch-size", type=batch_int, default=128, help="images per Adam step")
    f.add_argument("--lr", type=positive_float, default=1e-4,
                   help="Adam learning rate (on standardized features)")
    f.add_argument("--patience", type=positive_int, default=3,
                   help="epochs without validation gain before stopping")
    f.add_argument("--weight-decay", type=nonneg_float, default=0.0,
                   help="decoupled weight decay (AdamW) on the standardized head; 0 = Adam")
    f.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="cosine anneals the rate towards 0 over --epochs")
    f.add_argument("--refit-full", action="store_true",
                   help="after choosing the epoch on validation, retrain that many epochs from "
                        "the same start on train + validation (the saved head has then seen it)")
    f.add_argument("--shift", type=nonneg_int, default=0,
                   help="augment: move each training image by up to N pixels, fresh each epoch "
                        "(features recomputed per epoch); 0 = off")
    f.add_argument("--rotate", type=nonneg_float, default=0.0,
                   help="augment: random rotations up to this many degrees (with --shift/--zoom)")
    f.add_argument("--zoom", type=nonneg_float, default=0.0,
                   help="augment: random zoom factor in [1 - Z, 1 + Z]")
    f.add_argument("--elastic", type=nonneg_float, default=0.0, metavar="ALPHA",
                   help="augment: elastic distortion of up to ALPHA pixels before smoothing "
                        "(Simard et al.; 34 with --elastic-sigma 4 for MNIST)")
    f.add_argument("--elastic-sigma", type=positive_float, default=4.0,
                   help="smoothing of the elastic field, pixels")
    f.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="share of the training images held out to choose the epoch")
    f.add_argument("--seed", type=seed_int, default=0, help="seed for the split and the batches")
    f.add_argument("--elm-full", action="store_true",
                   help="re-solve the ELM head on the full training split before fine-tuning")
    f.add_argument("--stream", action="store_true", help="never hold features in memory")
    f.add_argument("--out", required=True, help="output model file; its history (.json/.csv) "
                   "and curves (.png) are written beside it")
    f.add_argument("--json", action="store_true", help="print one JSON object at the end")
    f.set_defaults(func=cmd_finetune)

    q = sub.add_parser("quantize", help="signed n-bit fixed-point head")
    q.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder or a model file")
    add_data_args(q, required=False)
    q.add_argument("--bits", type=bit_width, default=8, help="bits per head weight (2..16)")
    q.add_argument("--per-class", action="store_true", help="one scale per output class")
    q.add_argument("--pow2", action="store_true", help="power-of-two scales (shifts in hardware)")
    q.add_argument("--clip", choices=("output", "mse", "absmax"), default="output",
                   help="weight scale: the clipping level with the least logit error on training "
                        "features (output), the least weight error (mse), or the largest weight "
                        "(absmax) (default: %(default)s)")
    q.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                   help="gptq: round feature by feature, cancelling each rounding error through "
                        "the training features' correlations (GPTQ); nearest: round each weight "
                        "alone (default: %(default)s)")
    q.add_argument("--no-bias-correction", action="store_true",
                   help="do not fold the weights' mean rounding error (over the training "
                        "images' features) into the bias")
    q.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="validation share, the same split finetune held out")
    q.add_argument("--seed", type=seed_int, default=0, help="seed of that split")
    q.add_argument("--out", required=True, help="output model file")
    q.add_argument("--json", action="store_true", help="print one JSON object at the end")
    q.set_defaults(func=cmd_quantize)

    x = sub.add_parser("export", help="write a model as Keras .h5, ONNX or integer-only C99")
    x.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder or a model file")
    x.add_argument("--format", required=True, choices=["h5", "onnx", "c"],
                   help="h5 (Keras 3, the paper's layout), onnx, or c (integer-only C99 folder)")
    x.add_argument("--out", required=True, help="output file (h5, onnx) or folder (c)")
    x.add_argument("--bits", type=bit_width, default=8,
                   help="c: head bits used when the model's head is still float")
    x.add_argument("--json", action="store_true", help="print one JSON object at the end")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="bit accounting: per-layer bits, MACs, file sizes")
    i.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder or a model file")
    i.add_argument("--no-sizes", action="store_true", help="skip the export size measurement")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=cmd_info)


def load_model_arg(text: str):
    from ..io.artefacts import load_any
    from ..io.native import resolve_model_path
    path = resolve_model_path(text)
    return load_any(path), path


def _carried_meta(model) -> dict:
    return {k: v for k, v in getattr(model, "meta_", {}).items() if k not in _OWN_KEYS}


def _dataset_for(model, args, strict: bool = False):
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


def _acc(model, x, y) -> float:
    return float(np.mean(model.predict(x) == y)) if len(y) else float("nan")


def cmd_finetune(args) -> int:
    from ..data.splits import finetune_split
    from ..train.head_finetune import finetune_head
    from ..models.lbcnn import save_lbcnn

    from ..outputs import check_out_file
    out = check_out_file(args.out)
    model, src = load_model_arg(args.model)
    _require_lbcnn(model, "finetune")
    if getattr(model, "head_meta_", {}).get("kind") == "fixed":
        raise ConfigError("fine-tune the float model, then quantize it")
    ds = _dataset_for(model, args)
    log = None if args.json else (lambda m: print(m, file=sys.stderr))
    tr, va, disjoint = finetune_split(ds, model, args.val_fraction, args.seed, log)
    used = getattr(model, "meta_", {}).get("train_size")
    if used and int(used) < len(tr):
        say(args, f"note: the search fitted {int(used):,} images; fine-tuning trains on "
                  f"{len(tr):,} and validates on {len(va):,} images it never used")
    if disjoint == "no":
        say(args, "warning: validation overlaps the images the search used, so the chosen "
                  "epoch is optimistic")
    res = finetune_head(model, ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va],
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        patience=args.patience, seed=args.seed, elm_full=args.elm_full,
                        weight_decay=args.weight_decay, shift=args.shift,
                        lr_schedule=args.lr_schedule, refit_full=args.refit_full,
                        rotate=args.rotate, zoom=args.zoom, elastic=args.elastic,
                        elastic_sigma=args.elastic_sigma,
                        in_memory=False if args.stream else None, progress=not args.json, log=log)
    test_acc = _acc(model, ds.x_test, ds.y_test)
    summary = {"dataset": ds.name, "source": str(src), "out": str(out),
               "train_size": int(len(tr)), "val_size": int(len(va)), "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "patience": args.patience,
               "weight_decay": args.weight_decay, "shift": args.shift, "rotate": args.rotate, "zoom": args.zoom,
               "elastic": args.elastic, "elastic_sigma": args.elastic_sigma,
               "lr_schedule": args.lr_schedule, "val_disjoint_from_search": disjoint,
               "seed": args.seed, "elm_full": bool(args.elm_full), **res.as_dict(),
               "test_accuracy": test_acc, "n_test": int(len(ds.y_test)),
               "test_accuracy_in_source_file": getattr(model, "meta_", {}).get("test_accuracy")}
    meta = _carried_meta(model)
    meta.update(dataset=ds.name, val_accuracy=res.val_accuracy, test_accuracy=test_acc,
                finetune={k: v for k, v in summary.items() if k not in ("history", "out")})
    save_lbcnn(model, out, **meta)
    _write_finetune_history(out, res.history, ds.name)
    if args.json:
        print(strict_json(summary))
    else:
        chosen = (f"epoch {res.best_epoch} of {res.epochs_run}" if res.best_epoch else
                  f"none of {res.epochs_run} beat the starting head: head unchanged")
        rows = [("images", f"{summary['train_size']:,} train + {summary['val_size']:,} validation"),
                ("chosen epoch (validation)", chosen),
                ("validation accuracy", f"{100 * res.val_accuracy_start:.2f} % -> "
                                        f"{100 * res.val_accuracy:.2f} %"),
                ("test accuracy", f"{100 * test_acc:.2f} % (n={len(ds.y_test):,})"),
                ("time", f"{res.seconds:.1f} s (features {res.feature_mode})")]
        if res.refit_full:
            rows.append(("refit", f"{res.best_epoch} epochs on train + validation; the test "
                                  f"figure is the refit head's"))
        stem = out.with_suffix("")
        rows += [("model", str(out)), ("history / curves",
                                       f"{stem.name}.history.json/.csv, {stem.name}.curves.png")]
        print_table(f"head fine-tuning on {ds.name}", rows)
    return 0


def _require_lbcnn(model, command: str) -> None:
    from ..models.lbcnn import LBCNN
    if not isinstance(model, LBCNN):
        raise ConfigError(f"{command} works on LB-CNN models (an ELM head); this is a "
                          f"{type(model).__name__}")


def _write_finetune_history(out: Path, history: list[dict], dataset: str) -> None:
    """Epoch 0 is the starting (ELM) head; epochs 1.. are Adam epochs."""
    from ..outputs import write_csv, write_json
    from ..report import plot_finetune
    stem = out.with_suffix("")
    write_json(stem.with_name(stem.name + ".history.json"), history)
    write_csv(stem.with_name(stem.name + ".history.csv"), history)
    plot_finetune(history, stem.with_name(stem.name + ".curves.png"),
                  f"head fine-tuning on {dataset}: validation accuracy per epoch")


def cmd_quantize(args) -> int:
    from ..data.splits import finetune_split
    from ..heads.quantize import FEATURE_SAMPLE, apply_quantization, training_feature_stats
    from ..models.lbcnn import save_lbcnn

    from ..outputs import check_out_file
    out = check_out_file(args.out)
    model, src = load_model_arg(args.model)
    _require_lbcnn(model, "quantize")
    ds = _dataset_for(model, args, strict=True)
    # the same validation split ``finetune`` held out (disjoint from the search's images)
    tr, va, _ = finetune_split(ds, model, args.val_fraction, args.seed)
    xv, yv = ds.x_train[va], ds.y_train[va]
    val_seen = bool(getattr(model, "meta_", {}).get("finetune", {}).get("refit_full"))
    before = {"val_accuracy": _acc(model, xv, yv), "test_accuracy": _acc(model, ds.x_test, ds.y_test)}
    # bias correction uses training images only (never validation or test)
    mu, sample, gram = None, None, None
    gptq = args.rounding == "gptq"
    if args.clip == "output" or gptq or not args.no_bias_correction:  # one pass serves all
        mu, sample, *rest = training_feature_stats(
            model, ds.x_train[tr], sample=FEATURE_SAMPLE if args.clip == "output" else 0,
            gram=gptq)
        gram = rest[0] if gptq else None
    if args.no_bias_correction:
        mu = None
    apply_quantization(model, args.bits, args.per_class, args.pow2, mu, args.clip, sample,
                       gram, args.rounding)
    after = {"val_accuracy": _acc(model, xv, yv), "test_accuracy": _acc(model, ds.x_test, ds.y_test)}
    meta = _carried_meta(model)
    meta.update(dataset=ds.name, val_accuracy=after["val_accuracy"],
                test_accuracy=after["test_accuracy"],
                quantize={"bits": args.bits, "per_class": args.per_class, "pow2": args.pow2,
                          "clip": args.clip, "rounding": args.rounding,
                          "bias_correction_images": 0 if mu is None else int(len(tr)),
                          "source": str(src), "before": before, "after": after,
                          "val_size": int(len(va)), "seed": args.seed})
    save_lbcnn(model, out, **meta)
    summary = {"dataset": ds.name, "source": str(src), "out": str(out), "head": model.head_meta_,
               "before": before, "after": after, "val_size": int(len(va)),
               "val_seen_in_training": val_seen, "n_test": int(len(ds.y_test)),
               "file_bytes": out.stat().st_size}
    if args.json:
        print(strict_json(summary))
    else:
        if val_seen:
            say(args, "warning: this head was refit on train + validation, so the validation "
                      "figures below are not held out")
        print_table(f"{args.bits}-bit head on {ds.name}", [
            ("scale", f"{model.head_meta_['scale']}{', power of two' if args.pow2 else ''}"),
            ("bias correction", "off" if mu is None else f"on ({len(tr):,} training images)"),
            ("validation accuracy", f"{100 * before['val_accuracy']:.2f} % -> "
                                    f"{100 * after['val_accuracy']:.2f} % (n={len(va):,})"),
            ("test accuracy", f"{100 * before['test_accuracy']:.2f} % -> "
                              f"{100 * after['test_accuracy']:.2f} % (n={len(ds.y_test):,})"),
            ("model", f"{out} ({summary['file_bytes']:,} bytes)")])
    return 0


# built-in datasets with one raw channel (a CBCNN's y_channel is then a pass-through)
_GRAY_DATASETS = {"mnist", "fashion_mnist", "olivetti"}


def _raw_channels(model, path):
    """Input channels of the ONNX graph: only a CBCNN with ``y_channel`` needs this
    (3 = RGB, unless the file says it was trained on a gray built-in dataset)."""
    from ..deploy.onnx_export import is_cbcnn

    if not is_cbcnn(model) or not model.preprocess.y_channel:
        return None
    from ..io.native import load_model_file
    config, _ = load_model_file(path)
    return 1 if config.get("dataset") in _GRAY_DATASETS else 3


def cmd_export(args) -> int:
    from ..outputs import check_out_file, prepare_run_dir
    if args.format == "c":
        prepare_run_dir(args.out, force=True)  # regenerating a C folder in place is expected
    else:
        check_out_file(args.out)
    model, src = load_model_arg(args.model)
    if args.format == "c":  # integer-only C99
        _note_c_quantization(model, args)
        from ..deploy.c_export import cli_export_c
        rc = cli_export_c(args)
        _write_c_provenance(model, Path(args.out))
        return rc
    t0 = time.perf_counter()
    if args.format == "h5":
        from ..deploy.keras_export import export_h5
        from ..deploy.onnx_export import is_cbcnn, is_hybrid
        if is_cbcnn(model) or is_hybrid(model):
            raise ConfigError(f"Keras .h5 export is for LB-CNN models; export a "
                              f"{type(model).__name__} with --format onnx")
        path = export_h5(model, args.out)
    else:
        from ..deploy.onnx_export import export_onnx
        path = export_onnx(model, args.out, _raw_channels(model, src))
    out = {"format": args.format, "source": str(src), "out": str(path),
           "bytes": path.stat().st_size, "seconds": time.perf_counter() - t0}
    print(strict_json(out) if args.json else f"wrote {path} ({out['bytes']:,} bytes)")
    return 0


_PROVENANCE_KEYS = ("dataset", "class_names", "preprocessing", "label_values", "seed",
                    "val_fraction", "train_size", "input_color")


def _write_c_provenance(model, out: Path) -> None:
    """model.json beside the C sources: what `lbcnn evaluate C_FOLDER` needs to find the data."""
    from ..outputs import write_json
    meta = getattr(model, "meta_", {}) or {}
    record = {k: meta[k] for k in _PROVENANCE_KEYS if meta.get(k) is not None}
    classes = getattr(model, "classes_", None)
    if classes is not None:
        record["classes"] = [int(c) for c in classes]
    write_json(out / "model.json", record)


def _note_c_quantization(model, args) -> None:
    """A float LB-CNN head becomes n-bit integers in C: say so, with what it costs on validation."""
    from ..models.lbcnn import LBCNN
    if not isinstance(model, LBCNN) or getattr(model, "head_meta_", {}).get("kind") == "fixed":
        return
    bits = getattr(args, "bits", 8)
    say(args, f"note: the model's head is float32; the C engine stores it as {bits}-bit "
              f"integers (per-tensor scale, no bias correction). `lbcnn quantize` first gives "
              f"a bias-corrected head")
    meta = getattr(model, "meta_", {}) or {}
    if not meta.get("dataset"):
        return
    from ..data.splits import finetune_split
    from ..engine.plan import compile_plan, dequantized_model
    from ..errors import LbcnnError
    try:
        args.dataset, args.data_path, args.split = None, None, "default"
        args.seed = int(meta.get("seed", 0))
        ds = _dataset_for(model, args)
    except LbcnnError as exc:
        say(args, f"note: validation accuracy not measured ({exc})")
        return
    _, va, _ = finetune_split(ds, model, float(meta.get("val_fraction", 0.1)), args.seed)
    ref = dequantized_model(model, compile_plan(model, bits=bits))
    xv, yv = ds.x_train[va], ds.y_train[va]
    say(args, f"validation accuracy ({ds.name}, n={len(va):,}): float "
              f"{100 * _acc(model, xv, yv):.2f} %, {bits}-bit C head {100 * _acc(ref, xv, yv):.2f} %")


def cmd_info(args) -> int:
    from ..deploy.accounting import account, render

    model, src = load_model_arg(args.model)
    info = account(model, src, sizes=not args.no_sizes)
    info["model"] = str(src)
    if args.json:
        print(strict_json(info))
    else:
        from rich.console import Console
        Console().print(render(info))
    return 0
