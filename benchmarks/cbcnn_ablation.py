"""One-at-a-time ablation of the CBCNN training recipe (issue 16), on validation only.

Each run trains the same network with the baseline settings (``--recipe paper``: exponential
decay 1e-3 -> 1e-4, no flip / erase / distillation) plus ONE change (or the whole provisional
``fast`` recipe), on a short schedule, and reports its best validation accuracy and wall time
(the float teacher's time included for distillation). The test set is never read: every run
gets the dataset with its test split removed, so this script can choose the ``fast`` recipe,
the epoch count and the teacher without touching test information.

Run by hand (long; not part of the test suite), e.g. from the repository root:

    LBCNN_DATA=../shared/data python benchmarks/cbcnn_ablation.py --dataset fashion_mnist \\
        --epochs 6 > benchmarks/cbcnn_ablation_fashion.json
    LBCNN_DATA=../shared/data python benchmarks/cbcnn_ablation.py --dataset gtsrb \\
        --preset cbcnn32 --y-channel --equalize --standardize --epochs 10 \\
        --base shift=2,rotate=10,zoom=0.1 > benchmarks/cbcnn_ablation_gtsrb.json

Prints one JSON object: the settings, the baseline, and per option its validation accuracy,
best epoch, the difference to the baseline (percentage points) and seconds. ``--options``
picks a subset (names as listed by ``--list``); ``--base`` adds settings to every run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# one change each against the baseline; values are train_cbcnn keyword arguments
OPTIONS = {
    "flip": {"flip": True},
    "erase0.25": {"erase": 0.25},
    "erase0.5": {"erase": 0.5},
    "cosine": {"lr_schedule": "cosine"},
    "onecycle": {"lr_schedule": "onecycle"},
    "onecycle3e-3": {"lr_schedule": "onecycle", "lr_start": 3e-3, "lr_end": 1e-5},
    "warmup1": {"warmup": 1.0},
    "lr3e-3": {"lr_start": 3e-3},
    "batch50": {"batch_size": 50},
    "batch200": {"batch_size": 200},
    "shift1": {"shift": 1.0},
    "distill0.5T4": {"distill": True, "distill_weight": 0.5, "temperature": 4.0},
    "distill0.9T4": {"distill": True, "distill_weight": 0.9, "temperature": 4.0},
    "distill0.5T2": {"distill": True, "distill_weight": 0.5, "temperature": 2.0},
    "ema0.997": {"ema": 0.997},
    "ema0.999": {"ema": 0.999},
    "recipe:fast": "fast",
}


def _base_settings(text: str | None) -> dict:
    """``shift=2,rotate=10`` -> {"shift": 2.0, "rotate": 10.0}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        if key not in ("shift", "rotate", "zoom", "batch_size", "lr_start", "lr_end"):
            raise SystemExit(f"--base: unsupported setting {key!r}")
        out[key] = int(value) if key == "batch_size" else float(value)
    return out


def _relative_to_cwd(path: Path) -> str:
    """Relative where it can be, so that a saved report names no machine's folders."""
    path, cwd = path.resolve(), Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-path")
    p.add_argument("--epochs", type=int, default=6, help="short schedule for every run")
    p.add_argument("--train-size", type=int, help="labelled images, validation included")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", help="cbcnn28 / cbcnn32 / ... (default by input size)")
    p.add_argument("--blocks", help="conv widths, e.g. 64,128,128 (with --dense)")
    p.add_argument("--dense", help="dense widths, e.g. 256 ('' for none)")
    p.add_argument("--y-channel", action="store_true")
    p.add_argument("--equalize", action="store_true")
    p.add_argument("--standardize", action="store_true")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--base", help="settings added to every run, e.g. shift=2,rotate=10,zoom=0.1")
    p.add_argument("--options", help="comma-separated subset of the options (default: all); "
                   "join options with '+' to run them together, e.g. onecycle3e-3+erase0.25")
    p.add_argument("--skip-baseline", action="store_true",
                   help="do not train the baseline (no deltas), e.g. for an equal-time rerun")
    p.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    p.add_argument("--list", action="store_true", help="list the options and exit")
    args = p.parse_args(argv)
    if args.list:
        print(json.dumps({k: v for k, v in OPTIONS.items()}, indent=1))
        return 0

    import numpy as np
    import torch

    from lbcnn.data import Dataset, load_dataset
    from lbcnn.errors import LbcnnError
    from lbcnn.data.augment import FLIP_SAFE
    from lbcnn.models.cbcnn import PRESETS
    from lbcnn.train.cbcnn import train_cbcnn
    from lbcnn.train.cbcnn_recipe import recipe_settings

    full = load_dataset(args.dataset, args.data_path, seed=args.seed)
    # the test split is removed: nothing chosen here can depend on it
    ds = Dataset(full.name, full.x_train, full.y_train, full.x_train[:0], full.y_train[:0],
                 full.n_classes, input_scale=full.input_scale, groups_train=full.groups_train,
                 class_names=full.class_names, preprocessing=full.preprocessing,
                 label_values=full.label_values)
    preset = args.preset or ("cbcnn32" if ds.input_shape[0] == 32 else "cbcnn28")
    blocks = tuple(int(v) for v in args.blocks.split(",")) if args.blocks else PRESETS[preset]["blocks"]
    dense = (tuple(int(v) for v in args.dense.split(",") if v.strip()) if args.dense is not None
             else PRESETS[preset]["dense"])
    pre = {"y_channel": args.y_channel, "equalize": args.equalize,
           "standardize": args.standardize, "input_scale": ds.input_scale}
    chosen = list(OPTIONS) if not args.options else args.options.split(",")
    unknown = [part for o in chosen for part in o.split("+") if part not in OPTIONS]
    if unknown:
        raise SystemExit(f"unknown options {unknown}; see --list")
    if ds.name not in FLIP_SAFE:  # refused for this dataset (mirroring changes the class)
        chosen = [o for o in chosen if "flip" not in o.split("+")]
    base = {**recipe_settings("paper", ds.name), **_base_settings(args.base)}
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cbcnn_ablation_"))

    def run(name: str, change) -> dict:
        settings = dict(base)
        for part in change:
            if isinstance(part, str):          # a whole recipe, on top of --base
                settings.update(recipe_settings(part, ds.name))
            else:
                settings.update(part)
        out = root / name.replace(":", "_")
        t0 = time.perf_counter()
        try:
            r = train_cbcnn(ds, preset=None, blocks=blocks, dense=dense, epochs=args.epochs,
                            train_size=args.train_size, val_fraction=args.val_fraction,
                            seed=args.seed, preprocess=pre, precision=args.precision,
                            out_dir=out, progress=False, **settings)
        except LbcnnError as exc:  # e.g. a 1-epoch warm-up in a 1-epoch run: reported, not fatal
            if name == "baseline":
                raise
            print(json.dumps({"option": name, "skipped": str(exc)}), file=sys.stderr, flush=True)
            return {"option": name, "settings": settings, "skipped": str(exc)}
        rec = {"option": name, "settings": settings, "val_accuracy": r["best_val_accuracy"],
               "best_epoch": r["best_epoch"], "val_curve": [h["val_accuracy"] for h in r["history"]],
               "wall_seconds": round(r["wall_seconds"], 1),
               "elapsed_seconds": round(time.perf_counter() - t0, 1)}
        if "raw_val_accuracy" in r["history"][0]:  # a weight-average run: the trained net too
            raw = [h["raw_val_accuracy"] for h in r["history"]]
            rec["raw_val_accuracy"] = max(raw)
            rec["raw_best_epoch"] = raw.index(max(raw)) + 1
            rec["raw_val_curve"] = raw
        if r.get("teacher"):
            rec["teacher_val_accuracy"] = r["teacher"]["val_accuracy"]
            rec["teacher_seconds"] = round(r["teacher"]["wall_seconds"], 1)
        print(json.dumps({k: rec[k] for k in ("option", "val_accuracy", "best_epoch",
                                               "raw_val_accuracy", "wall_seconds") if k in rec}),
              file=sys.stderr, flush=True)
        return rec

    baseline = None if args.skip_baseline else run("baseline", [])
    runs = []
    for name in chosen:
        rec = run(name, [OPTIONS[part] for part in name.split("+")])
        if "skipped" not in rec and baseline is not None:
            rec["delta_val_pp"] = round(100 * (rec["val_accuracy"] - baseline["val_accuracy"]), 2)
        runs.append(rec)
    report = {"dataset": ds.name, "epochs": args.epochs, "train_size": args.train_size,
              "val_fraction": args.val_fraction, "seed": args.seed, "blocks": list(blocks),
              "dense": list(dense), "preprocess": pre, "precision": args.precision,
              "base": base, "threads": torch.get_num_threads(),
              "note": "validation accuracy only (test split removed); one seed, so differences "
                      "below ~2 validation-set standard errors are noise",
              "val_size": int(len(ds.split(args.train_size, args.val_fraction, args.seed)[1])),
              "baseline": baseline, "runs": sorted(runs, key=lambda r: -r.get("val_accuracy", -1.0)),
              "runs_dir": _relative_to_cwd(root)}
    print(json.dumps(report, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
