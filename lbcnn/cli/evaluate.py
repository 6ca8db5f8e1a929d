"""``lbcnn evaluate`` and ``lbcnn datasets``."""
from __future__ import annotations

import json

from .common import add_data_args


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="accuracy of a model file on a dataset's test split")
    e.add_argument("model")
    add_data_args(e)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=run)

    d = sub.add_parser("datasets", help="list the dataset sources")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=run_datasets)


def run(args) -> int:
    from ..data import load_dataset
    from ..evaluate import evaluate_file

    ds = load_dataset(args.dataset, args.data_path, split=args.split, seed=args.seed)
    result = evaluate_file(args.model, ds)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['dataset']}: accuracy {100 * result['accuracy']:.2f} % on "
              f"{result['n']:,} test images ({result['split']})")
    return 0


def run_datasets(args) -> int:
    from ..data import list_datasets

    names = list_datasets()
    print(json.dumps(names) if args.json else "\n".join(names))
    return 0
