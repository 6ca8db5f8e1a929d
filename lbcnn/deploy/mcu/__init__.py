"""``lbcnn mcu``: the generated C on Cortex-M4 / Cortex-M0+, built, sized and run.

:func:`run_mcu` exports a model's C, builds a freestanding ELF with the clang in
PyPI ``ziglang`` (:mod:`.toolchain`), reads flash and static RAM from the ELF
(:mod:`.elf`), runs real test images in PyPI ``unicorn`` (:mod:`.emulator`) and
checks every prediction and every logit against the NumPy integer engine.
``pip install -e ".[mcu]"`` brings ziglang, unicorn and pyelftools.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from .toolchain import CPUS, build_elf, command_line

UNALIGNED_CHECK_IMAGES = 20
# a typical core clock per CPU, for the time estimate (``--mhz`` overrides): an STM32F4's
# Cortex-M4 at 168 MHz, an SAMD21's Cortex-M0+ at 48 MHz
TYPICAL_MHZ = {"cortex-m4": 168.0, "cortex-m0plus": 48.0}


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed: pip install -e '.[mcu]'") from None


def _plan_of(model):
    from ...engine.plan import compile_plan
    from ..c_common import exporter_for

    if exporter_for(model) is not None:
        return model
    if isinstance(model, (str, Path)):
        from ...io.native import resolve_model_path
        return compile_plan(resolve_model_path(model))
    return compile_plan(model)


def run_mcu(model, cpu: str = "cortex-m4", dataset: str | None = None, n: int = 200,
            opt: str = "O2", mhz: float | None = None, images=None, workdir=None,
            check_alignment: bool = True, progress=None, count: int | None = None,
            labels=None) -> dict:
    """Build ``model`` (a model file / run folder, a fitted model or a compiled plan) for
    ``cpu`` and run ``n`` test images of ``dataset`` (or the given uint8 ``images``) in
    the emulator. Returns one dict: cpu, n, agree (predictions equal the NumPy engine),
    logits_agree, instructions_mean / _max / _min, flash_bytes, ram_bytes (static, without
    the harness's input/output buffers), stack_bytes (peak), unaligned_accesses, est_ms at
    ``mhz`` (default: ``TYPICAL_MHZ[cpu]``; an estimate, one instruction per cycle),
    armv6m_violations (M0+); with ``labels`` (one per image, what ``lbcnn_predict``
    returns for a correct answer), ``correct`` and ``accuracy`` of the C's answers.
    ``count``: count instructions on the first ``count`` images only (default all); the
    rest run without the counting hook, several times faster, still checked."""
    for mod in ("ziglang", "unicorn", "elftools"):
        _need(mod)
    if cpu not in CPUS:
        raise ConfigError(f"unknown cpu {cpu!r}: use one of {', '.join(CPUS)}")
    if n < 1:
        raise ConfigError("--n must be at least 1")
    mhz = TYPICAL_MHZ[cpu] if mhz is None else float(mhz)
    from ...engine.numpy_engine import NumpyEngine
    from ...engine.plan import IntegerPlan
    from ..c_export import export_c
    from . import elf
    from .emulator import Emulator

    plan = _plan_of(model)
    if images is None:
        if dataset is None:
            raise ConfigError("give --dataset (the test images to run)")
        from ...data import load_dataset
        from ...data.splits import test_sample
        from ...preprocess import model_input
        ds = load_dataset(dataset)
        idx = test_sample(ds.y_test, n, seed=0)
        images, labels = model_input(ds.x_test[idx], plan.input_shape), ds.y_test[idx]
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise DataError(f"the emulator takes uint8 images, got {x.dtype}")
    x = x[:n]
    if labels is not None:
        labels = np.asarray(labels)[:n]
        if len(labels) != len(x):
            raise DataError(f"{len(x)} images but {len(labels)} labels")
    if x.ndim == 3 and len(plan.input_shape) == 3:
        x = x[..., None]
    eng = NumpyEngine(plan)
    ref_scores = eng.scores(x)
    ref_idx = ref_scores.argmax(1)
    ref_out = plan.classes[ref_idx] if isinstance(plan, IntegerPlan) else ref_idx
    k = ref_scores.shape[1]

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lbcnn_mcu_")
        workdir = tmp.name
    try:
        c_dir = Path(workdir)
        t0 = time.perf_counter()
        export_c(plan, c_dir, measure=False)
        elf_path = build_elf(c_dir, cpu, opt)
        build_s = time.perf_counter() - t0
        sz = elf.sizes(elf_path)
        bad_isa = elf.armv6m_violations(elf_path) if cpu == "cortex-m0plus" else []
        emu = Emulator(elf_path, cpu)
        n_count = len(x) if count is None else max(1, min(count, len(x)))
        counts = np.zeros(n_count, np.int64)
        agree = logits_agree = correct = 0
        first_bad = None
        t0 = time.perf_counter()
        for i, im in enumerate(x):
            if i == n_count:
                emu.stop_counting()
            cls, logits, cnt = emu.predict_logits(im.reshape(-1), k)
            if i < n_count:
                counts[i] = cnt
            ok = cls == int(ref_out[i])
            agree += ok
            if labels is not None:
                correct += cls == int(labels[i])
            lok = np.array_equal(logits, ref_scores[i])
            logits_agree += lok
            if (not ok or not lok) and first_bad is None:
                first_bad = i
            if progress:
                progress(i + 1, len(x))
        # unaligned accesses: a second build that traps on any access not aligned to its
        # type (-fsanitize-trap=alignment), run on the first images. (unicorn 2.1's memory
        # hooks corrupt this program's state, so they cannot count accesses here.)
        unaligned = None
        checked = 0
        if check_alignment:
            trap_elf = build_elf(c_dir, cpu, opt, align_trap=True)
            emu2 = Emulator(trap_elf, cpu)
            emu2.stop_counting()
            unaligned = 0
            for i in range(min(len(x), UNALIGNED_CHECK_IMAGES)):
                try:
                    emu2.predict_logits(x[i].reshape(-1), k)
                except RuntimeError:
                    unaligned += 1
                checked += 1
        # lbcnn_predict (its logits on the stack) on one image: same class, peak stack
        cls0, _ = emu.predict(x[0].reshape(-1))
        agree_predict = cls0 == int(ref_out[0])
        emu_s = time.perf_counter() - t0
        res = {
            "cpu": cpu, "opt": opt, "n": int(len(x)), "agree": int(agree),
            "logits_agree": int(logits_agree), "all_equal": bool(agree == logits_agree == len(x)
                                                                  and agree_predict),
            "first_mismatch": first_bad,
            "correct": int(correct) if labels is not None else None,
            "accuracy": correct / len(x) if labels is not None else None,
            "instructions_mean": float(counts.mean()), "instructions_max": int(counts.max()),
            "instructions_min": int(counts.min()), "counted_images": int(n_count),
            "flash_bytes": sz["flash_bytes"], "ram_bytes": sz["ram_bytes"],
            "stack_bytes": emu.stack_peak(),
            "unaligned_accesses": unaligned,
            "unaligned_checked_images": checked,
            "unaligned_check": "images that hit an alignment trap in a -fsanitize-trap="
                               "alignment build (+strict_align: the compiler emits no "
                               "unaligned access itself)",
            "mhz": mhz, "est_ms_at_mhz": float(counts.mean()) / (mhz * 1e3),
            "est_note": "estimate from instruction counts (one instruction per cycle), "
                        "not a cycle-accurate timing",
            "sections": {k2: sz[k2] for k2 in ("text", "rodata", "data", "bss")},
            "harness_buffers_bytes": sz["harness_buffers"],
            "armv6m_violations": len(bad_isa) if cpu == "cortex-m0plus" else None,
            "family": getattr(plan, "family", None) or "lbcnn", "n_classes": int(k),
            "build_seconds": round(build_s, 2), "emulation_seconds": round(emu_s, 2),
            "build": command_line(cpu, opt),
        }
        res["ram_plus_stack_bytes"] = res["ram_bytes"] + res["stack_bytes"]
        return res
    finally:
        if tmp is not None:
            tmp.cleanup()


__all__ = ["CPUS", "run_mcu"]
