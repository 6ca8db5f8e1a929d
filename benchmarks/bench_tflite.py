"""Issue 32 benchmark: the TFLite export of lbcnn models, per model file, in one run.

For each model: ``.tflite`` size against the C weights, TensorFlow Lite Micro's arena next to
the generated C's RAM, agreement on the full test split (TFLM argmax vs the integer engine's
exact argmax; the largest logit difference in LSB against the exact accumulator; identical
logits against the engine with ``rounding="tflite"``; LiteRT's reference kernels vs TFLM),
the generated C's static RAM and peak stack on an emulated Cortex-M4 (``lbcnn mcu``), and time
per image of the TFLM interpreter, the generated C (``-O2``, the baseline) and
onnxruntime, one thread each, on the same machine in the same run. The lossy int8 graph
(``--activations int8``, shifts calibrated on 500 seeded training images) is measured
beside it: size, arena, agreement, time. Prints one JSON object.

    LBCNN_DATA=../shared/data python benchmarks/bench_tflite.py runs/mnist/q8.npz [MORE.npz ...]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
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
from lbcnn.deploy.tflite_export import export_tflite  # noqa: E402
from lbcnn.deploy.tflite_runtime import Runner  # noqa: E402
from lbcnn.engine import NumpyEngine, compile_plan  # noqa: E402
from lbcnn.engine.cbcnn_plan import CBCNNPlan  # noqa: E402
from lbcnn.io.native import load_model_file  # noqa: E402
from lbcnn.models import load_model  # noqa: E402


def test_images(config: dict):
    ds = load_dataset(config["dataset"])
    x = ds.x_test
    if config.get("input_color") == "y":
        from lbcnn.preprocess import rgb_to_y
        x = rgb_to_y(x)
    return np.ascontiguousarray(x), np.asarray(ds.y_test), ds.name


def calibration_sample(config: dict, n: int = 500) -> np.ndarray:
    """What ``lbcnn export`` calibrates on: a seeded sample of the training images."""
    ds = load_dataset(config["dataset"])
    rng = np.random.default_rng(int(config.get("seed", 0)))
    cal = ds.x_train[np.sort(rng.choice(len(ds.x_train), min(n, len(ds.x_train)), replace=False))]
    if config.get("input_color") == "y":
        from lbcnn.preprocess import rgb_to_y
        cal = rgb_to_y(cal)
    return cal


def time_tflm(data: bytes, x: np.ndarray, n: int) -> dict:
    """Median time of ``invoke()`` alone, and of set_input + invoke + get_output (the Python
    binding's per-image cost included)."""
    r = Runner(data, "tflm")
    it = r._it
    q = r.quantize_input(x[:n])
    it.set_input(q[:1], 0)
    it.invoke()
    inv, full = [], []
    for img in q:
        it.set_input(img[None], 0)
        t0 = time.perf_counter()
        it.invoke()
        inv.append(time.perf_counter() - t0)
    for img in q:
        t0 = time.perf_counter()
        it.set_input(img[None], 0)
        it.invoke()
        it.get_output(0)
        full.append(time.perf_counter() - t0)
    return {"invoke_median_us": 1e6 * statistics.median(inv),
            "with_python_io_median_us": 1e6 * statistics.median(full), "images": len(q)}


def time_onnx(model, x: np.ndarray, n: int, tmp: Path) -> dict | None:
    try:
        import onnxruntime as ort

        from lbcnn.deploy.onnx_export import export_onnx
    except ImportError:
        return None
    from lbcnn.errors import ConfigError
    try:
        p = export_onnx(model, tmp / "m.onnx")
    except ConfigError:   # no ONNX graph for this family (hybrid)
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:1]})
    ts = []
    for i in range(n):
        t0 = time.perf_counter()
        sess.run(None, {name: x[i:i + 1]})
        ts.append(time.perf_counter() - t0)
    return {"median_us": 1e6 * statistics.median(ts), "images": n, "bytes": p.stat().st_size}


def time_c(plan, x: np.ndarray, tmp: Path) -> dict:
    cc = find_cc()
    summary = export_c(plan, tmp / "c", measure=True)
    (tmp / "c" / "bench.c").write_text(bench_source())
    x.tofile(tmp / "imgs.raw")
    exe = tmp / "bench"
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", str(tmp / "c" / "model.c"),
                    str(tmp / "c" / "bench.c"), "-o", str(exe)], check=True)
    r = json.loads(subprocess.run([str(exe), str(tmp / "imgs.raw"), "1"], capture_output=True,
                                  text=True, check=True).stdout)
    return {"median_us": r["latency_median_us"], "flags": "-std=c99 -O2 (host default layout)",
            "sizes": summary["sizes"], "weights": summary["weight_bytes"]["total"]}


def c_ram_cortex_m4(plan, x: np.ndarray, n: int) -> dict | None:
    """Static RAM and painted peak stack of the generated C on an emulated Cortex-M4 (``-O2``,
    ``lbcnn mcu``), its logits checked against the engine on ``n`` images; None without the
    [mcu] extra."""
    from lbcnn.errors import ConfigError
    try:
        from lbcnn.deploy.mcu import run_mcu
        r = run_mcu(plan, images=x[:n], n=n, count=1, check_alignment=False)
    except ConfigError:
        return None
    return {"static_ram_bytes": r["ram_bytes"], "peak_stack_bytes": r["stack_bytes"],
            "flash_bytes": r["flash_bytes"], "images": n, "logits_agree": r["logits_agree"]}


def bench_model(path: str, n_time: int, n_mcu: int) -> dict:
    from lbcnn.engine.plan import IntegerPlan
    config, _ = load_model_file(path)
    model = load_model(path)
    x, y, dsname = test_images(config)
    plan = compile_plan(path)
    lbcnn = isinstance(plan, IntegerPlan)
    out = {"model": path, "dataset": dsname, "n_test": len(x), "family": config.get("family")}
    if lbcnn:
        out.update({"filters": list(model.body_.filters), "nl": model.body_.nl,
                    "head_bits": int(plan.head["bits"]), "head_scales": plan.head["rescale"]})
    from lbcnn.deploy.tflite_common import TfliteOptions
    cal = calibration_sample(config) if lbcnn else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        summ = export_tflite(plan, tmp / "tflite", meta=config,
                             options=TfliteOptions(calibration=cal))
        out["export_seconds"] = time.perf_counter() - t0
        data = (tmp / "tflite" / "model.tflite").read_bytes()
        c = time_c(plan, x[:n_time], tmp)
        out["sizes"] = {"tflite_bytes": len(data), "c_weight_bytes": c["weights"],
                        "tflite_over_c_weights": len(data) / c["weights"] - 1,
                        "tflm_arena_bytes": summ["arena"]["total"],
                        "tflm_arena_head_tail": [summ["arena"]["head"], summ["arena"]["tail"]],
                        "c_ram_bytes": (c["sizes"] or {}).get("ram"),
                        "c_flash_bytes": (c["sizes"] or {}).get("flash")}
        if n_mcu:
            out["sizes"]["c_cortex_m4"] = c_ram_cortex_m4(plan, x, n_mcu)
        out["notes"] = summ["notes"]
        out["ops"] = summ["ops"]
        # agreement on the full test split
        t0 = time.perf_counter()
        tflm = Runner(data, "tflm").run(x)
        out["tflm_seconds_full_test"] = time.perf_counter() - t0
        eng = NumpyEngine(plan)
        exact = eng.scores(x)
        lit = Runner(data, "litert").run(x)
        agree = {"tflm_argmax_vs_engine": int((tflm.argmax(1) == exact.argmax(1)).sum()),
                 "litert_argmax_vs_tflm": int((lit.argmax(1) == tflm.argmax(1)).sum()),
                 "litert_max_logit_diff_vs_tflm": int(np.abs(lit - tflm).max())}
        if lbcnn:
            hd = plan.head
            acc = eng.features(x).astype(np.int64) @ hd["weight_q"].astype(np.int64) + hd["bias_q"]
            plan_t = compile_plan(path, rounding="tflite", calibration=cal)
            rq = plan_t.head["requant"]
            same = NumpyEngine(plan_t).scores(x)
            # the logit before rounding, in LSB: acc / 2^k for one weight scale (the graph's
            # rescale sits 2^-20 above 2^-k only to make TFLite's multiplier exact)
            real = acc / 2.0 ** rq["shift_k"] if rq["multiplier"].size == 1 else \
                acc * rq["effective"][None, :]
            top = np.sort(real, axis=1)
            agree.update({
                "max_logit_diff_lsb_vs_exact": float(np.abs(tflm - real).max()),
                "tflm_logits_equal_engine_tflite_rounding": int(np.all(tflm == same, axis=1).sum()),
                "tflm_logits_max_diff_vs_engine_tflite_rounding": int(np.abs(tflm - same).max()),
                "images_top2_within_one_lsb": int((top[:, -1] - top[:, -2] < 1).sum()),
                "images_saturated": int((np.abs(tflm) >= 32767).any(1).sum()),
                "logit_lsb_shift_k": int(rq["shift_k"])})
            # the same graph with the logit step from the worst-case bound (no calibration)
            summ_b = export_tflite(plan, tmp / "tflite_bound", meta=config, measure=False,
                                   options=TfliteOptions(calibration=None))
            tb = Runner((tmp / "tflite_bound" / "model.tflite").read_bytes(), "tflm").run(x)
            agree["worst_case_step"] = {
                "tflm_argmax_vs_engine": int((tb.argmax(1) == exact.argmax(1)).sum()),
                "logit_lsb_shift_k": summ_b["details"]["logit_shift_k"],
                "tflm_logits_equal_engine_tflite_rounding": int(np.all(
                    tb == NumpyEngine(compile_plan(path, rounding="tflite")).scores(x), axis=1).sum())}
        else:
            agree["tflm_argmax_vs_float_model"] = int(
                (tflm.argmax(1) == model.decision_function(x).argmax(1)).sum())
        out["agreement"] = agree
        out["accuracy"] = {"tflm": float((plan.classes[tflm.argmax(1)] == y).mean()),
                           "engine": float((plan.classes[exact.argmax(1)] == y).mean())}
        # time per image, same machine, same run; baseline: the generated C at -O2
        t = time_tflm(data, x, n_time)
        o = time_onnx(model, x, n_time, tmp)
        out["time_per_image_us"] = {"c_O2": c["median_us"], "tflm_invoke": t["invoke_median_us"],
                                    "tflm_with_python_io": t["with_python_io_median_us"],
                                    "onnxruntime": o["median_us"] if o else None,
                                    "images": n_time}
        out["time_ratio_vs_c_O2"] = {
            "tflm_invoke": t["invoke_median_us"] / c["median_us"],
            "onnxruntime": (o["median_us"] / c["median_us"]) if o else None}
        if isinstance(plan, CBCNNPlan):
            out["int4_binary_weights"] = bench_cbcnn_int4(plan, config, exact, x, tmp)
        if lbcnn:
            out["int8_lossy"] = bench_int8(plan, cal, config, exact, y, x, n_time, c["median_us"],
                                           tmp)
    return out


def bench_cbcnn_int4(plan, config, exact, x, tmp) -> dict:
    from lbcnn.deploy.tflite_common import TfliteOptions
    summ = export_tflite(plan, tmp / "tflite4", meta=config, options=TfliteOptions(weights="int4"))
    data = (tmp / "tflite4" / "model.tflite").read_bytes()
    out = Runner(data, "tflm").run(x)
    return {"bytes": len(data), "arena_bytes": summ["arena"]["total"], "notes": summ["notes"],
            "argmax_vs_engine": int((out.argmax(1) == exact.argmax(1)).sum())}


def bench_int8(plan, cal, config, exact, y, x, n_time, c_us, tmp) -> dict:
    from lbcnn.deploy.tflite_common import TfliteOptions
    summ = export_tflite(plan, tmp / "tflite8", meta=config,
                         options=TfliteOptions(activations="int8", calibration=cal))
    data = (tmp / "tflite8" / "model.tflite").read_bytes()
    out = Runner(data, "tflm").run(x)
    t = time_tflm(data, x, n_time)
    return {"bytes": len(data), "arena_bytes": summ["arena"]["total"], "notes": summ["notes"],
            "argmax_vs_engine_exact": int((out.argmax(1) == exact.argmax(1)).sum()),
            "accuracy": float((plan.classes[out.argmax(1)] == y).mean()),
            "tflm_invoke_median_us": t["invoke_median_us"],
            "tflm_invoke_ratio_vs_c_O2": t["invoke_median_us"] / c_us}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="native .npz model files (LB-CNN, CBCNN, hybrid)")
    ap.add_argument("--time-images", type=int, default=500,
                    help="test images timed per runtime (median per image)")
    ap.add_argument("--mcu-images", type=int, default=4,
                    help="test images run on the emulated Cortex-M4 for the C's RAM and stack "
                         "(needs the [mcu] extra; 0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version()},
           "models": [bench_model(p, args.time_images, args.mcu_images) for p in args.models]}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
