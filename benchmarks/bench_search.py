"""LB-CNN search speed on MNIST 40,4 with 10k training images.

Prints one JSON object. Times, in one run on this machine:
- feature extraction per 10,000 images (native C kernel, streamed),
- whole trials (train + val features, Gram + Cholesky solve, scoring),
- a plain NumPy implementation of the same maths as the baseline
  (direct 9-tap conv loop, strided max-pool, ``np.dot`` Gram, ``np.linalg.solve``),
- the Gram's GFLOP/s next to this machine's measured sgemm GFLOP/s.

    python benchmarks/bench_search.py [--trials 5] [--search-trials 50]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np


def numpy_features(x_u8, kernels):
    """Plain NumPy LB-CNN body: 9-tap direct conv per layer, 'same' 4x4/2 max pool."""
    h = x_u8.astype(np.float32) / 255.0  # (n, H, W, C)
    for layer in kernels:
        k = layer["conv"].astype(np.float32)  # (3, 3, C, m)
        n, hh, ww, c = h.shape
        m = k.shape[3]
        hp = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((n, hh, ww, c, m), dtype=np.float32)
        for di in range(3):
            for dj in range(3):
                out += hp[:, di:di + hh, dj:dj + ww, :, None] * k[di, dj]
        out = out.reshape(n, hh, ww, c * m)
        oh, ow = (hh + 1) // 2, (ww + 1) // 2
        pad = np.full((n, 2 * oh + 2, 2 * ow + 2, c * m), -np.inf, dtype=np.float32)
        pad[:, 1:1 + hh, 1:1 + ww] = out
        pooled = np.full((n, oh, ow, c * m), -np.inf, dtype=np.float32)
        for di in range(4):
            for dj in range(4):
                np.maximum(pooled, pad[:, di:di + 2 * oh:2, dj:dj + 2 * ow:2], out=pooled)
        h = pooled
    return h.reshape(len(h), -1)


def numpy_trial(x_tr, y_tr, x_va, y_va, kernels, C, n_classes):
    t0 = time.perf_counter()
    h = np.concatenate([numpy_features(x_tr[i:i + 1000], kernels) for i in range(0, len(x_tr), 1000)])
    hv = np.concatenate([numpy_features(x_va[i:i + 1000], kernels) for i in range(0, len(x_va), 1000)])
    t1 = time.perf_counter()
    y = np.where(np.arange(n_classes)[None] == y_tr[:, None], 1.0, -1.0).astype(np.float32)
    w = np.linalg.solve(np.eye(h.shape[1], dtype=np.float32) / C + np.dot(h.T, h), np.dot(h.T, y))
    t2 = time.perf_counter()
    acc = float(((hv @ w).argmax(1) == y_va).mean())
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "features": t1 - t0, "solve": t2 - t1, "scoring": t3 - t2,
            "val_accuracy": acc}


def sgemm_gflops(n=4096, reps=3):
    a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    b = np.random.default_rng(1).normal(size=(n, n)).astype(np.float32)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _time(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5, help="trials timed for the median")
    ap.add_argument("--search-trials", type=int, default=50, help="0 skips the full search")
    ap.add_argument("--baseline-trials", type=int, default=1)
    args = ap.parse_args()

    import torch
    from lbcnn.data import load_dataset
    from lbcnn.heads.elm import RidgeAccumulator, one_vs_rest_targets
    from lbcnn.models.lbcnn import LBCNNBody, fit_elm
    from lbcnn.train.search import _score, search, trial_seeds

    ds = load_dataset("mnist")
    tr, va = ds.split(10000, 0.1, 0)
    x_tr, y_tr, x_va, y_va = ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va]
    x10k = ds.x_train[:10000]
    body = LBCNNBody.random((28, 28, 1), (40, 4), seed=0)

    feat_times = []
    for _ in range(4):
        t = time.perf_counter()
        for _a, _b, _f in body.iter_transform(x10k, 2048):
            pass
        feat_times.append(time.perf_counter() - t)
    feat_times = feat_times[1:]  # first pass compiles/warms the kernel

    trials = []
    for s in trial_seeds(0, args.trials):
        b = LBCNNBody.random((28, 28, 1), (40, 4), seed=s)
        timer = {}
        t = time.perf_counter()
        w, _ = fit_elm(b, x_tr, y_tr, 10, 1e-3, 2048, torch.device("cpu"), timer)
        acc = _score(b, w, x_va, y_va, 2048, torch.device("cpu"), timer)
        trials.append({"seconds": time.perf_counter() - t, **timer, "val_accuracy": acc})

    # Gram throughput alone, on real features
    h = body.transform(x_tr)
    acc = RidgeAccumulator(h.shape[1], 10)
    t = time.perf_counter()
    for a in range(0, len(h), 2048):
        acc.update(h[a:a + 2048], one_vs_rest_targets(y_tr[a:a + 2048], 10))
    t_gram = time.perf_counter() - t
    t = time.perf_counter()
    acc.solve()
    t_chol = time.perf_counter() - t
    n, d = h.shape
    del h

    baseline = [numpy_trial(x_tr, y_tr, x_va, y_va, body.kernels, 1e-3, 10)
                for _ in range(args.baseline_trials)]
    base_trial = statistics.median(b["seconds"] for b in baseline)
    base_feat10k = statistics.median(b["features"] for b in baseline) * 10000 / (len(x_tr) + len(x_va))

    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}"
        f", {os.cpu_count()} cores", "torch_threads": torch.get_num_threads(),
        "dataset": "mnist", "filters": [40, 4], "fit_size": len(tr), "val_size": len(va),
        "features": d,
        "features_seconds_per_10k": statistics.median(feat_times),
        "trial_seconds_median": statistics.median(t["seconds"] for t in trials),
        "trial_breakdown_median": {k: statistics.median(t[k] for t in trials)
                                   for k in ("features", "solve", "scoring")},
        "trial_val_accuracy": [t["val_accuracy"] for t in trials],
        "gram_seconds": t_gram, "gram_gflops": n * d * (d + 1) / t_gram / 1e9,
        "cholesky_solve_seconds": t_chol,
        "sgemm_gflops_numpy_4096": sgemm_gflops(),
        "baseline_numpy": {"trial_seconds": base_trial, "features_seconds_per_10k": base_feat10k,
                           "solve_seconds": statistics.median(b["solve"] for b in baseline),
                           "val_accuracy": baseline[0]["val_accuracy"]},
    }
    result["speedup_trial_vs_numpy"] = base_trial / result["trial_seconds_median"]
    result["speedup_features_vs_numpy"] = base_feat10k / result["features_seconds_per_10k"]
    if args.search_trials:
        t = time.perf_counter()
        r = search(ds, filters=(40, 4), trials=args.search_trials, train_size=10000, seed=0,
                   progress=False)
        result["search_wall_seconds"] = time.perf_counter() - t
        result["search_trials"] = args.search_trials
        result["search_val_accuracy"] = r.summary["val_accuracy"]
        result["search_test_accuracy"] = r.summary["test_accuracy"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
