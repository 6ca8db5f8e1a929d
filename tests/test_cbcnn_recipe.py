"""CBCNN training recipe (issue 16): flip / erase augmentation, LR schedules, knowledge
distillation from the float twin, --recipe presets, exact resume, one-line errors.

Everything runs on tiny synthetic images and one-block networks, except the CLI check that
--flip is refused on the real MNIST files."""
import math
import os
import signal

import numpy as np
import pytest
import torch

from bars import bars_dataset
from devices import (assert_same_accuracy, assert_same_arrays, assert_same_history,
                     assert_same_state, trains_on_cuda)
from lbcnn.errors import ConfigError, DataError, LbcnnError

torch.set_num_threads(1)

TINY = dict(blocks=(4,), dense=())


@pytest.fixture(scope="module")
def tiny():
    return bars_dataset()


def _cli(argv, capsys):
    """``lbcnn`` in-process: (exit code, non-empty stderr lines)."""
    from lbcnn.cli import main
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse refusals
        rc = exc.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


# -- flip -----------------------------------------------------------------------------
def test_flip_refused_on_mnist_gtsrb_and_unknown_datasets(tiny, data_dir, capsys, monkeypatch):
    from lbcnn.data.augment import FLIP_SAFE, check_flip_allowed
    from lbcnn.train.cbcnn import train_cbcnn
    for name in ("mnist", "gtsrb", "npz:/tmp/some.npz", "folder:/tmp/signs"):
        with pytest.raises(ConfigError, match=r"--flip refused for .*allowed for") as exc:
            check_flip_allowed(name)
        assert "\n" not in str(exc.value)
    assert "digit" in _msg(check_flip_allowed, "mnist")
    assert "keep left/right" in _msg(check_flip_allowed, "gtsrb")
    for name in FLIP_SAFE:
        check_flip_allowed(name)
    # the training API refuses before any compute, whatever the images are
    with pytest.raises(ConfigError, match="--flip refused for gtsrb"):
        train_cbcnn(bars_dataset("gtsrb"), **TINY, epochs=1, flip=True, progress=False)
    # the command line, on the real MNIST: one line, exit 2
    rc, err = _cli(["train", "--model", "cbcnn", "--dataset", "mnist", "--train-size", "200",
                    "--blocks", "4", "--dense", "", "--epochs", "1", "--flip"], capsys)
    assert rc == 2 and len(err) == 1 and "--flip refused for mnist" in err[0]
    # a recipe that flips asks for flips only where they are safe
    from lbcnn.train import cbcnn_recipe as tc
    from lbcnn.train.cbcnn_recipe import recipe_settings
    monkeypatch.setitem(tc.RECIPES, "fast", {**tc.RECIPES["fast"], "flip": True})
    assert recipe_settings("fast", "fashion_mnist")["flip"] is True
    assert recipe_settings("fast", "mnist")["flip"] is False
    assert recipe_settings("fast", "gtsrb")["flip"] is False
    rc, err = _cli(["train", "--model", "cbcnn", "--dataset", "mnist", "--train-size", "200",
                    "--blocks", "4", "--dense", "", "--epochs", "1", "--recipe", "fast",
                    "--json"], capsys)
    assert rc == 0 and any("flips no images of mnist" in line for line in err), err


def _msg(fn, *a):
    try:
        fn(*a)
    except LbcnnError as exc:
        return str(exc)
    raise AssertionError("no error")


def test_flip_and_erase_draws_depend_only_on_seed_and_epoch():
    from lbcnn.data.augment import erase_batch, erase_params, flip_batch, flip_params

    def draws(seed, epoch):
        f = flip_params(500, np.random.default_rng([seed, epoch, 2]))
        e = erase_params(500, 12, 10, 0.4, np.random.default_rng([seed, epoch, 3]))
        return f, e
    f1, e1 = draws(3, 5)
    f2, e2 = draws(3, 5)
    assert np.array_equal(f1, f2) and np.array_equal(e1, e2)   # same (seed, epoch): same draws
    f3, e3 = draws(3, 6)
    f4, e4 = draws(4, 5)
    assert not np.array_equal(f1, f3) and not np.array_equal(e1, e3)
    assert not np.array_equal(f1, f4) and not np.array_equal(e1, e4)
    assert 0.4 < f1.mean() < 0.6                        # half the images mirrored
    on = e1[:, 2] > 0
    assert 0.3 < on.mean() < 0.5                        # erased with probability 0.4
    top, left, h, w = e1[on].T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 12).all() and (left + w <= 10).all()
    assert (h >= 1).all() and (w >= 1).all()
    area = h * w / 120
    assert area.min() >= 0.01 and area.max() <= 0.5
    # the draw count per image does not depend on P: the boxes of P = 0.4 and P = 1 coincide
    e_all = erase_params(500, 12, 10, 1.0, np.random.default_rng([3, 5, 3]))
    assert np.array_equal(e_all[on], e1[on]) and (e_all[:, 2] > 0).all()
    assert (erase_params(50, 12, 10, 0.0, np.random.default_rng(0))[:, 2] == 0).all()
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        erase_params(5, 12, 10, 1.5, np.random.default_rng(0))

    x = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).view(2, 2, 3, 4) + 1
    fx = flip_batch(x, np.array([True, False]))
    assert torch.equal(fx[0], x[0].flip(-1)) and torch.equal(fx[1], x[1])
    ex = erase_batch(x, np.array([[1, 2, 2, 1], [0, 0, 0, 0]]))
    want = x.clone()
    want[0, :, 1:3, 2:3] = 0
    assert torch.equal(ex, want)


# -- learning-rate schedules ---------------------------------------------------------------
def test_lr_schedules_at_known_steps():
    from lbcnn.train.cbcnn_recipe import ONECYCLE_DIV, lr_at
    a, b = 1e-3, 1e-5
    # exp: unchanged, per epoch, whatever the step
    for e in range(5):
        assert lr_at(e, 5, a, b) == pytest.approx(a * (b / a) ** (e / 4))
        assert lr_at(e, 5, a, b, "exp", None, 7, 10) == lr_at(e, 5, a, b)
    # cosine over 5 epochs x 3 steps = 15 steps: first a, last b, middle (step 7) the mean
    assert lr_at(0, 5, a, b, "cosine", steps=3) == pytest.approx(a)
    assert lr_at(4, 5, a, b, "cosine", step=2, steps=3) == pytest.approx(b)
    assert lr_at(2, 5, a, b, "cosine", step=1, steps=3) == pytest.approx((a + b) / 2)
    assert lr_at(1, 5, a, b, "cosine", step=0, steps=3) == pytest.approx(
        b + (a - b) * (1 + math.cos(math.pi * 3 / 14)) / 2)
    # onecycle, 10 epochs x 1 step, rise 30 %: u = i / 9, peak at u = 0.3
    assert lr_at(0, 10, a, b, "onecycle") == pytest.approx(a / ONECYCLE_DIV)
    assert lr_at(9, 10, a, b, "onecycle") == pytest.approx(b)
    u = 2 / 9
    assert lr_at(2, 10, a, b, "onecycle") == pytest.approx(
        a / 25 + (a - a / 25) * (1 - math.cos(math.pi * u / 0.3)) / 2)
    # --warmup sets the rise: 5 of 10 epochs, so u = 5/9 is past the peak and u = 4/9 before it
    assert lr_at(4, 10, a, b, "onecycle", 5.0) < a and lr_at(5, 10, a, b, "onecycle", 5.0) < a
    lrs = [lr_at(e, 10, a, b, "onecycle", 4.5, s, 100) for e in range(10) for s in range(100)]
    assert max(lrs) == pytest.approx(a, rel=1e-4) and 440 <= int(np.argmax(lrs)) <= 460
    # a linear warm-up multiplies exp and cosine: 2 epochs x 4 steps, step k ends at (k + 1) / 4
    assert lr_at(0, 10, a, b, "exp", 2.0, 0, 4) == pytest.approx(a * 0.25 / 2)
    assert lr_at(1, 10, a, b, "exp", 2.0, 3, 4) == pytest.approx(a * (b / a) ** (1 / 9))
    assert lr_at(0, 10, a, b, "cosine", 2.0, 1, 4) == pytest.approx(
        lr_at(0, 10, a, b, "cosine", None, 1, 4) * 0.5 / 2)
    with pytest.raises(ConfigError, match="lr schedule"):
        lr_at(0, 10, a, b, "step")


# -- the distillation loss ------------------------------------------------------------------
def test_kd_loss_matches_hand_computation_on_a_2x3_batch():
    from lbcnn.train.distill import kd_loss
    s = np.array([[1.0, -0.5, 0.2], [0.3, 2.0, -1.0]])
    t = np.array([[2.0, 0.0, -1.0], [-0.5, 1.5, 0.5]])
    T = 2.0

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    p, q = softmax(t / T), softmax(s / T)
    # written out: sum_j p_j log(p_j / q_j), averaged over the 2 rows, times T^2
    kl_rows = [sum(p[i, j] * math.log(p[i, j] / q[i, j]) for j in range(3)) for i in range(2)]
    want = T * T * (kl_rows[0] + kl_rows[1]) / 2
    got = kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), T)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert want > 0
    # equal logits: no loss; the mixed loss used in training is (1 - w) hinge + w KD
    assert float(kd_loss(torch.tensor(s), torch.tensor(s), 3.0)) == pytest.approx(0.0, abs=1e-7)
    # the gradient wrt the student logits is T (q - p) / n
    sv = torch.tensor(s, requires_grad=True)
    kd_loss(sv, torch.tensor(t), T).backward()
    assert np.allclose(sv.grad.numpy(), T * (q - p) / 2, atol=1e-7)


# -- the float twin and its file ---------------------------------------------------------------
def test_float_twin_teacher_file_and_split_check(tiny, tmp_path):
    from lbcnn.binary.layers import BinaryActivation
    from lbcnn.train.distill import TEACHER_FILE, load_teacher, split_fingerprint
    from lbcnn.train.cbcnn import train_cbcnn
    kw = dict(**TINY, epochs=2, batch_size=40, seed=0, progress=False, lr_start=3e-3)
    r = train_cbcnn(tiny, float_twin=True, out_dir=tmp_path / "t", **kw)
    assert r["test_accuracy"] is None                   # the teacher never sees the test set
    assert not (tmp_path / "t" / "model.npz").exists()  # not a deployable CBCNN
    path = tmp_path / "t" / TEACHER_FILE
    net = r["model"].net
    assert all(m.quantizer_name == "relu" for m in net.modules() if isinstance(m, BinaryActivation))
    w = net.features[0].weight.detach()
    assert len(torch.unique(w)) > 2                     # real-valued weights, no clipping to +-1
    x = r["model"].to_tensor(tiny.x_train[:8])
    tr, va = tiny.split(None, 0.1, 0)
    pre = r["model"].preprocess.to_dict()
    teacher, cfg = load_teacher(path, input_shape=(12, 12, 1), n_classes=3, preprocess=pre,
                                split=split_fingerprint(tiny.name, tr, va))
    for k, v in net.state_dict().items():                # the file holds the twin exactly
        assert torch.equal(teacher.state_dict()[k], v), k
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    # fed the student's channels-last batches, it sums in another order than the twin did:
    # equal to float32 rounding (the exact weights are checked above)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x.contiguous(memory_format=torch.channels_last)),
                                   net.eval()(x), rtol=1e-5, atol=1e-5)
    assert cfg["val_accuracy"] == r["best_val_accuracy"] and cfg["best_epoch"] == r["best_epoch"]
    # a student on another split (seed) would be chosen on images its teacher trained on
    with pytest.raises(ConfigError, match="validation images"):
        train_cbcnn(tiny, **{**kw, "seed": 1}, teacher=path)
    with pytest.raises(ConfigError, match="validation images"):
        train_cbcnn(tiny, **{**kw, "val_fraction": 0.2}, teacher=path)
    with pytest.raises(ConfigError, match="preprocessing"):
        train_cbcnn(tiny, **kw, teacher=path, preprocess={"standardize": True})
    # the matching student distils from it; the KD term changes the trained weights
    s = train_cbcnn(tiny, **kw, teacher=path, distill_weight=0.8, temperature=3.0)
    plain = train_cbcnn(tiny, **kw)
    assert s["teacher"]["path"] == str(path) and s["teacher"]["val_accuracy"] == r["best_val_accuracy"]
    assert s["teacher"]["wall_seconds"] == pytest.approx(r["wall_seconds"])  # teacher time counted
    assert s["wall_seconds"] > s["teacher"]["wall_seconds"] > 0
    assert any(not torch.equal(v, plain["final_state"][k]) for k, v in s["final_state"].items())
    # flip and erase reach the optimiser as well
    for extra in ({"flip": True}, {"erase": 0.5}):
        other = train_cbcnn(tiny, **kw, **extra)
        assert any(not torch.equal(v, plain["final_state"][k])
                   for k, v in other["final_state"].items()), extra


def test_frozen_teacher_runs_in_the_students_channels_last_layout():
    from lbcnn.train.distill import frozen_teacher, make_float_twin
    from lbcnn.models.cbcnn import CBCNN
    from lbcnn.preprocess import Preprocess
    torch.manual_seed(0)
    net = make_float_twin(CBCNN(None, (4, 6), (), (8, 8, 1), 3, False, Preprocess.from_dict({}),
                                torch.device("cpu")).net)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        before = net.eval()(x)
    teacher = frozen_teacher(net)
    convs = [p for p in teacher.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert convs  # a 4 -> 6 channel conv: the only kind whose layout can differ
    assert all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in convs)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        after = teacher(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


# -- exact resume during a distillation run -------------------------------------------------
RECIPE_KW = dict(**TINY, epochs=2, batch_size=40, seed=5, lr_start=3e-3, flip=True, erase=0.5,
                 lr_schedule="cosine", warmup=0.5, distill=True, teacher_epochs=2,
                 distill_weight=0.6, temperature=2.5)


def _same_run(a, b):
    """Bit for bit on the CPU; on CUDA within tests/devices.py's tolerances (the teacher's
    fingerprint, a hash of its weights, is then not compared)."""
    assert_same_state(a["final_state"], b["final_state"])
    assert_same_history(a["history"], b["history"])
    if not trains_on_cuda():
        assert a["teacher"]["fingerprint"] == b["teacher"]["fingerprint"]
        assert a["best_epoch"] == b["best_epoch"]
    assert_same_accuracy(a["test_accuracy"], b["test_accuracy"])


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    from lbcnn.train.cbcnn import train_cbcnn
    out = tmp_path_factory.mktemp("full")
    return train_cbcnn(tiny, out_dir=out, progress=False, **RECIPE_KW), out


@pytest.mark.parametrize("phase", ["teacher", "student"])
def test_resume_after_interruption_during_distillation_gives_identical_weights(
        tiny, tmp_path, uninterrupted, phase):
    from lbcnn.train.cbcnn import train_cbcnn
    from lbcnn.train.checkpoint import load_checkpoint
    full, full_out = uninterrupted

    class Interrupt(Exception):
        pass

    def stop(epoch, info):
        if info["phase"] == phase:
            raise Interrupt
    with pytest.raises(Interrupt):
        train_cbcnn(tiny, out_dir=tmp_path, progress=False, on_epoch_end=stop, **RECIPE_KW)
    if phase == "teacher":
        assert load_checkpoint(tmp_path / "teacher" / "checkpoint.pt")["epoch"] == 0
        assert not (tmp_path / "checkpoint.pt").exists()
    else:
        assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 0
    resumed = train_cbcnn(tiny, out_dir=tmp_path, progress=False, resume=True, **RECIPE_KW)
    _same_run(full, resumed)
    assert resumed["wall_seconds"] > resumed["teacher"]["wall_seconds"] > 0  # teacher time counted
    cfg = load_checkpoint(tmp_path / "checkpoint.pt")["config"]
    assert cfg["distill"] and cfg["flip"] and cfg["erase"] == 0.5 and cfg["lr_schedule"] == "cosine"
    assert cfg["teacher_fingerprint"] == full["teacher"]["fingerprint"]
    import json
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["teacher"]["val_accuracy"] == full["teacher"]["val_accuracy"]
    assert summary["teacher"]["path"] == str(tmp_path / "teacher" / "teacher.npz")
    # changed recipe settings are refused on resume
    for change in ({"temperature": 3.0}, {"distill_weight": 0.5}, {"erase": 0.25},
                   {"lr_schedule": "onecycle"}, {"warmup": None}, {"teacher_epochs": 3}):
        with pytest.raises(ConfigError, match="settings differ"):
            train_cbcnn(tiny, out_dir=tmp_path, progress=False, resume=True,
                        **{**RECIPE_KW, **change})
    # killed between the teacher's end and the student's first checkpoint: the finished
    # teacher is not reused under other teacher settings
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(ConfigError, match="settings differ"):
        train_cbcnn(tiny, out_dir=tmp_path, progress=False, resume=True,
                    **{**RECIPE_KW, "teacher_epochs": 3})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_resume_after_sigkill_during_distillation_gives_identical_weights(
        tiny, tmp_path, uninterrupted):
    """A real SIGKILL (no Python cleanup, no atexit, no flush) right after the student's first
    checkpoint, in a forked child (a fresh interpreter would spend most of the test importing
    torch). To stay short, the killed run starts from a copy of the finished teacher phase of
    the uninterrupted run (what a run killed later than the teacher phase holds)."""
    import shutil

    from lbcnn.train.cbcnn import train_cbcnn
    full, full_out = uninterrupted
    shutil.copytree(full_out / "teacher", tmp_path / "run" / "teacher")

    def kill(epoch, info):
        if info["phase"] == "student":
            os.kill(os.getpid(), signal.SIGKILL)
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            train_cbcnn(tiny, out_dir=tmp_path / "run", progress=False, on_epoch_end=kill,
                        resume=True, **RECIPE_KW)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert not (tmp_path / "run" / "model.npz").exists()
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    resumed = train_cbcnn(tiny, out_dir=tmp_path / "run", progress=False, resume=True, **RECIPE_KW)
    _same_run(full, resumed)


def test_old_checkpoints_without_recipe_keys_still_resume(tiny, tmp_path):
    from lbcnn.train.cbcnn import train_cbcnn
    from lbcnn.train.checkpoint import CONFIG_DEFAULTS, load_checkpoint
    kw = dict(**TINY, epochs=2, batch_size=40, seed=2, progress=False)
    full = train_cbcnn(tiny, **kw)

    class Interrupt(Exception):
        pass

    def stop(epoch, info):
        raise Interrupt
    with pytest.raises(Interrupt):
        train_cbcnn(tiny, out_dir=tmp_path, on_epoch_end=stop, **kw)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    for key in CONFIG_DEFAULTS:
        ck["config"].pop(key)   # what a checkpoint from before bf16, warps and recipes holds
    torch.save(ck, tmp_path / "checkpoint.pt")
    resumed = train_cbcnn(tiny, out_dir=tmp_path, resume=True, **kw)
    for k, v in full["final_state"].items():
        assert torch.equal(v, resumed["final_state"][k]), k
    # resuming it with --distill is refused before any teacher is trained
    with pytest.raises(ConfigError, match="settings differ.*distill"):
        train_cbcnn(tiny, out_dir=tmp_path, resume=True, **kw, distill=True)
    assert not (tmp_path / "teacher").exists()


# -- presets and the command line ----------------------------------------------------------
def test_recipe_presets_and_explicit_options_override_them():
    import argparse

    from lbcnn.cli.train import _recipe
    from lbcnn.train.cbcnn_recipe import RECIPES, recipe_settings

    def ns(**kw):
        base = dict(recipe=None, lr_schedule=None, lr_start=None, lr_end=None, warmup=None,
                    flip=None, erase=None, distill=None, teacher=None, teacher_epochs=None,
                    distill_weight=None, temperature=None, float_twin=False, out="x",
                    resume=False, ema=None, recalibrate_bn=False)
        return argparse.Namespace(**{**base, **kw})
    default = _recipe(ns(), "fashion_mnist")
    paper = _recipe(ns(recipe="paper"), "fashion_mnist")
    assert default == paper                              # paper = today's settings
    assert (paper["lr_schedule"], paper["lr_start"], paper["lr_end"]) == ("exp", 1e-3, 1e-4)
    fast = _recipe(ns(recipe="fast"), "fashion_mnist")
    assert {k: fast[k] for k in RECIPES["fast"]} == recipe_settings("fast", "fashion_mnist")
    over = _recipe(ns(recipe="fast", flip=False, erase=0.0, lr_schedule="cosine"), "fashion_mnist")
    assert (over["flip"], over["erase"], over["lr_schedule"], over["lr_start"]) == (
        False, 0.0, "cosine", 3e-3)
    assert _recipe(ns(distill=True), "mnist")["distill_weight"] == 0.5
    assert default["ema"] is None and fast["ema"] is None  # no recipe averages the weights
    assert _recipe(ns(recipe="fast", ema=0.99), "fashion_mnist")["ema"] == 0.99
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe_settings("slow", "mnist")


@pytest.mark.parametrize("extra,message", [
    (["--erase", "-0.1"], "--erase: expected a number in [0, 1]"),
    (["--erase", "1.5"], "--erase: expected a number in [0, 1]"),
    (["--erase", "nan"], "--erase: expected a finite number"),
    (["--distill", "--temperature", "0"], "--temperature: expected a number > 0"),
    (["--distill", "--temperature", "-2"], "--temperature: expected a number > 0"),
    (["--distill", "--temperature", "inf"], "--temperature: expected a finite number"),
    (["--distill", "--distill-weight", "1.5"], "--distill-weight: expected a number in [0, 1]"),
    (["--distill", "--distill-weight", "-0.5"], "--distill-weight: expected a number in [0, 1]"),
    (["--warmup", "-1"], "--warmup: expected a number >= 0"),
    (["--warmup", "3"], "warmup must be >= 0 epochs and shorter than the run"),
    (["--lr-schedule", "step"], "--lr-schedule: invalid choice"),
    (["--recipe", "slow"], "--recipe: invalid choice"),
    (["--teacher", "MISSING"], "no such file"),
    (["--teacher", "CORRUPT"], "not a readable teacher file"),
    (["--teacher", "NOTTEACHER"], "not an lbcnn teacher file"),
    (["--teacher", "MISSING", "--distill"], "not both"),
    (["--temperature", "3"], "go with --teacher FILE or --distill"),
    (["--teacher-epochs", "3"], "--teacher-epochs goes with --distill"),
    (["--float-twin", "--distill"], "--float-twin trains the teacher itself"),
    (["--flip"], "--flip refused for npz:"),
])
def test_bad_recipe_options_give_one_line_errors(tmp_path, capsys, extra, message):
    np.savez(tmp_path / "ds.npz", x=np.zeros((60, 8, 8), np.uint8), y=np.arange(60) % 3)
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is no zip")
    np.savez(tmp_path / "notteacher.npz", w=np.zeros(3))
    names = {"MISSING": str(tmp_path / "missing.npz"), "CORRUPT": str(tmp_path / "corrupt.npz"),
             "NOTTEACHER": str(tmp_path / "notteacher.npz")}
    extra = [names.get(a, a) for a in extra]
    rc, err = _cli(["train", "--model", "cbcnn", "--dataset", f"npz:{tmp_path / 'ds.npz'}",
                    "--blocks", "4", "--dense", "", "--epochs", "2", *extra], capsys)
    assert rc == 2 and len(err) == 1, err
    assert message in err[0] and "Traceback" not in err[0]


def test_library_refuses_bad_recipe_values(tiny):
    from lbcnn.train.cbcnn import train_cbcnn
    kw = dict(**TINY, epochs=2, progress=False)
    for bad, match in [({"erase": -0.1}, "erase"), ({"erase": 1.01}, "erase"),
                       ({"erase": float("nan")}, "erase"),
                       ({"distill": True, "temperature": 0.0}, "temperature"),
                       ({"distill": True, "temperature": float("inf")}, "temperature"),
                       ({"distill": True, "distill_weight": 1.2}, "weight"),
                       ({"distill": True, "distill_weight": -0.1}, "weight"),
                       ({"lr_schedule": "linear"}, "schedule"), ({"warmup": 2.0}, "warmup"),
                       ({"warmup": -1.0}, "warmup"),
                       ({"distill": True, "teacher_epochs": 1, "warmup": 1.0}, "teacher"),
                       ({"teacher_epochs": 3}, "teacher epochs"),
                       ({"float_twin": True, "distill": True}, "float twin"),
                       ({"teacher": "/nonexistent/t.npz"}, "no such file")]:
        with pytest.raises((ConfigError, DataError), match=match) as exc:
            train_cbcnn(tiny, **{**kw, **bad})
        assert "\n" not in str(exc.value), bad


def test_ablation_script_reports_validation_only(tmp_path, capsys):
    """benchmarks/cbcnn_ablation.py on a tiny npz dataset: JSON out, no test look, a warm-up
    longer than the run is reported as skipped, flip dropped where it is refused."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "cbcnn_ablation", Path(__file__).resolve().parents[1] / "benchmarks" / "cbcnn_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ds = bars_dataset(n=160)
    np.savez(tmp_path / "ds.npz", x=ds.x_train, y=ds.y_train)
    rc = mod.main(["--dataset", f"npz:{tmp_path / 'ds.npz'}", "--epochs", "1", "--blocks", "4",
                   "--dense", "", "--options", "flip,warmup1,distill0.5T4,recipe:fast",
                   "--out", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out)
    runs = {r["option"]: r for r in report["runs"]}
    assert set(runs) == {"warmup1", "distill0.5T4", "recipe:fast"}     # flip refused for npz:
    assert "shorter than the run" in runs["warmup1"]["skipped"]
    assert 0 <= runs["distill0.5T4"]["val_accuracy"] <= 1 and "teacher_seconds" in runs["distill0.5T4"]
    assert runs["recipe:fast"]["settings"]["lr_schedule"] == "onecycle"
    assert "delta_val_pp" in runs["recipe:fast"] and report["baseline"]["val_accuracy"] >= 0
    for run_dir in (tmp_path / "runs").iterdir():                        # the test split is never read
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["test_accuracy"] is None


def test_damaged_teacher_files_give_one_line_errors(tiny, tmp_path):
    """Edited configs and arrays of a real teacher file: each refused with one line."""
    import json

    from lbcnn.train.distill import TEACHER_FILE, load_teacher, split_fingerprint
    from lbcnn.train.cbcnn import train_cbcnn
    r = train_cbcnn(tiny, **TINY, epochs=1, batch_size=40, seed=0, progress=False,
                    float_twin=True, out_dir=tmp_path / "t")
    with np.load(tmp_path / "t" / TEACHER_FILE, allow_pickle=False) as z:
        good = {k: z[k] for k in z.files}
    config = json.loads(good.pop("__config__").tobytes().decode())
    tr, va = tiny.split(None, 0.1, 0)
    want = dict(input_shape=(12, 12, 1), n_classes=3, split=split_fingerprint(tiny.name, tr, va),
                preprocess=r["model"].preprocess.to_dict())
    first = next(k for k in good if k.endswith("weight"))
    cases = [({"net": None}, {}), ({"net": {**config["net"], "blocks": [0]}}, {}),
             ({"net": {**config["net"], "blocks": [10 ** 9]}}, {}),
             ({"net": {**config["net"], "dense": "abc"}}, {}),
             ({"net": {**config["net"], "n_classes": 7}}, {}),
             ({"net": {**config["net"], "input_shape": [28, 28, 1]}}, {}),
             ({"version": 99}, {}), ({"version": "1"}, {}), ({"format": "lbcnn-model"}, {}),
             ({}, {first: np.full_like(good[first], np.nan)}),
             ({}, {first: good[first][:1]}), ({}, {"extra": np.zeros(2)})]
    for i, (cfg_edit, arr_edit) in enumerate(cases):
        arrays = {**good, **arr_edit}
        arrays["__config__"] = np.frombuffer(json.dumps({**config, **cfg_edit}).encode(), np.uint8)
        path = tmp_path / f"bad{i}.npz"
        np.savez(path, **arrays)
        with pytest.raises(LbcnnError) as exc:
            load_teacher(path, **want)
        assert "\n" not in str(exc.value) and str(path) in str(exc.value), (cfg_edit, arr_edit)
    # the unedited file loads
    np.savez(tmp_path / "ok.npz", **good, __config__=np.frombuffer(json.dumps(config).encode(), np.uint8))
    load_teacher(tmp_path / "ok.npz", **want)


def test_cli_resume_of_a_distillation_run_stopped_in_the_teacher_phase(tmp_path, capsys,
                                                                      monkeypatch):
    """lbcnn train --distill stopped (Ctrl-C) after the teacher's first checkpoint, then
    --resume: the run folder holds only RUN/teacher/checkpoint.pt, and the final model file
    equals an uninterrupted run's, array for array."""
    import json

    import lbcnn.train.cbcnn as tc
    from lbcnn.cli import main
    ds = bars_dataset(n=200)
    np.savez(tmp_path / "ds.npz", x=ds.x_train, y=ds.y_train)
    argv = ["train", "--model", "cbcnn", "--dataset", f"npz:{tmp_path / 'ds.npz'}", "--blocks",
            "4", "--dense", "", "--epochs", "2", "--batch-size", "40", "--distill", "--erase",
            "0.5", "--lr-schedule", "onecycle", "--distill-weight", "0.7", "--json"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    full = json.loads(capsys.readouterr().out)
    plot = tc.plot_training_curves

    def stop_after_first_checkpoint(*a, **k):
        plot(*a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(tc, "plot_training_curves", stop_after_first_checkpoint)
    assert main(argv + ["--out", str(tmp_path / "b")]) == 130
    monkeypatch.undo()
    assert (tmp_path / "b" / "teacher" / "checkpoint.pt").exists()
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    assert main(argv + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    with np.load(tmp_path / "a" / "model.npz") as za, np.load(tmp_path / "b" / "model.npz") as zb:
        for k in za.files:
            if k != "__config__":
                assert_same_arrays(za[k], zb[k], k)
    assert_same_accuracy(resumed["test_accuracy"], full["test_accuracy"])
    if not trains_on_cuda():
        assert resumed["teacher"]["fingerprint"] == full["teacher"]["fingerprint"]
    assert resumed["settings"]["distill"] and resumed["settings"]["distill_weight"] == 0.7


def test_cli_float_twin_then_teacher(tmp_path, capsys):
    """--float-twin writes RUN/teacher.npz (no model.npz, no test score); --teacher uses it,
    and refuses it for another --seed (another validation split)."""
    import json

    from lbcnn.cli import main
    ds = bars_dataset(n=160)
    np.savez(tmp_path / "ds.npz", x=ds.x_train, y=ds.y_train)
    argv = ["train", "--model", "cbcnn", "--dataset", f"npz:{tmp_path / 'ds.npz'}", "--blocks",
            "4", "--dense", "", "--epochs", "1", "--batch-size", "40", "--json"]
    assert main(argv + ["--float-twin", "--out", str(tmp_path / "t")]) == 0
    twin = json.loads(capsys.readouterr().out)
    assert twin["model"] == "cbcnn float twin" and twin["test_accuracy"] is None
    assert twin["teacher_path"] == str(tmp_path / "t" / "teacher.npz")
    assert not (tmp_path / "t" / "model.npz").exists()
    assert main(argv + ["--teacher", twin["teacher_path"], "--temperature", "2",
                        "--out", str(tmp_path / "s")]) == 0
    student = json.loads(capsys.readouterr().out)
    assert student["teacher"]["val_accuracy"] == twin["best_val_accuracy"]
    assert student["settings"]["temperature"] == 2.0 and student["test_accuracy"] is not None
    assert (tmp_path / "s" / "model.npz").exists()
    rc, err = _cli(argv + ["--teacher", twin["teacher_path"], "--seed", "1"], capsys)
    assert rc == 2 and len(err) == 1 and "validation images" in err[0]


# -- a time budget ---------------------------------------------------------------------
def test_time_budget_stop_reads_no_test_until_the_resumed_run_ends(tiny, tmp_path):
    from lbcnn.train.cbcnn import train_cbcnn
    kw = dict(**TINY, epochs=3, seed=0, out_dir=tmp_path / "run", progress=False)
    first = train_cbcnn(tiny, **kw, max_seconds=1e-9)
    assert first["stopped_by_time_budget"] and first["epochs_run"] == 1
    assert first["test_accuracy"] is None  # a run to be resumed does not read the test set
    assert (tmp_path / "run" / "model.npz").is_file()  # its best model so far is not lost
    done = train_cbcnn(tiny, **kw, resume=True)
    assert not done["stopped_by_time_budget"] and done["epochs_run"] == 3
    assert done["test_accuracy"] is not None and 0.0 <= done["test_accuracy"] <= 1.0
    whole = train_cbcnn(tiny, **{**kw, "out_dir": tmp_path / "whole"})
    for k, v in whole["final_state"].items():
        assert torch.equal(v, done["final_state"][k]), k


# -- progress in a log file --------------------------------------------------------------
def test_one_log_line_per_epoch_when_no_bar_is_drawn(tiny, monkeypatch):
    """``nohup lbcnn train ... > log`` must show how the run goes: a bar cannot redraw in a
    file, so each epoch gets a line with its validation accuracy and the best so far."""
    import rich.console
    from lbcnn.train.cbcnn import train_cbcnn
    # (progress, output is a terminal, epoch lines expected); fixed here, not left to how
    # pytest was started (``-s`` in a terminal would otherwise change the answer)
    for progress, terminal, expect in ((False, True, 3), (True, False, 3), (True, True, 0)):
        monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda self: terminal))
        lines = []
        r = train_cbcnn(tiny, **TINY, epochs=3, progress=progress, log=lines.append)
        epoch_lines = [ln for ln in lines if ln.startswith("epoch ")]
        assert len(epoch_lines) == expect, (progress, terminal, lines)
        if not expect:
            continue
        assert [ln.split(":")[0] for ln in epoch_lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
        for ln, rec in zip(epoch_lines, r["history"]):
            assert f"val {100 * rec['val_accuracy']:.2f} %" in ln, ln
        best = max(r["history"], key=lambda h: h["val_accuracy"])
        assert f"at epoch {r['best_epoch']})" in epoch_lines[-1] and best["epoch"] == r["best_epoch"]
        assert "\n" not in "".join(lines)


def test_distill_run_logs_the_teacher_epochs_too(tiny, monkeypatch):
    """A ``--distill`` run spends its first part on the float twin; a log file must show
    those epochs as well, or it stays empty for the whole teacher phase."""
    import rich.console
    from lbcnn.train.cbcnn import train_cbcnn
    monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda self: False))
    lines = []
    train_cbcnn(tiny, **TINY, epochs=2, distill=True, teacher_epochs=3, progress=True,
                log=lines.append)
    teacher = [ln.split(":")[0] for ln in lines if ln.startswith("float twin epoch ")]
    student = [ln.split(":")[0] for ln in lines if ln.startswith("epoch ")]
    assert teacher == ["float twin epoch 1/3", "float twin epoch 2/3", "float twin epoch 3/3"], lines
    assert student == ["epoch 1/2", "epoch 2/2"], lines
    # the split sizes come once for each phase, the teacher's first
    sizes = [i for i, ln in enumerate(lines) if "validation images" in ln]
    assert len(sizes) == 2 and "(float teacher)" in lines[sizes[0]], lines
