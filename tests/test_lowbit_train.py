"""Training the lowbit family (issue 30, part 2): exact resume after a SIGKILL during the
epochs, the run folder and the model file's provenance, the LB-CNN/ELM start, distillation
from the float twin, the time budget, the estimator, and one-line refusals."""
from __future__ import annotations

import json
import os
import re
import signal

import numpy as np
import pytest
import torch

from lbcnn.errors import ConfigError, DataError

# every augmentation, the weight average and dropout: what a resume must redraw exactly
RESUME_KW = dict(epochs=3, train_size=300, batch_size=50, seed=4, shift=1.0, rotate=5.0,
                 zoom=0.05, erase=0.3, ema=0.9, float_epochs=1)


def _model(**kw):
    from lbcnn.models.lowbit import LowBitCNN
    return LowBitCNN(**{"channels": 3, "hidden": (6,), "conv_bits": (2,), "head_bits": (3, 4),
                        "size": 12, "path": "ccpc", "dropout": 0.1, **kw})


@pytest.fixture(scope="module")
def uninterrupted(mnist, tmp_path_factory):
    from lbcnn.train.qat import train_lowbit

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("lowbit_full")
    return train_lowbit(mnist, model=_model(), out_dir=out, **RESUME_KW), out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_resume_after_sigkill_gives_the_identical_run(mnist, tmp_path, uninterrupted):
    """A real SIGKILL (no cleanup, no flush) right after epoch 2's checkpoint, in a forked
    child; the resumed run ends with the uninterrupted run's weights, weight average,
    history, chosen epoch and integers."""
    from lbcnn.models import load_model
    from lbcnn.train.qat import train_lowbit

    full, full_out = uninterrupted

    def kill(epoch, info):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    pid = os.fork()
    if pid == 0:   # the child never returns into pytest
        try:
            train_lowbit(mnist, model=_model(), out_dir=tmp_path, on_epoch_end=kill, **RESUME_KW)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "model.npz").exists()
    resumed = train_lowbit(mnist, model=_model(), out_dir=tmp_path, resume=True, **RESUME_KW)
    for k, v in full["final_state"].items():
        assert torch.equal(v, resumed["final_state"][k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(full["history"]) == strip(resumed["history"])
    assert full["best_epoch"] == resumed["best_epoch"]
    a, b = load_model(full_out / "model.npz"), load_model(tmp_path / "model.npz")
    x = mnist.x_test[:50]
    assert np.array_equal(a.decision_function(x), b.decision_function(x))
    assert resumed["test_accuracy"] == full["test_accuracy"]
    # a changed setting is refused before any work
    with pytest.raises(ConfigError, match="settings differ"):
        train_lowbit(mnist, model=_model(), out_dir=tmp_path, resume=True,
                     **{**RESUME_KW, "lr": 1e-3})


def test_run_folder_and_model_file_record_the_run(uninterrupted):
    full, out = uninterrupted
    assert {"model.npz", "summary.json", "history.json", "curves.png", "checkpoint.pt"} <= {
        p.name for p in out.iterdir()}
    with np.load(out / "model.npz") as z:
        config = json.loads(z["__config__"].tobytes())
    assert config["family"] == "lowbit" and config["dataset"] == "mnist"
    assert config["class_names"] == [str(i) for i in range(10)]
    assert config["net"]["size"] == 12 and config["input_shape"] == [28, 28, 1]
    assert config["test_accuracy"] == full["test_accuracy"] and config["seed"] == 4
    assert config["best_epoch"] == full["best_epoch"] > 1       # epoch 1 was float warm-up
    assert config["frozen"]["calibration_images"] == 270        # the 270 training images
    assert config["training"]["float_epochs"] == 1
    assert config["input_resize"]["from"] == [28, 28] and config["input_resize"]["to"] == [12, 12]
    assert config["val_fraction"] == 0.1 and config["train_size"] == 300
    h = full["history"]
    assert h[0]["integer_val_accuracy"] is None and not h[0]["quantized"]
    assert all(r["integer_val_accuracy"] is not None for r in h[1:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_val_accuracy"] == full["best_val_accuracy"]


def test_lbcnn_start_and_the_elm_head(mnist, tmp_path):
    """--init-from a searched LB-CNN: its +-1 kernels become the paths' kernels and the ridge
    head the output layer; a body that does not fit is refused in one line."""
    from lbcnn.models.lbcnn import LBCNN
    from lbcnn.train.qat import QATRun

    lb = LBCNN(filters=(3,), nl=3, random_state=2).fit(mnist.x_train[:300], mnist.y_train[:300])
    lb.save(tmp_path / "lb.npz")
    run = QATRun(mnist, _model(hidden=(), head_bits=(4,), path="ccpc", dropout=0.0), epochs=1,
                 train_size=400, batch_size=50, init_from=tmp_path / "lb.npz")
    info = run.init_info
    assert info["mode"] == "lbcnn" and 0.0 < info["ridge"]["holdout_accuracy"] <= 1.0
    for layer, k in enumerate([lb.body_.kernels[0]["conv"]] + lb.body_.kernels[0]["extras"]):
        w = run.net.conv_w[layer].detach().numpy()[:, 0]
        ref = np.moveaxis(k[:, :, 0, :] if layer == 0 else k[:, :, :, 0], 2, 0)
        assert np.array_equal(np.sign(w), ref)
    assert run.advance() > 0.0
    with pytest.raises(ConfigError, match="does not fit this network") as err:
        QATRun(mnist, _model(channels=4), epochs=1, train_size=400,
               init_from=tmp_path / "lb.npz")
    assert "\n" not in str(err.value)


def test_distillation_from_the_float_twin(mnist, tmp_path):
    """--distill trains the float twin first (RUN/teacher/teacher.npz, chosen on the same
    validation split), then the student with it; the twin's file is a valid --teacher and
    a CBCNN run refuses it."""
    from lbcnn.train.cbcnn import train_cbcnn
    from lbcnn.train.qat import train_lowbit

    kw = dict(epochs=1, train_size=300, batch_size=50, seed=1)
    res = train_lowbit(mnist, model=_model(dropout=0.0), out_dir=tmp_path, distill=True,
                       distill_weight=0.5, **kw)
    twin = tmp_path / "teacher" / "teacher.npz"
    assert twin.exists() and res["teacher"]["fingerprint"]
    again = train_lowbit(mnist, model=_model(dropout=0.0), teacher=twin, **kw)
    assert again["teacher"]["fingerprint"] == res["teacher"]["fingerprint"]
    with pytest.raises(ConfigError, match="another architecture"):
        train_lowbit(mnist, model=_model(dropout=0.0, channels=4), teacher=twin, **kw)
    with pytest.raises(ConfigError, match="lowbit_float_twin teacher"):
        train_cbcnn(mnist, preset=None, blocks=(4,), dense=(), teacher=twin, epochs=1,
                    train_size=300, progress=False)


def test_time_budget_stops_between_epochs_and_leaves_the_test_set_unread(mnist):
    from lbcnn.train.qat import train_lowbit

    res = train_lowbit(mnist, model=_model(), epochs=5, train_size=200, batch_size=50,
                       max_seconds=0.01)
    assert res["epochs_run"] == 1 and res["stopped_by_time_budget"]
    assert res["test_accuracy"] is None


def test_no_test_leaves_the_test_set_unread_and_evaluate_reads_it(mnist, tmp_path, monkeypatch,
                                                                  capsys):
    """Candidates are compared on validation: --no-test trains, chooses and saves without
    scoring the test set; lbcnn evaluate then reads it for the chosen one."""
    from lbcnn.cli import main
    from lbcnn.models.lowbit import LowBitCNN

    def no_score(*a, **k):
        raise AssertionError("the test set was scored")
    with monkeypatch.context() as m:
        m.setattr(LowBitCNN, "score", no_score)
        rc = main(["train", "--model", "lowbit", "--dataset", "mnist", "--train-size", "200",
                   "--epochs", "1", "--channels", "2", "--dense", "", "--size", "12",
                   "--path", "ccpc", "--head-bits", "4", "--no-test", "--out", str(tmp_path / "r"), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_accuracy"] is None and summary["test_read"] is False
    on_disk = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert on_disk["test_accuracy"] is None and on_disk["test_read"] is False
    assert main(["evaluate", str(tmp_path / "r"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] > 0.0
    rc = main(["train", "--model", "cbcnn", "--dataset", "mnist", "--no-test"])
    assert rc == 2 and "--no-test is a lowbit option" in capsys.readouterr().err


def test_estimator_fit_predict_and_file(mnist, tmp_path):
    from lbcnn.models import create_model, load_model

    est = create_model("lowbit", channels=2, hidden=(), head_bits=(8,), conv_bits=(1,),
                       size=12, path="ccpc", epochs=1, batch_size=50)
    y = np.array([f"c{v}" for v in mnist.y_train[:300]])
    est.fit(mnist.x_train[:300], y)
    pred = est.predict(mnist.x_test[:20])
    assert set(pred) <= set(y) and est.predict_proba(mnist.x_test[:5]).shape == (5, 10)
    assert est.forward_features(mnist.x_test[:3]).shape == (3, 2 * 4)
    with pytest.raises(ValueError, match="shape"):
        est.predict(np.zeros((2, 20, 20), np.uint8))
    with pytest.raises(ConfigError, match="integer class labels"):
        est.save(tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()
    est.fit(mnist.x_train[:300], mnist.y_train[:300])
    pred = est.predict(mnist.x_test[:20])
    est.save(tmp_path / "m.npz")
    assert np.array_equal(load_model(tmp_path / "m.npz").predict(mnist.x_test[:20]), pred)


@pytest.mark.parametrize("argv,message", [
    (["--preset", "cbcnn28"], "not a lowbit option"),
    (["--lr-schedule", "exp"], "only cosine"),
    (["--conv-bits", "9"], r"1\.\.8"),
    (["--dense", "4,4,4"], "0 to 2 hidden"),
    (["--float-twin", "--ema", "0.9", "--out", "{tmp}/t"], "quantized network"),
    (["--teacher", "{tmp}/none.npz"], "no such file"),
    (["--resume", "--out", "{tmp}/empty"], "holds no lowbit checkpoint"),
    (["--init-from", "{tmp}/none"], "not found"),
])
def test_bad_lowbit_options_are_one_line(argv, message, tmp_path, capsys, data_dir):
    from lbcnn.cli import main

    (tmp_path / "empty").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main(["train", "--model", "lowbit", "--dataset", "mnist", "--train-size", "200",
               "--epochs", "1", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and re.search(message, err), err


def test_lowbit_options_are_refused_for_other_families(capsys, data_dir):
    from lbcnn.cli import main

    rc = main(["train", "--model", "cbcnn", "--dataset", "mnist", "--channels", "4"])
    assert rc == 2 and "--channels is a lowbit option" in capsys.readouterr().err
    from lbcnn.train.qat import load_teacher
    with pytest.raises(DataError, match="not a readable teacher file"):
        load_teacher(__file__, {}, "", 0.0)      # a file that is not a teacher


def test_cli_choices_are_the_architectures():
    """The parser spells out the lowbit choices (building it imports no model)."""
    from lbcnn.cli import build_parser
    from lbcnn.models.lowbit_arch import CONV_NORMS, FIRST_MODES

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    opts = {a.dest: a for a in train._actions}
    assert tuple(opts["first"].choices) == FIRST_MODES
    assert tuple(opts["conv_norm"].choices) == CONV_NORMS
