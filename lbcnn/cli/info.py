"""``lbcnn info``: bit accounting of any model: per-layer bits, MACs, file sizes."""
from __future__ import annotations

from ..outputs import strict_json
from .common import load_model_arg


def add_parser(sub) -> None:
    i = sub.add_parser("info", help="bit accounting: per-layer bits, MACs, file sizes")
    i.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder or a model file")
    i.add_argument("--no-sizes", action="store_true", help="skip the export size measurement")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=run)


def run(args) -> int:
    from ..deploy.accounting import account, render

    model, src = load_model_arg(args.model)
    info = account(model, src, sizes=not args.no_sizes)
    info["model"] = str(src)
    if args.json:
        print(strict_json(info))
    else:
        from ..report import console
        console().print(render(info))
    return 0
