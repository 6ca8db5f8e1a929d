"""CBCNN training-step speed, same run: float32 on NCHW tensors (the baseline),
float32 on channels-last (NHWC) tensors, which training uses, and bfloat16
autocast on channels-last.

Times full optimizer steps (forward, squared hinge, backward, Adam, latent
clipping) of a preset on random inputs, alternating the variants in rounds so
that machine noise hits all alike. Prints one JSON object.

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
from lbcnn.train.cbcnn import TRAIN_FORMAT
from lbcnn.train.losses import squared_hinge


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
    variants = {"fp32_nchw": ("fp32", torch.contiguous_format),
                "fp32": ("fp32", TRAIN_FORMAT), "bf16": ("bf16", TRAIN_FORMAT)}
    for name, (_, fmt) in variants.items():
        torch.manual_seed(0)
        model = CBCNN(args.preset, None, None, shape, args.classes, False, None, "cpu")
        model.net.to(memory_format=fmt)
        nets[name] = (model.net, torch.optim.Adam(model.net.parameters(), 1e-3))
        results[name] = []

    def step(name):
        net, opt = nets[name]
        precision, fmt = variants[name]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(x.contiguous(memory_format=fmt))
        loss = squared_hinge(out.float(), y, args.classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        net.clip_latent_()

    for name in nets:  # warm-up: allocator, oneDNN primitive caches
        for _ in range(3):
            step(name)
    for _ in range(args.rounds):
        for name in nets:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            results[name].append((time.perf_counter() - t0) / args.steps)
    nchw = statistics.median(results["fp32_nchw"])
    fp32 = statistics.median(results["fp32"])
    bf16 = statistics.median(results["bf16"])
    print(json.dumps({
        "benchmark": "cbcnn_train_step", "preset": args.preset, "classes": args.classes,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "seconds_per_step_fp32_nchw": nchw, "seconds_per_step_fp32": fp32,
        "seconds_per_step_bf16": bf16, "speedup_channels_last_over_nchw": nchw / fp32,
        "speedup_bf16_over_fp32": fp32 / bf16, "rounds": results}))


if __name__ == "__main__":
    main()
