"""``lbcnn export``: a model as Keras .h5, ONNX or an integer-only C99 folder."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import ConfigError
from ..io.artefacts import GRAY_DATASETS, load_any
from ..outputs import strict_json
from .common import accuracy, bit_width, dataset_for, load_model_arg, say


def add_parser(sub) -> None:
    x = sub.add_parser("export", help="write a model as Keras .h5, ONNX or integer-only C99")
    x.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder or a model file")
    x.add_argument("--format", required=True, choices=["h5", "onnx", "c"],
                   help="h5 (Keras 3, the paper's layout), onnx, or c (integer-only C99 folder)")
    x.add_argument("--out", required=True, help="output file (h5, onnx) or folder (c)")
    x.add_argument("--bits", type=bit_width, default=8,
                   help="c: head bits used when the model's head is still float")
    x.add_argument("--json", action="store_true", help="print one JSON object at the end")
    x.set_defaults(func=run)


def _raw_channels(model, path):
    """Input channels of the ONNX graph: only a CBCNN with ``y_channel`` needs this
    (3 = RGB, unless the file says it was trained on a gray built-in dataset)."""
    from ..models import is_cbcnn

    if not is_cbcnn(model) or not model.preprocess.y_channel:
        return None
    from ..io.native import load_model_file
    config, _ = load_model_file(path)
    return 1 if config.get("dataset") in GRAY_DATASETS else 3


def run(args) -> int:
    from ..outputs import check_out_file, prepare_run_dir
    if args.format == "c":
        prepare_run_dir(args.out, force=True)  # regenerating a C folder in place is expected
    else:
        check_out_file(args.out)
    model, src = load_model_arg(args.model)
    if args.format == "c":  # integer-only C99
        _note_c_quantization(model, args)
        rc = _export_c(args)
        _write_c_provenance(model, Path(args.out))
        return rc
    t0 = time.perf_counter()
    if args.format == "h5":
        from ..deploy.keras_export import export_h5
        from ..models import is_cbcnn, is_hybrid
        if is_cbcnn(model) or is_hybrid(model):
            raise ConfigError(f"Keras .h5 export is for LB-CNN models; export a "
                              f"{type(model).__name__} with --format onnx")
        path = export_h5(model, args.out)
    else:
        from ..deploy.onnx_export import export_onnx
        path = export_onnx(model, args.out, _raw_channels(model, src))
    out = {"format": args.format, "source": str(src), "out": str(path),
           "bytes": path.stat().st_size, "seconds": time.perf_counter() - t0}
    print(strict_json(out) if args.json else f"wrote {path} ({out['bytes']:,} bytes)")
    return 0


_PROVENANCE_KEYS = ("dataset", "class_names", "preprocessing", "label_values", "seed",
                    "val_fraction", "train_size", "input_color")


def _write_c_provenance(model, out: Path) -> None:
    """model.json beside the C sources: what `lbcnn evaluate C_FOLDER` needs to find the data."""
    from ..outputs import write_json
    meta = getattr(model, "meta_", {}) or {}
    record = {k: meta[k] for k in _PROVENANCE_KEYS if meta.get(k) is not None}
    classes = getattr(model, "classes_", None)
    if classes is not None:
        record["classes"] = [int(c) for c in classes]
    write_json(out / "model.json", record)


def _note_c_quantization(model, args) -> None:
    """A float LB-CNN head becomes n-bit integers in C: say so, with what it costs on validation."""
    from ..models.lbcnn import LBCNN
    if not isinstance(model, LBCNN) or getattr(model, "head_meta_", {}).get("kind") == "fixed":
        return
    bits = getattr(args, "bits", 8)
    say(args, f"note: the model's head is float32; the C engine stores it as {bits}-bit "
              f"integers (per-tensor scale, no bias correction). `lbcnn quantize` first gives "
              f"a bias-corrected head")
    meta = getattr(model, "meta_", {}) or {}
    if not meta.get("dataset"):
        return
    from ..data.splits import finetune_split
    from ..engine.plan import compile_plan, dequantized_model
    from ..errors import LbcnnError
    try:
        args.dataset, args.data_path, args.split = None, None, "default"
        args.seed = int(meta.get("seed", 0))
        ds = dataset_for(model, args)
    except LbcnnError as exc:
        say(args, f"note: validation accuracy not measured ({exc})")
        return
    _, va, _ = finetune_split(ds, model, float(meta.get("val_fraction", 0.1)), args.seed)
    ref = dequantized_model(model, compile_plan(model, bits=bits))
    xv, yv = ds.x_train[va], ds.y_train[va]
    say(args, f"validation accuracy ({ds.name}, n={len(va):,}): float "
              f"{100 * accuracy(model, xv, yv):.2f} %, {bits}-bit C head "
              f"{100 * accuracy(ref, xv, yv):.2f} %")


def _dataset_vectors(config: dict, n: int = 8):
    """A few real test images of the dataset the model file names, or None."""
    name = config.get("dataset")
    if not name:
        return None
    try:
        from ..data import load_dataset
        ds = load_dataset(name)
    except Exception:   # no data here: the export still works, without test vectors
        return None
    if config.get("input_color") == "y":  # fitted on luma: the C model takes Y images
        from ..preprocess import rgb_to_y
        return rgb_to_y(ds.x_test[:n])
    return ds.x_test[:n]


def _export_c(args) -> int:
    """``lbcnn export MODEL --format c --out DIR``."""
    import json

    from ..deploy.c_export import export_c
    from ..engine.plan import compile_plan
    from ..io.native import load_model_file, resolve_model_path

    path = resolve_model_path(args.model)
    source = path if Path(path).suffix.lower() == ".npz" else None
    config = {}
    if source is None:
        source = load_any(path)
    else:
        try:
            config, _ = load_model_file(path)
        except Exception:
            config = {}
    plan = compile_plan(source)
    images = _dataset_vectors(config)
    summary = export_c(plan, args.out, test_images=images,
                       class_names=config.get("class_names"))
    out = {"format": "c", "source": str(path), "out": str(args.out),
           "weight_bytes": summary["weight_bytes"]["total"], "sizes": summary["sizes"],
           "test_vectors": summary["test_vectors"]}
    if getattr(args, "json", False):
        print(json.dumps(out))
    else:
        sz = summary["sizes"]
        extra = f", flash {sz['flash']:,} B, RAM {sz['ram']:,} B" if sz else ""
        tv = (f", {summary['test_vectors']} test vectors + selftest.c"
              if summary["test_vectors"] else "")
        print(f"wrote {args.out}/model.[ch], main.c, README.md{tv} "
              f"(weights {out['weight_bytes']:,} B{extra})")
    return 0
