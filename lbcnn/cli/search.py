"""``lbcnn search``: random +-1 kernel sets with a closed-form ELM head."""
from __future__ import annotations

from .common import (add_data_args, add_output_args, batch_int, folds, fraction, int_list,
                     load_data, positive_float, positive_int, say, seed_int)

# run-defining options: parsed as None so that ``--resume`` can tell "not given"
# (take the run's value) from "given" (must agree with the run)
DEFAULTS = {"filters": (40, 4), "nl": 1, "C": 1e-3, "trials": 20, "val_fraction": 0.1, "cv": 0,
            "seed": 0, "train_size": None}


def c_option(text: str):
    """--C: a positive number, ``auto`` or comma-separated values (a sweep)."""
    import argparse
    t = text.strip().lower()
    if t == "auto":
        return "auto"
    parts = [p for p in t.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or auto, got {text!r}")
    if len(parts) == 1:
        return positive_float(parts[0])  # its own message: finite, > 0
    try:
        return sorted(set(positive_float(p) for p in parts))
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} in the list {text!r}") from None


def add_parser(sub) -> None:
    s = sub.add_parser("search", help="search random +-1 kernel sets with a closed-form ELM head")
    add_data_args(s, required=False, dataset_help="; required unless --resume (the run "
                  "folder records it)")
    s.add_argument("--filters", type=int_list(1, 4096, "depth multipliers"),
                   help="depth multipliers, one per conv layer "
                   "(default: 40,4)")
    s.add_argument("--nl", type=positive_int, help="nonlinearity index: nl-1 extra ReLU + conv "
                   "per layer (default: 1)")
    s.add_argument("--C", type=c_option, help="ridge regularisation, system I/C + HᵀH "
                   "(default: 0.001); auto: chosen per trial on validation from 1e-5..1 "
                   "(half-decade steps, one pass over the data); or comma-separated values "
                   "to choose from")
    s.add_argument("--trials", type=positive_int, help="kernel sets to try (default: 20)")
    s.add_argument("--train-size", type=positive_int,
                   help="labelled training images used, validation included (default: all)")
    s.add_argument("--val-fraction", type=fraction,
                   help="share of --train-size held out to rank trials (default: 0.1)")
    s.add_argument("--cv", type=folds, metavar="K",
                   help="rank trials by K-fold cross-validation over the whole training budget "
                        "(for tiny datasets; K ELM fits per trial); 0 = one validation split "
                        "(default: 0)")
    s.add_argument("--seed", type=seed_int, help="run seed: splits and every trial's kernels "
                   "(default: 0)")
    s.add_argument("--no-refit", action="store_true",
                   help="keep the trial's head instead of refitting it on train+val")
    s.add_argument("--batch-size", type=batch_int, default=2048,
                   help="images per feature batch")
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    s.add_argument("--out", help="run folder: config, per-trial history, model, plot; written as "
                   "each trial ends, so an interrupted search can --resume")
    add_output_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object at the end")
    s.set_defaults(func=run)


def _settings(args) -> dict:
    from ..errors import ConfigError

    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if args.resume:
        from ..train.search import read_run_config
        if not args.out:
            raise ConfigError("--resume needs --out, the run folder to continue")
        saved = read_run_config(args.out)
        run = {k: saved.get(k) for k in DEFAULTS if k in saved}
        run["train_size"] = saved.get("requested_train_size")
        run["filters"] = tuple(saved["filters"]) if saved.get("filters") else None
        for k in ("dataset", "data_path", "split", "test_fraction", "test_folder", "grayscale",
                  "rgb"):
            if saved.get(k) is not None and not getattr(args, k, None):
                setattr(args, k, saved[k])
        if saved.get("resize") and not args.resize:
            args.resize = tuple(saved["resize"])
        clash = {k: (run.get(k), v) for k, v in given.items() if run.get(k) != v}
        if clash:
            raise ConfigError("--resume: these options differ from the run's: " + ", ".join(
                f"--{k.replace('_', '-')} {b} (run: {a})" for k, (a, b) in clash.items()))
        return {**DEFAULTS, **run}
    if not args.dataset:
        raise ConfigError("--dataset is required (or --resume --out RUN)")
    return {**DEFAULTS, **given}


def run(args) -> int:
    from ..outputs import strict_json
    from ..report import summary_table
    from ..train.search import search

    from ..settings import resolve_device

    opts = _settings(args)
    resolve_device(args.device)
    if args.out is not None:  # a bad --out must fail before any data is read
        from ..outputs import prepare_run_dir
        prepare_run_dir(args.out, force=args.force, resume=args.resume)
    from ..models.lbcnn import check_filters
    check_filters(opts["filters"])
    ds = load_data(args, seed=opts["seed"])
    result = search(ds, filters=opts["filters"], nl=opts["nl"], C=opts["C"],
                    trials=opts["trials"], train_size=opts["train_size"],
                    val_fraction=opts["val_fraction"], seed=opts["seed"], out=args.out,
                    data_path=args.data_path, split=args.split, refit=not args.no_refit,
                    batch_size=args.batch_size, device=args.device, cv=opts["cv"],
                    progress=not args.json, resume=args.resume, force=args.force,
                    test_fraction=args.test_fraction, resize=args.resize,
                    grayscale=args.grayscale, test_folder=args.test_folder, rgb=args.rgb,
                    log=lambda m: say(args, m))
    if args.json:
        print(strict_json(result.summary))
    else:
        from ..report import console
        console().print(summary_table(result.summary))
        if args.out:
            print(f"run folder: {args.out} (model.npz, history.json/csv, trials.png)")
    if not args.out:
        say(args, "note: nothing was saved (no --out); add --out RUN to keep the model")
    return 0

