"""Issue 13 benchmark: the generated C on Cortex-M (emulated) and on the host.

    # host: the previous generator (git 02ba4f9, channel-innermost, full maps) against the
    # current one (one channel path at a time), same model, same images, same run
    LBCNN_DATA=/work/shared/data python benchmarks/bench_mcu.py host MODEL [--n 1000]

    # Cortex-M, before: the previous generator's C, same toolchain and emulator
    LBCNN_DATA=/work/shared/data python benchmarks/bench_mcu.py before MODEL [--n 20]

    # Cortex-M: lbcnn mcu for several models / CPUs, one JSON line each, plus the
    # instructions-per-MAC table against `lbcnn info`'s operation counts
    LBCNN_DATA=/work/shared/data python benchmarks/bench_mcu.py mcu MODEL... --cpu cortex-m4 \
        --n 500 --dataset mnist [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from lbcnn.deploy.c_common import find_cc
from lbcnn.deploy.c_export import bench_source, export_c

OLD_COMMIT = "02ba4f9a25ff2c12cde91178f840365706349ffd"   # c_export.py before issue 13


def _old_generator():
    """The previous LB-CNN generator, loaded from git as a module of lbcnn.deploy."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:lbcnn/deploy/c_export.py"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    # the atomic writers it imports moved from lbcnn.io to lbcnn.outputs
    src = src.replace("from ..io import atomic_write_text", "from ..outputs import atomic_write_text")
    mod = types.ModuleType("lbcnn.deploy._c_export_old")
    mod.__package__ = "lbcnn.deploy"
    exec(compile(src, "c_export_old.py", "exec"), mod.__dict__)
    return mod


def _build_and_time(out_dir: Path, images: np.ndarray, opt: str, reps: int) -> dict:
    cc = find_cc()
    (out_dir / "bench.c").write_text(bench_source())
    exe = out_dir / f"bench_{opt}"
    subprocess.run([cc, "-std=c99", opt, "-Wall", "-Wextra", "-Werror", str(out_dir / "model.c"),
                    str(out_dir / "bench.c"), "-o", str(exe)], check=True, capture_output=True)
    raw = out_dir / "images.raw"
    raw.write_bytes(np.ascontiguousarray(images).tobytes())
    res = json.loads(subprocess.run([str(exe), str(raw), str(reps)], capture_output=True,
                                    text=True, check=True).stdout)
    main = out_dir / "main_exe"
    subprocess.run([cc, "-std=c99", "-O2", str(out_dir / "model.c"), str(out_dir / "main.c"),
                    "-o", str(main)], check=True, capture_output=True)
    pred = subprocess.run([str(main)], input=raw.read_bytes(), capture_output=True,
                          check=True).stdout.split()
    res["predictions"] = [int(v) for v in pred]
    return res


def cmd_host(args) -> int:
    from lbcnn.data import load_dataset
    from lbcnn.engine import NumpyEngine, compile_plan

    plan = compile_plan(args.model)
    x = load_dataset(args.dataset).x_test[:args.n]
    ref = NumpyEngine(plan).predict(x)
    old = _old_generator()
    out = {"model": args.model, "n": len(x), "cc": find_cc()}
    with tempfile.TemporaryDirectory() as tmp:
        d_old, d_new = Path(tmp, "old"), Path(tmp, "new")
        old.write_c_project(plan, d_old, old.generate_sources(plan), old._readme, False)
        export_c(plan, d_new, measure=True)
        for opt in args.opts:
            rows = {}
            for rnd in range(args.rounds):          # interleaved: old, new, old, new ...
                for name, d in (("old", d_old), ("new", d_new)):
                    r = _build_and_time(d, x, opt, args.reps)
                    assert r.pop("predictions") == [int(v) for v in ref], name
                    rows.setdefault(name, []).append(r)
            for name, rs in rows.items():
                out[f"{name}{opt}"] = {
                    "latency_median_us": float(np.median([r["latency_median_us"] for r in rs])),
                    "throughput_images_per_s": float(np.median([r["throughput_images_per_s"]
                                                                 for r in rs])),
                    "rounds": len(rs)}
            out[f"ratio{opt}_old_over_new_latency"] = (out[f"old{opt}"]["latency_median_us"]
                                                       / out[f"new{opt}"]["latency_median_us"])
        from lbcnn.deploy.c_common import measure_sizes
        out["sizes_new_host"] = measure_sizes(d_new)
        out["sizes_old_host"] = measure_sizes(d_old)
    out["predictions_equal_numpy_engine"] = True
    print(json.dumps(out))
    return 0


def _macs(model_path: str) -> dict:
    from lbcnn.deploy.accounting import account
    from lbcnn.io.artefacts import load_any
    info = account(load_any(model_path), model_path, sizes=False)
    return {"macs": info.get("macs"), "conv_macs_add_sub_only": info.get("conv_macs_add_sub_only")}


def cmd_mcu(args) -> int:
    from lbcnn.data import load_dataset
    from lbcnn.deploy.mcu import run_mcu
    from lbcnn.engine import compile_plan

    x = load_dataset(args.dataset).x_test[:args.n]
    sink = open(args.out, "a") if args.out else None
    for model in args.models:
        plan = compile_plan(model)
        try:
            ops = _macs(model)
        except Exception as exc:   # info does not cover every family the same way
            ops = {"macs": None, "error": str(exc)}
        for cpu in args.cpu:
            res = run_mcu(plan, cpu=cpu, images=x, n=args.n, opt=args.opt, mhz=args.mhz,
                          count=args.count)
            res.update(model=model, dataset=args.dataset, **ops)
            if ops.get("macs"):
                res["instructions_per_mac"] = res["instructions_mean"] / ops["macs"]
            line = json.dumps(res)
            print(line, flush=True)
            if sink:
                sink.write(line + "\n")
                sink.flush()
    return 0


def cmd_before(args) -> int:
    """The previous generator's C (git 02ba4f9) on the same toolchain and emulator:
    instructions, flash, static RAM, peak stack, and predictions against the engine."""
    import sys as _sys

    from lbcnn.data import load_dataset
    from lbcnn.deploy.mcu import elf
    from lbcnn.deploy.mcu.emulator import Emulator
    from lbcnn.deploy.mcu.toolchain import HARNESS_C, compile_flags
    from lbcnn.deploy.c_common import LINKER_SCRIPT
    from lbcnn.engine import NumpyEngine, compile_plan

    plan = compile_plan(args.model)
    x = load_dataset(args.dataset).x_test[:args.n]
    ref = NumpyEngine(plan).predict(x)
    old = _old_generator()
    for cpu in args.cpu:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            old.write_c_project(plan, d, old.generate_sources(plan), old._readme, False)
            (d / "link.ld").write_text(LINKER_SCRIPT)
            # the old model.h has no logits entry: a harness without g_logits
            (d / "h.c").write_text(HARNESS_C.replace("int64_t g_logits[LBCNN_N_CLASSES];\n", ""))
            out = d / "old.elf"
            subprocess.run([_sys.executable, "-m", "ziglang", "cc", *compile_flags(cpu, args.opt),
                            f"-I{d}", "-T", str(d / "link.ld"), "-Wl,--gc-sections",
                            "-Wl,--entry=lbcnn_predict", "-Wl,-u,g_image", str(d / "model.c"),
                            str(d / "h.c"), "-o", str(out)], check=True, capture_output=True)
            sz = elf.sizes(out)
            emu = Emulator(out, cpu)
            counts, agree = [], 0
            for i, im in enumerate(x):
                if i == args.count:
                    emu.stop_counting()
                cls, cnt = emu.predict(im.reshape(-1))
                if i < args.count:
                    counts.append(cnt)
                agree += cls == int(ref[i])
            print(json.dumps({"generator": f"old ({OLD_COMMIT[:7]})", "cpu": cpu, "n": len(x),
                              "agree": agree, "instructions_mean": float(np.mean(counts)),
                              "instructions_max": int(np.max(counts)),
                              "counted_images": len(counts),
                              "flash_bytes": sz["flash_bytes"], "ram_bytes": sz["ram_bytes"],
                              "stack_bytes": emu.stack_peak(), "model": args.model}), flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("host", help="old vs new generated C on the host")
    h.add_argument("model")
    h.add_argument("--dataset", default="mnist")
    h.add_argument("--n", type=int, default=1000)
    h.add_argument("--reps", type=int, default=3)
    h.add_argument("--rounds", type=int, default=3)
    h.add_argument("--opts", nargs="+", default=["-O3", "-O2"])
    m = sub.add_parser("mcu", help="lbcnn mcu for models x CPUs")
    m.add_argument("models", nargs="+")
    m.add_argument("--cpu", nargs="+", default=["cortex-m4", "cortex-m0plus"])
    m.add_argument("--dataset", default="mnist")
    m.add_argument("--n", type=int, default=200)
    m.add_argument("--opt", default="O2")
    m.add_argument("--mhz", type=float, default=168.0)
    m.add_argument("--count", type=int, help="count instructions on the first COUNT images")
    m.add_argument("--out")
    b = sub.add_parser("before", help="the previous generator's C on Cortex-M")
    b.add_argument("model")
    b.add_argument("--cpu", nargs="+", default=["cortex-m4", "cortex-m0plus"])
    b.add_argument("--dataset", default="mnist")
    b.add_argument("--n", type=int, default=20)
    b.add_argument("--count", type=int, default=5)
    b.add_argument("--opt", default="O2")
    args = ap.parse_args(argv)
    return {"host": cmd_host, "mcu": cmd_mcu, "before": cmd_before}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
