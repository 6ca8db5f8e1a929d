"""The ``lbcnn`` command: a thin shell over the Python API."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import LbcnnError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_data_args(p):
    p.add_argument("--dataset", required=True,
                   help="mnist, fashion_mnist, gtsrb, olivetti, cifar10, npz:PATH or folder:PATH")
    p.add_argument("--data-path", help="explicit file or folder for a named dataset "
                   "(otherwise LBCNN_DATA, the cache, then a download)")
    p.add_argument("--split", default="default", choices=["default", "paper"],
                   help="for sources without a test set: 'paper' is Olivetti's 250/150 split")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lbcnn", description="Light binary CNNs: search, "
                                     "train, evaluate and deploy.")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search random +-1 kernel sets with a closed-form ELM head")
    _add_data_args(s)
    s.add_argument("--filters", type=_ints, default=(40, 4), help="depth multipliers, e.g. 40,4")
    s.add_argument("--nl", type=int, default=1, help="nonlinearity index (nl-1 extra ReLU+conv)")
    s.add_argument("--C", type=float, default=1e-3, help="ridge regularisation (system I/C + HᵀH)")
    s.add_argument("--trials", type=int, default=20)
    s.add_argument("--train-size", type=int, help="labelled training images used (incl. validation)")
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--cv", type=int, default=0, metavar="K",
                   help="rank trials by K-fold cross-validation over the whole training budget "
                        "(for tiny datasets; K ELM fits per trial); 0 = one validation split")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-refit", action="store_true",
                   help="keep the trial's head instead of refitting it on train+val")
    s.add_argument("--batch-size", type=int, default=2048)
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    s.add_argument("--out", help="run folder for config, history, model and plot")
    s.add_argument("--json", action="store_true", help="print one JSON object at the end")

    e = sub.add_parser("evaluate", help="accuracy of a model file on a dataset's test split")
    e.add_argument("model")
    _add_data_args(e)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true")

    f = sub.add_parser("finetune", help="fine-tune the output layer (kernels frozen) with Adam")
    f.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder holding model.npz, or a model file")
    _add_data_args(f)
    f.add_argument("--epochs", type=int, default=20)
    f.add_argument("--batch-size", type=int, default=128)
    f.add_argument("--lr", type=float, default=1e-4,
                   help="Adam learning rate (on standardized features)")
    f.add_argument("--patience", type=int, default=3, help="epochs without validation gain before stopping")
    f.add_argument("--weight-decay", type=float, default=0.0,
                   help="decoupled weight decay (AdamW) on the standardized head; 0 = Adam")
    f.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="cosine anneals the rate towards 0 over --epochs")
    f.add_argument("--refit-full", action="store_true",
                   help="after choosing the epoch on validation, retrain that many epochs from "
                        "the same start on train + validation (the saved head has then seen it)")
    f.add_argument("--shift", type=int, default=0,
                   help="augment: move each training image by up to N pixels, fresh each epoch "
                        "(features recomputed per epoch); 0 = off")
    f.add_argument("--rotate", type=float, default=0.0,
                   help="augment: random rotations up to this many degrees (with --shift/--zoom)")
    f.add_argument("--zoom", type=float, default=0.0,
                   help="augment: random zoom factor in [1 - Z, 1 + Z]")
    f.add_argument("--elastic", type=float, default=0.0, metavar="ALPHA",
                   help="augment: elastic distortion of up to ALPHA pixels before smoothing "
                        "(Simard et al.; 34 with --elastic-sigma 4 for MNIST)")
    f.add_argument("--elastic-sigma", type=float, default=4.0,
                   help="smoothing of the elastic field, pixels")
    f.add_argument("--val-fraction", type=float, default=0.1)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--elm-full", action="store_true",
                   help="re-solve the ELM head on the full training split before fine-tuning")
    f.add_argument("--stream", action="store_true", help="never hold features in memory")
    f.add_argument("--out", required=True, help="output model file")
    f.add_argument("--json", action="store_true")

    q = sub.add_parser("quantize", help="signed n-bit fixed-point head")
    q.add_argument("model", metavar="RUN_OR_MODEL")
    _add_data_args(q)
    q.add_argument("--bits", type=int, default=8)
    q.add_argument("--per-class", action="store_true", help="one scale per output class")
    q.add_argument("--pow2", action="store_true", help="power-of-two scales (shifts in hardware)")
    q.add_argument("--no-bias-correction", action="store_true",
                   help="do not fold the weights' mean rounding error (over the training "
                        "images' features) into the bias")
    q.add_argument("--val-fraction", type=float, default=0.1)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.add_argument("--json", action="store_true")

    x = sub.add_parser("export", help="write a model as Keras .h5 or ONNX")
    x.add_argument("model", metavar="RUN_OR_MODEL")
    x.add_argument("--format", required=True, choices=["h5", "onnx", "c"])
    x.add_argument("--out", required=True)
    x.add_argument("--json", action="store_true")

    i = sub.add_parser("info", help="bit accounting: per-layer bits, MACs, file sizes")
    i.add_argument("model", metavar="RUN_OR_MODEL")
    i.add_argument("--no-sizes", action="store_true", help="skip the export size measurement")
    i.add_argument("--json", action="store_true")

    from .train_cli import add_train_parser
    add_train_parser(sub, _ints, _add_data_args)

    from .transfer_cli import add_transfer_parser
    add_transfer_parser(sub, _add_data_args)

    d = sub.add_parser("datasets", help="list the dataset sources")
    d.add_argument("--json", action="store_true")
    return parser


def cmd_search(args) -> int:
    from .report import summary_table
    from .search import search

    result = search(args.dataset, filters=args.filters, nl=args.nl, C=args.C, trials=args.trials,
                    train_size=args.train_size, val_fraction=args.val_fraction, seed=args.seed,
                    out=args.out, data_path=args.data_path, split=args.split,
                    refit=not args.no_refit, batch_size=args.batch_size, device=args.device,
                    cv=args.cv,
                    progress=not args.json and sys.stderr.isatty() or not args.json)
    if args.json:
        print(json.dumps(result.summary))
    else:
        from rich.console import Console
        Console().print(summary_table(result.summary))
        if args.out:
            print(f"run folder: {args.out} (model.npz, history.json/csv, trials.png)")
    return 0


def cmd_evaluate(args) -> int:
    from .data import load_dataset
    from .evaluate import evaluate_file

    ds = load_dataset(args.dataset, args.data_path, split=args.split, seed=args.seed)
    result = evaluate_file(args.model, ds)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['dataset']}: accuracy {100 * result['accuracy']:.2f} % on "
              f"{result['n']:,} test images ({result['split']})")
    return 0


def cmd_datasets(args) -> int:
    from .data import list_datasets

    names = list_datasets()
    print(json.dumps(names) if args.json else "\n".join(names))
    return 0


def _deploy_cmd(name):
    def run(args):
        from . import deploy_cli
        return getattr(deploy_cli, f"cmd_{name}")(args)
    return run


COMMANDS = {"search": cmd_search, "evaluate": cmd_evaluate, "datasets": cmd_datasets,
            **{n: _deploy_cmd(n) for n in ("finetune", "quantize", "export", "info")}}


def cmd_export(args) -> int:
    if args.format == "c":  # integer-only C99 (issue 5)
        from .deploy.c_export import cli_export_c
        return cli_export_c(args)
    return _deploy_cmd("export")(args)


COMMANDS["export"] = cmd_export


def cmd_train(args) -> int:
    from .train_cli import cmd_train as run
    return run(args)


COMMANDS["train"] = cmd_train


def cmd_transfer(args) -> int:
    from .transfer_cli import cmd_transfer as run
    return run(args)


COMMANDS["transfer"] = cmd_transfer


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LbcnnError as exc:
        print(f"lbcnn: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("lbcnn: error: out of memory; use fewer filters or a smaller --train-size",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lbcnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
