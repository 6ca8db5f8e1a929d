"""``lbcnn mcu``: the model's generated C on Cortex-M4 / Cortex-M0+: built with the clang in
PyPI ``ziglang``, sized from the ELF, run on a seeded, stratified sample of the test split in
PyPI ``unicorn`` and checked against the NumPy integer engine and the labels
(:func:`lbcnn.deploy.mcu.run_mcu`)."""
from __future__ import annotations

import json

from .common import add_data_args, load_data, positive_int, say, seed_int


def _mhz(text: str) -> float:
    import argparse
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a clock in MHz > 0, got {text!r}")
    return value


def _check_workdir(text: str) -> None:
    """--workdir: missing, empty, or the C folder of an earlier run (its model.json says
    lbcnn-c), since the build writes model.c, README.md, Makefile, ... into it."""
    from pathlib import Path

    from ..errors import LbcnnError
    from ..metadata import C_FORMAT, load_json
    from ..outputs import prepare_run_dir
    folder = Path(text)
    earlier = False
    try:
        record = load_json((folder / "model.json").read_bytes(), "model.json")
        earlier = isinstance(record, dict) and record.get("format") == C_FORMAT
    except (OSError, LbcnnError):
        pass
    prepare_run_dir(text, "--workdir", force=earlier, resumable=False,
                    not_empty_hint="give an empty folder, or the --workdir of an earlier "
                                   "lbcnn mcu run")


def add_parser(sub) -> None:
    from ..deploy.mcu.toolchain import CPUS
    m = sub.add_parser("mcu", help="build the C for Cortex-M4 / M0+, size it and run real test "
                                    "images in an emulator, checked against the integer engine "
                                    "and the labels")
    m.add_argument("model", metavar="MODEL",
                   help="a model file (.npz) or a run folder holding model.npz "
                        "(LB-CNN, CBCNN, hybrid or lowbit)")
    m.add_argument("--cpu", choices=sorted(CPUS), default="cortex-m4",
                   help="target core: cortex-m4 (Thumb-2 + DSP SIMD32, FPU unused) or "
                        "cortex-m0plus (ARMv6-M)")
    add_data_args(m, required=False)
    m.add_argument("--seed", type=seed_int, default=None,
                   help="seed of the test split for sources without one; default: the seed "
                        "recorded in the model file, else 0")
    m.add_argument("--n", type=positive_int, default=200,
                   help="test images to run in the emulator: a seeded, stratified sample of the "
                        "test split (every class in proportion; all of it when N covers it)")
    m.add_argument("--sample-seed", type=seed_int, default=0,
                   help="seed of that sample")
    m.add_argument("--count", type=positive_int,
                   help="count instructions on the first COUNT images only, run the rest "
                        "without the counting hook (faster; every image is still checked) "
                        "(default: all)")
    m.add_argument("--opt", choices=["O2", "Os", "O3", "O1"], default="O2",
                   help="clang optimisation level")
    m.add_argument("--mhz", type=_mhz, default=None,
                   help="clock for the time estimate (instructions / MHz: an estimate, not a "
                        "cycle count); default: a typical clock for the CPU, 168 MHz for the "
                        "Cortex-M4 (STM32F4), 48 MHz for the Cortex-M0+ (SAMD21)")
    m.add_argument("--workdir", metavar="DIR",
                   help="keep the generated C, the ELFs and the linker script here "
                        "(default: a temporary folder, removed afterwards)")
    m.add_argument("--no-align-check", action="store_true",
                   help="skip the alignment-trap build and run")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(func=run)


def _progress_bar(enabled: bool):
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn, TimeRemainingColumn
    bar = Progress(TextColumn("[bold]emulating"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
    task = bar.add_task("", total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def run(args) -> int:
    from ..data.splits import test_sample
    from ..deploy.mcu import TYPICAL_MHZ, run_mcu
    from ..engine.plan import compile_plan
    from ..io.native import load_model_file, resolve_model_path
    from ..preprocess import model_input

    if args.workdir:  # checked before anything is built: a user's files are never replaced
        _check_workdir(args.workdir)
    path = resolve_model_path(args.model)
    config = {}
    if path.suffix.lower() == ".npz":
        config, _ = load_model_file(path)
    ds = load_data(args, config, seed=args.seed, quiet=args.json)
    plan = compile_plan(path)
    idx = test_sample(ds.y_test, args.n, args.sample_seed)
    x, y = model_input(ds.x_test[idx], plan.input_shape), ds.y_test[idx]
    mhz = TYPICAL_MHZ[args.cpu] if args.mhz is None else args.mhz
    if not args.json:
        say(args, f"building for {args.cpu} -{args.opt} and running {len(x)} of {len(ds.y_test)} "
                  f"{ds.name} test images (seeded, stratified sample) in the emulator ...")
    bar, progress = _progress_bar(not args.json)
    if bar:
        bar.start()
    try:
        res = run_mcu(plan, cpu=args.cpu, n=len(x), opt=args.opt, mhz=mhz, images=x, labels=y,
                      workdir=args.workdir, check_alignment=not args.no_align_check,
                      count=args.count, progress=progress)
    finally:
        if bar:
            bar.stop()
    res["dataset"] = ds.name
    res["model"] = str(path)
    res["test_split"] = {"n": int(len(ds.y_test)), "fingerprint": ds.test_fingerprint(),
                         "sample_seed": args.sample_seed}
    if args.json:
        print(json.dumps(res))
        return 0 if res["all_equal"] else 1
    ok = "all equal" if res["all_equal"] else f"MISMATCH (first at image {res['first_mismatch']})"
    clock = "typical for the CPU" if args.mhz is None else "--mhz"
    lines = [
        f"{res['cpu']} -{res['opt']}, {res['family']}, {res['n']} of {len(ds.y_test)} {ds.name} "
        f"test images",
        f"  accuracy against the labels: {100 * res['accuracy']:.2f} % "
        f"({res['correct']}/{res['n']})",
        f"  predictions == NumPy integer engine: {res['agree']}/{res['n']}; logits: "
        f"{res['logits_agree']}/{res['n']} ({ok})",
        f"  instructions per image: mean {res['instructions_mean']:,.0f}, max "
        f"{res['instructions_max']:,} over {res['counted_images']} images (counted per "
        "executed block, IT blocks included)",
        f"  estimated time at {res['mhz']:g} MHz ({clock}): {res['est_ms_at_mhz']:.2f} ms "
        "(an estimate from instruction counts, one per cycle)",
        f"  flash {res['flash_bytes']:,} B (text {res['sections']['text']:,} + rodata "
        f"{res['sections']['rodata']:,} + data {res['sections']['data']:,})",
        f"  RAM: static {res['ram_bytes']:,} B + peak stack {res['stack_bytes']:,} B = "
        f"{res['ram_plus_stack_bytes']:,} B (not counting the caller's image and logits, "
        f"{res['harness_buffers_bytes']:,} B)",
    ]
    if res["unaligned_accesses"] is not None:
        lines.append(f"  unaligned accesses: {res['unaligned_accesses']} (alignment-trap build, "
                     f"{res['unaligned_checked_images']} images)")
    if res["armv6m_violations"] is not None:
        lines.append(f"  instructions outside ARMv6-M in the ELF: {res['armv6m_violations']}")
    print("\n".join(lines))
    return 0 if res["all_equal"] else 1
