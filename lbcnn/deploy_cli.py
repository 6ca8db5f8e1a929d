"""The deployment subcommands: ``finetune``, ``quantize``, ``export``, ``info``."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError

# config keys that save_lbcnn writes itself; everything else is carried over
_OWN_KEYS = {"format", "version", "family", "input_shape", "filters", "nl", "input_scale", "C",
             "classes", "head"}


def resolve_model_path(text: str) -> Path:
    p = Path(text)
    if p.is_dir():
        if not (p / "model.npz").exists():
            raise DataError(f"run folder {p} has no model.npz")
        return p / "model.npz"
    if not p.exists():
        raise DataError(f"model file not found: {p}")
    return p


def load_model_arg(text: str):
    from .evaluate import load_any
    path = resolve_model_path(text)
    return load_any(path), path


def _carried_meta(model) -> dict:
    return {k: v for k, v in getattr(model, "meta_", {}).items() if k not in _OWN_KEYS}


def _dataset_for(model, args):
    from .data import load_dataset
    ds = load_dataset(args.dataset, args.data_path, split=args.split, seed=args.seed)
    shape = tuple(model.body_.input_shape)
    if tuple(ds.input_shape) != shape:
        raise DataError(f"model expects images {shape} but {ds.name} has {tuple(ds.input_shape)}")
    if abs(ds.input_scale - model.body_.input_scale) > 1e-12:
        raise DataError(f"model input scale {model.body_.input_scale:.6g} differs from "
                        f"{ds.name}'s {ds.input_scale:.6g}")
    return ds


def _acc(model, x, y) -> float:
    return float(np.mean(model.predict(x) == y)) if len(y) else float("nan")


def search_indices(ds, model):
    """Training images the source run's search touched (fit + validation), or None."""
    meta = getattr(model, "meta_", {})
    if meta.get("dataset") != ds.name or meta.get("train_size") is None:
        return None
    tr, va = ds.split(int(meta["train_size"]), float(meta.get("val_fraction", 0.1)),
                      int(meta.get("seed", 0)))
    return np.union1d(tr, va)


def finetune_split(ds, model, val_fraction: float, seed: int, log=None):
    """(train, val, disjoint): train is the full training set minus val;
    ``disjoint`` says how val avoids the search's images ("groups", "images", ...).

    When the model came from a search on a subset, its kernels and ELM head
    have seen those images, so validation is carved only from images the
    search never touched (whole GTSRB tracks, so no near-duplicate frames
    leak). Otherwise it is ``ds.split(None, val_fraction, seed)``.
    """
    from .data.splits import train_val_split

    used = search_indices(ds, model)
    n = len(ds.y_train)
    if used is not None:
        free = np.ones(n, dtype=bool)
        free[used] = False
        n_val = int(round(n * val_fraction))
        levels = [("images", free)]
        if ds.groups_train is not None:
            levels.insert(0, ("groups", free & ~np.isin(ds.groups_train, ds.groups_train[used])))
        for level, mask in levels:
            pool = np.flatnonzero(mask)
            if len(pool) <= 2 * n_val or n_val == 0:
                continue
            if level == "images" and ds.groups_train is not None and log:
                log("the search touched almost every track: validation holds no image the "
                    "search used, but may hold other frames of the same tracks")
            groups = ds.groups_train[pool] if ds.groups_train is not None else None
            _, v = train_val_split(ds.y_train[pool], None, n_val / len(pool), seed, groups)
            va = np.sort(pool[v])
            tr = np.setdiff1d(np.arange(n), va, assume_unique=True)
            return tr, va, level
        if log:
            log("the search used (almost) all training images: validation overlaps them")
    tr, va = ds.split(None, val_fraction, seed)
    return tr, va, "yes (no search subset)" if used is None else "no"


def cmd_finetune(args) -> int:
    from .heads.finetune import finetune_head
    from .models.lbcnn import save_lbcnn

    model, src = load_model_arg(args.model)
    if getattr(model, "head_meta_", {}).get("kind") == "fixed":
        raise ConfigError("fine-tune the float model, then quantize it")
    ds = _dataset_for(model, args)
    log = None if args.json else (lambda m: print(m, file=sys.stderr))
    tr, va, disjoint = finetune_split(ds, model, args.val_fraction, args.seed, log)
    res = finetune_head(model, ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va],
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        patience=args.patience, seed=args.seed, elm_full=args.elm_full,
                        weight_decay=args.weight_decay, shift=args.shift,
                        lr_schedule=args.lr_schedule, refit_full=args.refit_full,
                        rotate=args.rotate, zoom=args.zoom, elastic=args.elastic,
                        elastic_sigma=args.elastic_sigma,
                        in_memory=False if args.stream else None, progress=not args.json, log=log)
    test_acc = _acc(model, ds.x_test, ds.y_test)
    summary = {"dataset": ds.name, "source": str(src), "out": args.out,
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
    save_lbcnn(model, args.out, **meta)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"fine-tuned {summary['train_size']:,} images, best epoch {res.best_epoch} of "
              f"{res.epochs_run}: val {100 * res.val_accuracy_start:.2f} % -> "
              f"{100 * res.val_accuracy:.2f} %, test {100 * test_acc:.2f} % "
              f"({res.seconds:.1f} s, features {res.feature_mode})")
        if res.refit_full:
            print(f"refit: {res.best_epoch} epochs on train + validation "
                  f"({summary['train_size'] + summary['val_size']:,} images); test is of the refit head")
        print(f"model: {args.out}")
    return 0


def cmd_quantize(args) -> int:
    from .heads.quantize import apply_quantization, training_feature_mean
    from .models.lbcnn import save_lbcnn

    model, src = load_model_arg(args.model)
    ds = _dataset_for(model, args)
    # the same validation split ``finetune`` held out (disjoint from the search's images)
    tr, va, _ = finetune_split(ds, model, args.val_fraction, args.seed)
    xv, yv = ds.x_train[va], ds.y_train[va]
    val_seen = bool(getattr(model, "meta_", {}).get("finetune", {}).get("refit_full"))
    before = {"val_accuracy": _acc(model, xv, yv), "test_accuracy": _acc(model, ds.x_test, ds.y_test)}
    # bias correction uses training images only (never validation or test)
    mu = None if args.no_bias_correction else training_feature_mean(model, ds.x_train[tr])
    apply_quantization(model, args.bits, args.per_class, args.pow2, mu)
    after = {"val_accuracy": _acc(model, xv, yv), "test_accuracy": _acc(model, ds.x_test, ds.y_test)}
    meta = _carried_meta(model)
    meta.update(dataset=ds.name, val_accuracy=after["val_accuracy"],
                test_accuracy=after["test_accuracy"],
                quantize={"bits": args.bits, "per_class": args.per_class, "pow2": args.pow2,
                          "bias_correction_images": 0 if mu is None else int(len(tr)),
                          "source": str(src), "before": before, "after": after,
                          "val_size": int(len(va)), "seed": args.seed})
    save_lbcnn(model, args.out, **meta)
    summary = {"dataset": ds.name, "source": str(src), "out": args.out, "head": model.head_meta_,
               "before": before, "after": after, "val_size": int(len(va)),
               "val_seen_in_training": val_seen, "n_test": int(len(ds.y_test)), "file_bytes": Path(args.out).stat().st_size}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.bits}-bit head ({model.head_meta_['scale']}"
              f"{', pow2' if args.pow2 else ''}): val {100 * before['val_accuracy']:.2f} % -> "
              f"{100 * after['val_accuracy']:.2f} %, test {100 * before['test_accuracy']:.2f} % -> "
              f"{100 * after['test_accuracy']:.2f} %")
        if val_seen:
            print("note: this head was refit on train + validation, so validation is not held out")
        print(f"model: {args.out} ({summary['file_bytes']:,} bytes)")
    return 0


# built-in datasets with one raw channel (a CBCNN's y_channel is then a pass-through)
_GRAY_DATASETS = {"mnist", "fashion_mnist", "olivetti"}


def _raw_channels(model, path):
    """Input channels of the ONNX graph: only a CBCNN with ``y_channel`` needs this
    (3 = RGB, unless the file says it was trained on a gray built-in dataset)."""
    from .deploy.onnx_export import is_cbcnn

    if not is_cbcnn(model) or not model.preprocess.y_channel:
        return None
    from .io import load_model_file
    config, _ = load_model_file(path)
    return 1 if config.get("dataset") in _GRAY_DATASETS else 3


def cmd_export(args) -> int:
    model, src = load_model_arg(args.model)
    t0 = time.perf_counter()
    if args.format == "h5":
        from .deploy.keras_export import export_h5
        from .deploy.onnx_export import is_cbcnn, is_hybrid
        if is_cbcnn(model) or is_hybrid(model):
            raise ConfigError(f"Keras .h5 export is for LB-CNN models; export a "
                              f"{type(model).__name__} with --format onnx")
        path = export_h5(model, args.out)
    else:
        from .deploy.onnx_export import export_onnx
        path = export_onnx(model, args.out, _raw_channels(model, src))
    out = {"format": args.format, "source": str(src), "out": str(path),
           "bytes": path.stat().st_size, "seconds": time.perf_counter() - t0}
    print(json.dumps(out) if args.json else f"wrote {path} ({out['bytes']:,} bytes)")
    return 0


def cmd_info(args) -> int:
    from .deploy.accounting import account, render

    model, src = load_model_arg(args.model)
    info = account(model, src, sizes=not args.no_sizes)
    info["model"] = str(src)
    if args.json:
        print(json.dumps(info))
    else:
        from rich.console import Console
        Console().print(render(info))
    return 0
