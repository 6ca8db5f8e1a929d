"""``lbcnn finetune``: Adam fine-tuning of an LB-CNN's output layer, kernels frozen."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError
from ..outputs import strict_json
from ..report import print_table
from .common import (accuracy, add_data_args, batch_int, carried_meta, dataset_for, degrees,
                     float_in, fraction, int_in, load_model_arg, nonneg_float, positive_float,
                     positive_int, require_lbcnn, say, seed_int)


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
    f.add_argument("--shift", type=int_in(0, 4096, "a shift in pixels"), default=0,
                   help="augment: move each training image by up to N pixels, fresh each epoch "
                        "(features recomputed per epoch); 0 = off")
    f.add_argument("--rotate", type=degrees, default=0.0,
                   help="augment: random rotations up to this many degrees (with --shift/--zoom)")
    f.add_argument("--zoom", type=float_in(0.0, 0.99, "a zoom fraction"), default=0.0,
                   help="augment: random zoom factor in [1 - Z, 1 + Z]")
    f.add_argument("--elastic", type=float_in(0.0, 1000.0, "a displacement in pixels"),
                   default=0.0, metavar="ALPHA",
                   help="augment: elastic distortion of up to ALPHA pixels before smoothing "
                        "(Simard et al.; 34 with --elastic-sigma 4 for MNIST)")
    f.add_argument("--elastic-sigma", type=float_in(0.01, 100.0, "a smoothing in pixels"),
                   default=4.0,
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
    f.set_defaults(func=run)


def run(args) -> int:
    from ..data.splits import finetune_split
    from ..models.lbcnn import save_lbcnn
    from ..train.head_finetune import finetune_head

    from ..outputs import check_out_file
    out = check_out_file(args.out)
    model, src = load_model_arg(args.model)
    require_lbcnn(model, "finetune")
    if getattr(model, "head_meta_", {}).get("kind") == "fixed":
        raise ConfigError("fine-tune the float model, then quantize it")
    ds = dataset_for(model, args)
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
    test_acc = accuracy(model, ds.x_test, ds.y_test)
    summary = {"dataset": ds.name, "source": str(src), "out": str(out),
               "train_size": int(len(tr)), "val_size": int(len(va)), "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "patience": args.patience,
               "weight_decay": args.weight_decay, "shift": args.shift, "rotate": args.rotate, "zoom": args.zoom,
               "elastic": args.elastic, "elastic_sigma": args.elastic_sigma,
               "lr_schedule": args.lr_schedule, "val_disjoint_from_search": disjoint,
               "seed": args.seed, "elm_full": bool(args.elm_full), **res.as_dict(),
               "test_accuracy": test_acc, "n_test": int(len(ds.y_test)),
               "test_accuracy_in_source_file": getattr(model, "meta_", {}).get("test_accuracy")}
    meta = carried_meta(model)
    # the validation figure is the chosen epoch's on held-out images; a --refit-full head,
    # or one whose validation overlaps the search's images, has none
    held_out = disjoint != "no" and not res.refit_full
    meta.update(**ds.provenance(), val_accuracy=res.val_accuracy if held_out else None,
                test_accuracy=test_acc, test_size=int(len(ds.y_test)),
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


def _write_finetune_history(out: Path, history: list[dict], dataset: str) -> None:
    """Epoch 0 is the starting (ELM) head; epochs 1.. are Adam epochs."""
    from ..outputs import write_csv, write_json
    from ..report import plot_finetune
    stem = out.with_suffix("")
    write_json(stem.with_name(stem.name + ".history.json"), history)
    write_csv(stem.with_name(stem.name + ".history.csv"), history)
    plot_finetune(history, stem.with_name(stem.name + ".curves.png"),
                  f"head fine-tuning on {dataset}: validation accuracy per epoch")
