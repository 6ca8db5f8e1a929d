"""``lbcnn optimize``: the Pareto front of accuracy against size (and MACs)."""
from __future__ import annotations

import argparse
import sys

from .common import (add_data_args, folds, fraction, int_in, int_list, load_data, nonneg_int,
                     positive_float, positive_int, seed_int)


def _floats(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers > 0 (the ridge C's range)."""
    return tuple(positive_float(t) for t in text.split(",") if t.strip())


def _bits(text: str) -> tuple[int, ...]:
    out = []
    for t in (t.strip().lower() for t in text.split(",") if t.strip()):
        if t in ("float32", "float", "f32", "32"):
            out.append(32)
            continue
        try:
            out.append(int(t))
        except ValueError:
            raise argparse.ArgumentTypeError(f"head bits are float32 or integers, got {t!r}") from None
        if not 2 <= out[-1] <= 16:
            raise argparse.ArgumentTypeError(f"head bits are float32 or 2 to 16, got {t!r}")
    if not out:
        raise argparse.ArgumentTypeError("give at least one head precision")
    return tuple(out)


def _words(text: str) -> tuple[str, ...]:
    return tuple(t.strip().lower() for t in text.split(",") if t.strip())


# the space's options as run.json records them (SearchSpace.to_dict keys)
_SPACE_OPTIONS = {"layers": "--layers", "multipliers": "--nf1/--nf2/--nf3", "nl": "--nl",
                  "C": "--C-range", "bits": "--bits", "color": "--color",
                  "max_features": "--max-features"}


def _check_resume(args, space) -> None:
    """``--resume`` continues the study only under the options it was run with: a changed
    sampler, search space or budget would mix two searches in one front. Refused before
    any data is read, naming each option that differs."""
    from pathlib import Path

    from ..errors import ConfigError, DataError
    from ..metadata import load_json
    run_json = Path(args.out) / "run.json"
    if not run_json.is_file():
        return  # the optimizer says what is missing
    try:
        state = load_json(run_json.read_bytes(), str(run_json))
    except OSError as exc:
        raise DataError(f"{run_json}: {exc.strerror or exc}") from None
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict):
        raise DataError(f"{run_json} is not an lbcnn optimize run record")
    run = state["settings"]
    given = space.to_dict()
    diff = [f"{_SPACE_OPTIONS.get(k, k)} {given[k]} (run: {run['space'].get(k)})"
            for k in given if isinstance(run.get("space"), dict)
            and _plain(run["space"].get(k)) != _plain(given[k])]
    for option, now, then in (("--sampler", args.sampler, state.get("sampler")),
                              ("--eta", args.eta, state.get("eta")),
                              ("--max-kbits", args.max_kbits, state.get("max_kbits")),
                              ("--objectives", list(parse_objectives_text(args.objectives)),
                               run.get("objectives")),
                              ("--seed", args.seed, run.get("seed")),
                              ("--cv", args.cv, run.get("cv")),
                              ("--val-fraction", args.val_fraction, run.get("val_fraction"))):
        if then is not None and _plain(now) != _plain(then):
            diff.append(f"{option} {now} (run: {then})")
    if args.bracket is not None and state.get("bracket") not in (None, args.bracket):
        diff.append(f"--bracket {args.bracket} (run: {state['bracket']})")
    if diff:
        raise ConfigError("--resume: these options differ from the run's: " + ", ".join(diff)
                          + "; give the run's options, or start a new run")


def parse_objectives_text(text: str):
    from ..train.optimize import parse_objectives
    return parse_objectives(text)


def _plain(value):
    """Lists and tuples alike, so a JSON record compares with parsed options."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def add_parser(sub) -> None:
    from ..train.optimize.space import DEFAULT_MULTIPLIERS, HEAD_BITS, SearchSpace

    d = SearchSpace()
    s = sub.add_parser("optimize", help="multi-objective search over architecture, head bits and "
                       "C: the Pareto front of validation accuracy against kbits (and MACs)")
    add_data_args(s)
    s.add_argument("--train-size", type=positive_int,
                   help="labelled training images the run may use (fit + validation)")
    s.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="share of the budget held out to rank configurations")
    s.add_argument("--cv", type=folds, default=0, metavar="K",
                   help="rank by K-fold cross-validation over the whole budget (tiny datasets; "
                        "one rung, no pruning); 0 = one validation split")
    s.add_argument("--flip", action="store_true",
                   help="fit every head on the images and their left-right mirrors (faces, "
                        "clothes; refused for digits and signs); validation is never mirrored")
    s.add_argument("--minutes", type=positive_float, default=30.0,
                   help="wall-clock budget for the whole command, from its start: search, "
                        "refits of the front, test reads and outputs (nothing starts that "
                        "would not finish in time)")
    s.add_argument("--max-configs", type=positive_int,
                   help="stop after this many configurations instead of by time")
    s.add_argument("--out", required=True, help="run folder: study.db, trials.csv, front.csv/json/png, models/")
    s.add_argument("--objectives", default="accuracy,kbits",
                   help="comma-separated from accuracy (validation, quantized head), kbits "
                        "(as lbcnn info counts them), macs")
    s.add_argument("--max-kbits", type=positive_float,
                   help="only models up to this size are trained and may join the front")
    s.add_argument("--reference", metavar="CSV",
                   help="published points to draw on front.png beside the front (columns "
                        "dataset, name, accuracy, weight_bits, picked_on; e.g. "
                        "benchmarks/anchors.csv); the rows of this run's dataset are drawn")
    g = s.add_argument_group("search space")
    g.add_argument("--layers", type=int_list(1, 3, "layer counts"), default=d.layers,
                   help="allowed layer counts (1-3)")
    for i, m in enumerate(DEFAULT_MULTIPLIERS):
        g.add_argument(f"--nf{i + 1}", type=int_list(1, 4096, "depth multipliers"), default=m,
                       help=f"allowed depth multipliers of layer {i + 1}")
    g.add_argument("--nl", type=int_list(1, 8, "nonlinearity indices"), default=d.nl,
                   help="allowed nonlinearity indices")
    g.add_argument("--C-range", type=_floats, default=d.C, metavar="LOW,HIGH",
                   help="range of the ridge C, solved per body on validation (half-decade "
                        "steps; one value fixes it)")
    g.add_argument("--bits", type=_bits, default=HEAD_BITS,
                   help="allowed head precisions: float32 and/or integer bits "
                        "(bias-corrected quantization)")
    g.add_argument("--color", type=_words, default=d.color,
                   help="for colour data: rgb and/or y (BT.601 luma; the saved model then "
                        "takes Y images)")
    g.add_argument("--max-features", type=positive_int, default=d.max_features,
                   help="largest feature count (bounds the Gram matrix / fit time)")
    f = s.add_argument_group("multi-fidelity")
    f.add_argument("--rungs", type=int_list(1, 10**9, "image counts"),
                   help="training images per lower rung; the last rung is the whole fit set "
                        "(default: ~70 images a class, at least 1,000, then x eta: MNIST "
                        "1000,3000)")
    f.add_argument("--eta", type=int_in(2, 64, "a reduction factor"), default=3,
                   help="keep 1/eta of each rung")
    f.add_argument("--bracket", type=positive_int,
                   help="configurations per bracket (default 3*eta^(rungs-1))")
    f.add_argument("--promote-against", default="bracket", choices=["bracket", "study"],
                   help="rank a rung within its bracket, or among every earlier result at that "
                        "rung (stricter; starves large models whose low-rung accuracy lags)")
    f.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "random"],
                   help="Optuna multi-objective sampler")
    r = s.add_argument_group("scale-out and persistence")
    r.add_argument("--workers", type=nonneg_int, default=0,
                   help="run trials on a local Ray cluster of N CPUs (0: in this process)")
    r.add_argument("--ray", metavar="ADDRESS", help="join an existing Ray cluster (HOST:PORT or auto)")
    r.add_argument("--storage", metavar="URL",
                   help="shared study database, e.g. postgresql://user:pass@host/db "
                        "(default: SQLite in the run folder)")
    r.add_argument("--study-name", help="study to create or join in --storage")
    once = r.add_mutually_exclusive_group()  # continue or start over, not both
    once.add_argument("--resume", action="store_true",
                   help="continue the study in --out (trials in flight when it stopped are redone)")
    once.add_argument("--force", action="store_true", help="start over in a non-empty --out")
    s.add_argument("--seed", type=seed_int, default=0, help="data split, sampler and kernel seeds")
    s.add_argument("--device", help="cpu or cuda: where features, ridge systems and C "
                   "sweeps run (default: cuda when available; GPTQ rounding and --workers "
                   "stay on the CPU)")
    s.add_argument("--json", action="store_true", help="print one JSON object at the end")
    s.set_defaults(func=run)


def run(args) -> int:
    import time

    from ..errors import ConfigError
    from ..train.optimize import SearchSpace, optimize
    from ..train.optimize.budget import process_age

    started = time.perf_counter() - process_age()  # --minutes counts from the command's start

    C = tuple(args.C_range)
    if len(C) == 1:
        C = (C[0], C[0])
    if len(C) != 2:
        raise ConfigError(f"--C-range takes LOW,HIGH or one value, got {args.C_range}")
    space = SearchSpace(layers=args.layers, multipliers=(args.nf1, args.nf2, args.nf3), nl=args.nl,
                        C=C, bits=args.bits, color=args.color, max_features=args.max_features)
    quiet = args.json
    log = None if quiet else (lambda m: print(m, file=sys.stderr))
    # cheap option errors first, then the data (folder options honoured), then the search
    from ..train.optimize import parse_objectives
    from ..train.optimize.study import check_storage_url
    parse_objectives(args.objectives)
    from ..settings import resolve_device
    resolve_device(args.device)
    if args.storage:
        check_storage_url(args.storage)
    reference = None
    if args.reference:
        from ..train.optimize.report import read_reference
        reference = read_reference(args.reference)
    if args.resume:
        _check_resume(args, space)
    ds = load_data(args, seed=args.seed, quiet=quiet)
    res = optimize(ds, train_size=args.train_size, minutes=args.minutes, out=args.out,
                   objectives=args.objectives, max_kbits=args.max_kbits, space=space,
                   rungs=args.rungs, eta=args.eta, bracket=args.bracket, cv=args.cv,
                   val_fraction=args.val_fraction, seed=args.seed, workers=args.workers,
                   ray_address=args.ray, storage=args.storage, study_name=args.study_name,
                   resume=args.resume, force=args.force, sampler=args.sampler,
                   max_configs=args.max_configs, data_path=args.data_path, split=args.split,
                   promote_against=args.promote_against, flip=args.flip,
                   progress=not quiet, log=log, started=started, device=args.device)
    if reference is not None:
        from ..train.optimize.report import plot_front_from_run
        plot_front_from_run(args.out, ds.name, reference)
    if args.json:
        from ..outputs import strict_json
        print(strict_json(res.summary))
        return 0
    from ..report import console

    from ..train.optimize.report import front_table
    s = res.summary
    con = console()
    con.print(front_table(res.front, f"{s['dataset']}: Pareto front of {s['trials']} "
                                     f"configurations ({s['pruned']} pruned)"))
    for r in s["rungs_detail"]:
        con.print(f"rung {r['rung']} ({r['n_train']:,} images): {r['configs']} configs, "
                  f"{r['pruned']} pruned, {r['seconds']:.0f} s")
    con.print(f"search {s['seconds_search']:.0f} s, total {s['seconds']:.0f} s; run folder: "
              f"{args.out} (front.csv/json/png, trials.csv, models/)")
    return 0
