"""``lbcnn evaluate`` and ``lbcnn datasets``."""
from __future__ import annotations

import json

from .common import add_data_args, add_trust_c, load_data, say, seed_int


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of a "
                                        "model on a dataset's test split")
    e.add_argument("model", metavar="MODEL",
                   help="a run folder, native .npz model, Keras .h5, .onnx file (run with "
                        "onnxruntime), .tflite file or its export folder (run in TensorFlow Lite "
                        "Micro) or exported C folder (compiled with the system C compiler)")
    add_data_args(e, required=False)
    e.add_argument("--seed", type=seed_int, default=None,
                   help="seed of the test split for sources without one; default: the seed "
                        "recorded in the model file, else 0")
    e.add_argument("--out", metavar="DIR",
                   help="write evaluation.json and confusion.png (per-class accuracy and the "
                        "confusion matrix) into DIR; nothing is written without it")
    e.add_argument("--interpreter", choices=["tflm", "litert"], default="tflm",
                   help="runs a .tflite: tflm (TensorFlow Lite Micro's reference interpreter, "
                        "the default) or litert (LiteRT's reference kernels)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    add_trust_c(e)
    e.set_defaults(func=run)

    d = sub.add_parser("datasets", help="list the dataset sources")
    d.add_argument("--json", action="store_true", help="print a JSON list")
    d.set_defaults(func=run_datasets)


def run(args) -> int:
    from ..evaluate import evaluate, render, write_report
    from ..io.artefacts import open_predictor
    from ..outputs import strict_json

    if args.out:  # checked before any compute: a file, a path under a file, /proc, read-only
        from ..outputs import prepare_run_dir
        prepare_run_dir(args.out, force=True, resumable=False)
    pred = open_predictor(args.model, trust_c=args.trust_c,
                          interpreter=args.interpreter)
    if not args.dataset and not pred.dataset:
        from ..errors import ConfigError
        raise ConfigError(f"{args.model} records no dataset ({pred.kind} model); pass --dataset")
    ds = load_data(args, pred.config, seed=args.seed)
    result = evaluate(pred, ds)
    if pred.kind == "tflite":
        result["interpreter"] = args.interpreter
    if args.out:
        result["files"] = write_report(result, args.out)
    if args.json:
        print(strict_json(result))
        return 0
    from ..report import console
    console().print(render(result))
    if args.out:
        print(f"wrote {result['files']['json']} and {result['files']['png']}")
    else:
        say(args, "add --out DIR to save the per-class accuracy and confusion matrix as JSON and PNG")
    return 0


def run_datasets(args) -> int:
    from ..data import list_datasets

    names = list_datasets()
    print(json.dumps(names) if args.json else "\n".join(names))
    return 0
