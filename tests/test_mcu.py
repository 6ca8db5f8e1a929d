"""Issue 13: the generated C on Cortex-M4 / Cortex-M0+ (zig cc + unicorn), checked against
the NumPy integer engine on real MNIST test images; test vectors and the self test."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from lbcnn.deploy.c_common import CFLAGS, find_cc
from lbcnn.deploy.c_export import export_c
from lbcnn.engine import NumpyEngine, compile_plan

N_IMAGES = 20
CC = find_cc()


from c_harness import host_logits, needs_mcu


@pytest.fixture(scope="module")
def plans(mnist):
    """Small models of the three families that export C (trained briefly on real images)."""
    torch.set_num_threads(1)
    from lbcnn.models.hybrid import Hybrid
    from lbcnn.models.lbcnn import LBCNN
    from lbcnn.train.cbcnn import train_cbcnn

    x, y = mnist.x_train, mnist.y_train
    lb = LBCNN(filters=(4, 2), random_state=0, device="cpu").fit(x[:1000], y[:1000])
    lb2 = LBCNN(filters=(3, 2), nl=2, random_state=1, device="cpu").fit(x[:1000], y[:1000])
    cb = train_cbcnn(mnist, preset=None, blocks=(8, 8), dense=(16,), epochs=1, train_size=1000,
                     batch_size=50, lr_start=1e-2, lr_end=1e-3, progress=False, seed=0,
                     device="cpu")["model"]
    cb.net.eval()
    hy = Hybrid(epochs=1).fit(x[:500], y[:500], x[500:700], y[500:700])
    return {"lbcnn": compile_plan(lb), "lbcnn_nl2": compile_plan(lb2),
            "cbcnn": compile_plan(cb), "hybrid": compile_plan(hy)}


CASES = [("lbcnn", "cortex-m4"), ("lbcnn", "cortex-m0plus"), ("lbcnn_nl2", "cortex-m4"),
         ("cbcnn", "cortex-m4"), ("cbcnn", "cortex-m0plus"),
         ("hybrid", "cortex-m4"), ("hybrid", "cortex-m0plus")]


@needs_mcu
@pytest.mark.parametrize("family,cpu", CASES)
def test_emulated_equals_integer_engine(plans, mnist, family, cpu, tmp_path):
    from lbcnn.deploy.mcu import run_mcu

    plan = plans[family]
    x = mnist.x_test[:N_IMAGES]
    res = run_mcu(plan, cpu=cpu, images=x, n=N_IMAGES, workdir=tmp_path,
                  check_alignment=cpu == "cortex-m4")
    # every class and every logit equals the NumPy integer engine
    assert res["n"] == N_IMAGES
    assert res["agree"] == res["logits_agree"] == N_IMAGES, res
    assert res["all_equal"]
    assert res["flash_bytes"] > plan.weight_bytes()["total"]
    assert 0 < res["stack_bytes"] < 4096
    assert res["instructions_min"] > 1000
    if cpu == "cortex-m4":
        assert res["unaligned_accesses"] == 0 and res["unaligned_checked_images"] == N_IMAGES
    else:
        assert res["armv6m_violations"] == 0      # only ARMv6-M instructions in the M0+ ELF
    if family == "lbcnn":
        # one channel path at a time: static RAM is a few maps, not the layers' channels
        # (nl = 2 stores one full-resolution map per extra conv level: more)
        assert res["ram_bytes"] + res["stack_bytes"] < 4096


@needs_mcu
def test_emulator_catches_a_wrong_answer(plans, mnist, tmp_path):
    """The comparison is not vacuous: a generated C with one head weight changed disagrees."""
    from lbcnn.deploy.mcu import elf
    from lbcnn.deploy.mcu.emulator import Emulator
    from lbcnn.deploy.mcu.toolchain import build_elf

    plan = plans["lbcnn"]
    export_c(plan, tmp_path, measure=False)
    src = (tmp_path / "model.c").read_text()
    i = src.index("HEAD_B[10] = {") + len("HEAD_B[10] = {")
    j = src.index(",", i)   # the first class's bias (int32 here) -> far above every score
    (tmp_path / "model.c").write_text(src[:i] + "\n    2000000000" + src[j:])
    emu = Emulator(build_elf(tmp_path, "cortex-m4"), "cortex-m4")
    x = mnist.x_test[:5]
    got = [emu.predict_logits(im.reshape(-1), 10)[0] for im in x]
    assert got == [0] * 5 != list(NumpyEngine(plan).predict(x))
    # the M4 build has Thumb-2 instructions, which the ARMv6-M check must flag
    assert len(elf.armv6m_violations(tmp_path / "lbcnn_cortex_m4_O2.elf")) > 0


def test_thumb_instruction_lengths():
    from lbcnn.deploy.mcu.elf import thumb_count
    # movs r0, #1 (16-bit); bl (32-bit: f000 f800); adds (16-bit); ldr.w (f8d0 0000)
    code = bytes.fromhex("0120" "00f000f8" "0818" "d0f80000")
    assert thumb_count(code) == 4
    assert thumb_count(bytes.fromhex("00f000f8")) == 1


@pytest.mark.skipif(CC is None, reason="no C compiler found")
def test_test_vectors_selftest_and_class_names(plans, mnist, tmp_path):
    plan = plans["lbcnn"]
    x = mnist.x_test[:6]
    names = [f"digit {i}" for i in range(10)]
    summary = export_c(plan, tmp_path, measure=False, test_images=x, class_names=names)
    assert summary["test_vectors"] == 6
    exe = tmp_path / "selftest"
    subprocess.run([CC, *CFLAGS, str(tmp_path / "model.c"), str(tmp_path / "test_vectors.c"),
                    str(tmp_path / "selftest.c"), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    res = subprocess.run([str(exe)], capture_output=True, text=True)
    assert res.returncode == 0 and "6/6" in res.stdout
    header = (tmp_path / "model.h").read_text()
    assert 'LBCNN_CLASS_NAMES[10] = { "digit 0", "digit 1"' in header
    # a wrong expectation makes the self test fail
    tv = (tmp_path / "test_vectors.c").read_text()
    marker = "LBCNN_TEST_EXPECTED[LBCNN_N_TEST_VECTORS] = { "
    k = tv.index(marker) + len(marker)
    bad = str((int(tv[k]) + 1) % 10)
    (tmp_path / "test_vectors.c").write_text(tv[:k] + bad + tv[k + 1:])
    subprocess.run([CC, *CFLAGS, str(tmp_path / "model.c"), str(tmp_path / "test_vectors.c"),
                    str(tmp_path / "selftest.c"), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    res = subprocess.run([str(exe)], capture_output=True, text=True)
    assert res.returncode == 1 and "5/6" in res.stdout
    # the Makefile target
    assert "selftest:" in (tmp_path / "Makefile").read_text()
    assert "link_cortexm.ld" in (tmp_path / "README.md").read_text()


@pytest.mark.skipif(CC is None, reason="no C compiler found")
def test_predict_logits_on_host_equals_engine_scores(plans, mnist, tmp_path):
    """lbcnn_predict_logits writes the engine's exact scores, for every family."""
    x = mnist.x_test[:50]
    for fam, flag in [("lbcnn", "-DLBCNN_STREAM"), ("lbcnn", "-DLBCNN_FULL_MAPS"),
                      ("lbcnn_nl2", "-DLBCNN_STREAM"), ("lbcnn_nl2", "-DLBCNN_FULL_MAPS"),
                      ("cbcnn", "-DX"), ("hybrid", "-DX")]:
        plan = plans[fam]
        d = tmp_path / (fam + flag)
        export_c(plan, d, measure=False)
        classes, logits = host_logits(d, x, flag)
        eng = NumpyEngine(plan)
        assert np.array_equal(logits, eng.scores(x)), fam
        want = eng.predict(x) if fam.startswith("lbcnn") else eng.predict_index(x)
        assert np.array_equal(classes, want), fam


@pytest.mark.skipif(CC is None, reason="no C compiler found")
@pytest.mark.parametrize("filters,nl,shape,k,per_class", [((5,), 1, (13, 11, 2), 3, True),
                                                          ((3, 2), 2, (15, 12, 1), 4, False),
                                                          ((2, 3, 2), 1, (17, 9, 3), 5, True)])
def test_streaming_c_on_odd_shapes(tmp_path, filters, nl, shape, k, per_class):
    """The streaming path (odd widths and heights, several input channels, ReLU extras,
    per-class rescale, odd class counts) equals the engine, and so does the full-map path."""
    from lbcnn.models.lbcnn import LBCNN

    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(120, *shape), dtype=np.uint8)
    y = rng.integers(0, k, size=120)
    model = LBCNN(filters=filters, nl=nl, random_state=1, device="cpu").fit(x[:80], y[:80])
    plan = compile_plan(model)
    if per_class:
        head = {"weight_q": plan.head["weight_q"], "bias_q": rng.integers(-9, 9, size=k),
                "scale": float(plan.head["scale"]) * rng.uniform(0.5, 2.0, size=k), "bits": 8}
        plan = compile_plan(model, head=head)
    export_c(plan, tmp_path, measure=False)
    want = NumpyEngine(plan).predict(x)
    for flag in ("-DLBCNN_STREAM", "-DLBCNN_FULL_MAPS"):
        exe = tmp_path / "lbcnn"
        subprocess.run([CC, *CFLAGS, flag, str(tmp_path / "model.c"), str(tmp_path / "main.c"),
                        "-o", str(exe)], check=True, capture_output=True, text=True)
        res = subprocess.run([str(exe)], input=np.ascontiguousarray(x).tobytes(),
                             capture_output=True, check=True)
        assert np.array_equal(np.array([int(v) for v in res.stdout.split()]), want), flag


@needs_mcu
def test_readme_selftest_build_runs_on_m0plus(plans, mnist, tmp_path):
    """The README's Cortex-M self-test line builds, and lbcnn_selftest() returns 0 mismatches."""
    import sys

    from lbcnn.deploy.c_common import selftest_build_command
    from lbcnn.deploy.mcu.emulator import Emulator

    export_c(plans["lbcnn"], tmp_path, measure=False, test_images=mnist.x_test[:4])
    cmd = selftest_build_command("cortex-m0plus")
    assert " ".join(cmd) in (tmp_path / "README.md").read_text().replace(" \\\n    ", " ")
    subprocess.run([sys.executable, "-m", "ziglang", *cmd], cwd=tmp_path, check=True,
                   capture_output=True, text=True)
    emu = Emulator(tmp_path / "lbcnn_cortex_m0plus.elf", "cortex-m0plus")
    assert emu.call("lbcnn_selftest") == (0, emu.count)


@needs_mcu
@pytest.mark.parametrize("shape,filters,nl,k", [((15, 13, 3), (3, 2), 1, 5),
                                                ((14, 11, 1), (4,), 2, 3)])
def test_m4_simd_path_on_odd_shapes(tmp_path, shape, filters, nl, k):
    """The SIMD32 path with odd widths, three input channels, an odd class count, and
    ReLU extras at int16 (one layer, nl = 2): equal to the engine in the emulator."""
    from lbcnn.deploy.mcu import run_mcu
    from lbcnn.models.lbcnn import LBCNN

    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(40, *shape), dtype=np.uint8)
    y = rng.integers(0, k, size=40)
    plan = compile_plan(LBCNN(filters=filters, nl=nl, random_state=1, device="cpu").fit(x, y))
    assert plan.act_dtype == "int16"          # the two-lane path is compiled in
    res = run_mcu(plan, cpu="cortex-m4", images=x, n=20, count=2, workdir=tmp_path)
    assert res["agree"] == res["logits_agree"] == 20, res
    assert res["unaligned_accesses"] == 0
    assert "__sadd16" in (tmp_path / "model.c").read_text()
