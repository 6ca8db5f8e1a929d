"""Issue 31's Why list, one regression test per item (the loader's item 5 is in
test_images.py, the whole path in test_own_images.py), and issue 34's data items: one
scaling rule for .npz pixels, labels checked before casting, options that do not apply,
--data-path recorded, and --resume checking the data's fingerprint."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lbcnn.data import load_dataset
from lbcnn.errors import ConfigError, DataError

SEARCH = ["search", "--resize", "12,12", "--grayscale", "--filters", "3,2", "--trials", "2"]


def cli(capsys, *args, rc=0):
    from lbcnn.cli import main
    try:
        got = main([str(a) for a in args])
    except SystemExit as exc:
        got = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert got == rc, err
    return out, err


def cli_json(capsys, *args, rc=0):
    out, err = cli(capsys, *args, "--json", rc=rc)
    return json.loads(out), err


@pytest.fixture
def photos(tmp_path):
    from photos import make_photos
    make_photos(tmp_path / "photos", per_class=12, rare=2)
    return tmp_path / "photos"


def tiny_npz(path: Path, n=120, classes=3, seed=0, **arrays) -> Path:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 60, (n, 12, 12), dtype=np.uint8)
    for c in range(classes):
        x[y == c, 2 + 3 * c:5 + 3 * c, 2:10] += 150
    k = n * 3 // 4
    np.savez(path, **{"x_train": x[:k], "y_train": y[:k], "x_test": x[k:], "y_test": y[k:],
                      **arrays})
    return path


# -- 1. one split, recorded and reproduced ---------------------------------------------------
def test_why1_split_is_seeded_recorded_and_checked(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, _ = cli_json(capsys, *SEARCH, "--dataset", "photos", "--out", "a")
    b, _ = cli_json(capsys, *SEARCH, "--dataset", "photos", "--out", "b")
    assert a["split"] == b["split"] and a["test_accuracy"] == b["test_accuracy"]
    assert a["split"]["seed"] == 0 and a["seed"] == 0
    config = _config(tmp_path / "a" / "model.npz")
    assert config["split"]["seed"] == 0 and config["split"]["fingerprint"] == a["split"]["fingerprint"]
    # the data changes after the model was written: an error, not a partly-seen test split
    shutil.copy(photos / "star" / "000.jpg", photos / "star" / "new.jpg")
    _, err = cli(capsys, "evaluate", "a", rc=2)
    assert "test split no longer matches the model file" in err and "Pass --dataset" in err
    # another split chosen on purpose: it runs, with a warning naming both sides
    _, err = cli(capsys, "evaluate", "a", "--dataset", "photos", "--json")
    assert "warning: this is not the test split the model was measured on" in err
    assert a["split"]["fingerprint"] in err
    os.remove(photos / "star" / "new.jpg")
    _, err = cli(capsys, "evaluate", "a", "--seed", "3", "--json")
    assert "not the test split" in err
    # a file from before the split record, with no seed: said, not hidden
    legacy = _rewrite(tmp_path / "a" / "model.npz", tmp_path / "legacy.npz", lambda c: {
        **{k: v for k, v in c.items() if k not in ("split", "seed")},
        "preprocessing": {"resize": [12, 12], "grayscale": True, "test_fraction": 0.2,
                          "split_seed": None}})
    _, err = cli(capsys, "evaluate", legacy, "--json")
    assert "records no split seed" in err


def _config(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(z["__config__"].tobytes().decode())


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    config = edit(json.loads(arrays.pop("__config__").tobytes().decode()))
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    np.savez(dst, **arrays)
    return dst


# -- 2. test vectors for every dataset kind, or a reason and no broken target -----------------
def test_why2_test_vectors_for_folders_or_a_reason(tmp_path, capsys, monkeypatch, rng):
    from PIL import Image
    for cls in ("a", "b"):   # uniform sizes, no --resize: the recorded shape is the images'
        (tmp_path / "same" / cls).mkdir(parents=True)
        for i in range(10):
            x = rng.integers(0, 80, (12, 12, 3), dtype=np.uint8)
            x[(2 if cls == "a" else 8):(4 if cls == "a" else 10)] = 240
            Image.fromarray(x).save(tmp_path / "same" / cls / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    cli_json(capsys, "search", "--dataset", "same", "--filters", "2", "--trials", "1",
             "--out", "run")
    x, _ = cli_json(capsys, "export", "run", "--format", "c", "--out", "c1")
    assert x["test_vectors"] == 4 and "selftest:" in (tmp_path / "c1" / "Makefile").read_text()
    shutil.rmtree(tmp_path / "same")          # the data is gone: the export still works
    x, err = cli_json(capsys, "export", "run", "--format", "c", "--out", "c2")
    assert x["test_vectors"] == 0 and "neither at" in x["no_test_vectors_because"]
    assert "no test vectors" in err
    make = (tmp_path / "c2" / "Makefile").read_text()
    assert "selftest" not in make and "test_vectors" not in make
    assert "lbcnn_selftest" not in (tmp_path / "c2" / "CMakeLists.txt").read_text()
    r = subprocess.run(["make", "-C", str(tmp_path / "c2")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# -- 3. optimize members: provenance, names, test accuracy; trials from 1 ---------------------
def test_why3_optimize_members_describe_themselves(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    o, _ = cli_json(capsys, "optimize", "--dataset", "photos", "--resize", "12,12",
                    "--grayscale", "--layers", "1", "--nf1", "2,4", "--bits", "8",
                    "--max-configs", "3", "--out", "opt")
    rows = (tmp_path / "opt" / "trials.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    member = o["front"][0]
    path = tmp_path / member["model"]
    assert path.name == f"trial-{member['trial']:05d}.npz" and member["trial"] >= 1
    config = _config(path)
    assert config["optimize_trial"] == member["trial"]
    assert config["preprocessing"]["resize"] == [12, 12] and config["class_names"][0] == "circle"
    assert config["test_accuracy"] == member["test_accuracy"] and config["test_size"] > 0
    monkeypatch.chdir(photos)                  # no data flags, from another folder
    e, _ = cli_json(capsys, "evaluate", path)
    assert e["accuracy"] == member["test_accuracy"] and e["same_split_as_recorded"]
    out, _ = cli(capsys, "predict", path, "star/000.jpg")
    assert ": star" in out or ": " in out and out.split(": ")[1].split(" ")[0] in (
        "circle", "square", "star", "triangle")
    x, _ = cli_json(capsys, "export", path, "--format", "c", "--out", tmp_path / "oc")
    assert x["test_vectors"] > 0
    assert '"circle"' in (tmp_path / "oc" / "model.h").read_text()


# -- 4. a refit head has no "validation" figure ----------------------------------------------
def test_why4_quantize_reports_validation_only_when_held_out(tmp_path, photos, capsys,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_json(capsys, *SEARCH, "--dataset", "photos", "--out", "full")
    q, err = cli_json(capsys, "quantize", "full", "--out", "q.npz")
    assert q["validation_held_out"] is False and q["after"]["val_accuracy"] is None
    assert _config(tmp_path / "q.npz").get("val_accuracy") is None
    out, err = cli(capsys, "quantize", "full", "--out", "q2.npz")
    assert "validation accuracy" not in out and "no validation figure" in err
    cli_json(capsys, *SEARCH, "--dataset", "photos", "--train-size", "20", "--out", "sub")
    q, _ = cli_json(capsys, "quantize", "sub", "--out", "q3.npz")
    assert q["validation_held_out"] is True and q["val_size"] > 0
    assert 0 <= q["after"]["val_accuracy"] <= 1


# -- 6. paths and messages -------------------------------------------------------------------
def test_why6_paths_as_given_and_resolved(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_json(capsys, *SEARCH, "--dataset", "photos/", "--out", "run")
    config = _config(tmp_path / "run" / "model.npz")
    assert config["dataset"] == "folder:photos" and config["dataset_path"] == str(photos)
    # the same folder by its absolute path: the recorded resize is kept, no warning
    e, err = cli_json(capsys, "evaluate", "run", "--dataset", str(photos) + "/")
    assert "warning" not in err.replace("warning: class", "") and e["same_split_as_recorded"]
    monkeypatch.chdir(photos / "star")
    e2, _ = cli_json(capsys, "evaluate", tmp_path / "run")
    assert e2["accuracy"] == e["accuracy"]
    # moved: said where it was and how to say where it is
    shutil.move(photos, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    _, err = cli(capsys, "evaluate", "run", rc=2)
    assert f"neither at {photos}" in err and "--dataset PATH" in err
    e3, _ = cli_json(capsys, "evaluate", "run", "--dataset", "moved")
    assert e3["accuracy"] == e["accuracy"] and e3["same_split_as_recorded"]
    _, err = cli(capsys, "search", "--dataset", "imgz", "--resize", "28,28", rc=2)
    assert "unknown dataset 'imgz'" in err and "no folder or .npz file" in err


# -- 7. mcu: stratified sample, labels, clock per CPU, progress -------------------------------
def test_why7_mcu_sample_labels_clock_progress(tmp_path, mnist):
    from lbcnn.data.splits import test_sample
    from lbcnn.deploy.mcu import TYPICAL_MHZ

    idx = test_sample(mnist.y_test, 30, seed=0)
    assert len(np.unique(mnist.y_test[idx])) == 10       # the first 30 hold 9 classes, sorted
    sorted_y = np.sort(mnist.y_test)                     # a class-sorted split (folders)
    assert len(np.unique(sorted_y[test_sample(sorted_y, 20, seed=0)])) == 10
    assert np.array_equal(idx, test_sample(mnist.y_test, 30, seed=0))
    assert TYPICAL_MHZ == {"cortex-m4": 168.0, "cortex-m0plus": 48.0}
    pytest.importorskip("ziglang")
    pytest.importorskip("unicorn")
    from lbcnn.deploy.mcu import run_mcu
    from lbcnn.engine import compile_plan
    from lbcnn.models.lbcnn import LBCNN
    lb = LBCNN(filters=(2,), random_state=0, device="cpu").fit(mnist.x_train[:300],
                                                             mnist.y_train[:300])
    seen = []
    x, y = mnist.x_test[idx[:3]], mnist.y_test[idx[:3]]
    res = run_mcu(compile_plan(lb), cpu="cortex-m0plus", images=x, labels=y,
                  check_alignment=False, progress=lambda i, n: seen.append((i, n)))
    assert res["mhz"] == 48.0 and seen == [(1, 3), (2, 3), (3, 3)]
    assert res["correct"] == int((lb.predict(x) == y).sum()) and res["accuracy"] == res["correct"] / 3


# -- 8. smaller things -----------------------------------------------------------------------
def test_why8_version_without_torch_and_wide_piped_tables(tmp_path, capsys, photos, monkeypatch):
    code = ("import sys; from lbcnn.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'optuna', 'sklearn', 'scipy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.stdout.strip() == "[]", r.stderr
    r = subprocess.run([sys.executable, "-m", "lbcnn", "--version"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.stdout.startswith("lbcnn ")
    monkeypatch.chdir(tmp_path)
    cli_json(capsys, *SEARCH, "--dataset", "photos", "--out", "run")
    cli_json(capsys, "quantize", "run", "--out", "q.npz")
    monkeypatch.delenv("COLUMNS", raising=False)
    out, _ = cli(capsys, "info", "q.npz", "--no-sizes")      # stdout is not a terminal here
    assert "depthwise 3x3 x3 (+-1)" in out and "…" not in out
    assert max(len(ln) for ln in out.splitlines()) > 100
    assert re.search(r"bias \(int(32|64) at the accumulator scale\)", out)   # what the C stores
    out, _ = cli(capsys, "search", "--help", rc=0)
    assert "required unless --resume" in out and "default: the dataset recorded" not in out


def test_why8_predict_globs_and_bad_files(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_json(capsys, *SEARCH, "--dataset", "photos", "--out", "run")
    out, err = cli(capsys, "predict", "run", "photos/square/*.*", "photos/nothing/*.png", rc=1)
    assert "skipped: photos/nothing/*.png: no file matches" in err
    assert "readme.txt: cannot read it as an image (text)" in err
    assert "classified 10 of 12" in err and len(out.splitlines()) == 10
    out, err = cli(capsys, "predict", "run", "photos/square/readme.txt", rc=2)
    assert err.count("\n") == 1 and "readme.txt: cannot read it as an image (text)" in err
    out, err = cli(capsys, "predict", "run", "photos/square/readme.txt", "photos/nope", rc=2)
    assert "no image could be classified (2 of 2 skipped" in err
    cli(capsys, "predict", "run", "photos/star/000.jpg", "--top", "0", rc=2)


# -- issue 34: data types, labels, options, --data-path, --resume -----------------------------
def test_npz_one_scaling_rule_and_labels_checked_before_casting(tmp_path):
    x = np.linspace(0, 1, 40 * 4).reshape(40, 2, 2).astype(np.float32)
    y = np.arange(40) % 2
    np.savez(tmp_path / "f01.npz", x=x, y=y)
    ds = load_dataset(f"npz:{tmp_path / 'f01.npz'}")
    assert ds.x_train.max() <= 255 and ds.x_test.dtype == np.uint8
    both = np.concatenate([ds.x_train, ds.x_test]).ravel()
    assert sorted(both.tolist()) == sorted(np.round(x.ravel().astype(np.float64) * 255).tolist())
    # a dark test array is scaled by the same rule as the training array, not by its own max
    np.savez(tmp_path / "dark.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:] * 0.01,
             y_test=y[30:])
    ds = load_dataset(f"npz:{tmp_path / 'dark.npz'}")
    assert ds.x_test.max() <= 3
    np.savez(tmp_path / "f255.npz", x=x * 255, y=y)
    with pytest.raises(DataError, match=r"intensities in \[0, 1\].*store 0..255 pixels as uint8"):
        load_dataset(f"npz:{tmp_path / 'f255.npz'}")
    np.savez(tmp_path / "u16.npz", x=(x * 65535).astype(np.uint16), y=y)
    with pytest.raises(DataError, match=r"integer pixels must lie in 0..255.*16-bit"):
        load_dataset(f"npz:{tmp_path / 'u16.npz'}")
    np.savez(tmp_path / "i16.npz", x=(x * 255).astype(np.int16), y=y)
    assert load_dataset(f"npz:{tmp_path / 'i16.npz'}").x_train.dtype == np.uint8
    huge = np.array([2**64 - 1, 2**64 - 2] * 20, dtype=np.uint64)
    np.savez(tmp_path / "u64.npz", x=(x * 255).astype(np.uint8), y=huge)
    with pytest.raises(DataError, match="at most 2,147,483,647.*found 18446744073709551615"):
        load_dataset(f"npz:{tmp_path / 'u64.npz'}")
    np.savez(tmp_path / "fl.npz", x=(x * 255).astype(np.uint8), y=np.full(40, 1e30))
    with pytest.raises(DataError, match="at most"):
        load_dataset(f"npz:{tmp_path / 'fl.npz'}")
    tiny_npz(tmp_path / "own_test.npz")
    with pytest.raises(ConfigError, match="holds its own test split"):
        load_dataset(f"npz:{tmp_path / 'own_test.npz'}", test_fraction=0.3)
    with pytest.raises(ConfigError, match="official test set"):
        load_dataset("fashion_mnist", test_fraction=0.3)


def test_data_path_recorded_and_used(tmp_path, capsys, monkeypatch):
    other = tiny_npz(tmp_path / "other.npz", seed=3)
    monkeypatch.chdir(tmp_path)
    s, _ = cli_json(capsys, "search", "--dataset", "mnist", "--data-path", "other.npz",
                    "--filters", "2", "--trials", "1", "--out", "run")
    config = _config(tmp_path / "run" / "model.npz")
    assert config["data_path"] == str(other) and config["dataset"] == "mnist"
    monkeypatch.chdir(tmp_path / "run")
    e, _ = cli_json(capsys, "evaluate", ".")           # not the real MNIST
    assert (e["accuracy"], e["n"]) == (s["test_accuracy"], s["test_size"]) == (e["accuracy"], 30)


def test_resume_checks_the_data_not_only_its_name(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_json(capsys, *SEARCH, "--dataset", "photos", "--out", "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    (tmp_path / "run" / "history.json").write_text(json.dumps(history[:1]))   # as if killed
    shutil.copy(photos / "star" / "000.jpg", photos / "star" / "extra.jpg")
    _, err = cli(capsys, "search", "--resume", "--out", "run", rc=2)
    assert "the data (every image and label, as loaded)" in err and config["data_fingerprint"] in err
    assert "start a new run" in err
    os.remove(photos / "star" / "extra.jpg")
    s, _ = cli_json(capsys, "search", "--resume", "--out", "run")
    assert s["trials"] == 2

    pytest.importorskip("torch")
    train = ["train", "--model", "cbcnn", "--dataset", "photos", "--resize", "12,12",
             "--grayscale", "--blocks", "4", "--dense", "8", "--batch-size", "16", "--out", "cb"]
    cli_json(capsys, *train, "--epochs", "1")
    shutil.copy(photos / "star" / "000.jpg", photos / "star" / "extra.jpg")
    _, err = cli(capsys, *train, "--epochs", "2", "--resume", rc=2)
    assert "the data (every image and label, as loaded)" in err and "two datasets" in err
