"""No lost work, no tracebacks: output checks, locks, resume, validated files, refused NaN.

Each case here is a regression test for a failure seen with hostile but
realistic input; most run the CLI in-process on a tiny synthetic dataset.
"""
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lbcnn.cli import main
from lbcnn.errors import ConfigError, DataError, LbcnnError


def tiny_npz(path: Path, n_train=150, n_test=45, classes=3, seed=0, **overrides) -> str:
    """Class-dependent blobs on 12x12 gray images: learnable in a few ms."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % classes
        x = rng.integers(0, 60, (n, 12, 12), dtype=np.uint8)
        for c in range(classes):
            x[y == c, 2 + 3 * c:5 + 3 * c, 2:10] += 150
        return x, y

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    arrays = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte, **overrides}
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.fixture
def tiny(tmp_path):
    return tiny_npz(tmp_path / "tiny.npz")


def run(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *fragments):
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


SEARCH = ["search", "--filters", "4", "--trials", "3", "--seed", "0"]


# --- outputs checked before any compute -------------------------------------------------------

@pytest.fixture
def no_compute(monkeypatch):
    """A spy on the ELM solve: any call means work started before the refusal."""
    calls = []

    def spy(*a, **k):
        calls.append(1)
        raise AssertionError("compute started")

    import lbcnn.train.search  # noqa: F401
    monkeypatch.setattr(sys.modules["lbcnn.train.search"], "fit_elm", spy)
    return calls


@pytest.mark.parametrize("make_out,message", [
    (lambda p: (p / "f").write_text("x") and p / "f", "is a file"),
    (lambda p: (p / "f").write_text("x") and p / "f" / "sub", "is a file, not a folder"),
    (lambda p: Path("/proc/lbcnn-test"), "cannot write"),
    (lambda p: "", "is empty"),
    (lambda p: (p / "full").mkdir() or (p / "full" / "other.npz").write_text("x") and p / "full",
     "not empty"),
])
def test_bad_out_is_refused_before_compute(tmp_path, tiny, capsys, no_compute, make_out, message):
    out = make_out(tmp_path)
    rc, _, err = run([*SEARCH, "--dataset", tiny, "--out", out], capsys)
    one_line_error(rc, err, message)
    assert not no_compute


def test_finetune_and_quantize_check_out_first(tmp_path, tiny, capsys):
    run([*SEARCH, "--dataset", tiny, "--out", tmp_path / "run"], capsys)
    (tmp_path / "dir").mkdir()
    t0 = time.perf_counter()
    for cmd in (["finetune", tmp_path / "run", "--out", tmp_path / "dir"],
                ["quantize", tmp_path / "run", "--out", tmp_path / "dir"],
                ["export", tmp_path / "run", "--format", "onnx", "--out", tmp_path / "dir"]):
        rc, _, err = run(cmd, capsys)
        one_line_error(rc, err, "is a folder")
    assert time.perf_counter() - t0 < 5


def test_files_honour_the_umask(tmp_path, tiny, capsys):
    old = os.umask(0o022)
    try:
        rc, _, err = run([*SEARCH, "--dataset", tiny, "--out", tmp_path / "run"], capsys)
        assert rc == 0, err
        rc, _, err = run(["quantize", tmp_path / "run", "--out", tmp_path / "q.npz"], capsys)
        assert rc == 0, err
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")]
    files.append(tmp_path / "q.npz")
    assert {"model.npz", "history.csv", "trials.png", "summary.json"} <= {p.name for p in files}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_trials_numbered_from_one_everywhere(tmp_path, tiny, capsys):
    rc, _, err = run([*SEARCH, "--dataset", tiny, "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    lines = (tmp_path / "run" / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert [int(ln.split(",")[header.index("trial")]) for ln in lines[1:]] == [1, 2, 3]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    best = max(history, key=lambda h: h["val_accuracy"])
    assert summary["best_trial"] == best["trial"] >= 1


def test_force_overwrites_and_no_out_says_nothing_saved(tmp_path, tiny, capsys):
    out = tmp_path / "run"
    assert run([*SEARCH, "--dataset", tiny, "--out", out], capsys)[0] == 0
    rc, _, err = run([*SEARCH, "--dataset", tiny, "--out", out, "--force"], capsys)
    assert rc == 0, err
    rc, _, err = run([*SEARCH, "--dataset", tiny], capsys)
    assert rc == 0 and "nothing was saved" in err


# --- lock and resume --------------------------------------------------------------------------

def test_lock_refuses_a_second_writer_naming_the_holder(tmp_path, tiny, capsys):
    from lbcnn.outputs import RunLock
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from lbcnn.outputs import RunLock; "
        f"RunLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = run([*SEARCH, "--dataset", tiny, "--out", out, "--resume"], capsys)
        one_line_error(rc, err)
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
            RunLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops a dead holder's lock: no stale lock after kill -9
    RunLock(out).acquire().release()


def _summary_without_timings(path: Path) -> dict:
    s = json.loads(path.read_text())
    return {k: v for k, v in s.items() if not k.startswith("seconds")}


def test_sigkill_at_a_random_trial_then_resume_equals_uninterrupted(tmp_path, tiny, capsys):
    trials = 8
    argv = ["search", "--dataset", tiny, "--filters", "6", "--trials", str(trials), "--seed", "3"]
    assert run([*argv, "--out", tmp_path / "whole"], capsys)[0] == 0
    kill_after = int(np.random.default_rng().integers(1, trials - 1))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lbcnn", *argv, "--out", str(out), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = out / "history.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(history.read_text())) >= kill_after:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(json.loads(history.read_text()))
    assert done >= kill_after
    rc, _, err = run(["search", "--resume", "--out", out], capsys)
    assert rc == 0, err
    assert len(json.loads(history.read_text())) == trials
    assert _summary_without_timings(out / "summary.json") == \
        _summary_without_timings(tmp_path / "whole" / "summary.json")


def test_ctrl_c_leaves_a_resumable_folder(tmp_path, tiny):
    out = tmp_path / "run"
    # the child must not inherit an ignored SIGINT (pytest run in a background job is)
    proc = subprocess.Popen([sys.executable, "-m", "lbcnn", "search", "--dataset", tiny,
                             "--filters", "6", "--trials", "400", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    history = out / "history.json"
    deadline = time.time() + 120
    while time.time() < deadline and not history.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume --out" in err and "Traceback" not in err
    assert len(json.loads(history.read_text())) >= 1


def test_resume_refuses_other_settings_and_empty_folders(tmp_path, tiny, capsys):
    out = tmp_path / "run"
    assert run([*SEARCH, "--dataset", tiny, "--out", out], capsys)[0] == 0
    rc, _, err = run(["search", "--resume", "--out", out, "--trials", "5"], capsys)
    one_line_error(rc, err, "--trials 5 (run: 3)")
    (tmp_path / "empty").mkdir()
    rc, _, err = run(["search", "--resume", "--out", tmp_path / "empty"], capsys)
    one_line_error(rc, err, "holds no search run")


# --- model files: one validator, nothing trusted ----------------------------------------------

@pytest.fixture
def model_file(tmp_path, tiny, capsys):
    assert run([*SEARCH, "--dataset", tiny, "--out", tmp_path / "run"], capsys)[0] == 0
    return tmp_path / "run" / "model.npz"


def rewrite(src: Path, dst: Path, config_edit=None, arrays_edit=None) -> Path:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(arrays.pop("__config__").tobytes().decode())
    if config_edit:
        config = config_edit(config)
    if arrays_edit:
        arrays_edit(arrays)
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)
    return dst


def _set(key, value):
    def edit(c):
        c[key] = value
        return c
    return edit


@pytest.mark.parametrize("name,config_edit,arrays_edit,message", [
    ("5x5 kernel", None,
     lambda a: a.update({"body/0/conv": np.ones((5, 5, 1, 4), np.int8)}), "body/0/conv"),
    ("no head", None, lambda a: a.pop("head/weight"), "'head/weight' is missing"),
    ("no conv", None, lambda a: a.pop("body/0/conv"), "'body/0/conv' is missing"),
    ("list config", lambda c: [c], None, "not an lbcnn model file"),
    ("version abc", _set("version", "abc"), None, "'version' must be an integer"),
    ("filters string", _set("filters", "4,2"), None, "'filters'"),
    ("nl 50", _set("nl", 50), None, "'nl' = 50"),
    ("scale string", _set("input_scale", "0.1"), None, "'input_scale'"),
    ("NaN head", None, lambda a: a["head/weight"].__setitem__((0, 0), np.nan), "NaN"),
    ("inf bias", None, lambda a: a["head/bias"].__setitem__(0, np.inf), "NaN or infinite"),
])
def test_edited_model_files_are_refused(model_file, tmp_path, capsys, name, config_edit,
                                        arrays_edit, message):
    from lbcnn import load_model
    bad = rewrite(model_file, tmp_path / "bad.npz", config_edit, arrays_edit)
    with pytest.raises(DataError, match=None) as exc:
        load_model(bad)
    assert message in str(exc.value)
    for cmd in (["info", bad], ["evaluate", bad], ["export", bad, "--format", "c",
                                                   "--out", tmp_path / "c"]):
        rc, _, err = run(cmd, capsys)
        one_line_error(rc, err)


@pytest.mark.parametrize("content,message", [
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "HDF5"),
    (b"just some notes\n", "not an lbcnn model file: looks like text"),
    (np.random.default_rng(300).bytes(300), "lbcnn model"),
    (b"", "empty"),
])
def test_wrong_file_types_are_named(tmp_path, capsys, content, message):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    rc, _, err = run(["info", path], capsys)
    one_line_error(rc, err, message)


def test_save_refuses_non_finite_weights(model_file, tmp_path):
    from lbcnn import load_model
    from lbcnn.models.lbcnn import save_lbcnn
    model = load_model(model_file)
    model.coef_[0, 0] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        save_lbcnn(model, tmp_path / "nan.npz")
    assert not (tmp_path / "nan.npz").exists()


def test_corrupt_checkpoints_give_one_line(tmp_path):
    import pickle

    import torch

    from lbcnn.train.checkpoint import load_checkpoint
    good = {"config": {}, "epoch": 0, "model": {"w": torch.zeros(2)}, "optimizer": {},
            "torch_rng": torch.get_rng_state(), "history": [{"epoch": 1, "val_accuracy": 0.5}],
            "best_val_accuracy": 0.5, "best_epoch": 1, "best_model": {"w": torch.ones(2)}}
    torch.save(good, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["epoch"] == 0
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "zero.pt").write_bytes(b"")
    torch.save({k: v for k, v in good.items() if k != "optimizer"}, tmp_path / "missing.pt")

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps(Payload()))
    torch.save({**good, "model": Payload()}, tmp_path / "pickle2.pt")
    for name, message in [("trunc.pt", "corrupt or truncated"), ("zero.pt", "missing or empty"),
                          ("missing.pt", "lacks optimizer"), ("pickle.pt", ""),
                          ("pickle2.pt", "refuses")]:
        with pytest.raises(DataError) as exc:
            load_checkpoint(tmp_path / name)
        assert message in str(exc.value) and "weights_only" not in str(exc.value)


# --- numbers and labels -----------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--C", "nan"], "--C: expected a finite number"),
    (["--C", "-1"], "--C: expected a number > 0"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--device", "tpu"], "unknown device"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--split", "paper"], "has no paper split"),
])
def test_bad_search_options(tiny, tmp_path, capsys, argv, message):
    rc, _, err = run([*SEARCH, "--dataset", tiny, "--out", tmp_path / "r", *argv], capsys)
    one_line_error(rc, err, message)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the machine has CUDA")
def test_cuda_without_cuda(tiny, capsys):
    rc, _, err = run([*SEARCH, "--dataset", tiny, "--device", "cuda"], capsys)
    one_line_error(rc, err, "no CUDA device")


def test_finetune_lr_nan_and_train_options(tiny, tmp_path, capsys, model_file):
    cases = [
        (["finetune", model_file, "--lr", "nan", "--out", tmp_path / "f.npz"], "--lr"),
        (["train", "--model", "hybrid", "--dataset", tiny, "--lr", "-1"], "--lr"),
        (["train", "--model", "hybrid", "--dataset", tiny, "--threshold", "abc"], "--threshold"),
        (["train", "--model", "hybrid", "--dataset", tiny, "--hidden", "0"], "--hidden"),
        (["train", "--model", "hybrid", "--dataset", tiny, "--hidden", "99999999999999999999"],
         "--hidden"),
        (["search", "--dataset", tiny, "--seed", "-1"], "--seed"),
        (["train", "--model", "cbcnn", "--dataset", tiny, "--train-size", "2"], "batch norm"),
        (["transfer", "--backbone", model_file, "--dataset", tiny, "--batch-size", "0"],
         "--batch-size"),
    ]
    for argv, message in cases:
        rc, _, err = run(argv, capsys)
        one_line_error(rc, err, message)


def test_a_model_trained_on_some_classes_saves_a_loadable_file(tiny, tmp_path, capsys):
    """Two training images of three classes: the file must still pass the validator."""
    from lbcnn.io.native import load_model_file
    rc, _, err = run(["train", "--model", "hybrid", "--dataset", tiny, "--train-size", "2",
                      "--epochs", "1", "--out", tmp_path / "hy"], capsys)
    assert rc == 0, err
    config, _ = load_model_file(tmp_path / "hy" / "model.npz")
    assert len(config["class_names"]) == len(config["classes"]) < 3


def test_labels_are_checked_or_remapped(tmp_path):
    from lbcnn.data import load_dataset
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "one.npz", x_train=x[:30], y_train=np.zeros(30, int),
             x_test=x[30:], y_test=np.zeros(10, int))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset(f"npz:{tmp_path / 'one.npz'}")
    y = np.arange(40) % 2
    np.savez(tmp_path / "unseen.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:],
             y_test=np.full(10, 2))
    with pytest.raises(DataError, match="test labels 2 never occur in training"):
        load_dataset(f"npz:{tmp_path / 'unseen.npz'}")
    gaps = np.where(y == 1, 1000, 0)
    np.savez(tmp_path / "gaps.npz", x_train=x[:30], y_train=gaps[:30], x_test=x[30:],
             y_test=gaps[30:])
    ds = load_dataset(f"npz:{tmp_path / 'gaps.npz'}")
    assert ds.n_classes == 2 and ds.label_values == [0, 1000]
    assert set(ds.y_train) == {0, 1} and ds.notes and "remapped" in ds.notes[0]
    np.savez(tmp_path / "empty.npz", x_train=x[:30], y_train=y[:30], x_test=x[:0], y_test=y[:0])
    with pytest.raises(DataError, match="test split is empty"):
        load_dataset(f"npz:{tmp_path / 'empty.npz'}")


def test_dataset_default_and_mismatch(tmp_path, capsys, model_file):
    other = tiny_npz(tmp_path / "other.npz", seed=5)
    rc, _, err = run(["quantize", model_file, "--out", tmp_path / "q.npz"], capsys)
    assert rc == 0, err
    rc, _, err = run(["quantize", model_file, "--dataset", other, "--out", tmp_path / "q2.npz"],
                     capsys)
    one_line_error(rc, err, "trained on npz:", "other.npz")
    rc, _, err = run(["finetune", model_file, "--dataset", other, "--epochs", "1",
                      "--out", tmp_path / "f.npz"], capsys)
    assert rc == 0 and "warning: the model was trained on npz:" in err


def test_class_names_travel_with_the_model(tmp_path, capsys):
    from PIL import Image

    from lbcnn.io.native import load_model_file
    rng = np.random.default_rng(0)
    for c, name in enumerate(["zero", "one", "seven"]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 40, (10, 10), dtype=np.uint8)
            img[2 + 2 * c:4 + 2 * c] = 250
            Image.fromarray(img).save(tmp_path / "imgs" / name / f"{i}.png")
    (tmp_path / "imgs" / "one" / "readme.txt").write_text("not an image")
    rc, _, err = run(["search", "--dataset", tmp_path / "imgs", "--filters", "2", "--trials", "2",
                      "--test-fraction", "0.25", "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    assert "skipped 1 file" in err
    config, _ = load_model_file(tmp_path / "run" / "model.npz")
    assert config["class_names"] == ["one", "seven", "zero"]
    assert config["dataset"] == f"folder:{tmp_path / 'imgs'}"
    rc, _, err = run(["export", tmp_path / "run", "--format", "onnx", "--out", tmp_path / "m.onnx"],
                     capsys)
    assert rc == 0, err
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["lbcnn_class_names"]) == ["one", "seven", "zero"]


# --- test IDs are the same in every process (pytest-xdist needs it) ---------------------------

def test_collection_gives_the_same_ids_in_every_process():
    """Two collections, in processes with different hash seeds, list the same test IDs:
    no parametrization may draw unseeded random values (pytest -n auto refuses a suite
    whose workers collect different IDs)."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
           str(root / "tests")]
    procs = [subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONHASHSEED": seed})
             for seed in ("1", "2")]
    outs = [p.communicate(timeout=600) for p in procs]
    ids = []
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err[-2000:]
        ids.append([line for line in out.splitlines() if "::" in line])
    assert len(ids[0]) > 100
    assert ids[0] == ids[1], sorted(set(ids[0]) ^ set(ids[1]))[:5]
