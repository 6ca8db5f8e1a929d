"""Issue 30, part 1: sub-byte heads packed end to end (model file, generated C, Cortex-M)
and the bits `lbcnn info` reports equal to the bytes the C flashes."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from lbcnn.deploy.c_export import export_c
from lbcnn.engine import NumpyEngine, compile_plan
from lbcnn.engine.bits import (lane_planes, lane_words, pack_lanes, pack_signed, packed_nbytes,
                               unpack_lanes, unpack_signed)
from lbcnn.errors import DataError
from lbcnn.heads.quantize import apply_quantization
from lbcnn.models.lbcnn import LBCNN, save_lbcnn

from c_harness import CC, host_logits, needs_cc, needs_elf, needs_mcu


def _values(rng, bits, n):
    """Signed n-bit values with both extremes and zero in them."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = rng.integers(lo, hi + 1, size=n)
    v[: min(n, 3)] = [lo, hi, 0][: min(n, 3)]
    return v


# -- the two layouts against plain oracles ---------------------------------------------
def _oracle_file_bytes(q, bits) -> bytes:
    """The model file's layout, spelled out: value i's two's-complement bits, least
    significant first, at bit i*n of one little-endian bit string."""
    s = "".join(format(int(v) & ((1 << bits) - 1), f"0{bits}b")[::-1] for v in q)
    s += "0" * (-len(s) % 8)
    return bytes(int(s[i:i + 8][::-1], 2) for i in range(0, len(s), 8))


@pytest.mark.parametrize("bits", range(2, 8))
@pytest.mark.parametrize("n", [1, 3, 7, 31, 33, 101])
def test_file_packing_is_the_plain_bit_string_and_round_trips(bits, n):
    q = _values(np.random.default_rng(bits * 100 + n), bits, n)
    packed = pack_signed(q, bits)
    assert packed.dtype == np.uint8 and len(packed) == packed_nbytes(n, bits)
    assert packed.tobytes() == _oracle_file_bytes(q, bits)
    assert np.array_equal(unpack_signed(packed, bits, n), q)


def _oracle_lanes(words, bits, count):
    """The C layout read one weight at a time (engine.bits.lane_planes' description)."""
    words = [int(w) for w in words]
    out = []
    for i in range(count):
        g, r = divmod(i, 32)
        m, lane = divmod(r, 4)
        t, col = 0, g * bits
        for b, lo in lane_planes(bits):
            per = 8 // b
            word = words[col + m // per]
            t |= ((word >> (8 * lane + (m % per) * b)) & ((1 << b) - 1)) << lo
            col += b
        out.append(t - (1 << (bits - 1)))
    return out


@pytest.mark.parametrize("bits", range(2, 8))
@pytest.mark.parametrize("n", [1, 5, 32, 33, 95])
def test_c_lane_packing_matches_the_per_weight_oracle(bits, n):
    q = _values(np.random.default_rng(bits * 7 + n), bits, n)
    words = pack_lanes(q, bits)
    assert words.dtype == np.uint32 and len(words) == lane_words(n, bits)
    assert _oracle_lanes(words, bits, n) == [int(v) for v in q]
    assert np.array_equal(unpack_lanes(words, bits, n), q)
    assert sum(b for b, _ in lane_planes(bits)) == bits


def test_packing_refuses_values_outside_the_range():
    with pytest.raises(Exception, match="outside the signed 3-bit range"):
        pack_signed(np.array([4]), 3)
    with pytest.raises(Exception, match="2..7 bits"):
        pack_lanes(np.array([1]), 8)


# -- small models -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def odd_model():
    """Odd class count (5) and odd pooled width ((15, 11) -> (8, 6) -> (4, 3)): both C head
    streams in use; three input channels; 4 x 3 x 9 x 5 = 540 weights, so a 3-bit head
    leaves spare bits in its last byte."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(150, 15, 11, 3), dtype=np.uint8)
    y = rng.integers(0, 5, size=150)
    return LBCNN(filters=(1, 3), random_state=1, device="cpu").fit(x[:100], y[:100]), x


@pytest.fixture(scope="module")
def even_model():
    """Even class count and pooled width (only the word-read stream), nl = 2."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(150, 16, 16, 1), dtype=np.uint8)
    y = rng.integers(0, 4, size=150)
    return LBCNN(filters=(4, 2), nl=2, random_state=2, device="cpu").fit(x[:100], y[:100]), x


def _quantized(model, bits, per_class=False):
    m = copy.deepcopy(model)
    apply_quantization(m, bits, per_class=per_class)
    return m


# -- model file ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_model_file_stores_the_head_packed_and_loads_the_same_integers(odd_model, tmp_path,
                                                                       bits):
    from lbcnn.models import load_model

    model, x = odd_model
    m = _quantized(model, bits, per_class=bits % 2 == 1)
    path = tmp_path / "m.npz"
    save_lbcnn(m, path)
    q = m.head_arrays_["head/weight_q"]
    with np.load(path) as z:
        stored = z["head/weight_q"]
        config = json.loads(z["__config__"].tobytes())
    if bits < 8:
        assert stored.dtype == np.uint8 and stored.shape == (packed_nbytes(q.size, bits),)
        assert config["version"] == 2
        assert config["packed"] == {"head/weight_q": {"bits": bits, "shape": list(q.shape)}}
    else:
        assert stored.dtype == np.int8 and stored.shape == q.shape and config["version"] == 1
    back = load_model(path)
    assert np.array_equal(back.head_arrays_["head/weight_q"], q)
    assert "packed" not in back.meta_
    assert np.array_equal(back.predict(x), m.predict(x))
    assert compile_plan(path).head["bits"] == bits


def test_unpacked_low_bit_files_of_version_1_still_load(odd_model, tmp_path):
    """Files written before packing (a 3-bit head as an int8 array) load unchanged."""
    from lbcnn.io.native import save_model_file
    from lbcnn.models import load_model
    from lbcnn.models.lbcnn import body_config, body_to_arrays

    model, x = odd_model
    m = _quantized(model, 3)
    config = {"family": "lbcnn", **body_config(m.body_), "C": m.C,
              "classes": [int(c) for c in m.classes_], "head": m.head_meta_}
    save_model_file(tmp_path / "old.npz", config, {**body_to_arrays(m.body_), **m.head_arrays_})
    with np.load(tmp_path / "old.npz") as z:
        assert json.loads(z["__config__"].tobytes())["version"] == 1
        assert z["head/weight_q"].dtype == np.int8
    assert np.array_equal(load_model(tmp_path / "old.npz").predict(x), m.predict(x))


def _rewrite(path, out, edit_config=None, edit_arrays=None):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(arrays.pop("__config__").tobytes())
    if edit_config:
        edit_config(config)
    if edit_arrays:
        edit_arrays(arrays, config)
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    np.savez(out, **arrays)


@pytest.mark.parametrize("damage,message", [
    (lambda c, a: c["packed"]["head/weight_q"].update(bits=9), "bits in 1..7"),
    (lambda c, a: c["packed"]["head/weight_q"].update(shape="x"), "bad shape"),
    (lambda c, a: a.update({"head/weight_q": a["head/weight_q"][:-1]}), "uint8 bytes"),
    (lambda c, a: a["head/weight_q"].__setitem__(-1, 0xFF), "stray bits"),
    (lambda c, a: c.update(version=3), "newer lbcnn"),
])
def test_damaged_packed_file_is_one_line(odd_model, tmp_path, damage, message):
    from lbcnn.models import load_model

    model, _ = odd_model
    m = _quantized(model, 3)
    assert (m.head_arrays_["head/weight_q"].size * 3) % 8
    save_lbcnn(m, tmp_path / "m.npz")
    _rewrite(tmp_path / "m.npz", tmp_path / "bad.npz",
             edit_arrays=lambda a, c: damage(c, a))
    with pytest.raises(DataError, match=message) as err:
        load_model(tmp_path / "bad.npz")
    assert "\n" not in str(err.value)


# -- the generated C against the integer engine --------------------------------------------


def _host_logits(c_dir, x, flag):
    return host_logits(c_dir, x, flag)[1]


@needs_cc
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("which", ["odd_model", "even_model"])
def test_packed_c_logits_equal_the_engine_at_every_width(request, tmp_path, which, bits):
    model, x = request.getfixturevalue(which)
    plan = compile_plan(_quantized(model, bits, per_class=bits % 2 == 0))
    assert plan.head["bits"] == bits            # the model's own head, not a fresh 8-bit one
    export_c(plan, tmp_path, measure=False)
    src = (tmp_path / "model.c").read_text()
    assert ("static const uint32_t HEAD_PA[" in src) == (bits < 8)
    ref = NumpyEngine(plan).scores(x)
    for flag in ("-DLBCNN_STREAM", "-DLBCNN_FULL_MAPS"):
        assert np.array_equal(_host_logits(tmp_path, x, flag), ref), flag


@needs_cc
def test_a_wrong_packed_weight_changes_the_logits(odd_model, tmp_path):
    """The comparison above is not vacuous: one flipped bit of the packed head shows."""
    model, x = odd_model
    plan = compile_plan(_quantized(model, 3))
    export_c(plan, tmp_path, measure=False)
    src = (tmp_path / "model.c").read_text()
    i = src.index("static const uint32_t HEAD_PA[")
    i = src.index("0x", i)
    word = int(src[i:i + 10], 16)
    (tmp_path / "model.c").write_text(src[:i] + f"0x{word ^ 0x10:08X}" + src[i + 10:])
    assert not np.array_equal(_host_logits(tmp_path, x, "-DLBCNN_STREAM"),
                              NumpyEngine(plan).scores(x))


@needs_mcu
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m0plus"])
def test_packed_head_on_emulated_cortex_m(mnist, tmp_path, cpu):
    """A 3-bit head on real MNIST images: every prediction and logit of the emulated build
    equals the engine, with no unaligned access on the M4 (SIMD32 path)."""
    from lbcnn.deploy.mcu import run_mcu

    model = LBCNN(filters=(4, 2), random_state=0, device="cpu").fit(
        mnist.x_train[:600], mnist.y_train[:600])
    plan = compile_plan(_quantized(model, 3, per_class=True))
    res = run_mcu(plan, cpu=cpu, images=mnist.x_test[:12], n=12, count=1, workdir=tmp_path,
                  check_alignment=cpu == "cortex-m4")
    assert res["agree"] == res["logits_agree"] == 12, res
    assert "static const uint32_t HEAD_PA[" in (tmp_path / "model.c").read_text()
    if cpu == "cortex-m4":
        assert res["unaligned_accesses"] == 0
    else:
        assert res["armv6m_violations"] == 0


@needs_mcu
def test_packed_head_odd_classes_on_emulated_m4(odd_model, tmp_path):
    """2 bits, odd class count and pooled width, three channels: the SIMD32 head's word
    stream and the one-at-a-time stream both decoded, equal to the engine."""
    from lbcnn.deploy.mcu import run_mcu

    model, x = odd_model
    plan = compile_plan(_quantized(model, 2))
    assert plan.act_dtype == "int16"
    res = run_mcu(plan, cpu="cortex-m4", images=x, n=10, count=1, workdir=tmp_path)
    assert res["agree"] == res["logits_agree"] == 10, res
    assert res["unaligned_accesses"] == 0
    assert "__smlad" in (tmp_path / "model.c").read_text()


# -- bits equal bytes ----------------------------------------------------------------------
def _flashed_bits(model, tmp_path) -> int:
    from lbcnn.deploy.c_common import compiled_weight_bytes

    export_c(model, tmp_path, measure=False)
    return 8 * sum(compiled_weight_bytes(tmp_path).values())


@needs_elf
@pytest.mark.parametrize("bits", [None, 2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_info_bits_equal_the_compiled_weight_bytes_lbcnn(odd_model, tmp_path, bits):
    """`lbcnn info`'s weight bits (the total, and the flashed figure) = the bytes of the
    compiled C's weight arrays x 8, within 2 % (here: exactly), at every head width."""
    from lbcnn.deploy.accounting import account

    model, _ = odd_model
    m = model if bits is None else _quantized(model, bits, per_class=bits % 2 == 1)
    info = account(m, sizes=False)
    c_bits = _flashed_bits(m, tmp_path)
    assert abs(info["flash_weight_bits"] - c_bits) <= 0.02 * c_bits
    assert info["flash_weight_bits"] == c_bits
    assert info["flash_weight_bits"] == 8 * compile_plan(m).weight_bytes()["total"]
    if bits is not None:     # a fixed head: the table's total is the flashed figure
        assert info["total_kbits"] * 1000 == pytest.approx(c_bits, rel=1e-12)


@pytest.fixture(scope="module")
def other_families(mnist):
    import torch

    from lbcnn.models.hybrid import Hybrid
    from lbcnn.train.cbcnn import train_cbcnn

    torch.set_num_threads(1)
    x, y = mnist.x_train, mnist.y_train
    cb = train_cbcnn(mnist, preset=None, blocks=(8, 8), dense=(16,), epochs=1, train_size=300,
                     batch_size=50, lr_start=1e-2, lr_end=1e-3, progress=False, seed=0,
                     device="cpu")["model"]
    cb.net.eval()
    hy = Hybrid(epochs=1).fit(x[:300], y[:300], x[300:400], y[300:400])
    from test_lowbit import frozen_model
    lb = frozen_model(input_shape=(28, 28, 1), conv_bits=(1, 4, 8), head_bits=(3, 8))
    return {"cbcnn": cb, "hybrid": hy, "lowbit": lb}


@needs_elf
@pytest.mark.parametrize("family", ["cbcnn", "hybrid", "lowbit"])
def test_info_bits_equal_the_compiled_weight_bytes_other_families(other_families, tmp_path,
                                                                  family):
    from lbcnn.deploy.accounting import account

    model = other_families[family]
    info = account(model, sizes=False)
    c_bits = _flashed_bits(model, tmp_path)
    assert abs(info["flash_weight_bits"] - c_bits) <= 0.02 * c_bits
    assert info["flash_weight_bits"] == c_bits
    assert info.get("family") == family


def test_a_3_bit_head_flashes_3_bits_a_weight():
    """The issue's 80,2 MNIST model with a 3-bit head: the head flashes 3 bits per weight
    (the C used to store one byte each), and `info` says so."""
    from lbcnn.deploy.accounting import account
    from lbcnn.models.lbcnn import LBCNNBody

    m = LBCNN(filters=(80, 2))
    m.body_ = LBCNNBody.random((28, 28, 1), (80, 2), seed=0)
    m.reset_classifier(10)
    m.coef_ = np.random.default_rng(0).normal(size=m.coef_.shape).astype(np.float32)
    apply_quantization(m, 3)
    info = account(m, sizes=False)
    d = 7 * 7 * 160
    assert info["flash"]["head"] == -(-d * 10 // 32) * 3 * 4 == d * 10 * 3 // 8
    assert info["flash"] == {**compile_plan(m).weight_bytes(), "head_bits": 3}
    assert info["total_kbits"] == pytest.approx((9 * 80 + 9 * 160 + d * 10 * 3 + 10 * 32) / 1000)
