"""Issue 5, CBCNN: integer engine vs float model, generated C latency and size.

    LBCNN_DATA=... python benchmarks/bench_cbcnn_engine.py runs/cbcnn-mnist/model.npz c
    LBCNN_DATA=... python benchmarks/bench_cbcnn_engine.py MODEL numpy --start 0 --stop 2000

``c``: export, compile (-O2), predict the whole test set in C (accuracy), time
single-image latency on 1,000 images with the shared bench harness, report
weight bytes and ``size``. ``numpy``: the NumPy integer engine against the
float model (``CBCNN.decision_function``) on a slice of the test set (slices
keep each command short on a shared machine); ``cbcnn_agreement`` gives
disagreements and the images at risk from the fixed-point head bound.
``compare``: single-image latency (median of per-call timings) of the C engine
(-O2 and -O3), the NumPy engine, float PyTorch (``CBCNN.predict``) and
onnxruntime (the ONNX export), in one run, plus the bytes of each format.
Everything one thread. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lbcnn.data import load_dataset  # noqa: E402
from lbcnn.deploy.c_common import CFLAGS, find_cc  # noqa: E402
from lbcnn.deploy.c_export import bench_source, export_c  # noqa: E402
from lbcnn.engine import compile_plan  # noqa: E402
from lbcnn.engine.cbcnn_plan import cbcnn_agreement  # noqa: E402
from lbcnn.models import load_model  # noqa: E402


def _latency(fn, images, reps=None):
    import statistics
    fn(images[:1])
    ts = []
    for i in range(len(images) if reps is None else reps):
        xi = images[i % len(images)][None]
        t0 = time.perf_counter()
        fn(xi)
        ts.append(time.perf_counter() - t0)
    return round(1e6 * statistics.median(ts), 1)


def compare(args, model, plan, x) -> dict:
    from lbcnn.engine import NumpyEngine

    x = x[:1000]
    res = {"latency_us": {}, "bytes": {"c_weights": plan.weight_bytes()["total"],
                                       "native_npz": Path(args.model).stat().st_size}}
    lat = res["latency_us"]
    cc = find_cc()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        summary = export_c(plan, tmp)
        res["bytes"]["c_flash_measured_O2"] = (summary["sizes"] or {}).get("flash")
        (tmp / "bench.c").write_text(bench_source())
        (tmp / "imgs.raw").write_bytes(np.ascontiguousarray(x).tobytes())
        variants = {"-O2": ["-O2"], "-O3": ["-O3"],
                    "-O2 builtin popcount -mpopcnt": ["-O2", "-DLBCNN_USE_BUILTIN_POPCOUNT",
                                                      "-mpopcnt"],
                    "-O3 builtin popcount -march=native": ["-O3", "-DLBCNN_USE_BUILTIN_POPCOUNT",
                                                           "-march=native"]}
        for opt, extra in variants.items():
            flags = [f for f in CFLAGS if f != "-O2"] + extra
            subprocess.run([cc, *flags, str(tmp / "model.c"), str(tmp / "bench.c"), "-o",
                            str(tmp / "bench")], check=True)
            b = json.loads(subprocess.run([str(tmp / "bench"), str(tmp / "imgs.raw"), "1"],
                                          capture_output=True, text=True, check=True).stdout)
            lat[f"c {opt}"] = b["latency_median_us"]
            res.setdefault("c_throughput_images_per_s", {})[opt] = b["throughput_images_per_s"]
        eng = NumpyEngine(plan)
        lat["numpy_engine"] = _latency(eng.predict, x, 50)
        lat["torch_float"] = _latency(model.predict, x, 200)
        try:
            import onnxruntime as ort

            from lbcnn.deploy.onnx_export import export_onnx
            p = export_onnx(model, tmp / "m.onnx", input_channels=x.shape[-1] if x.ndim == 4 else 1)
            res["bytes"]["onnx"] = p.stat().st_size
            so = ort.SessionOptions()
            so.intra_op_num_threads = so.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]

            def ort_run(xb):
                feed = xb if len(inp.shape) == xb.ndim else xb[..., 0]
                if "float" in inp.type:
                    feed = feed.astype(np.float32)
                return sess.run(None, {inp.name: feed})[0]

            lat["onnxruntime"] = _latency(ort_run, x, 200)
        except Exception as exc:  # onnx/onnxruntime missing
            res["onnx_error"] = f"{type(exc).__name__}: {exc}"[:200]
    if "onnxruntime" in lat:
        res["speedup_vs_onnxruntime"] = {k: round(lat["onnxruntime"] / v, 2)
                                         for k, v in lat.items() if k != "onnxruntime"}
    return res


def main() -> int:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("mode", choices=["c", "numpy", "compare"])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--stop", type=int, default=None)
    ap.add_argument("--opt", default="-O2")
    ap.add_argument("--c-pred", default=None,
                    help="c: save the C predictions here (.npy); numpy: compare the slice with them")
    args = ap.parse_args()
    ds = load_dataset(args.dataset)
    model = load_model(args.model)
    plan = compile_plan(args.model)
    out = {"model": args.model, "mode": args.mode, "bounds": {k: v for k, v in plan.bounds.items()
                                                             if k.startswith("first")},
           "head_shift": plan.head["shift"], "weight_bytes": plan.weight_bytes()}
    x, y = ds.x_test[args.start:args.stop], ds.y_test[args.start:args.stop]
    if args.mode == "numpy":
        t0 = time.perf_counter()
        res, pred_int, pred_flt = cbcnn_agreement(model, plan, x, return_predictions=True)
        t_np = time.perf_counter() - t0
        out.update({"start": args.start, "n": len(x), "numpy_correct": int((pred_int == y).sum()),
                    "float_correct": int((pred_flt == y).sum()),
                    "numpy_equals_float": int((pred_int == pred_flt).sum()),
                    "agreement": res, "numpy_and_float_seconds": round(t_np, 2)})
        if args.c_pred and Path(args.c_pred).exists():
            pred_c = np.load(args.c_pred)[args.start:args.stop]
            out["c_equals_numpy"] = int((pred_c == pred_int).sum())
    elif args.mode == "compare":
        out.update(compare(args, model, plan, x))
    else:
        cc = find_cc()
        if cc is None:
            print(json.dumps({"error": "no C compiler"}))
            return 1
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            summary = export_c(plan, tmp)
            flags = [f for f in CFLAGS if f != "-O2"] + [args.opt]
            subprocess.run([cc, *flags, str(tmp / "model.c"), str(tmp / "main.c"), "-o",
                            str(tmp / "run")], check=True)
            res = subprocess.run([str(tmp / "run")], input=np.ascontiguousarray(x).tobytes(),
                                 capture_output=True, check=True)
            pred_c = np.array([int(v) for v in res.stdout.split()])
            (tmp / "bench.c").write_text(bench_source())
            subprocess.run([cc, *flags, str(tmp / "model.c"),
                            str(tmp / "bench.c"), "-o", str(tmp / "bench")], check=True)
            (tmp / "imgs.raw").write_bytes(np.ascontiguousarray(x[:1000]).tobytes())
            b = subprocess.run([str(tmp / "bench"), str(tmp / "imgs.raw"), "1"],
                               capture_output=True, text=True, check=True)
            out.update({"n": len(x), "c_correct": int((pred_c == y).sum()),
                        "c_accuracy": float((pred_c == y).mean()), "flags": " ".join(flags),
                        "bench": json.loads(b.stdout), "sizes": summary["sizes"]})
            if args.c_pred:
                np.save(args.c_pred, pred_c)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
