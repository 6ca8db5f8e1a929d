"""Issue 30: our points for RESULTS.md's "ours against the anchors" (benchmarks/anchors.csv).

``lbcnn`` member: an `lbcnn optimize` front member refitted from its configuration and
kernel seed exactly as the optimizer's refit does (the ELM head on the whole budget,
fit + validation images of the run's split; bias-corrected, GPTQ-rounded, per-class
output-clipped n-bit head), its test accuracy read once, then the weights as flashed
(``lbcnn info``, checked against the compiled C's weight arrays), and the generated C
on an emulated Cortex-M4 and M0+ (instructions per image, static RAM, peak stack; every
prediction and logit compared with the NumPy integer engine).

``cbcnn`` architecture: the weights a CBCNN preset flashes (they do not depend on the
trained values), from its integer plan; accuracy and instructions come from the runs
RESULTS.md already lists.

    LBCNN_DATA=/path/to/data python benchmarks/anchors_ours.py lbcnn --dataset mnist \
        --filters 40,4,1 --bits 3 --C 8.6e-05 --kernel-seed 964274001 --val-fraction 0.3
    python benchmarks/anchors_ours.py cbcnn --preset cbcnn28 --classes 10
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def flashed(model) -> dict:
    from lbcnn.deploy.accounting import account
    from lbcnn.deploy.c_common import compiled_weight_bytes
    from lbcnn.deploy.c_export import export_c

    info = account(model, sizes=False)
    with tempfile.TemporaryDirectory() as tmp:
        export_c(model, tmp, measure=False)
        compiled = 8 * sum(compiled_weight_bytes(tmp).values())
    return {"info_flash_weight_bits": info["flash_weight_bits"],
            "compiled_weight_bits": compiled, "info_total_kbits": info["total_kbits"]}


def cmd_lbcnn(args) -> int:
    from lbcnn.data import load_dataset
    from lbcnn.deploy.mcu import run_mcu
    from lbcnn.train.optimize.space import Config
    from lbcnn.train.optimize.trial import prepare, refit

    ds = load_dataset(args.dataset)
    cfg = Config(tuple(int(f) for f in args.filters.split(",")), args.nl, args.C, args.bits,
                 args.color)
    data = prepare(ds, args.train_size, args.val_fraction, args.seed,
                   colors=(args.color,) if args.color != "gray" else ("rgb",))
    t0 = time.perf_counter()
    model, _ = refit(cfg, args.kernel_seed, data)
    x_test = ds.x_test
    if cfg.color == "y":
        from lbcnn.preprocess import rgb_to_y
        x_test = rgb_to_y(x_test)
    out = {"dataset": ds.name, "member": cfg.label(), "kernel_seed": args.kernel_seed,
           "train_size": int(len(data.budget(cfg.color)[1])), "split_seed": args.seed,
           "val_fraction": args.val_fraction, "refit_seconds": round(time.perf_counter() - t0, 1),
           "test_accuracy": float(model.score(x_test, ds.y_test)), **flashed(model)}
    for cpu in args.cpu:
        r = run_mcu(model, cpu=cpu, images=x_test[:args.n], n=args.n, count=args.count,
                    check_alignment=cpu == "cortex-m4")
        out[cpu] = {k: r[k] for k in ("all_equal", "agree", "logits_agree", "n",
                                      "instructions_mean", "counted_images", "flash_bytes",
                                      "ram_bytes", "stack_bytes", "ram_plus_stack_bytes")}
    print(json.dumps(out))
    return 0


def cmd_cbcnn(args) -> int:
    from lbcnn.engine import compile_plan
    from lbcnn.models.cbcnn import CBCNN

    model = CBCNN(preset=args.preset, n_classes=args.classes)   # untrained: same arrays
    model.net.eval()
    plan = compile_plan(model)
    wb = plan.weight_bytes()
    print(json.dumps({"preset": args.preset, "classes": args.classes, "weight_bytes": wb,
                      "flash_weight_bits": 8 * wb["total"]}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("lbcnn")
    m.add_argument("--dataset", required=True)
    m.add_argument("--filters", required=True)
    m.add_argument("--nl", type=int, default=1)
    m.add_argument("--C", type=float, required=True)
    m.add_argument("--bits", type=int, required=True)
    m.add_argument("--color", default="gray", choices=["gray", "rgb", "y"])
    m.add_argument("--kernel-seed", type=int, required=True)
    m.add_argument("--train-size", type=int, default=10000)
    m.add_argument("--val-fraction", type=float, default=0.1)
    m.add_argument("--seed", type=int, default=0, help="the optimize run's split seed")
    m.add_argument("--cpu", nargs="+", default=["cortex-m4", "cortex-m0plus"])
    m.add_argument("--n", type=int, default=100, help="test images run in the emulator")
    m.add_argument("--count", type=int, default=5, help="images whose instructions are counted")
    c = sub.add_parser("cbcnn")
    c.add_argument("--preset", required=True)
    c.add_argument("--classes", type=int, required=True)
    args = ap.parse_args(argv)
    return cmd_lbcnn(args) if args.cmd == "lbcnn" else cmd_cbcnn(args)


if __name__ == "__main__":
    sys.exit(main())
