"""Regression tests for the hostile-input probe's examples (issue 34), one per example,
grouped by the issue's classes. Each must end in a clear one-line error (exit 2) or a
correct result: no traceback, no silent wrong result, no hang, no unplanned allocation.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lbcnn.cli import main
from lbcnn.errors import ConfigError, DataError, MemoryPlanError
from tests.test_safety import one_line_error, rewrite, run, tiny_npz

SEARCH = ["search", "--filters", "3", "--trials", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny search run and its exports, shared by the read-only cases below."""
    root = tmp_path_factory.mktemp("hostile")
    data = tiny_npz(root / "tiny.npz")
    assert main([*SEARCH, "--dataset", data, "--out", str(root / "run"), "--json"]) == 0
    assert main(["export", str(root / "run"), "--format", "c", "--out", str(root / "c"),
                 "--json"]) == 0
    assert main(["export", str(root / "run"), "--format", "onnx", "--out",
                 str(root / "m.onnx"), "--json"]) == 0
    assert main(["export", str(root / "run"), "--format", "h5", "--out", str(root / "m.h5"),
                 "--json"]) == 0
    return {"root": root, "data": data, "model": root / "run" / "model.npz", "c": root / "c",
            "onnx": root / "m.onnx", "h5": root / "m.h5"}


def _named_model(src: Path, dst: Path, names) -> Path:
    def edit(c):
        c["class_names"] = list(names)
        return c
    return rewrite(src, dst, edit)


def _cc() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    return cc


# --- 1. generated C is never injectable; outputs are checked --------------------------------

INJECTION = '??/" }; int injected(void) { return puts("INJECTED"); } static const char *x[] = { "'


def test_a_class_name_never_runs_as_code(made, tmp_path, capsys):
    names = [INJECTION, "東京(2)", "日本-cars"]
    model = _named_model(made["model"], tmp_path / "m.npz", names)
    rc, _, err = run(["export", model, "--format", "c", "--out", tmp_path / "c"], capsys)
    assert rc == 0, err
    header = (tmp_path / "c" / "model.h").read_text()
    assert "??" not in header and "INJECTED" in header  # the text is there, inside a string
    from lbcnn.io.c_folder import parse_header
    assert parse_header(header, "model.h")[1] == names
    # a host build with trigraphs on: the names print back byte for byte, nothing else runs
    (tmp_path / "c" / "show.c").write_text(
        '#include <stdio.h>\n#include "model.h"\nint main(void) { int i;\n'
        '  for (i = 0; i < LBCNN_N_CLASSES; i++) printf("%s\\n", LBCNN_CLASS_NAMES[i]);\n'
        '  return 0; }\n')
    exe = tmp_path / "show"
    subprocess.run([_cc(), "-std=c99", "-Wall", "-Wextra", "-Werror", "-trigraphs",
                    str(tmp_path / "c" / "show.c"), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, check=True).stdout
    assert out.decode().splitlines() == names


def test_rich_markup_in_class_names_prints_as_itself(made, tmp_path, capsys):
    model = _named_model(made["model"], tmp_path / "m.npz", ["[/]", "[unlabeled]", "[bold]x"])
    rc, out, err = run(["evaluate", model], capsys)
    assert rc == 0, err
    for name in ("[/]", "[unlabeled]", "[bold]x"):
        assert name in out


def test_export_never_overwrites_a_users_folder(made, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    (mine / "Makefile").write_text("all:\n\techo mine\n")
    rc, _, err = run(["export", made["model"], "--format", "c", "--out", mine], capsys)
    one_line_error(rc, err, "is not empty", "--force")
    assert (mine / "README.md").read_text() == "my notes"
    assert (mine / "Makefile").read_text().endswith("echo mine\n")
    assert sorted(p.name for p in mine.iterdir()) == ["Makefile", "README.md"]


@pytest.mark.parametrize("fmt", ["onnx", "h5", "c"])
def test_export_never_replaces_a_device_node_or_fifo(made, tmp_path, capsys, fmt):
    nodes = []
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    nodes.append(fifo)
    link = tmp_path / "null-link"
    link.symlink_to("/dev/null")
    nodes.append(link)
    try:  # a copy of /dev/null (needs CAP_MKNOD)
        os.mknod(tmp_path / "null", 0o666 | 0o020000, os.makedev(1, 3))
        nodes.append(tmp_path / "null")
    except (PermissionError, OSError):
        pass
    for node in nodes:
        before = os.lstat(node)
        rc, _, err = run(["export", made["model"], "--format", fmt, "--out", node], capsys)
        one_line_error(rc, err, "not a regular file" if fmt != "c" else "")
        after = os.lstat(node)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


def _read_only(monkeypatch):
    """A read-only mount, as mkstemp sees one (EROFS): the test cannot mount one itself."""
    import errno
    import tempfile

    def refuse(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("cmd", ["evaluate", "mcu"])
@pytest.mark.parametrize("where", ["file", "under-file", "proc", "read-only", "too-long"])
def test_evaluate_out_and_mcu_workdir_are_checked_first(made, tmp_path, capsys, monkeypatch,
                                                        cmd, where):
    (tmp_path / "f").write_text("x")
    target = {"file": tmp_path / "f", "under-file": tmp_path / "f" / "sub",
              "proc": Path("/proc/lbcnn-probe"), "read-only": tmp_path / "ro",
              "too-long": tmp_path / ("n" * 300)}[where]
    if where == "read-only":
        _read_only(monkeypatch)
    opt = "--out" if cmd == "evaluate" else "--workdir"
    called = []
    monkeypatch.setattr("lbcnn.io.artefacts.open_predictor", lambda *a, **k: called.append(1))
    rc, _, err = run([cmd, made["model"], opt, target], capsys)
    one_line_error(rc, err, opt)
    assert not called
    assert (tmp_path / "f").read_text() == "x"


def test_too_long_out_names_are_one_line(made, tmp_path, capsys):
    long = tmp_path / ("x" * 300 + ".onnx")
    for argv in (["export", made["model"], "--format", "onnx", "--out", long],
                 ["quantize", made["model"], "--out", long],
                 [*SEARCH, "--dataset", made["data"], "--out", tmp_path / ("r" * 300)]):
        rc, _, err = run(argv, capsys)
        one_line_error(rc, err, "at most")


def test_a_failed_export_leaves_no_half_written_folder(made, tmp_path, capsys, monkeypatch):
    import lbcnn.deploy.c_project as project

    def broken(*a, **k):
        raise DataError("the compiler crashed")
    monkeypatch.setattr(project, "measure_sizes", broken)
    rc, _, err = run(["export", made["model"], "--format", "c", "--out", tmp_path / "c"], capsys)
    assert rc == 2 and err.strip().endswith("lbcnn: error: the compiler crashed"), err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- 2. an exported C folder is code: run only when it is what export wrote ------------------

def _copy_c(made, tmp_path) -> Path:
    dst = tmp_path / "c"
    shutil.copytree(made["c"], dst)
    return dst


def _rehash(folder: Path) -> None:
    """Record the edited sources' hashes, as a forger would."""
    record = json.loads((folder / "model.json").read_text())
    for name in record["sources"]:
        record["sources"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(record))


MAIN_LOOP = "int main(void) { for (;;) {} return 0; }\n"
MAIN_CAT = '#include <stdio.h>\nint main(void) { printf("cat0\\n"); return 0; }\n'


@pytest.mark.parametrize("main_c,message", [(MAIN_LOOP, "ran longer than"),
                                            (MAIN_CAT, "printed 1 line for 45 images")])
def test_changed_c_code_is_refused_and_trusted_code_is_bounded(made, tmp_path, capsys,
                                                               monkeypatch, main_c, message):
    import lbcnn.io.c_folder as cf
    folder = _copy_c(made, tmp_path)
    (folder / "main.c").write_text(main_c)
    rc, _, err = run(["evaluate", folder], capsys)
    one_line_error(rc, err, "main.c differs", "--trust-c")
    monkeypatch.setattr(cf, "RUN_TIMEOUT_S", 2.0)
    monkeypatch.setattr(cf, "RUN_SECONDS_PER_IMAGE", 0.0)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    t0 = time.perf_counter()
    rc, _, err = run(["evaluate", folder, "--trust-c"], capsys)
    one_line_error(rc, err, message)
    assert time.perf_counter() - t0 < 30
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lbcnn_c_")]


def test_c_output_is_parsed_strictly():
    from lbcnn.io.c_folder import parse_classes
    classes = np.array([0, 1, 2])
    assert parse_classes(b"0\n2\n1\n", 3, classes, "label", "c").tolist() == [0, 2, 1]
    assert parse_classes(b"1\n0\n", 2, np.array([5, 9]), "index", "c").tolist() == [9, 5]
    for out, n in ((b"cat0\n", 1), (b"1 2\n", 1), (b"7\n", 1), (b"0\n", 2), (b"0\n1\n", 1),
                   (b"-1\n", 1), (b" 1\n", 1), (b"1\r\n", 1)):
        with pytest.raises(DataError):
            parse_classes(out, n, classes, "label", "c")
    with pytest.raises(DataError):
        parse_classes(b"3\n", 1, classes, "index", "c")


def test_a_header_with_a_bad_escape_is_one_line(made, tmp_path, capsys):
    folder = _copy_c(made, tmp_path)
    text = (folder / "model.h").read_text()
    (folder / "model.h").write_text(re.sub(r'"0"', r'"\\q\\777"', text, count=1))
    rc, _, err = run(["evaluate", folder], capsys)
    one_line_error(rc, err, "model.h differs")
    rc, _, err = run(["evaluate", folder, "--trust-c"], capsys)
    one_line_error(rc, err, "not a valid C string")


def test_an_unchanged_export_runs_and_leaves_no_build_folder(made, tmp_path, capsys,
                                                             monkeypatch):
    import tempfile
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    rc, out, err = run(["evaluate", made["c"], "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["accuracy"] > 0.9
    assert list(tmp_path.iterdir()) == []


# --- 3. every format's metadata is validated ------------------------------------------------

def _h5_with(src: Path, dst: Path, **attrs) -> Path:
    import h5py
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
    return dst


@pytest.mark.parametrize("attrs,message", [
    ({"lbcnn_class_names": "[1, 2, 3]"}, "strings"),
    ({"lbcnn_class_names": '{"a": 1}'}, "strings"),
    ({"lbcnn_class_names": '["a", "a", "b"]'}, "appears twice"),
    ({"lbcnn_classes": np.zeros((3, 1), np.int64)}, "1-D"),
    ({"lbcnn_input_scale": np.nan}, "finite positive"),
    ({"lbcnn_input_scale": -1.0}, "finite positive"),
    ({"lbcnn_dataset": "[" * 10_000}, "deeper than"),
])
def test_h5_attributes_are_validated(made, tmp_path, capsys, attrs, message):
    bad = _h5_with(made["h5"], tmp_path / "bad.h5", **attrs)
    for cmd in (["evaluate", bad], ["export", bad, "--format", "onnx", "--out",
                                    tmp_path / "x.onnx"]):
        rc, _, err = run(cmd, capsys)
        one_line_error(rc, err, message)
    assert not (tmp_path / "x.onnx").exists()


def _onnx_with(src: Path, dst: Path, **meta) -> Path:
    import onnx
    om = onnx.load(str(src))
    props = {p.key: p.value for p in om.metadata_props}
    props.update(meta)
    del om.metadata_props[:]
    for key, value in props.items():
        entry = om.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(om, str(dst))
    return dst


@pytest.mark.parametrize("meta,message", [
    ({"lbcnn_classes": "a,b,c"}, "comma-separated integers"),
    ({"lbcnn_classes": "0,1"}, "lists 2 labels"),
    ({"lbcnn_classes": "[0, 1, 2]"}, "comma-separated integers"),
    ({"lbcnn_class_names": '["a"]'}, "1 class names for 3"),
    ({"lbcnn_class_names": "a,b,c"}, "not valid JSON"),
    ({"lbcnn_input_scale": "nan"}, "finite positive"),
])
def test_onnx_metadata_is_validated(made, tmp_path, capsys, meta, message):
    bad = _onnx_with(made["onnx"], tmp_path / "bad.onnx", **meta)
    rc, _, err = run(["evaluate", bad], capsys)
    one_line_error(rc, err, message)


def test_empty_onnx_metadata_counts_as_absent(made, tmp_path):
    """Found by the long fuzzing run: an empty lbcnn_class_names came through as the text ''."""
    from lbcnn.io.artefacts import open_predictor
    pred = open_predictor(_onnx_with(made["onnx"], tmp_path / "e.onnx", lbcnn_class_names=""))
    assert pred.class_names is None and pred.names() == ["0", "1", "2"]


@pytest.mark.parametrize("record,message", [
    (b"[1, 2]", "JSON object"),
    (b"null", "JSON object"),
    (b'{"classes": 3}', "classes"),
    (b'{"class_names": "abc"}', "class_names"),
    (b'{"classes": [0, 0, 1]}', "non-unique"),
    (b'{"classes": "\xff\xfe"}', "not UTF-8"),
])
def test_c_model_json_is_validated(made, tmp_path, capsys, record, message):
    folder = _copy_c(made, tmp_path)
    (folder / "model.json").write_bytes(record)
    for extra in ([], ["--trust-c"]):
        rc, _, err = run(["evaluate", folder, *extra], capsys)
        one_line_error(rc, err, message)


def _checkpoint(**changes) -> dict:
    import torch
    ck = {"config": {"epochs": 2}, "epoch": 0, "model": {"w": torch.zeros(2)}, "optimizer": {},
          "torch_rng": torch.get_rng_state(), "history": [{"epoch": 1, "val_accuracy": 0.5}],
          "best_val_accuracy": 0.5, "best_epoch": 1, "best_model": {"w": torch.ones(2)},
          "wall_seconds": 1.0}
    ck.update(changes)
    return ck


@pytest.mark.parametrize("changes,message", [
    ({"epoch": "3"}, "epoch must be"),
    ({"history": 7}, "history must be"),
    ({"wall_seconds": "3"}, "wall_seconds must be"),
    ({"best_model": None}, "best_model must be"),
    ({"best_val_accuracy": 2.0}, "best_val_accuracy"),
    ({"best_epoch": 9}, "best_epoch"),
])
def test_checkpoint_fields_are_validated(tmp_path, changes, message):
    import torch

    from lbcnn.train.checkpoint import load_checkpoint
    torch.save(_checkpoint(), tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["epoch"] == 0
    torch.save(_checkpoint(**changes), tmp_path / "bad.pt")
    with pytest.raises(DataError, match=message):
        load_checkpoint(tmp_path / "bad.pt")


def test_a_resumed_run_never_reports_best_200_percent(tmp_path, capsys):
    """The probe's "best 200.00 %": a checkpoint without a best model, resumed."""
    import torch
    data = tiny_npz(tmp_path / "t.npz", n_train=60, n_test=12)
    argv = ["train", "--model", "cbcnn", "--dataset", data, "--blocks", "4", "--dense", "",
            "--epochs", "1", "--batch-size", "20", "--out", tmp_path / "run"]
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    ck_path = tmp_path / "run" / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    ck["best_model"] = None
    torch.save(ck, ck_path)
    rc, _, err = run([*argv, "--resume"], capsys)
    one_line_error(rc, err, "best_model must be")
    assert "200" not in err


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(class_names=["a", "a", "b"]), "appears twice"),
    (lambda c: c.update(label_values=[0, 1]), "label_values"),
    (lambda c: c.update(classes=[0, 0, 1]), "repeats label"),
    (lambda c: c.update(seed=-1), "'seed' = -1"),
])
def test_native_config_cases(made, tmp_path, capsys, edit, message):
    def apply(c):
        edit(c)
        return c
    bad = rewrite(made["model"], tmp_path / "bad.npz", apply)
    for argv in (["info", bad, "--no-sizes"], ["evaluate", bad]):
        rc, _, err = run(argv, capsys)
        one_line_error(rc, err, message)


def test_head_scale_zero_and_deep_nesting(made, tmp_path, capsys):
    q = tmp_path / "q.npz"
    assert run(["quantize", made["model"], "--out", q, "--json"], capsys)[0] == 0
    bad = rewrite(q, tmp_path / "zero.npz",
                  arrays_edit=lambda a: a.update({"head/scale": np.zeros_like(a["head/scale"])}))
    rc, _, err = run(["evaluate", bad], capsys)
    one_line_error(rc, err, "positive scales")
    # a config nested 10,000 levels deep: the raw JSON text, as a hostile file holds it
    with np.load(made["model"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    text = arrays["__config__"].tobytes().decode()
    text = text[:-1] + ', "deep": ' + "[" * 10_000 + "]" * 10_000 + "}"
    arrays["__config__"] = np.frombuffer(text.encode(), dtype=np.uint8)
    np.savez(tmp_path / "deep.npz", **arrays)
    rc, _, err = run(["info", tmp_path / "deep.npz", "--no-sizes"], capsys)
    one_line_error(rc, err, "nested deeper than")


# --- 4. resources are planned before they are taken -----------------------------------------

def _forge_member(src: Path, dst: Path, name: str, shape) -> Path:
    """Rewrite one .npy member's header to declare ``shape``; the data stay as they were."""
    from numpy.lib import format as npy
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == name + ".npy":
                arr = np.load(src, allow_pickle=False)[name]
                header = {"descr": npy.dtype_to_descr(arr.dtype), "fortran_order": False,
                          "shape": tuple(shape)}
                import io
                buf = io.BytesIO()
                npy.write_array_header_1_0(buf, header)
                data = buf.getvalue() + arr.tobytes()
            zout.writestr(info.filename, data)
    return dst


def test_a_zip_bomb_member_is_refused_before_reading(made, tmp_path, capsys, monkeypatch):
    from tests.test_fuzz import peak_rss_growth
    bomb = _forge_member(made["model"], tmp_path / "bomb.npz", "head/weight", (200_000, 100_000))
    with peak_rss_growth() as grown:
        rc, _, err = run(["info", bomb, "--no-sizes"], capsys)
    one_line_error(rc, err, "head/weight", "declares shape (200000, 100000)")
    assert "fewer filters" not in err
    assert grown() < 100 << 20
    # an honest but huge compressed member: refused by the memory plan, naming the file
    huge = tmp_path / "huge.npz"
    np.savez_compressed(huge, big=np.zeros((4096, 4096), np.float32))
    monkeypatch.setenv("LBCNN_MEMORY_GB", "0.01")
    with pytest.raises(MemoryPlanError, match="huge.npz's arrays"):
        from lbcnn.io.native import check_npz_members
        check_npz_members(huge)


def test_a_gzip_bomb_dense_layer_is_refused_before_reading(made, tmp_path, capsys):
    import h5py

    from tests.test_fuzz import peak_rss_growth
    bomb = tmp_path / "bomb.h5"
    shutil.copy(made["h5"], bomb)
    replaced = False
    with h5py.File(bomb, "a") as f:
        weights = f["model_weights"]
        for name in weights:
            g = weights[name]
            for wn in list(g.attrs.get("weight_names", [])):
                wn = wn.decode() if isinstance(wn, bytes) else wn
                if g[wn].ndim == 2:  # the Dense kernel: 40 GB declared, nothing stored
                    del g[wn]
                    g.create_dataset(wn, shape=(100_000, 100_000), dtype="float32",
                                     chunks=(1000, 1000), compression="gzip")
                    replaced = True
    assert replaced and bomb.stat().st_size < 1 << 20
    with peak_rss_growth() as grown:
        rc, _, err = run(["evaluate", bomb], capsys)
    one_line_error(rc, err)
    assert "Dense kernel shape (100000, 100000)" in err or "needs" in err
    assert grown() < 100 << 20


def test_huge_cbcnn_widths_are_refused_by_the_plan(tmp_path, capsys):
    from tests.test_fuzz import peak_rss_growth
    data = tiny_npz(tmp_path / "t.npz")
    with peak_rss_growth() as grown:
        rc, _, err = run(["train", "--model", "cbcnn", "--dataset", data, "--blocks",
                          "65536,65536,65536", "--dense", "65536"], capsys)
    one_line_error(rc, err, "training a CBCNN with blocks 65536,65536,65536",
                   "narrower --blocks")
    assert "DefaultCPUAllocator" not in err
    assert grown() < 100 << 20


def test_a_billion_trials_start_at_once(tmp_path, capsys, monkeypatch):
    import lbcnn.train.search as search_mod
    data = tiny_npz(tmp_path / "t.npz")
    real = search_mod.fit_elm
    calls = []

    def fit_then_stop(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(search_mod, "fit_elm", fit_then_stop)
    t0 = time.perf_counter()
    rc, _, err = run(["search", "--dataset", data, "--filters", "2", "--trials", "1000000000",
                      "--out", tmp_path / "run"], capsys)
    assert rc == 130 and "interrupted after 1 of 1000000000 trials" in err, err
    assert time.perf_counter() - t0 < 30


def test_a_fifo_as_model_file_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    for argv in (["info", fifo], ["evaluate", fifo], ["export", fifo, "--format", "onnx",
                                                      "--out", tmp_path / "o.onnx"],
                 ["predict", fifo, fifo]):
        rc, _, err = run(argv, capsys)
        one_line_error(rc, err, "FIFO")


def test_a_declared_60000_square_input_is_refused(made, tmp_path, capsys):
    from PIL import Image

    from tests.test_fuzz import peak_rss_growth
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "photo.png")
    folder = _copy_c(made, tmp_path)
    header = (folder / "model.h").read_text()
    for key in ("LBCNN_HEIGHT", "LBCNN_WIDTH"):
        header = re.sub(rf"#define {key} \d+", f"#define {key} 60000", header)
    (folder / "model.h").write_text(header)
    _rehash(folder)
    import onnx
    from onnx import TensorProto, helper
    # a graph onnxruntime loads (its output ignores the image), declaring a 60000 x 60000 input
    scores = helper.make_tensor("s", TensorProto.FLOAT, (1, 3), [0.1, 0.2, 0.7])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["logits"], value=scores)], "big",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 60000, 60000, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    om = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    om.ir_version = 8
    onnx.save(om, str(tmp_path / "big.onnx"))
    for model in (folder, tmp_path / "big.onnx"):
        with peak_rss_growth() as grown:
            rc, _, err = run(["predict", model, tmp_path / "photo.png"], capsys)
        one_line_error(rc, err)
        assert "60000" in err
        assert grown() < 100 << 20


def _native_cache(tmp_path, monkeypatch):
    import lbcnn.binary.native as native
    monkeypatch.setenv("LBCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    return native


def test_a_damaged_cached_kernel_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    native = _native_cache(tmp_path, monkeypatch)
    _cc()
    assert native.load() is not None
    (so,) = (tmp_path / "cache" / "native").glob("lbfeat-*.so")
    good = so.read_bytes()
    # truncated (dlopen would map it and die by SIGBUS), then a foreign library
    foreign = tmp_path / "foreign.so"
    (tmp_path / "foreign.c").write_text("int something_else(void) { return 1; }\n")
    subprocess.run([_cc(), "-shared", "-fPIC", str(tmp_path / "foreign.c"), "-o", str(foreign)],
                   check=True)
    for damaged in (good[:len(good) // 3], foreign.read_bytes()):
        # a new inode: this process still maps the library it loaded above, and truncating
        # that file in place would kill it by SIGBUS on its next touch of those pages
        so.unlink()
        so.write_bytes(damaged)
        code = ("import lbcnn.binary.native as n; lib = n.load(); "
                "print(lib is not None and hasattr(lib, 'lb_features'))")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "LBCNN_CACHE": str(tmp_path / "cache")},
                             timeout=300)
        assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr
        assert native._intact(so) and so.stat().st_size == len(good)


@pytest.mark.parametrize("env,message", [
    ({"LBCNN_MEMORY_GB": "abc"}, "LBCNN_MEMORY_GB='abc'"),
    ({"LBCNN_MEMORY_GB": "nan"}, "LBCNN_MEMORY_GB='nan'"),
    ({"LBCNN_MEMORY_GB": "inf"}, "LBCNN_MEMORY_GB='inf'"),
    ({"LBCNN_MEMORY_GB": "-2"}, "LBCNN_MEMORY_GB='-2'"),
    ({"LBCNN_DEVICE": "tpu"}, "LBCNN_DEVICE='tpu'"),
    ({"LBCNN_NATIVE": "yes"}, "LBCNN_NATIVE='yes'"),
])
def test_environment_settings_are_validated_like_options(tmp_path, capsys, monkeypatch, env,
                                                         message):
    data = tiny_npz(tmp_path / "t.npz")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rc, _, err = run([*SEARCH, "--dataset", data], capsys)
    one_line_error(rc, err, message)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the machine has CUDA")
def test_lbcnn_device_cuda_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LBCNN_DEVICE", "cuda")
    rc, _, err = run([*SEARCH, "--dataset", tiny_npz(tmp_path / "t.npz")], capsys)
    one_line_error(rc, err, "LBCNN_DEVICE='cuda'", "no CUDA device")


def test_an_unplanned_memory_error_names_where_it_happened(made, capsys, monkeypatch):
    def exhausted(*a, **k):
        raise MemoryError
    import lbcnn.validate as validate
    monkeypatch.setattr(validate, "validate_model", exhausted)
    rc, _, err = run(["info", made["model"], "--no-sizes"], capsys)
    one_line_error(rc, err, "out of memory in lbcnn.", "lbcnn info")
    assert "fewer filters" not in err


# --- 5. no silent wrong results --------------------------------------------------------------

def test_an_empty_kernel_array_never_saves_an_unloadable_hybrid(tmp_path, capsys):
    data = tiny_npz(tmp_path / "t.npz")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 3), np.int8))
    rc, _, err = run(["train", "--model", "hybrid", "--dataset", data, "--kernels",
                      tmp_path / "empty.npy", "--out", tmp_path / "hy"], capsys)
    one_line_error(rc, err, "--kernels", "1 <= n <= 64")
    assert not (tmp_path / "hy").exists()


def test_saving_an_invalid_model_is_refused(made, tmp_path):
    from lbcnn import load_model
    from lbcnn.models.lbcnn import save_lbcnn
    model = load_model(made["model"])
    with pytest.raises(ConfigError, match="would not load"):
        save_lbcnn(model, tmp_path / "dup.npz", class_names=["a", "a", "b"])
    assert not (tmp_path / "dup.npz").exists()


# --- 6. options are validated at parse time --------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["optimize", "--minutes", "nan"], "--minutes"),
    (["optimize", "--minutes", "inf"], "--minutes"),
    (["optimize", "--max-configs", "-1"], "--max-configs"),
    (["optimize", "--bracket", "-1"], "--bracket"),
    (["optimize", "--resume", "--force"], "not allowed with"),
    (["search", "--resume", "--force"], "not allowed with"),
    (["train", "--model", "cbcnn", "--resume", "--force"], "not allowed with"),
    (["predict", "--top", "0"], "--top"),
    (["predict", "--top", "-5"], "--top"),
    (["finetune", "--rotate", "1e308"], "--rotate"),
    (["train", "--model", "cbcnn", "--blocks", "99999999"], "--blocks"),
])
def test_bad_options_are_refused_at_parse_time(made, tmp_path, capsys, argv, message):
    base = {"optimize": ["--dataset", made["data"], "--out", tmp_path / "o"],
            "search": ["--dataset", made["data"], "--out", tmp_path / "o"],
            "train": ["--dataset", made["data"], "--out", tmp_path / "o"],
            "predict": [made["model"], made["model"]],
            "finetune": [made["model"], "--out", tmp_path / "f.npz"]}[argv[0]]
    rc, _, err = run([argv[0], *base, *argv[1:]], capsys)
    one_line_error(rc, err, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["folder", "npz", "scalar", "empty", "values", "text"])
def test_hybrid_kernels_files_are_checked_at_parse_time(made, tmp_path, capsys, kind):
    path = {"folder": tmp_path, "npz": tmp_path / "k.npz", "scalar": tmp_path / "s.npy",
            "empty": tmp_path / "e.npy", "values": tmp_path / "v.npy",
            "text": tmp_path / "t.npy"}[kind]
    if kind == "npz":
        np.savez(path, k=np.ones((2, 3, 3)))
    elif kind == "scalar":
        np.save(path, np.int8(1))
    elif kind == "empty":
        np.save(path, np.zeros((0, 3, 3), np.int8))
    elif kind == "values":
        np.save(path, np.full((2, 3, 3), 2, np.int8))
    elif kind == "text":
        path.write_text("1,1,1")
    rc, _, err = run(["train", "--model", "hybrid", "--dataset", made["data"], "--kernels",
                      path], capsys)
    one_line_error(rc, err, "--kernels")


def test_optimize_resume_names_a_changed_sampler_or_space(made, tmp_path, capsys):
    out = tmp_path / "opt"
    argv = ["optimize", "--dataset", made["data"], "--max-configs", "2", "--layers", "1",
            "--nf1", "2", "--bits", "8", "--rungs", "40", "--out", out, "--json"]
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    for change, message in ((["--sampler", "random"], "--sampler random (run: tpe)"),
                            (["--nl", "1,2,3"], "--nl [1, 2, 3]")):
        rc, _, err = run([*argv, "--resume", *change], capsys)
        one_line_error(rc, err, "--resume", message)
