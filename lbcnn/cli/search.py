"""``lbcnn search``: random +-1 kernel sets with a closed-form ELM head."""
from __future__ import annotations

import json
import sys

from .common import add_data_args, ints


def add_parser(sub) -> None:
    s = sub.add_parser("search", help="search random +-1 kernel sets with a closed-form ELM head")
    add_data_args(s)
    s.add_argument("--filters", type=ints, default=(40, 4), help="depth multipliers, e.g. 40,4")
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
    s.set_defaults(func=run)


def run(args) -> int:
    from ..report import summary_table
    from ..search import search

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
