"""Search and optimize at device speed: features, the C sweep, search trials, optimize.

Runs on the CPU now and on a GPU later; every part names its device. Prints one JSON
object (``--out FILE`` also writes it). Parts (``--parts``, comma-separated):

- ``features``: MNIST 40,4 features of 10,000 images: the native C kernel, the batched
  float32 torch path on the CPU and, with CUDA, on the GPU (uint8 upload, features
  back to the host), each checked equal to the C kernel bit for bit.
- ``sweep``: one ridge head by Cholesky (the system formed, then factorized once)
  against a 10-value C sweep from the same formed system: one Cholesky per C, and one
  eigendecomposition (float64 and float32) with a matrix product per C; scored on
  1,000 validation images. Shapes: MNIST 40,4 on 9,000 images (primal, d=7,840),
  a 1,000-image rung (dual, n=1,000) and 10 filters on 9,000 images (primal, d=1,960).
  Also the largest relative distance of each sweep's heads from a float64 solve.
- ``search``: ``lbcnn search`` MNIST 40,4 on 10,000 images, ``--search-trials`` trials
  at a fixed C, and with ``--C auto``.
- ``optimize``: ``lbcnn optimize --dataset mnist --train-size 10000 --minutes M`` run
  as a command, alternately with this tree and with ``--baseline-src`` (an export of
  an older tree, e.g. ``git archive main | tar -x -C /tmp/lbcnn-main``), ``--repeats``
  times: configurations evaluated, wall seconds (process start to exit), configurations
  per minute.

    python benchmarks/bench_gpu.py --parts features,sweep
    python benchmarks/bench_gpu.py --parts optimize --minutes 5 --baseline-src /tmp/lbcnn-main
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def device_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = p.name
        info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
    else:
        info["gpu"] = None
        info["note"] = "no CUDA device in this run: CPU figures only"
    return info


def _timed(fn, repeats=3):
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def part_features(ds, repeats):
    from lbcnn.models.lbcnn import LBCNNBody

    x = ds.x_train[:10000]
    body = LBCNNBody.random(ds.input_shape, (40, 4), 1, 0, ds.input_scale)
    t_native, ref = _timed(lambda: body.transform(x), repeats)
    t_torch, got = _timed(lambda: body.features_device(x, "cpu").numpy(), repeats)
    out = {"images": len(x), "filters": [40, 4], "features": body.n_features,
           "native_cpu_seconds": round(t_native, 4),
           "torch_cpu_seconds": round(t_torch, 4),
           "torch_cpu_equal_native": bool(np.array_equal(got, ref))}
    if torch.cuda.is_available():
        body.features_device(x[:64], "cuda")  # warm-up: kernels, taps on the device
        t_gpu, g = _timed(lambda: body.features_device(x, "cuda").cpu().numpy(), repeats)
        xd = torch.from_numpy(x).cuda()
        t_res, _ = _timed(lambda: body.features_device(xd, "cuda"), repeats)
        out.update({"cuda_seconds_with_copies": round(t_gpu, 4),
                    "cuda_seconds_resident": round(t_res, 4),
                    "cuda_equal_native": bool(np.array_equal(g, ref)),
                    "speedup_cuda_resident_vs_native": round(t_native / t_res, 1)})
    return out


def _sweep_case(h, t, hv, yv, grid, device):
    from lbcnn.heads.elm import DualSystem, RidgeAccumulator
    from lbcnn.heads.ridge_path import RidgePath, sweep, validation_score

    n, d = h.shape

    def form():
        if d < n:
            acc = RidgeAccumulator(d, t.shape[1], device=device)
            acc.update(h, t)
            return acc
        return DualSystem(h, t)

    def score(w):
        return validation_score(hv @ w, yv)

    def release(system):
        if hasattr(system, "release"):
            system.release()

    def one():
        system = form()
        w = RidgePath(system, "cholesky").weights(1e-3)[0]
        s = score(w)
        release(system)
        return s

    def swept(method, dtype=np.float64):
        system = form()
        res = sweep(RidgePath(system, method, len(grid), dtype=dtype), grid, score)
        release(system)
        return res

    t_one, _ = _timed(one, 1)
    t_chol, r_chol = _timed(lambda: swept("cholesky"), 1)
    t_eig, r_eig = _timed(lambda: swept("eigen"), 1)
    t_eig32, r_eig32 = _timed(lambda: swept("eigen", np.float32), 1)
    # accuracy: each method's heads against a float64 solve of the same system
    h64 = np.asarray(h.cpu() if isinstance(h, torch.Tensor) else h, dtype=np.float64)
    t64 = np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
    system = form()
    errors = {"cholesky": 0.0, "eigen-float64": 0.0, "eigen-float32": 0.0}
    paths = {"cholesky": RidgePath(system, "cholesky"),
             "eigen-float64": RidgePath(system, "eigen"),
             "eigen-float32": RidgePath(system, "eigen", dtype=np.float32)}
    gram64 = h64.T @ h64 if d < n else h64 @ h64.T  # formed once, solved per C below
    for C in grid[::3]:
        if d < n:
            ref = np.linalg.solve(gram64 + np.eye(d) / C, h64.T @ t64)
        else:
            ref = h64.T @ np.linalg.solve(gram64 + np.eye(n) / C, t64)
        for name, p in paths.items():
            w = p.weights(float(C))[0]
            errors[name] = max(errors[name],
                               float(np.linalg.norm(w - ref) / np.linalg.norm(ref)))
    release(system)
    return {"n": n, "d": d, "form": "primal" if d < n else "dual", "C_values": len(grid),
            "one_cholesky_head_seconds": round(t_one, 3),
            "sweep_cholesky_seconds": round(t_chol, 3),
            "sweep_eigen_float64_seconds": round(t_eig, 3),
            "sweep_eigen_float32_seconds": round(t_eig32, 3),
            "ratio_cholesky_sweep_to_one": round(t_chol / t_one, 2),
            "ratio_eigen64_sweep_to_one": round(t_eig / t_one, 2),
            "ratio_eigen32_sweep_to_one": round(t_eig32 / t_one, 2),
            "chosen_C": {"cholesky": r_chol.C, "eigen-float64": r_eig.C, "eigen-float32": r_eig32.C},
            "max_relative_error_vs_float64": {k: float(f"{v:.2e}") for k, v in errors.items()}}


def part_sweep(ds, device):
    from threadpoolctl import threadpool_info

    from lbcnn.heads.elm import one_vs_rest_targets
    from lbcnn.models.lbcnn import LBCNNBody

    grid = np.geomspace(1e-5, 10 ** -0.5, 10)  # 10 values, half a decade apart
    x, y = ds.x_train[:9000], ds.y_train[:9000]
    xv, yv = ds.x_train[50000:51000], ds.y_train[50000:51000]
    cases = []
    for filters, n in (((40, 4), 9000), ((40, 4), 1000), ((10,), 9000)):
        body = LBCNNBody.random(ds.input_shape, filters, 1, 0, ds.input_scale)
        h, hv = body.transform(x[:n]), body.transform(xv)
        t = one_vs_rest_targets(y[:n], 10)
        if device.type == "cuda":
            h, hv = torch.from_numpy(h).cuda(), torch.from_numpy(hv).cuda()
        case = _sweep_case(h, t, hv, yv, grid, device)
        case["filters"] = list(filters)
        cases.append(case)
    blas = [{"api": i.get("internal_api"), "threads": i.get("num_threads")}
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"device": str(device), "blas": blas, "grid": [float(c) for c in grid],
            "cases": cases}


def part_search(trials, device):
    from lbcnn.train.search import search

    out = {}
    for C in (1e-3, "auto"):
        t0 = time.perf_counter()
        r = search("mnist", filters=(40, 4), C=C, trials=trials, train_size=10000, seed=0,
                   progress=False, device=device)
        s = r.summary
        out[f"C={C}"] = {"trials": trials, "seconds_total": round(time.perf_counter() - t0, 2),
                         "seconds_per_trial": round(s["seconds_per_trial"], 3),
                         "seconds_features_median": round(s["seconds_features_median"], 3),
                         "seconds_solve_median": round(s["seconds_solve_median"], 3),
                         "C": s["C"], "val_accuracy": s["val_accuracy"],
                         "test_accuracy": s["test_accuracy"], "device": s["device"]}
    return out


def _optimize_run(src: Path, minutes: float, extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "lbcnn", "optimize", "--dataset", "mnist",
               "--train-size", "10000", "--minutes", str(minutes), "--seed", "0",
               "--out", str(Path(tmp) / "run"), "--json", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1:], "wall_seconds": round(wall, 1)}
        s = json.loads(proc.stdout)
    configs = s.get("evaluated_this_run", s.get("trials"))
    return {"configurations": configs, "completed": s.get("completed"),
            "wall_seconds": round(wall, 1), "reported_seconds": s.get("seconds"),
            "configurations_per_minute": round(60 * configs / wall, 2),
            "front": [{"label": m["label"], "val": m["val_accuracy"], "test": m["test_accuracy"],
                       "kbits": m["kbits"]} for m in s.get("front", [])]}


def part_optimize(minutes, baseline, repeats, extra):
    runs = {"this": [], "baseline": []}
    for _ in range(repeats):
        runs["this"].append(_optimize_run(ROOT, minutes, extra))
        if baseline:
            runs["baseline"].append(_optimize_run(Path(baseline), minutes, extra))
    out = {"minutes": minutes, "budget_seconds": 60 * minutes, "runs": runs}
    for k, rs in runs.items():
        good = [r for r in rs if "error" not in r]
        if good:
            out[f"{k}_configurations_per_minute"] = round(
                statistics.mean(r["configurations_per_minute"] for r in good), 2)
            out[f"{k}_wall_over_budget"] = round(max(r["wall_seconds"] for r in good)
                                                 / (60 * minutes), 3)
    if "baseline_configurations_per_minute" in out and "this_configurations_per_minute" in out:
        out["ratio"] = round(out["this_configurations_per_minute"]
                             / out["baseline_configurations_per_minute"], 2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="features,sweep", help="features,sweep,search,optimize")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--search-trials", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--baseline-src", help="an older tree to run optimize from, side by side")
    ap.add_argument("--optimize-args", default="", help="extra optimize options, one string")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    from lbcnn.data import load_dataset
    from lbcnn.settings import resolve_device

    device = resolve_device(args.device)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    result = {"benchmark": "bench_gpu", "device": str(device), "machine": device_info()}
    ds = load_dataset("mnist")
    t0 = time.perf_counter()
    if "features" in parts:
        result["features"] = part_features(ds, args.repeats)
    if "sweep" in parts:
        result["sweep"] = part_sweep(ds, device)
    if "search" in parts:
        result["search"] = part_search(args.search_trials, device)
    if "optimize" in parts:
        result["optimize"] = part_optimize(args.minutes, args.baseline_src, args.repeats,
                                           args.optimize_args.split())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
