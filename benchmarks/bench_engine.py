"""Issue 5 benchmark: integer C engine vs NumPy engine vs onnxruntime vs float PyTorch.

MNIST LB-CNN 40,4 (``runs/mnist404/model.npz`` when present, else a 1-trial
search on 10k images, seed 0), one thread everywhere, all in one run. Prints
one JSON object.

    LBCNN_DATA=../shared/data python benchmarks/bench_engine.py [--model PATH]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lbcnn.data import load_dataset  # noqa: E402
from lbcnn.deploy.c_common import find_cc  # noqa: E402
from lbcnn.deploy.c_export import bench_source, export_c  # noqa: E402
from lbcnn.engine import NumpyEngine, compile_plan, dequantized_model  # noqa: E402


def latency(fn, x1, reps=50):
    fn(x1)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x1)
        ts.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(ts)


def throughput(fn, xb, reps=2):
    fn(xb[:16])
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(xb)
    return reps * len(xb) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/mnist404/model.npz")
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("mnist")
    if Path(args.model).exists():
        from lbcnn.models import load_model
        model, source = load_model(args.model), args.model
    else:
        from lbcnn.train.search import search
        model = search(ds, filters=(40, 4), trials=1, train_size=10000, seed=0,
                       device="cpu", progress=False).model
        source = "search(mnist, 40,4, trials=1, train_size=10000, seed=0)"
    plan = compile_plan(args.model if Path(args.model).exists() else model)
    ref = dequantized_model(model, plan)
    x = ds.x_test[:args.batch]
    x1 = ds.x_test[:1]
    out = {"model": source, "filters": list(model.body_.filters), "features": plan.n_features,
           "head_bits": plan.head["bits"], "threads": 1, "batch": len(x)}

    # C engine
    cc = find_cc()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        summary = export_c(plan, tmp)
        (tmp / "bench.c").write_text(bench_source())
        x.tofile(tmp / "imgs.raw")
        c_res = {}
        for opt in ("-O3", "-O2"):
            exe = tmp / f"bench{opt}"
            subprocess.run([cc, "-std=c99", opt, "-Wall", "-Wextra", "-Werror",
                            str(tmp / "model.c"), str(tmp / "bench.c"), "-o", str(exe)], check=True)
            r = json.loads(subprocess.run([str(exe), str(tmp / "imgs.raw"), "5"],
                                          capture_output=True, text=True, check=True).stdout)
            r.pop("sink")
            c_res[opt] = r
        subprocess.run([cc, "-std=c99", "-O3", str(tmp / "model.c"), str(tmp / "main.c"), "-o",
                        str(tmp / "lbcnn")], check=True)
        pred_c = np.array([int(v) for v in subprocess.run(
            [str(tmp / "lbcnn")], input=x.tobytes(), capture_output=True, check=True).stdout.split()])
    eng = NumpyEngine(plan)
    pred_np = eng.predict(x)
    pred_float = ref.predict(x)
    out["c"] = {"latency_us": c_res["-O3"]["latency_median_us"],
                "throughput_images_per_s": c_res["-O3"]["throughput_images_per_s"],
                "flags": "-std=c99 -O3", "O2": c_res["-O2"], "sizes": summary["sizes"]}
    out["agreement"] = {"c_vs_numpy": float((pred_c == pred_np).mean()),
                        "numpy_vs_float_dequantized": float((pred_np == pred_float).mean())}

    out["numpy_engine"] = {"latency_us": latency(eng.predict, x1, 20),
                           "throughput_images_per_s": throughput(eng.predict, x, 1)}

    body, coef = model.body_, torch.from_numpy(ref.coef_)
    scale = float(body.input_scale)

    def torch_predict(xb):
        with torch.inference_mode():
            xf = xb[..., None] if xb.ndim == 3 else xb
            f = body.forward_torch(torch.from_numpy(xf.astype(np.float32))) * scale
            return (f @ coef).argmax(1).numpy()

    out["torch_float"] = {"latency_us": latency(torch_predict, x1),
                          "throughput_images_per_s": throughput(torch_predict, x)}

    sizes = {"c_weights": plan.weight_bytes()["total"],
             "c_flash_measured": (summary["sizes"] or {}).get("flash"),
             "native_npz": Path(args.model).stat().st_size if Path(args.model).exists() else None}
    try:
        from lbcnn.deploy.onnx_export import export_onnx
    except ImportError:
        export_onnx = None
    out["onnxruntime"] = None
    with tempfile.TemporaryDirectory() as tmp:
        if export_onnx is not None:
            import onnxruntime as ort
            p = export_onnx(model, Path(tmp) / "m.onnx")
            sizes["onnx"] = p.stat().st_size
            so = ort.SessionOptions()
            so.intra_op_num_threads = so.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]

            def ort_predict(xb):
                feed = xb[..., None] if xb.ndim == 3 else xb
                if "float" in inp.type:
                    feed = feed.astype(np.float32)
                return sess.run(None, {inp.name: feed})[0]

            out["onnxruntime"] = {"input": f"{inp.name} {inp.type} {inp.shape}",
                                  "latency_us": latency(ort_predict, x1),
                                  "throughput_images_per_s": throughput(ort_predict, x)}
        try:
            from lbcnn.deploy.keras_export import export_h5
            sizes["h5"] = export_h5(model, Path(tmp) / "m.h5").stat().st_size
        except Exception as exc:  # keras missing or exporter not ready
            sizes["h5"] = None
            out["h5_error"] = f"{type(exc).__name__}: {exc}"[:200]
    out["bytes"] = sizes
    if out["onnxruntime"]:
        o = out["onnxruntime"]
        out["ratios_vs_onnxruntime"] = {
            name: {"latency_speedup": o["latency_us"] / out[name]["latency_us"],
                   "throughput_ratio": out[name]["throughput_images_per_s"]
                   / o["throughput_images_per_s"]}
            for name in ("c", "numpy_engine", "torch_float")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
