"""``lbcnn train``: end-to-end training for the trained families (cbcnn, hybrid)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .common import (add_data_args, add_output_args, fraction, ints, load_data,
                     nonneg_float, positive_float, positive_int, say)


def _threshold(text: str):
    import argparse
    if text == "otsu":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected otsu or a number in [0, 1], got {text!r}")
    return value


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a binarized CNN (cbcnn) or the hybrid end to end")
    t.add_argument("--model", required=True, choices=["cbcnn", "hybrid"])
    add_data_args(t)
    t.add_argument("--train-size", type=positive_int,
                   help="labelled training images used, validation included (default: all)")
    t.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="share of the training images held out to choose the epoch")
    t.add_argument("--seed", type=int, default=0, help="seed for splits, initialization, batches")
    t.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
    t.add_argument("--batch-size", type=positive_int, default=100, help="images per step")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--out", help="run folder (checkpoint, model.npz, curves, summary)")
    add_output_args(t)
    t.add_argument("--json", action="store_true", help="print one JSON object at the end")
    c = t.add_argument_group("cbcnn")
    c.add_argument("--preset", default=None, help="cbcnn28 or cbcnn32 (three blocks, default by input size); "
                   "cbcnn28x4 / cbcnn32x4 (four blocks, the paper's 0.48 M / 0.59 M)")
    c.add_argument("--blocks", type=ints, help="conv widths, e.g. 64,128,128")
    c.add_argument("--dense", type=ints, help="hidden dense widths, e.g. 256")
    c.add_argument("--lr-start", type=positive_float, default=1e-3,
                   help="Adam learning rate at the first epoch")
    c.add_argument("--lr-end", type=positive_float, default=1e-4,
                   help="learning rate at the last epoch (exponential decay)")
    c.add_argument("--y-channel", action="store_true", help="RGB -> Y (BT.601)")
    c.add_argument("--equalize", action="store_true", help="per-image histogram equalization")
    c.add_argument("--standardize", action="store_true", help="per-image standardization")
    c.add_argument("--max-minutes", type=positive_float,
                   help="stop before an epoch that would overrun")
    c.add_argument("--shift", type=nonneg_float, default=0.0, help="augmentation: random shift, pixels")
    c.add_argument("--rotate", type=nonneg_float, default=0.0,
                   help="augmentation: random rotation, degrees")
    c.add_argument("--zoom", type=nonneg_float, default=0.0,
                   help="augmentation: random zoom, fraction")
    c.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="training forward pass; bf16 autocast is ~1.6x faster on CPUs with "
                        "AVX512-BF16 (evaluation stays float32)")
    h = t.add_argument_group("hybrid")
    h.add_argument("--kernels", default="paper",
                   help="paper (edge probes), lines, random, or a .npy of (2, 3, 3) +-1")
    h.add_argument("--threshold", type=_threshold, default="otsu",
                   help="input binarization: otsu or a value in [0, 1]")
    h.add_argument("--hidden", type=positive_int, default=120, help="hidden units of the MLP")
    h.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="MLP optimizer")
    h.add_argument("--lr", type=positive_float, default=1e-3, help="MLP learning rate")
    h.add_argument("--patience", type=positive_int, default=10,
                   help="epochs without validation gain before stopping")
    t.set_defaults(func=run)


def run(args) -> int:
    from ..outputs import RunLock, prepare_run_dir, strict_json
    from ..settings import resolve_device

    resolve_device(args.device)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out, the run folder to continue")
    lock = None
    if args.out:
        out = prepare_run_dir(args.out, force=args.force, resume=args.resume)
        if args.resume and args.model == "cbcnn" and not (out / "checkpoint.pt").exists():
            raise ConfigError(f"--resume: {out} holds no CBCNN checkpoint")
        if args.resume and args.model == "hybrid":
            raise ConfigError("--resume is for CBCNN runs; hybrid training is short, run it again")
        lock = RunLock(out).acquire()
    try:
        ds = load_data(args)
        if args.model == "cbcnn":
            summary = _train_cbcnn(args, ds)
        else:
            summary = _train_hybrid(args, ds)
    finally:
        if lock is not None:
            lock.release()
    if args.json:
        print(strict_json(summary))
    else:
        _print_summary(summary)
    if not args.out:
        say(args, "note: nothing was saved (no --out); add --out RUN to keep the model")
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['model']} on {summary['dataset']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    rows = [("best validation accuracy", pct(summary.get("best_val_accuracy"))),
            ("test accuracy", pct(summary.get("test_accuracy"))),
            ("epochs run", str(summary.get("epochs_run"))),
            ("chosen epoch (validation)", str(summary.get("best_epoch", "")) or "-"),
            ("training time", f"{summary.get('wall_seconds', 0.0):.1f} s")]
    if summary.get("out"):
        rows.append(("run folder", str(summary["out"])))
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def _train_cbcnn(args, ds) -> dict:
    from ..train_cbcnn import train_cbcnn

    pre = {"y_channel": args.y_channel, "equalize": args.equalize, "standardize": args.standardize,
           "input_scale": ds.input_scale}
    preset = args.preset
    if preset is None and args.blocks is None:
        preset = "cbcnn32" if ds.input_shape[0] == 32 else "cbcnn28"
    blocks, dense = args.blocks, args.dense
    if (blocks is None) != (dense is None) and preset is None:
        raise ConfigError("give both --blocks and --dense, or a --preset")
    if preset is not None and (blocks is None or dense is None):
        from ..models.cbcnn import PRESETS
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        blocks = blocks or PRESETS[preset]["blocks"]
        dense = dense or PRESETS[preset]["dense"]
    r = train_cbcnn(ds, preset=None, blocks=blocks, dense=dense, epochs=args.epochs,
                    batch_size=args.batch_size, lr_start=args.lr_start, lr_end=args.lr_end,
                    seed=args.seed, val_fraction=args.val_fraction, train_size=args.train_size,
                    preprocess=pre, out_dir=args.out, resume=args.resume, device=args.device,
                    progress=not args.json, precision=args.precision,
                    shift=args.shift, rotate=args.rotate, zoom=args.zoom,
                    max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    return {"model": "cbcnn", "dataset": ds.name, "blocks": list(blocks), "dense": list(dense),
            "preprocess": pre, "seed": args.seed, "epochs": args.epochs,
            "precision": args.precision,
            "augment": {"shift": args.shift, "rotate": args.rotate, "zoom": args.zoom},
            "epochs_run": r["epochs_run"], "best_epoch": r["best_epoch"],
            "best_val_accuracy": r["best_val_accuracy"], "test_accuracy": r["test_accuracy"],
            "wall_seconds": r["wall_seconds"], "stopped_by_time_budget": r["stopped_by_time_budget"],
            "out": args.out}


def _train_hybrid(args, ds) -> dict:
    from ..models.hybrid import Hybrid, save_hybrid

    kernels = args.kernels
    if kernels not in ("paper", "lines", "random"):
        path = Path(kernels)
        if not path.exists():
            raise ConfigError(f"--kernels: no such file {path}")
        try:
            kernels = list(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise ConfigError(f"--kernels: cannot read {path}: {exc}") from None
    threshold = args.threshold
    tr, va = ds.split(args.train_size, args.val_fraction, args.seed)
    model = Hybrid(kernels=kernels, threshold=threshold, hidden=args.hidden,
                   optimizer=args.optimizer, lr=args.lr, epochs=args.epochs,
                   batch_size=args.batch_size, patience=args.patience, random_state=args.seed,
                   progress=not args.json)
    model.fit(ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va])
    test_acc = model.score(ds.x_test, ds.y_test)  # the one look at the test set
    summary = {"model": "hybrid", "dataset": ds.name, "kernels": args.kernels,
               "threshold": threshold, "hidden": args.hidden, "seed": args.seed,
               "train_size": int(len(tr) + len(va)), "fit_size": int(len(tr)), "val_size": int(len(va)),
               "epochs_run": len(model.history_), "best_val_accuracy": model.best_val_accuracy_,
               "test_accuracy": test_acc, "wall_seconds": model.fit_seconds_, "out": args.out}
    if args.out:
        from ..outputs import write_json
        out = Path(args.out)
        save_hybrid(model, out / "model.npz", **ds.provenance(), test_accuracy=test_acc,
                    val_accuracy=model.best_val_accuracy_, seed=args.seed)
        write_json(out / "summary.json", summary)
        write_json(out / "history.json", model.history_)
    return summary
