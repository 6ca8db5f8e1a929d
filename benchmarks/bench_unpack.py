"""Issue 30 benchmark: what unpacking a sub-byte head costs on Cortex-M, per MAC.

For one LB-CNN body with an ELM head quantized at each bit width, the generated C is
built twice in the same run, from the same integer plan: the head packed n bits a weight
(the default) and the baseline that stores it one byte a weight (``head_storage="bytes"``,
the layout before packing). Both run the same test images in the emulator (``lbcnn mcu``
machinery: zig cc, unicorn), must give the NumPy integer engine's logits, and the extra
instructions per image over the head's multiply-adds (d x k) are what unpacking costs.
One JSON line per (bits, cpu), then a summary object.

    LBCNN_DATA=/path/to/data python benchmarks/bench_unpack.py --filters 80,2 \
        --bits 2 3 4 5 6 7 --n 4 --count 2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time


def build_model(dataset: str, filters, nl: int, train_size: int, seed: int):
    from lbcnn.data import load_dataset
    from lbcnn.models.lbcnn import LBCNN

    ds = load_dataset(dataset)
    model = LBCNN(filters=tuple(filters), nl=nl, random_state=seed, device="cpu")
    model.fit(ds.x_train[:train_size], ds.y_train[:train_size])
    return model, ds


def measure(model, ds, bits: int, cpus, n: int, count: int) -> list[dict]:
    import copy

    from lbcnn.engine import compile_plan
    from lbcnn.deploy.mcu import run_mcu
    from lbcnn.heads.quantize import apply_quantization

    m = copy.deepcopy(model)
    apply_quantization(m, bits, per_class=True)
    plan = compile_plan(m)
    macs = plan.n_features * plan.n_classes
    rows = []
    for cpu in cpus:
        res = {}
        for storage in ("bytes", "packed"):
            t0 = time.perf_counter()
            r = run_mcu(dataclasses.replace(plan, head_storage=storage), cpu=cpu,
                        images=ds.x_test[:n], n=n, count=count,
                        check_alignment=cpu == "cortex-m4")
            if not r["all_equal"]:
                raise SystemExit(f"{cpu} {storage} {bits}-bit: the C disagrees with the engine")
            res[storage] = {k: r[k] for k in ("instructions_mean", "flash_bytes", "ram_bytes",
                                              "stack_bytes", "agree", "logits_agree",
                                              "unaligned_accesses")}
            res[storage]["head_weight_bytes"] = dataclasses.replace(
                plan, head_storage=storage).weight_bytes()["head"]
            res[storage]["seconds"] = round(time.perf_counter() - t0, 1)
        extra = res["packed"]["instructions_mean"] - res["bytes"]["instructions_mean"]
        rows.append({"bits": bits, "cpu": cpu, "head_macs": macs,
                     "unpack_instructions_per_mac": round(extra / macs, 3),
                     "instructions_ratio": round(res["packed"]["instructions_mean"]
                                                 / res["bytes"]["instructions_mean"], 4),
                     "flash_saved_bytes": res["bytes"]["flash_bytes"] - res["packed"]["flash_bytes"],
                     "n": n, "counted_images": count, **res})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--filters", default="80,2")
    ap.add_argument("--nl", type=int, default=1)
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7])
    ap.add_argument("--cpu", nargs="+", default=["cortex-m4", "cortex-m0plus"])
    ap.add_argument("--n", type=int, default=4, help="test images run (all checked)")
    ap.add_argument("--count", type=int, default=2, help="images whose instructions are counted")
    args = ap.parse_args(argv)
    filters = [int(v) for v in args.filters.split(",")]
    model, ds = build_model(args.dataset, filters, args.nl, args.train_size, args.seed)
    rows = []
    for bits in args.bits:
        for row in measure(model, ds, bits, args.cpu, args.n, args.count):
            print(json.dumps(row), flush=True)
            rows.append(row)
    summary = {"summary": {
        "model": f"LB-CNN {args.filters} nl{args.nl}, ELM head on {args.train_size} "
                 f"{args.dataset} training images, seed {args.seed}, per-class n-bit head",
        "baseline": "the same plan's C with the head one byte a weight (head_storage='bytes')",
        "unpack_instructions_per_mac": {f"{r['cpu']} {r['bits']}-bit":
                                        r["unpack_instructions_per_mac"] for r in rows},
        "flash_bytes": {f"{r['cpu']} {r['bits']}-bit": [r["bytes"]["flash_bytes"],
                                                        r["packed"]["flash_bytes"]]
                        for r in rows}}}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
