"""``lbcnn info``: bit accounting of any model: per-layer bits, MACs, file sizes; for a
``.tflite``, its ops and TensorFlow Lite Micro's arena with the per-tensor allocations."""
from __future__ import annotations

from pathlib import Path

from ..outputs import strict_json
from .common import load_model_arg


def add_parser(sub) -> None:
    i = sub.add_parser("info", help="bit accounting: per-layer bits, MACs, file sizes; for a "
                                    ".tflite, its ops and TensorFlow Lite Micro's arena")
    i.add_argument("model", metavar="RUN_OR_MODEL",
                   help="a run folder, a model file, or a .tflite (or its export folder)")
    i.add_argument("--no-sizes", action="store_true", help="skip the export size measurement")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=run)


def run(args) -> int:
    from ..io.sniff import sniff

    kind = sniff(args.model)
    if kind in ("TFLite", "TFLite folder"):
        path = Path(args.model) if kind == "TFLite" else Path(args.model) / "model.tflite"
        return _tflite_info(path, args)
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


def _tflite_info(path: Path, args) -> int:
    from ..deploy.tflite_info import render_tflite_info, tflite_info
    from ..io.artefacts import read_tflite_file

    info = tflite_info(read_tflite_file(path))
    info["model"] = str(path)
    if args.json:
        print(strict_json(info))
    else:
        from ..report import console
        console().print(render_tflite_info(info))
    return 0
