"""Distillation teacher's forward pass: channels-last weights against the default layout.

The CBCNN student trains on channels-last batches (``train_cbcnn.TRAIN_FORMAT``). The float
teacher sees the same batches; this times its no-grad forward pass with its weights in the
default (contiguous) layout, the baseline, and in channels-last, on the same random batch.
Prints one JSON object with both times, the speed-up and the largest logit difference.

    python benchmarks/bench_teacher_layout.py --preset cbcnn32 --classes 43
"""
from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cbcnn32")
    p.add_argument("--classes", type=int, default=43)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args(argv)

    import torch

    from lbcnn.train.distill import make_float_twin
    from lbcnn.models.cbcnn import CBCNN, PRESETS
    from lbcnn.preprocess import Preprocess

    torch.manual_seed(0)
    preset = PRESETS[args.preset]
    h, w, c = preset["input_shape"]
    model = CBCNN(None, preset["blocks"], preset["dense"], (h, w, c), args.classes, False,
                  Preprocess.from_dict({}), torch.device("cpu"))
    teacher = make_float_twin(model.net).eval()
    x = torch.randn(args.batch_size, c, h, w).contiguous(memory_format=torch.channels_last)

    def seconds_per_batch():
        with torch.no_grad():
            teacher(x)  # warm-up: one-off allocations and kernel choice
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                out = teacher(x)
        return (time.perf_counter() - t0) / args.repeats, out

    base, base_out = seconds_per_batch()
    teacher.to(memory_format=torch.channels_last)
    fast, fast_out = seconds_per_batch()
    print(json.dumps({"preset": args.preset, "classes": args.classes,
                      "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "baseline": "teacher weights in the default contiguous layout",
                      "contiguous_s_per_batch": round(base, 4),
                      "channels_last_s_per_batch": round(fast, 4),
                      "speedup": round(base / fast, 2),
                      "max_abs_logit_diff": float((base_out - fast_out).abs().max())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
