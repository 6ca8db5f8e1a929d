"""The verification loop: ``lbcnn evaluate`` on every artefact kind, ``lbcnn predict``,
and ``lbcnn info`` on every family."""
import json
import shutil

import numpy as np
import pytest

from lbcnn.cli import main

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def small(mnist, tmp_path_factory):
    """A 600/300 MNIST subset as an npz: dataset, and an LB-CNN model file recording it."""
    from lbcnn.models.lbcnn import LBCNN, save_lbcnn

    d = tmp_path_factory.mktemp("verify")
    data = d / "small.npz"
    np.savez(data, x_train=mnist.x_train[:600], y_train=mnist.y_train[:600],
             x_test=mnist.x_test[:300], y_test=mnist.y_test[:300])
    model = LBCNN(filters=(4,), random_state=0, device="cpu").fit(mnist.x_train[:600],
                                                                 mnist.y_train[:600])
    path = d / "model.npz"
    save_lbcnn(model, path, dataset=f"npz:{data}", class_names=NAMES)
    return {"dir": d, "data": f"npz:{data}", "model": model, "path": path,
            "x": mnist.x_test[:300], "y": mnist.y_test[:300]}


def _eval_json(capsys, *argv):
    capsys.readouterr()
    assert main(["evaluate", *map(str, argv), "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_evaluate_native_default_dataset_and_report(small, capsys, tmp_path):
    res, err = _eval_json(capsys, small["path"], "--out", tmp_path / "rep")
    pred = small["model"].predict(small["x"])
    assert res["dataset"] == small["data"] and res["n"] == 300
    assert res["accuracy"] == pytest.approx(np.mean(pred == small["y"]))
    conf = np.array(res["confusion"])
    assert conf.shape == (10, 10) and conf.sum() == 300
    assert np.trace(conf) == res["correct"] == int(np.sum(pred == small["y"]))
    # per-class rows agree with the matrix and with the labels
    for r in res["per_class"]:
        assert r["n"] == int(np.sum(small["y"] == r["class"])) == conf[r["class"]].sum()
        assert r["correct"] == conf[r["class"], r["class"]]
        assert r["name"] == NAMES[r["class"]]
    assert sum(r["correct"] for r in res["per_class"]) / 300 == pytest.approx(res["accuracy"])
    saved = json.loads((tmp_path / "rep" / "evaluation.json").read_text())
    assert saved["confusion"] == res["confusion"]
    assert (tmp_path / "rep" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "warning" not in err


def test_evaluate_warns_on_a_different_dataset(small, capsys, mnist, tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, x_train=mnist.x_train[:100], y_train=mnist.y_train[:100],
             x_test=mnist.x_test[300:400], y_test=mnist.y_test[300:400])
    res, err = _eval_json(capsys, small["path"], "--dataset", f"npz:{other}")
    assert res["n"] == 100 and res["dataset"] == f"npz:{other}"
    assert "warning" in err and small["data"] in err and str(other) in err


def test_evaluate_onnx_equals_native(small, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(small["path"]), "--format", "onnx", "--out", str(onnx)]) == 0
    native, _ = _eval_json(capsys, small["path"])
    res, _ = _eval_json(capsys, onnx, "--dataset", small["data"])
    assert res["kind"] == "onnx"
    assert res["confusion"] == native["confusion"] and res["accuracy"] == native["accuracy"]


def test_evaluate_c_export_equals_native(small, capsys, tmp_path):
    if shutil.which("cc") is None and shutil.which("gcc") is None and shutil.which("clang") is None:
        pytest.skip("no C compiler")
    out = tmp_path / "m_c"
    assert main(["export", str(small["path"]), "--format", "c", "--out", str(out)]) == 0
    native, _ = _eval_json(capsys, small["path"])
    res, _ = _eval_json(capsys, out, "--dataset", small["data"])
    assert res["kind"] == "c"
    assert res["confusion"] == native["confusion"]
    # the class names travel in model.h
    assert [r["name"] for r in res["per_class"]] == NAMES


def test_evaluate_refuses_mixed_up_files(small, tmp_path, capsys):
    text = tmp_path / "notes.npz"
    text.write_text("hello\n")
    png = tmp_path / "digit.npz"
    from PIL import Image
    Image.fromarray(small["x"][0][..., 0]).save(png, format="PNG")
    for path, kind in ((text, "text"), (png, "PNG")):
        capsys.readouterr()
        assert main(["evaluate", str(path), "--dataset", small["data"]]) == 2
        err = capsys.readouterr().err.strip()
        assert "not an lbcnn model file" in err and kind in err and len(err.splitlines()) == 1


def test_predict_prints_class_name_of_a_png(small, tmp_path, capsys):
    from PIL import Image

    model, x, y = small["model"], small["x"], small["y"]
    pred = model.predict(x)
    i = int(np.flatnonzero((pred == y) & (y == 7))[0])
    j = int(np.flatnonzero((pred == y) & (y == 3))[0])
    a, b = tmp_path / "seven.png", tmp_path / "three_big.jpg"
    Image.fromarray(x[i][..., 0]).save(a)
    # colour and 3x larger: converted and resized with a note
    big = Image.fromarray(x[j][..., 0]).convert("RGB").resize((84, 84), Image.NEAREST)
    big.save(b, quality=100)
    capsys.readouterr()
    assert main(["predict", str(small["path"]), str(a), str(b)]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0].startswith(f"{a}: seven (score ")
    assert lines[1].startswith(f"{b}: three (score ")
    assert "84x84 -> 28x28" in out.err and "RGB -> gray" in out.err
    score = float(lines[0].split("score ")[1].rstrip(")"))
    assert score == pytest.approx(model.predict_proba(x[i:i + 1])[0, 7], abs=1e-3)


def test_info_on_a_hybrid_model(mnist, tmp_path, capsys):
    from lbcnn.models.hybrid import Hybrid, save_hybrid

    hy = Hybrid(epochs=1, hidden=8).fit(mnist.x_train[:300], mnist.y_train[:300])
    path = tmp_path / "hy.npz"
    save_hybrid(hy, path, dataset="mnist", val_accuracy=0.5, test_accuracy=0.25)
    capsys.readouterr()
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "hybrid" and info["dataset"] == "mnist"
    assert info["val_accuracy"] == 0.5 and info["test_accuracy"] == 0.25
    hidden = [r for r in info["layers"] if r["layer"] == "hidden"][0]
    assert hidden["weights"] == hy.body_.n_features * 8
    if shutil.which("cc") or shutil.which("gcc"):
        assert info["c_ram_bytes"] > 0 and info["c_flash_bytes"] > hy.body_.n_features
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "mnist" in text and "RAM" in text


def test_info_float_head_says_32_bits(small, capsys):
    assert main(["info", str(small["path"]), "--no-sizes"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    total = text[text.index("total:"):text.index("same shape")]
    assert "8 bits/weight" not in total and "head" in total and "at 32 bits/weight" in total
