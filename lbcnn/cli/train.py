"""``lbcnn train``: end-to-end training for the trained families (cbcnn, hybrid, lowbit)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .common import (add_data_args, add_output_args, batch_int, degrees, finite_float, float_in,
                     fraction, int_in, ints, load_data, nonneg_float, positive_float,
                     positive_int, say, seed_int)


def _probability(text: str) -> float:
    """A number in [0, 1] (NaN and infinity refused at parse time)."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _open_unit(text: str) -> float:
    """A number strictly between 0 and 1 (a decay)."""
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def _widths(text: str, least: int = 1) -> tuple[int, ...]:
    """Layer widths: up to 16 whole numbers from 1 to 65536 (what a model file may record)."""
    values = ints(text)
    if not least <= len(values) <= 16 or any(not 1 <= v <= 65536 for v in values):
        raise argparse.ArgumentTypeError(f"expected {least} to 16 comma-separated widths from "
                                         f"1 to 65536, got {text!r}")
    return values


def _dense_widths(text: str) -> tuple[int, ...]:
    return _widths(text, least=0)


def _threshold(text: str):
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
    t = sub.add_parser("train", help="train a binarized CNN (cbcnn), the hybrid or a low-bit "
                                     "depthwise network (lowbit) end to end")
    t.add_argument("--model", required=True, choices=["cbcnn", "hybrid", "lowbit"],
                   help="cbcnn: fully binarized CNN; hybrid: binarized image, fixed XNOR kernels, "
                        "float MLP; lowbit: trained 1..8-bit depthwise channel paths and a "
                        "2..8-bit head (docs/lowbit.md)")
    add_data_args(t)
    t.add_argument("--train-size", type=positive_int,
                   help="labelled training images used, validation included (default: all)")
    t.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="share of the training images held out to choose the epoch")
    t.add_argument("--seed", type=seed_int, default=0, help="seed for splits, initialization, batches")
    t.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default 10; lowbit 15)")
    t.add_argument("--batch-size", type=batch_int, default=None,
                   help="images per step (default 100; lowbit 256)")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--out", help="run folder (checkpoint, model.npz, curves, summary)")
    add_output_args(t)
    t.add_argument("--json", action="store_true", help="print one JSON object at the end")
    c = t.add_argument_group("cbcnn")
    c.add_argument("--preset", default=None, help="cbcnn28 or cbcnn32 (three blocks, default by input size); "
                   "cbcnn28x4 / cbcnn32x4 (four blocks, the paper's 0.48 M / 0.59 M)")
    c.add_argument("--blocks", type=_widths, help="conv widths, e.g. 64,128,128")
    c.add_argument("--dense", type=_dense_widths, help="hidden dense widths, e.g. 256 (lowbit: "
                                                       "0 to 2 hidden layers, default 64; \"\" "
                                                       "for none)")
    c.add_argument("--lr-start", type=positive_float, default=None,
                   help="Adam learning rate at the first epoch; the peak for onecycle "
                        "and lowbit (default 1e-3, or the --recipe's; lowbit 6e-3)")
    c.add_argument("--lr-end", type=positive_float, default=None,
                   help="learning rate at the last epoch (default 1e-4, or the --recipe's; "
                        "lowbit --lr-start / 1000)")
    c.add_argument("--y-channel", action="store_true", help="RGB -> Y (BT.601)")
    c.add_argument("--equalize", action="store_true", help="per-image histogram equalization")
    c.add_argument("--standardize", action="store_true", help="per-image standardization")
    c.add_argument("--max-minutes", type=positive_float,
                   help="stop before an epoch that would overrun")
    c.add_argument("--shift", type=float_in(0.0, 4096.0, "a shift in pixels"), default=None,
                   help="augmentation: random shift, pixels (default 0; lowbit 1.4, of the "
                        "image before its resize)")
    c.add_argument("--rotate", type=degrees, default=None,
                   help="augmentation: random rotation, degrees (default 0; lowbit 5)")
    c.add_argument("--zoom", type=float_in(0.0, 0.99, "a zoom fraction"), default=None,
                   help="augmentation: random zoom, fraction (default 0; lowbit 0.05)")
    c.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="training forward pass; bf16 autocast is ~1.6x faster on CPUs with "
                        "AVX512-BF16 and much slower without it: time it with "
                        "benchmarks/bench_cbcnn_train.py (evaluation stays float32)")
    r = t.add_argument_group("cbcnn training recipe (docs/cbcnn_recipe.md)")
    r.add_argument("--recipe", choices=["paper", "fast"],
                   help="preset bundle of the options below; explicit options override it. "
                        "paper: exponential decay 1e-3 -> 1e-4, no flip/erase/distillation "
                        "(the default settings). fast: onecycle 3e-3 -> 1e-5 and --erase 0.25, "
                        "chosen on Fashion-MNIST validation accuracy with "
                        "benchmarks/cbcnn_ablation.py; erasing cost accuracy on MNIST and "
                        "GTSRB, so their runs add --erase 0")
    r.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="augmentation: mirror half the training images left-right each epoch; "
                        "refused for datasets where a mirror changes the class (mnist, gtsrb, "
                        "npz:/folder: data); allowed for fashion_mnist, cifar10, olivetti")
    r.add_argument("--erase", type=_probability, default=None, metavar="P",
                   help="augmentation: random erasing, a box of 2-33 %% of the image set to 0 "
                        "in each training image with probability P (default 0, or the --recipe's)")
    r.add_argument("--lr-schedule", choices=["exp", "onecycle", "cosine"], default=None,
                   help="exp: exponential decay per epoch (default, or the --recipe's); cosine: per step from "
                        "--lr-start to --lr-end; onecycle: rise from lr-start/25 to --lr-start, "
                        "then cosine to --lr-end")
    r.add_argument("--warmup", type=nonneg_float, default=None, metavar="EPOCHS",
                   help="exp/cosine: linear warm-up over EPOCHS; onecycle: length of the rise "
                        "(default 30 %% of the run)")
    r.add_argument("--teacher", metavar="FILE",
                   help="distil from this float twin (teacher.npz from a --float-twin run on the "
                        "same dataset, split and preprocessing)")
    r.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                   help="train the float twin first (RUN/teacher/, its time counted in the "
                        "run's), then distil from it")
    r.add_argument("--teacher-epochs", type=positive_int, metavar="N",
                   help="epochs of the float twin with --distill (default: --epochs)")
    r.add_argument("--distill-weight", type=_probability, default=None, metavar="W",
                   help="loss = (1 - W) squared hinge + W T^2 KL(teacher || student) "
                        "(default 0.5; lowbit: cross-entropy, 0.7)")
    r.add_argument("--temperature", type=positive_float, default=None, metavar="T",
                   help="distillation temperature (default 4)")
    r.add_argument("--recalibrate-bn", action="store_true",
                   help="after training, re-estimate the chosen epoch's batch-norm statistics "
                        "on the clean (unaugmented) training images and keep them if "
                        "validation accuracy rises; the deployed thresholds come from them")
    r.add_argument("--ema", type=_open_unit, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the latent weights and batch-norm "
                        "statistics (decay per step, e.g. 0.999); validation, the epoch choice "
                        "and the saved model use the average, training is unchanged")
    r.add_argument("--float-twin", action="store_true",
                   help="train the float twin (same layers, real weights, ReLU) and write "
                        "RUN/teacher.npz for --teacher; no test-set evaluation")
    _add_lowbit_args(t)
    h = t.add_argument_group("hybrid")
    h.add_argument("--kernels", default="paper", type=_kernels,
                   help="paper (edge probes), lines, random, or a .npy of (n, 3, 3) +-1 "
                        "kernels, 1 <= n <= 64")
    h.add_argument("--threshold", type=_threshold, default="otsu",
                   help="input binarization: otsu or a value in [0, 1]")
    h.add_argument("--hidden", type=int_in(1, 1 << 16, "a layer width"), default=120, help="hidden units of the MLP")
    h.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="MLP optimizer")
    h.add_argument("--lr", type=positive_float, default=1e-3, help="MLP learning rate")
    h.add_argument("--patience", type=positive_int, default=10,
                   help="epochs without validation gain before stopping")
    t.set_defaults(func=run)


def run(args) -> int:
    from ..outputs import RunLock, prepare_run_dir, strict_json
    from ..settings import resolve_device

    resolve_device(args.device)
    _check_family_options(args)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out, the run folder to continue")
    lock = None
    if args.out:
        out = prepare_run_dir(args.out, force=args.force, resume=args.resume)
        if args.resume and args.model in ("cbcnn", "lowbit") and not (out / "checkpoint.pt").exists() \
                and not (out / "teacher" / "checkpoint.pt").exists():  # killed while distilling
            raise ConfigError(f"--resume: {out} holds no {args.model} checkpoint")
        if args.resume and args.model == "hybrid":
            raise ConfigError("--resume is for CBCNN runs; hybrid training is short, run it again")
        lock = RunLock(out).acquire()
    try:
        ds = load_data(args, seed=args.seed)
        if args.model == "hybrid":  # train_cbcnn says it itself, once its options are checked
            tr, va = ds.split(args.train_size, args.val_fraction, args.seed)
            say(args, f"{ds.name}: {len(tr):,} training + {len(va):,} validation images, "
                      f"{len(ds.y_test):,} test images, {ds.n_classes} classes")
        if args.model == "cbcnn":
            summary = _train_cbcnn(args, ds)
        elif args.model == "lowbit":
            summary = _train_lowbit(args, ds)
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
    from ..report import console
    from rich.table import Table

    table = Table(title=f"{summary['model']} on {summary['dataset']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    rows = [("best validation accuracy" + (" (integer model)" if summary["model"] == "lowbit"
                                           else ""), pct(summary.get("best_val_accuracy"))),
            *([("validation, fake-quantized forward", pct(summary["fake_quant_val_accuracy"]))]
              if summary.get("fake_quant_val_accuracy") is not None else []),
            *([("validation, BN re-estimated", pct(summary["bn_recalibration"]["val_accuracy_after"])
                + (" (kept)" if summary["bn_recalibration"]["kept"] else " (not kept)"))]
              if summary.get("bn_recalibration") else []),
            ("test accuracy", pct(summary.get("test_accuracy"))),
            ("epochs run", str(summary.get("epochs_run"))),
            ("chosen epoch (validation)", str(summary.get("best_epoch", "")) or "-"),
            ("training time", f"{summary.get('wall_seconds', 0.0):.1f} s")]
    if summary.get("out"):
        rows.append(("run folder", str(summary["out"])))
    for k, v in rows:
        table.add_row(k, v)
    console().print(table)


def _train_cbcnn(args, ds) -> dict:
    from ..train.cbcnn import train_cbcnn

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
    recipe = _recipe(args, ds.name)
    if args.recipe and _recipe_flips(args.recipe) and not recipe["flip"] and args.flip is None:
        say(args, f"note: --recipe {args.recipe} flips no images of {ds.name}: a mirror can "
                  f"change its classes")
    epochs = 10 if args.epochs is None else args.epochs
    shift, rotate, zoom = (0.0 if v is None else v for v in (args.shift, args.rotate, args.zoom))
    r = train_cbcnn(ds, preset=None, blocks=blocks, dense=dense, epochs=epochs,
                    batch_size=args.batch_size or 100, seed=args.seed,
                    val_fraction=args.val_fraction,
                    train_size=args.train_size, preprocess=pre, out_dir=args.out,
                    resume=args.resume, device=args.device, progress=not args.json,
                    log=lambda m: say(args, m),
                    precision=args.precision, shift=shift, rotate=rotate,
                    zoom=zoom, float_twin=args.float_twin,
                    recalibrate_bn=args.recalibrate_bn,
                    max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
                    **recipe)
    if r["stopped_by_time_budget"]:
        say(args, f"stopped by --max-minutes after epoch {r['epochs_run']} of {epochs}; the "
                  f"best-validation model is saved. Continue with --resume; the test set is "
                  f"read when the run ends")
    teacher = r.get("teacher")
    return {"model": "cbcnn float twin" if args.float_twin else "cbcnn", "dataset": ds.name,
            "blocks": list(blocks), "dense": list(dense),
            "preprocess": pre, "seed": args.seed, "epochs": epochs,
            "precision": args.precision,
            "augment": {"shift": shift, "rotate": rotate, "zoom": zoom,
                        "flip": recipe["flip"], "erase": recipe["erase"]},
            "recipe": args.recipe, "settings": recipe,
            "teacher": None if teacher is None else {k: v for k, v in teacher.items()},
            "epochs_run": r["epochs_run"], "best_epoch": r["best_epoch"],
            "best_val_accuracy": r["best_val_accuracy"], "test_accuracy": r["test_accuracy"],
            "bn_recalibration": r["bn_recalibration"], "val_accuracy": r["val_accuracy"],
            "wall_seconds": r["wall_seconds"], "stopped_by_time_budget": r["stopped_by_time_budget"],
            "out": args.out, **({"teacher_path": r["teacher_path"]} if "teacher_path" in r else {})}


def _recipe_flips(name: str) -> bool:
    from ..train.cbcnn_recipe import RECIPES
    return bool(RECIPES.get(name, {}).get("flip"))


def _recipe(args, dataset_name: str) -> dict:
    """The recipe settings: built-in defaults, then ``--recipe``'s, then explicit options."""
    from ..train.cbcnn_recipe import recipe_settings

    settings = {"lr_schedule": "exp", "lr_start": 1e-3, "lr_end": 1e-4, "warmup": None,
                "flip": False, "erase": 0.0, "distill": False, "ema": None}
    if args.recipe:
        settings.update(recipe_settings(args.recipe, dataset_name))
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.teacher is not None and settings["distill"]:
        if args.distill:
            raise ConfigError("give --teacher FILE or --distill, not both")
        settings["distill"] = False  # an explicit teacher replaces the recipe's own
    uses_teacher = args.teacher is not None or settings["distill"]
    if not uses_teacher and (args.distill_weight is not None or args.temperature is not None):
        raise ConfigError("--distill-weight and --temperature go with --teacher FILE or --distill")
    if args.teacher_epochs is not None and not settings["distill"]:
        raise ConfigError("--teacher-epochs goes with --distill")
    if args.float_twin and uses_teacher:
        raise ConfigError("--float-twin trains the teacher itself: drop --teacher/--distill")
    if args.float_twin and args.ema is not None:
        raise ConfigError("--ema is for the binary network, not the --float-twin")
    if args.float_twin and args.recalibrate_bn:
        raise ConfigError("--recalibrate-bn is for the binary network, not the --float-twin")
    if args.float_twin and not args.out:
        raise ConfigError("--float-twin needs --out, the folder that receives teacher.npz")
    settings.update(teacher=args.teacher, teacher_epochs=args.teacher_epochs,
                    distill_weight=0.5 if args.distill_weight is None else args.distill_weight,
                    temperature=4.0 if args.temperature is None else args.temperature)
    return settings


KERNEL_SETS = ("paper", "lines", "random")


def _kernels(text: str) -> str:
    """--kernels: a named set, or an existing .npy file (read and checked before training)."""
    if text in KERNEL_SETS:
        return text
    _read_kernels(text, argparse.ArgumentTypeError)
    return text


def _read_kernels(text: str, error=ConfigError) -> list:
    """A ``.npy`` array of shape (n, 3, 3), 1 <= n <= 64, every value exactly +-1."""
    from ..errors import DataError
    from ..io.sniff import require_regular_file, sniff
    path = Path(text)
    if not path.exists():
        raise error(f"no such file {text!r}; give paper, lines, random or a .npy of "
                    f"(n, 3, 3) +-1 kernels")
    try:
        require_regular_file(path, "kernel file")
        kind = sniff(path)
    except DataError as exc:
        raise error(str(exc)) from None
    if kind != "a .npy array":
        raise error(f"{text} looks like {kind}; give a .npy of (n, 3, 3) +-1 kernels "
                    f"(np.save)")
    if path.stat().st_size > 1 << 20:
        raise error(f"{text} is {path.stat().st_size:,} bytes; 64 kernels of 3x3 take 576")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise error(f"cannot read {text}: {str(exc).splitlines()[0][:80]}") from None
    if array.ndim != 3 or array.shape[1:] != (3, 3) or not 1 <= len(array) <= 64 \
            or array.dtype.kind not in "iuf" or not np.all(np.abs(array) == 1):
        raise error(f"{text} holds {array.dtype} {array.shape}; expected (n, 3, 3) with "
                    f"1 <= n <= 64 and every value +1 or -1")
    return list(array.astype(np.int8))


def _train_hybrid(args, ds) -> dict:
    from ..models.hybrid import Hybrid, save_hybrid

    kernels = args.kernels
    if kernels not in KERNEL_SETS:
        kernels = _read_kernels(kernels)
    threshold = args.threshold
    tr, va = ds.split(args.train_size, args.val_fraction, args.seed)
    model = Hybrid(kernels=kernels, threshold=threshold, hidden=args.hidden,
                   optimizer=args.optimizer, lr=args.lr,
                   epochs=10 if args.epochs is None else args.epochs,
                   batch_size=args.batch_size or 100, patience=args.patience,
                   random_state=args.seed,
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
        record = ds.provenance()
        # the MLP has outputs only for classes its training images hold
        record["class_names"] = [ds.class_names[int(c)] for c in model.classes_]
        save_hybrid(model, out / "model.npz", **record, test_accuracy=test_acc,
                    test_size=int(len(ds.y_test)), val_accuracy=model.best_val_accuracy_,
                    seed=args.seed)
        write_json(out / "summary.json", summary)
        write_json(out / "history.json", model.history_)
    return summary


# -- lowbit ------------------------------------------------------------------------------------
_LOWBIT_ONLY = ("size", "channels", "first", "path", "conv_bits", "conv_mode", "conv_scale",
                "conv_norm", "head_bits", "head_mode", "act_bits", "dropout", "weight_decay",
                "float_epochs", "label_smoothing", "init", "init_from")
# options of the other families a lowbit run would silently ignore: refused instead
_NOT_LOWBIT = {"preset": None, "blocks": None, "y_channel": False, "equalize": False,
               "standardize": False, "recipe": None, "recalibrate_bn": False,
               "precision": "fp32", "kernels": "paper", "threshold": "otsu", "hidden": 120,
               "optimizer": "adam", "lr": 1e-3, "patience": 10}


def _add_lowbit_args(t) -> None:
    # the choices of models.lowbit_arch (FIRST_MODES, CONV_NORMS), spelled out: building the
    # parser imports no model (nor torch)
    g = t.add_argument_group("lowbit (docs/lowbit.md; also --dense, --lr-start, --lr-end, "
                             "--warmup, --shift/--rotate/--zoom, --flip, --erase, --ema, "
                             "--teacher/--distill, --float-twin, --max-minutes)")
    g.add_argument("--size", type=int_in(4, 512, "an input size"), default=None,
                   help="input side after the exact integer area resize (default 16)")
    g.add_argument("--channels", type=int_in(1, 4096, "a channel count"), default=None,
                   help="channel paths (default 32)")
    g.add_argument("--first", choices=["full", "depthwise"], default=None,
                   help="a path's first conv reads every colour plane (full, default) or one "
                        "(depthwise)")
    g.add_argument("--path", default=None,
                   help="a path's ops after the resize: c = 3x3 valid conv, p = 2x2 max pool "
                        "(default ccpcp)")
    g.add_argument("--conv-bits", type=ints, default=None,
                   help="kernel bits, one for all convs or one per conv, 1 (+-1) .. 8 "
                        "(default 8)")
    g.add_argument("--conv-mode", choices=["auto", "symnz", "int"], default=None,
                   help="kernel level grid: symnz (no zero), int (symmetric, 2 bits = "
                        "ternary), auto: symnz at 1, 3, 4 bits, int otherwise (default)")
    g.add_argument("--conv-scale", choices=["channel", "tensor"], default=None,
                   help="LSQ step per channel (default) or per layer")
    g.add_argument("--conv-norm", choices=["bn", "bias", "none"], default=None,
                   help="after each conv: batch norm (default, folded at export), a bias, "
                        "or nothing")
    g.add_argument("--head-bits", type=ints, default=None,
                   help="dense weight bits, one for all or one per dense layer, 2..8 "
                        "(default 2,4)")
    g.add_argument("--head-mode", choices=["symnz", "int"], default=None,
                   help="dense weight level grid (default symnz)")
    g.add_argument("--act-bits", type=int_in(2, 8, "activation bits"), default=None,
                   help="bits of the head's input and hidden activations (default 8)")
    g.add_argument("--dropout", type=_probability, default=None, help="dropout before dense layers")
    g.add_argument("--weight-decay", type=nonneg_float, default=None,
                   help="AdamW weight decay on the weights (default 1e-4)")
    g.add_argument("--float-epochs", type=int_in(0, 10_000, "epochs"), default=None,
                   help="first epochs in float (quantization off; default 0)")
    g.add_argument("--label-smoothing", type=_probability, default=None,
                   help="cross-entropy label smoothing (default 0)")
    g.add_argument("--init", choices=["random", "lbcnn"], default=None,
                   help="random kernels (default), or seeded random +-1 kernels with the ELM's "
                        "closed-form ridge head as the initial output layer")
    g.add_argument("--no-test", action="store_true",
                   help="do not read the test set at the end (compare candidates on validation, "
                        "then lbcnn evaluate RUN for the chosen one)")
    g.add_argument("--init-from", metavar="RUN_OR_MODEL", default=None,
                   help="start from the +-1 kernels of a searched LB-CNN (lbcnn search's run or "
                        "model; its filters x nl paths must match) and the ELM ridge head")


def _check_family_options(args) -> None:
    """Options of another family refused with one line, not ignored."""
    if args.model == "lowbit":
        for key, default in _NOT_LOWBIT.items():
            if getattr(args, key, default) != default:
                raise ConfigError(f"--{key.replace('_', '-')} is not a lowbit option "
                                  f"(see lbcnn train --help, group lowbit)")
        if args.lr_schedule not in (None, "cosine"):
            raise ConfigError("lowbit training uses a warm-up then cosine schedule; "
                              "--lr-schedule takes only cosine")
        return
    if getattr(args, "no_test", False):
        raise ConfigError(f"--no-test is a lowbit option; this run is --model {args.model}")
    for key in _LOWBIT_ONLY:
        if getattr(args, key, None) is not None:
            raise ConfigError(f"--{key.replace('_', '-')} is a lowbit option; this run is "
                              f"--model {args.model}")


def _lowbit_settings(args) -> dict:
    from ..train.qat import DEFAULTS

    pick = lambda key, given: DEFAULTS[key] if given is None else given  # noqa: E731
    settings = {"epochs": pick("epochs", args.epochs),
                "batch_size": pick("batch_size", args.batch_size),
                "lr": pick("lr", args.lr_start), "lr_end": args.lr_end,
                "weight_decay": pick("weight_decay", args.weight_decay),
                "warmup": args.warmup, "shift": pick("shift", args.shift),
                "rotate": pick("rotate", args.rotate), "zoom": pick("zoom", args.zoom),
                "flip": bool(args.flip), "erase": pick("erase", args.erase),
                "ema": args.ema, "float_epochs": pick("float_epochs", args.float_epochs),
                "label_smoothing": pick("label_smoothing", args.label_smoothing),
                "init": args.init or "random", "init_from": args.init_from,
                "teacher": args.teacher, "distill": bool(args.distill),
                "teacher_epochs": args.teacher_epochs,
                "distill_weight": pick("distill_weight", args.distill_weight),
                "temperature": pick("temperature", args.temperature),
                "float_twin": args.float_twin, "seed": args.seed,
                "val_fraction": args.val_fraction, "train_size": args.train_size}
    if args.teacher_epochs is not None and not args.distill:
        raise ConfigError("--teacher-epochs goes with --distill")
    if args.teacher is None and not args.distill and (args.distill_weight is not None
                                                      or args.temperature is not None):
        raise ConfigError("--distill-weight and --temperature go with --teacher FILE or --distill")
    if args.float_twin and not args.out:
        raise ConfigError("--float-twin needs --out, the folder that receives teacher.npz")
    return settings


def _train_lowbit(args, ds) -> dict:
    from ..models.lowbit import LowBitCNN
    from ..train.qat import train_lowbit

    model = LowBitCNN(**{k: v for k, v in {
        "size": args.size, "channels": args.channels, "first": args.first, "path": args.path,
        "conv_bits": args.conv_bits, "conv_mode": args.conv_mode, "conv_scale": args.conv_scale,
        "conv_norm": args.conv_norm, "hidden": args.dense, "head_bits": args.head_bits,
        "head_mode": args.head_mode, "act_bits": args.act_bits, "dropout": args.dropout,
        "device": args.device}.items() if v is not None})
    settings = _lowbit_settings(args)
    r = train_lowbit(ds, model=model, out_dir=args.out, resume=args.resume, device=args.device,
                     log=lambda m: say(args, m),
                     max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
                     read_test=not args.no_test, **settings)
    if r["stopped_by_time_budget"]:
        say(args, f"stopped by --max-minutes after epoch {r['epochs_run']} of "
                  f"{settings['epochs']}; the best-validation model is saved. Continue with "
                  f"--resume; the test set is read when the run ends")
    arch = model.architecture(ds.input_shape[2], ds.n_classes)
    return {"model": "lowbit float twin" if args.float_twin else "lowbit", "dataset": ds.name,
            "net": arch, "settings": {k: v for k, v in settings.items()},
            "epochs_run": r["epochs_run"], "best_epoch": r["best_epoch"],
            "best_val_accuracy": r["best_val_accuracy"],
            "fake_quant_val_accuracy": r.get("fake_quant_val_accuracy"),
            "test_accuracy": r["test_accuracy"], "test_read": r.get("test_read", False),
            "train_size": r["train_size"],
            "wall_seconds": r["wall_seconds"], "init": r["init"], "teacher": r["teacher"],
            "stopped_by_time_budget": r["stopped_by_time_budget"], "out": args.out,
            **({"teacher_path": r["teacher_path"]} if "teacher_path" in r else {})}
