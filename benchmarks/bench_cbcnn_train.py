"""CBCNN training-step speed: float32 (baseline) vs bfloat16 autocast, same run.

Times full optimizer steps (forward, squared hinge, backward, Adam, latent
clipping) of a preset on random inputs, alternating the two precisions in
rounds so that machine noise hits both alike. Prints one JSON object.

    python benchmarks/bench_cbcnn_train.py --preset cbcnn32 --classes 43 --batch-size 100
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from lbcnn.models.cbcnn import CBCNN, PRESETS
from lbcnn.train_cbcnn import squared_hinge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cbcnn32", choices=sorted(PRESETS))
    ap.add_argument("--classes", type=int, default=43)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    shape = tuple(PRESETS[args.preset]["input_shape"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, shape[2], shape[0], shape[1], generator=gen)
    y = torch.randint(0, args.classes, (args.batch_size,), generator=gen)
    results = {}
    nets = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = CBCNN(args.preset, None, None, shape, args.classes, False, None, "cpu")
        nets[precision] = (model.net, torch.optim.Adam(model.net.parameters(), 1e-3))
        results[precision] = []

    def step(precision):
        net, opt = nets[precision]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(x)
        loss = squared_hinge(out.float(), y, args.classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        net.clip_latent_()

    for precision in nets:  # warm-up: allocator, oneDNN primitive caches
        for _ in range(3):
            step(precision)
    for _ in range(args.rounds):
        for precision in nets:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(precision)
            results[precision].append((time.perf_counter() - t0) / args.steps)
    fp32 = statistics.median(results["fp32"])
    bf16 = statistics.median(results["bf16"])
    print(json.dumps({
        "benchmark": "cbcnn_train_step", "preset": args.preset, "classes": args.classes,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "seconds_per_step_fp32": fp32, "seconds_per_step_bf16": bf16,
        "speedup_bf16_over_fp32": fp32 / bf16,
        "rounds_fp32": results["fp32"], "rounds_bf16": results["bf16"]}))


if __name__ == "__main__":
    main()
