"""``lbcnn export``: a model as Keras .h5, ONNX or an integer-only C99 folder."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import ConfigError
from ..io.artefacts import GRAY_DATASETS, load_any
from ..outputs import strict_json
from .common import accuracy, bit_width, load_data, load_model_arg, nonneg_int, say


def add_parser(sub) -> None:
    x = sub.add_parser("export", help="write a model as Keras .h5, ONNX, an integer-only C99 "
                                      "folder, an Arduino library or a fully-integer TFLite "
                                      "bundle")
    x.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder or a model file")
    x.add_argument("--format", required=True, choices=["h5", "onnx", "c", "arduino", "tflite"],
                   help="h5 (Keras 3, the paper's layout), onnx, c (integer-only C99 folder with "
                        "a Makefile, CMakeLists.txt and a Zephyr module), arduino (an Arduino "
                        "library: library.properties, src/, examples/Classify/Classify.ino) or "
                        "tflite (a folder: model.tflite, model_data.cc for TensorFlow Lite "
                        "Micro, README.md with the arena and the op resolver)")
    x.add_argument("--out", required=True,
                   help="output file (h5, onnx) or folder (c, arduino, tflite)")
    x.add_argument("--bits", type=bit_width, default=8,
                   help="c, arduino, tflite: head bits used when the model's head is still float")
    x.add_argument("--force", action="store_true",
                   help="c, arduino, tflite: write into a non-empty folder, replacing the files "
                        "the export writes (others are kept)")
    x.add_argument("--rounding", choices=["exact", "tflite"], default="exact",
                   help="c, arduino (LB-CNN): 'tflite' ends the head as the .tflite does (int16 "
                        "logits rescaled with TFLite's MultiplyByQuantizedMultiplier), so the C, "
                        "the engine and TensorFlow Lite Micro return the same logits")
    x.add_argument("--weights", choices=["auto", "int8", "int4"], default="auto",
                   help="tflite: auto (int4 for LB-CNN heads of <= 4 bits), int4 (also a "
                        "CBCNN's binary layers) or int8; int4 is kept only where TensorFlow "
                        "Lite Micro runs it, and it unpacks int4 into its arena (smaller file, "
                        "larger arena)")
    x.add_argument("--activations", choices=["int16", "int8"], default="int16",
                   help="tflite, LB-CNN: int16 (exact features, the default) or int8 (lossy: "
                        "each conv rescaled by a power of two chosen on training images; half "
                        "the arena, int4 heads run in TFLite Micro, three-layer models map)")
    x.add_argument("--calibration-images", type=nonneg_int, default=500, metavar="N",
                   help="tflite, and c --rounding tflite (LB-CNN): training images of the "
                        "recorded dataset (seeded sample) that set the int16 logit step (4x "
                        "their largest logit) and the int8 shifts; 0: the worst-case bound")
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
    c_like = args.format in ("c", "arduino")
    if args.format == "tflite" and Path(args.out).suffix.lower() == ".tflite":
        raise ConfigError(f"--format tflite writes a folder (model.tflite, model_data.cc, "
                          f"README.md); give a folder name, not {args.out}")
    if args.rounding != "exact" and not c_like:
        raise ConfigError("--rounding applies to --format c and arduino (a .tflite always rounds "
                          "as TFLite)")
    if c_like or args.format == "tflite":  # a user's README.md is never overwritten unasked
        prepare_run_dir(args.out, force=args.force, resumable=False)
    else:
        check_out_file(args.out)
    model, src = load_model_arg(args.model)
    if args.format == "tflite":
        return _export_tflite(args, model, src)
    if c_like:  # integer-only C99
        ds, why = _recorded_data(model)
        _note_c_quantization(model, args, ds)
        return _export_c(args, model, src, ds, why)
    t0 = time.perf_counter()
    if args.format == "h5":
        from ..deploy.keras_export import export_h5
        from ..models import is_cbcnn, is_hybrid, is_lowbit
        if is_lowbit(model):
            raise ConfigError("Keras .h5 export is for LB-CNN models: a lowbit model is integer "
                              "arithmetic (per-channel shifts, fixed-point requantization, an "
                              "integer resize) that no Keras layer computes exactly; export it "
                              "with --format onnx or c")
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


_PROVENANCE_KEYS = ("dataset", "dataset_path", "data_path", "class_names", "preprocessing",
                    "label_values", "split", "seed", "val_fraction", "train_size", "input_color",
                    "test_accuracy", "test_size")


def _c_provenance(model) -> dict:
    """What model.json records beside the C sources (with their hashes): what `lbcnn
    evaluate C_FOLDER` needs to find the data and its test split, from any working
    directory, and to name the classes."""
    meta = getattr(model, "meta_", {}) or {}
    record = {k: meta[k] for k in _PROVENANCE_KEYS if meta.get(k) is not None}
    classes = getattr(model, "classes_", None)
    if classes is not None:
        record["classes"] = [int(c) for c in classes]
    return record


def _recorded_data(model):
    """(the dataset the model file records, with its test split; or None and why not)."""
    import argparse

    from ..errors import LbcnnError

    meta = getattr(model, "meta_", {}) or {}
    if not meta.get("dataset"):
        return None, "the model file records no dataset"
    blank = argparse.Namespace(dataset=None, data_path=None, split="default")
    try:
        return load_data(blank, meta, quiet=True), None
    except LbcnnError as exc:
        return None, str(exc)


def _note_c_quantization(model, args, ds, target: str = "C engine") -> None:
    """A float LB-CNN head becomes n-bit integers in C: say so, with what it costs on
    held-out validation images (when any are left)."""
    from ..models.lbcnn import LBCNN
    if not isinstance(model, LBCNN) or getattr(model, "head_meta_", {}).get("kind") == "fixed":
        return
    bits = getattr(args, "bits", 8)
    say(args, f"note: the model's head is float32; the {target} stores it as {bits}-bit "
              f"integers (per-tensor scale, no bias correction). `lbcnn quantize` first gives "
              f"a bias-corrected head")
    if ds is None:
        return
    from ..data.splits import finetune_split
    from ..engine.plan import compile_plan, dequantized_model
    meta = getattr(model, "meta_", {}) or {}
    _, va, disjoint = finetune_split(ds, model, float(meta.get("val_fraction", 0.1)),
                                     int(meta.get("seed", 0) or 0))
    if disjoint not in ("groups", "images"):
        say(args, "note: no held-out validation images (the head was fitted on every training "
                  "image); `lbcnn evaluate OUT` measures the C on the test split")
        return
    ref = dequantized_model(model, compile_plan(model, bits=bits))
    xv, yv = ds.x_train[va], ds.y_train[va]
    say(args, f"validation accuracy ({ds.name}, n={len(va):,}, held out): float "
              f"{100 * accuracy(model, xv, yv):.2f} %, {bits}-bit integer head "
              f"{100 * accuracy(ref, xv, yv):.2f} %")


N_TEST_VECTORS = 10


def _test_vectors(ds, plan):
    """A seeded, stratified sample of the test split in the plan's input format, or the
    reason there is none."""
    from ..data.splits import test_sample
    from ..preprocess import model_input

    idx = test_sample(ds.y_test, N_TEST_VECTORS, seed=0)
    try:
        return model_input(ds.x_test[idx], plan.input_shape), None
    except ConfigError as exc:
        return None, str(exc)


def _export_c(args, model, src, ds, why) -> int:
    """``lbcnn export MODEL --format c|arduino --out DIR``."""
    import json

    from ..deploy.c_export import export_c
    from ..engine.plan import compile_plan

    path = Path(src)
    calibration = None
    if args.rounding == "tflite":
        calibration, note = _calibration_images(model, args, ds, why)
        if note:
            say(args, note)
    plan = compile_plan(path if path.suffix.lower() == ".npz" else model, bits=args.bits,
                        rounding=args.rounding, calibration=calibration)
    images = None
    if ds is not None:
        images, why = _test_vectors(ds, plan)
    meta = getattr(model, "meta_", {}) or {}
    summary = export_c(plan, args.out, test_images=images, class_names=meta.get("class_names"),
                       layout="arduino" if args.format == "arduino" else "c",
                       record=_c_provenance(model))
    out = {"format": args.format, "source": str(path), "out": str(args.out),
           "weight_bytes": summary["weight_bytes"]["total"], "sizes": summary["sizes"],
           "test_vectors": summary["test_vectors"], "files": summary["files"],
           "no_test_vectors_because": None if images is not None else why}
    if images is None:
        say(args, f"note: no test vectors ({why}); the project has no self test")
    if getattr(args, "json", False):
        print(json.dumps(out))
        return 0
    sz = summary["sizes"]
    extra = f", flash {sz['flash']:,} B, RAM {sz['ram']:,} B" if sz else ""
    tv = f", {summary['test_vectors']} test vectors" if summary["test_vectors"] else ""
    if args.format == "arduino":
        print(f"wrote the Arduino library {args.out}: library.properties, src/, "
              f"examples/Classify/Classify.ino{tv} (weights {out['weight_bytes']:,} B{extra})")
    else:
        print(f"wrote {args.out}/: model.[ch], lbcnn_prepare.[ch], main.c, Makefile, "
              f"CMakeLists.txt, zephyr/, README.md{tv + ' + selftest.c' if tv else ''} "
              f"(weights {out['weight_bytes']:,} B{extra})")
    return 0


def _calibration_images(model, args, ds, why, required: bool = False):
    """(a seeded sample of the recorded dataset's training images -- never test images --
    or None, and a note saying why none): None for other families, ``--calibration-images
    0``, or no data when not ``required``."""
    import numpy as np

    from ..models.lbcnn import LBCNN
    from ..preprocess import model_input
    if not isinstance(model, LBCNN):
        if args.activations != "int16":
            raise ConfigError("--activations applies to LB-CNN models (CBCNN and hybrid graphs "
                              "are int8 +-1 already)")
        return None, None
    if args.calibration_images == 0:
        if required:
            raise ConfigError("--activations int8 needs --calibration-images > 0")
        return None, None
    if ds is None:
        if required:
            raise ConfigError(f"--activations int8 needs the model's training images to "
                              f"calibrate on: {why}")
        return None, f"note: no calibration images ({why}); the logit step comes from the " \
                     f"worst-case bound"
    seed = int((getattr(model, "meta_", {}) or {}).get("seed", 0) or 0)
    rng = np.random.default_rng(seed)
    n = min(args.calibration_images, len(ds.x_train))
    x = ds.x_train[np.sort(rng.choice(len(ds.x_train), n, replace=False))]
    return model_input(x, model.body_.input_shape), None


def _export_tflite(args, model, src) -> int:
    """``lbcnn export MODEL --format tflite --out DIR``."""
    import json

    from ..deploy.tflite_common import TfliteOptions
    from ..deploy.tflite_export import export_tflite
    from ..engine.plan import compile_plan

    path = Path(src)
    plan = compile_plan(path if path.suffix.lower() == ".npz" else model, bits=args.bits)
    meta = dict(getattr(model, "meta_", {}) or {})
    if _raw_channels(model, path) == 3:   # a CBCNN on the luma of colour images takes Y
        meta["input_color"] = "y"
    ds, why = _recorded_data(model)
    calibration, note = _calibration_images(model, args, ds, why,
                                            required=args.activations == "int8")
    summary = export_tflite(plan, args.out, meta=meta,
                            options=TfliteOptions(weights=args.weights,
                                                  activations=args.activations,
                                                  calibration=calibration))
    # notes once the export succeeded: a refusal is then the only line
    _note_c_quantization(model, args, ds, "TFLite graph")
    for line in ([note] if note else []) + [f"note: {n}" for n in summary["notes"]]:
        say(args, line)
    out = {"format": "tflite", "source": str(path), "out": str(args.out),
           "bytes": summary["bytes"], "c_weight_bytes": summary["c_weight_bytes"],
           "ops": summary["ops"], "arena_bytes": (summary["arena"] or {}).get("total"),
           "notes": summary["notes"]}
    if args.json:
        print(json.dumps(out))
    else:
        arena = f", TFLite Micro arena {out['arena_bytes']:,} B" if out["arena_bytes"] else ""
        print(f"wrote {args.out}/model.tflite ({out['bytes']:,} B; the C weights are "
              f"{out['c_weight_bytes']:,} B{arena}), model_data.cc, README.md; ops: "
              f"{', '.join(out['ops'])}")
    return 0
