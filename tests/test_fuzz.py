"""Fuzzing: hostile model files, datasets and options never crash the CLI.

Properties, for every generated case:
- the exit code is 0 or 2 (an ``LbcnnError`` line), never a traceback;
- no file appears outside ``--out``;
- JSON output holds no NaN (it parses strictly);
- no saved model has non-finite weights (every file written reloads through the validator).

The default "ci" profile (tests/conftest.py) is seeded and small; run a longer hunt with
``pytest --hypothesis-profile=long tests/test_fuzz.py``.
"""
import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from lbcnn.cli import main  # noqa: E402
from lbcnn.errors import DataError, LbcnnError  # noqa: E402
from tests.test_safety import tiny_npz  # noqa: E402


@contextlib.contextmanager
def peak_rss_growth():
    """How much this process's peak resident memory grew during the block, in bytes (Linux:
    the peak is reset through /proc/self/clear_refs first). Used as ``grown()`` after it."""
    import re

    def status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) << 10
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS on this system")
    base = status("VmRSS")
    result = {}
    yield lambda: result["growth"]
    result["growth"] = status("VmHWM") - base


def _strict(text: str):
    def refuse(token):
        raise AssertionError(f"non-finite number {token} in JSON output")
    return json.loads(text, parse_constant=refuse)


def run_cli(argv, cwd: Path) -> tuple[int, str, str]:
    """main() in-process from ``cwd``; any exception but SystemExit fails the test."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in argv])
            except SystemExit as exc:
                rc = exc.code
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


def check_outcome(rc, stdout, stderr, json_mode=False):
    assert rc in (0, 2), (rc, stderr)
    assert "Traceback" not in stderr
    if rc == 2:
        errors = [ln for ln in stderr.splitlines() if "error:" in ln]
        assert len(errors) == 1, stderr
    if rc == 0 and json_mode and stdout.strip():
        _strict(stdout.strip().splitlines()[-1])


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def check_saved_models(paths):
    from lbcnn.io.artefacts import load_any
    for p in paths:
        if p.suffix != ".npz" or p.name.startswith("."):
            continue
        if p.name == "head.npz":  # a transfer run's new last layer, not a whole model
            with np.load(p, allow_pickle=False) as z:
                assert all(np.isfinite(z[k]).all() for k in z.files
                           if z[k].dtype.kind == "f"), p
            continue
        load_any(p)  # the validator refuses non-finite weights with a DataError


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        data = tiny_npz(root / "tiny.npz")
        rc, _, err = run_cli(["search", "--dataset", data, "--filters", "3", "--trials", "2",
                              "--out", root / "run"], root)
        assert rc == 0, err
        rc, _, err = run_cli(["quantize", root / "run", "--bits", "6", "--out", root / "q6.npz"],
                             root)
        assert rc == 0, err
        yield root, data


# --- mutated model files --------------------------------------------------------------------

def _mutate_arrays(arrays: dict, config: dict, data) -> tuple[dict, object]:
    kind = data.draw(st.sampled_from(["delete", "dtype", "shape", "nonfinite", "config_value",
                                      "config_delete", "config_type"]))
    names = sorted(arrays)
    if kind == "delete":
        arrays.pop(data.draw(st.sampled_from(names)))
    elif kind == "dtype":
        name = data.draw(st.sampled_from(names))
        dtype = data.draw(st.sampled_from(["float16", "float64", "int8", "uint8", "int64",
                                           "bool", "complex64", "U3"]))
        arrays[name] = arrays[name].astype(dtype)
    elif kind == "shape":
        name = data.draw(st.sampled_from(names))
        a = arrays[name].reshape(-1)
        cut = data.draw(st.integers(0, max(len(a) - 1, 0)))
        arrays[name] = a[:cut] if data.draw(st.booleans()) else np.concatenate([a, a[:1]])
    elif kind == "nonfinite":
        floats = [n for n in names if arrays[n].dtype.kind == "f"] or names
        name = data.draw(st.sampled_from(floats))
        a = arrays[name].astype(np.float32).reshape(-1).copy()
        if len(a):
            a[data.draw(st.integers(0, len(a) - 1))] = data.draw(
                st.sampled_from([np.nan, np.inf, -np.inf]))
        arrays[name] = a.reshape(arrays[name].shape)
    else:
        key = data.draw(st.sampled_from(sorted(config)))
        if kind == "config_delete":
            config.pop(key)
        elif kind == "config_type":
            config = data.draw(st.sampled_from([[config], "text", 3, None]))
        else:
            config[key] = data.draw(st.one_of(
                st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=8),
                st.floats(allow_nan=False, allow_infinity=False),
                st.lists(st.integers(-5, 50), max_size=4), st.just({})))
    return arrays, config


@given(data=st.data())
def test_mutated_native_model_files(workdir, data):
    root, _ = workdir
    source = data.draw(st.sampled_from(["run/model.npz", "q6.npz"]))
    with np.load(root / source, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(arrays.pop("__config__").tobytes().decode())
    arrays, config = _mutate_arrays(arrays, config, data)
    with tempfile.TemporaryDirectory(dir=root) as d:
        path = Path(d) / "m.npz"
        arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
        np.savez(path, **arrays)
        for argv, json_mode in ((["info", path, "--json", "--no-sizes"], True),
                                (["evaluate", path, "--json"], True)):
            check_outcome(*run_cli(argv, Path(d)), json_mode=json_mode)


@given(data=st.data())
def test_corrupted_model_bytes(workdir, data):
    root, _ = workdir
    raw = bytearray((root / "q6.npz").read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
    if kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    else:
        raw = bytearray(data.draw(st.binary(max_size=400)))
    with tempfile.TemporaryDirectory(dir=root) as d:
        path = Path(d) / "m.npz"
        path.write_bytes(bytes(raw))
        check_outcome(*run_cli(["info", path, "--json", "--no-sizes"], Path(d)), json_mode=True)


@given(data=st.data())
def test_corrupted_checkpoints(workdir, data):
    import torch

    from lbcnn.train.checkpoint import load_checkpoint
    root, _ = workdir
    good = {"config": {"a": 1}, "epoch": 0, "model": {"w": torch.zeros(3)}, "optimizer": {},
            "torch_rng": torch.get_rng_state(), "history": [{"epoch": 1, "val_accuracy": 0.5}],
            "best_val_accuracy": 0.5, "best_epoch": 1, "best_model": {"w": torch.ones(2)}}
    buf = io.BytesIO()
    torch.save(good, buf)
    raw = bytearray(buf.getvalue())
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 10))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory(dir=root) as d:
        path = Path(d) / "checkpoint.pt"
        path.write_bytes(bytes(raw))
        try:
            ckpt = load_checkpoint(path)
        except LbcnnError:
            return
        assert isinstance(ckpt, dict) and "model" in ckpt


# --- random datasets ----------------------------------------------------------------------------

@st.composite
def npz_datasets(draw):
    n = draw(st.integers(0, 40))
    h = draw(st.integers(1, 20))
    w = draw(st.integers(1, 20))
    channels = draw(st.sampled_from([None, 1, 2, 3]))
    shape = (n, h, w) if channels is None else (n, h, w, channels)
    dtype = draw(st.sampled_from(["uint8", "float32", "int64", "float64"]))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    x = rng.integers(0, 256, shape).astype(dtype)
    if dtype.startswith("float") and draw(st.booleans()):
        x = x / 255.0
    if n and draw(st.integers(0, 5)) == 0:
        bad = draw(st.sampled_from([np.nan, np.inf, -1, 300]))
        if x.dtype.kind != "f":
            x = x.astype(np.float64 if isinstance(bad, float) else np.int64)
        x.reshape(-1)[0] = bad
    classes = draw(st.sampled_from([1, 2, 3, 1000]))
    y = rng.integers(0, classes, n)
    if draw(st.integers(0, 4)) == 0:
        y = y * draw(st.sampled_from([100, -1]))
    labels_len = n if draw(st.integers(0, 5)) else max(n - 1, 0)
    if draw(st.booleans()):
        cut = draw(st.integers(0, n))
        return {"x_train": x[:cut], "y_train": y[:cut][:labels_len], "x_test": x[cut:],
                "y_test": y[cut:]}
    return {"x": x, "y": y[:labels_len]}


@given(arrays=npz_datasets(), filters=st.sampled_from(["1", "2", "2,2"]))
def test_random_npz_datasets(workdir, arrays, filters):
    root, _ = workdir
    with tempfile.TemporaryDirectory(dir=root) as d:
        d = Path(d)
        np.savez(d / "data.npz", **arrays)
        before = files_under(d)
        argv = ["search", "--dataset", f"npz:{d / 'data.npz'}", "--filters", filters,
                "--trials", "1", "--out", d / "out", "--json"]
        check_outcome(*run_cli(argv, d), json_mode=True)
        new = files_under(d) - before
        assert all(d / "out" in p.parents for p in new), new
        check_saved_models(new)


@given(data=st.data())
def test_random_image_folders(workdir, data):
    from PIL import Image
    root, _ = workdir
    rng = np.random.default_rng(data.draw(st.integers(0, 100)))
    with tempfile.TemporaryDirectory(dir=root) as d:
        d = Path(d)
        for c in range(data.draw(st.integers(0, 3))):
            folder = d / "imgs" / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(data.draw(st.integers(0, 6))):
                kind = data.draw(st.sampled_from(["png", "jpg", "txt", "bad", "rgb"]))
                size = data.draw(st.sampled_from([(8, 8), (8, 8), (9, 7)]))
                if kind == "txt":
                    (folder / f"{i}.txt").write_text("notes")
                elif kind == "bad":
                    (folder / f"{i}.png").write_bytes(b"\x89PNG broken")
                else:
                    mode_shape = size + ((3,) if kind == "rgb" else ())
                    arr = rng.integers(0, 256, mode_shape, dtype=np.uint8)
                    Image.fromarray(arr).save(folder / f"{i}.{'jpg' if kind == 'jpg' else 'png'}")
        (d / "imgs").mkdir(exist_ok=True)
        extra = data.draw(st.sampled_from([[], ["--grayscale"], ["--resize", "8,8"],
                                           ["--resize", "0,8"], ["--test-fraction", "0.5"]]))
        before = files_under(d)
        argv = ["search", "--dataset", d / "imgs", "--filters", "1", "--trials", "1",
                "--out", d / "out", "--json", *extra]
        check_outcome(*run_cli(argv, d), json_mode=True)
        assert all(d / "out" in p.parents for p in files_under(d) - before)


# --- random option values for every command ---------------------------------------------------

HOSTILE = ["0", "-1", "nan", "inf", "-inf", "1e309", "abc", "", "0.5", "1,2", "2", "1e-300",
           "3,0", "99999999999999999999"]
SMALL = ["1", "2"]


def option_values():
    return st.sampled_from(HOSTILE)


@st.composite
def command_lines(draw, data_name: str, model: str, q_model: str):
    cmd = draw(st.sampled_from(["search", "finetune", "quantize", "export", "info", "evaluate",
                                "train-hybrid", "transfer"]))
    opts: list = []

    def maybe(flag, values=None):
        if draw(st.booleans()):
            opts.extend([flag, draw(values or option_values())])

    if cmd == "search":
        base = ["search", "--dataset", data_name, "--filters", draw(st.sampled_from(
            ["1", "2", "0", "1,1,1,1", "abc", "99999,99999"])), "--trials",
            draw(st.sampled_from(SMALL + ["0", "-2", "x"]))]
        for flag in ("--C", "--nl", "--val-fraction", "--batch-size", "--cv", "--seed",
                     "--train-size", "--test-fraction", "--device"):
            maybe(flag)
    elif cmd == "finetune":
        base = ["finetune", model, "--epochs", draw(st.sampled_from(SMALL + ["0", "nan"]))]
        for flag in ("--lr", "--batch-size", "--patience", "--weight-decay", "--shift",
                     "--rotate", "--zoom", "--val-fraction"):
            maybe(flag)
    elif cmd == "quantize":
        base = ["quantize", draw(st.sampled_from([model, q_model])), "--bits",
                draw(st.sampled_from(["8", "4", "1", "17", "nan", "x"]))]
        maybe("--val-fraction")
        if draw(st.booleans()):
            opts.append("--per-class")
    elif cmd == "export":
        fmt = draw(st.sampled_from(["onnx", "c", "pdf"]))
        base = ["export", draw(st.sampled_from([model, q_model])), "--format", fmt]
        if fmt == "c":
            maybe("--bits")
    elif cmd == "info":
        base = ["info", draw(st.sampled_from([model, q_model, "missing.npz", ""])), "--no-sizes"]
    elif cmd == "evaluate":
        base = ["evaluate", draw(st.sampled_from([model, q_model, "missing.npz"]))]
        maybe("--seed")
    elif cmd == "train-hybrid":
        base = ["train", "--model", "hybrid", "--dataset", data_name, "--epochs",
                draw(st.sampled_from(SMALL + ["0"]))]
        for flag in ("--lr", "--hidden", "--threshold", "--batch-size", "--train-size"):
            maybe(flag)
    else:
        base = ["transfer", "--backbone", draw(st.sampled_from([model, q_model])), "--dataset",
                data_name, "--epochs", draw(st.sampled_from(SMALL + ["-1"])),
                "--per-class", draw(st.sampled_from(["2", "0", "5"]))]
        for flag in ("--lr", "--batch-size", "--val-fraction"):
            maybe(flag)
    return base, opts, cmd


@given(data=st.data())
def test_random_options_for_every_command(workdir, data):
    root, data_name = workdir
    base, opts, cmd = data.draw(command_lines(data_name, str(root / "run" / "model.npz"),
                                              str(root / "q6.npz")))
    with tempfile.TemporaryDirectory(dir=root) as d:
        d = Path(d)
        out = d / ("out" if cmd in ("search", "train-hybrid", "transfer") or
                   (cmd == "export" and "c" in base) else "out.npz")
        if cmd == "export" and "onnx" in base:
            out = d / "out.onnx"
        argv = [*base, *opts]
        if cmd not in ("info", "evaluate"):
            argv += ["--out", out]
        json_mode = cmd != "train-hybrid" or data.draw(st.booleans())
        if json_mode and cmd not in ("export-c",):
            argv.append("--json")
        before = files_under(root)
        rc, stdout, stderr = run_cli(argv, d)
        check_outcome(rc, stdout, stderr, json_mode=json_mode)
        new = files_under(root) - before
        # finetune documents OUT.history.json/.csv and OUT.curves.png beside its model file
        siblings = {out.with_suffix("").name + ext for ext in
                    (".history.json", ".history.csv", ".curves.png")}
        outside = [p for p in new if p != out and out not in p.parents
                   and not (p.parent == out.parent and p.name in siblings)]
        assert not outside, outside
        check_saved_models([p for p in new if p.suffix == ".npz"])


# --- generated C: any string is data, never code ----------------------------------------------

_C_HOSTILE = st.sampled_from(list('?"\\*/%{};\n\t\r\0\'') + ["??/", "??=", "*/", "/*", "\\x41"])
_SURROGATES = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)  # undecodable bytes


def c_texts(max_size: int = 10):
    parts = st.one_of(st.characters(), _C_HOSTILE, _SURROGATES)
    return st.lists(parts, max_size=max_size).map("".join)


SHOW_NAMES_C = r"""#include <stdio.h>
#include "model.h"
/* @COMMENT@ */
int main(void)
{
    int i;
    const unsigned char *p;
    for (i = 0; i < LBCNN_N_CLASSES; i++) {
        for (p = (const unsigned char *)LBCNN_CLASS_NAMES[i]; *p; p++)
            printf("%02x", *p);
        printf("\n");
    }
    return 0;
}
"""


@given(names=st.lists(c_texts(), min_size=1, max_size=4, unique=True), comment=c_texts())
def test_c_string_property(names, comment):
    """Any class names (any Unicode, lone surrogates, quotes, backslashes, trigraph
    starters, comment markers) and any comment text: the header compiles with
    -std=c99 -Wall -Wextra -Werror -trigraphs, the compiled program sees each name's
    exact bytes (up to a NUL, where C strings end), and the names read back from the
    header equal the originals."""
    import shutil
    import subprocess

    from lbcnn.deploy.c_common import c_comment, predict_header
    from lbcnn.io.c_folder import parse_header
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    header = predict_header(comment, (2, 2, 1), len(names), 4, names)
    assert parse_header(header, "model.h")[1] == names
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "model.h").write_text(header, encoding="ascii")  # pure ASCII, or this fails
        (d / "show.c").write_text(SHOW_NAMES_C.replace("@COMMENT@", c_comment(comment)))
        subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-trigraphs",
                        str(d / "show.c"), "-o", str(d / "show")], check=True,
                       capture_output=True)
        out = subprocess.run([str(d / "show")], capture_output=True, check=True).stdout
    seen = [bytes.fromhex(line) for line in out.decode().splitlines()]
    assert seen == [n.encode("utf-8", "surrogatepass").split(b"\0")[0] for n in names]


# --- every format's metadata: accepted values are consistent, the rest one DataError --------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.text(max_size=6)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8)


def names_like(k: int):
    """Class-name lists: right or wrong length, duplicates, non-strings, huge strings."""
    return st.one_of(st.lists(st.text(max_size=5), min_size=k, max_size=k),
                     st.lists(st.text(max_size=5), max_size=k + 1),
                     st.just(["a"] * k), st.just(["x" * 5000] * k), json_values)


def _check_names(names, k):
    if names is not None:
        assert isinstance(names, list) and len(names) == k
        assert all(isinstance(n, str) for n in names) and len(set(names)) == k


@given(data=st.data())
def test_native_metadata_property(workdir, data):
    """A native config's recorded fields: refused with one DataError, or consistent."""
    from lbcnn.io.native import load_model_file
    root, _ = workdir
    with np.load(root / "run" / "model.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(arrays.pop("__config__").tobytes().decode())
    field = data.draw(st.sampled_from(["class_names", "classes", "label_values", "seed",
                                       "dataset", "preprocessing", "train_size", "deep"]))
    if field == "class_names":
        config[field] = data.draw(names_like(3))
    elif field == "classes":
        config[field] = data.draw(st.one_of(st.lists(st.integers(-2, 4), max_size=4),
                                            json_values))
    elif field == "deep":
        depth = data.draw(st.integers(1, 20_000))
        config["extra"] = "@DEEP@"
    else:
        config[field] = data.draw(json_values)
    text = json.dumps(config)
    if field == "deep":
        text = text.replace('"@DEEP@"', "[" * depth + "]" * depth)
    arrays["__config__"] = np.frombuffer(text.encode(), dtype=np.uint8)
    with tempfile.TemporaryDirectory(dir=root) as d:
        path = Path(d) / "m.npz"
        np.savez(path, **arrays)
        try:
            loaded, _ = load_model_file(path)
        except DataError:
            return
    k = len(loaded["classes"])
    _check_names(loaded.get("class_names"), k)
    assert len(set(loaded["classes"])) == k
    assert loaded.get("seed") is None or 0 <= loaded["seed"] < 2**32
    if loaded.get("label_values") is not None:
        assert max(loaded["classes"]) < len(loaded["label_values"])


@given(data=st.data())
def test_h5_metadata_property(workdir, data):
    import h5py

    from lbcnn.deploy.keras_export import export_h5
    from lbcnn.deploy.keras_import import import_keras_h5
    from lbcnn.io.artefacts import load_any
    root, _ = workdir
    source = root / "m.h5"
    if not source.exists():
        export_h5(load_any(root / "run" / "model.npz"), source)
    key = data.draw(st.sampled_from(["lbcnn_class_names", "lbcnn_classes", "lbcnn_dataset",
                                     "lbcnn_input_scale"]))
    value = data.draw(st.one_of(
        json_values.map(json.dumps), st.text(max_size=8),
        st.floats(allow_nan=True, allow_infinity=True),
        st.lists(st.integers(-3, 5), max_size=4).map(lambda v: np.asarray(v, np.int64)),
        st.integers(1, 3).map(lambda n: np.zeros((n, 2), np.int64)),
        names_like(3).map(json.dumps)))
    with tempfile.TemporaryDirectory(dir=root) as d:
        path = Path(d) / "m.h5"
        import shutil
        shutil.copy(source, path)
        try:
            with h5py.File(path, "a") as f:
                f.attrs[key] = value
        except (TypeError, ValueError):
            return  # h5py cannot store it: nothing for lbcnn to read
        try:
            model = import_keras_h5(path)
        except DataError:
            return
    k = model.coef_.shape[1]
    scale = model.body_.input_scale
    assert np.isfinite(scale) and scale > 0
    assert model.classes_.ndim == 1 and len(np.unique(model.classes_)) == len(model.classes_) == k
    _check_names(model.meta_.get("class_names"), k)
    assert model.meta_.get("dataset") is None or isinstance(model.meta_["dataset"], str)


@given(data=st.data())
def test_onnx_metadata_property(workdir, data):
    pytest.importorskip("onnxruntime")
    import onnx

    from lbcnn.deploy.onnx_export import export_onnx
    from lbcnn.io.artefacts import load_any, open_predictor
    root, _ = workdir
    source = root / "m.onnx"
    if not source.exists():
        export_onnx(load_any(root / "run" / "model.npz"), source)
    om = onnx.load(str(source))
    key = data.draw(st.sampled_from(["lbcnn_classes", "lbcnn_class_names", "lbcnn_dataset",
                                     "lbcnn_input_scale", "lbcnn_preprocess", "lbcnn_other"]))
    value = data.draw(st.one_of(json_values.map(json.dumps), st.text(max_size=12),
                                st.lists(st.integers(-3, 5), max_size=5).map(
                                    lambda v: ",".join(map(str, v))),
                                names_like(3).map(json.dumps)))
    props = {p.key: p.value for p in om.metadata_props}
    props[key] = value
    del om.metadata_props[:]
    for k2, v2 in props.items():
        e = om.metadata_props.add()
        e.key, e.value = k2, v2
    with tempfile.TemporaryDirectory(dir=root) as d:
        path = Path(d) / "m.onnx"
        onnx.save(om, str(path))
        try:
            pred = open_predictor(path)
        except DataError:
            return
        x = np.zeros((2, *pred.input_shape), np.uint8)
        labels = pred.predict(x)
    k = len(pred.classes)
    assert len(np.unique(pred.classes)) == k and set(labels.tolist()) <= set(pred.classes.tolist())
    _check_names(pred.class_names, k)
    assert len(pred.names()) == k


@given(data=st.data())
def test_c_record_metadata_property(workdir, data):
    """model.json of a C folder: any JSON or bytes is refused, or gives consistent classes
    and names (the folder's sources stay as exported, so nothing else can fail)."""
    from lbcnn.deploy.c_export import export_c
    from lbcnn.io.artefacts import load_any, open_predictor
    root, _ = workdir
    source = root / "c"
    if not source.exists():
        export_c(load_any(root / "run" / "model.npz"), source, measure=False)
    record = json.loads((source / "model.json").read_text())
    kind = data.draw(st.sampled_from(["field", "whole", "bytes"]))
    if kind == "field":
        key = data.draw(st.sampled_from(["classes", "class_names", "dataset", "returns",
                                         "input_shape", "n_classes", "sources", "format",
                                         "seed"]))
        record[key] = data.draw(st.one_of(json_values, names_like(3),
                                          st.lists(st.integers(-2, 4), max_size=4)))
        raw = json.dumps(record).encode()
    elif kind == "whole":
        raw = json.dumps(data.draw(json_values)).encode()
    else:
        raw = data.draw(st.binary(max_size=40))
    with tempfile.TemporaryDirectory(dir=root) as d:
        import shutil
        folder = Path(d) / "c"
        shutil.copytree(source, folder)
        (folder / "model.json").write_bytes(raw)
        try:
            pred = open_predictor(folder)
        except DataError:
            return
    k = len(pred.classes)
    assert k == 3 and len(np.unique(pred.classes)) == k
    _check_names(pred.class_names, k)


@given(data=st.data())
def test_checkpoint_metadata_property(workdir, data):
    import torch

    from lbcnn.train.checkpoint import load_checkpoint
    root, _ = workdir
    ck = {"config": {"epochs": 3}, "epoch": 1, "model": {"w": torch.zeros(2)},
          "optimizer": {}, "torch_rng": torch.get_rng_state(),
          "history": [{"epoch": 1, "val_accuracy": 0.4}, {"epoch": 2, "val_accuracy": 0.5}],
          "best_val_accuracy": 0.5, "best_epoch": 2, "best_model": {"w": torch.ones(2)},
          "wall_seconds": 2.0}
    field = data.draw(st.sampled_from(sorted(ck)))
    ck[field] = data.draw(st.one_of(
        json_values, st.floats(), st.just(None), st.just(torch.zeros(3)),
        st.just({"w": "text"}), st.lists(st.just({"val_accuracy": float("nan")}), max_size=3)))
    with tempfile.TemporaryDirectory(dir=root) as d:
        path = Path(d) / "checkpoint.pt"
        torch.save(ck, path)
        try:
            got = load_checkpoint(path)
        except DataError:
            return
    assert isinstance(got["epoch"], int) and got["epoch"] >= 0
    assert len(got["history"]) == got["epoch"] + 1
    assert 0 <= got["best_val_accuracy"] <= 1 and 1 <= got["best_epoch"] <= got["epoch"] + 1
    assert isinstance(got["best_model"], dict) and got["best_model"]
    wall = got.get("wall_seconds", 0.0)
    assert isinstance(wall, (int, float)) and np.isfinite(wall) and wall >= 0


# --- resources: nothing allocates more than the memory plan allows ---------------------------

BUDGET_GB = 0.25


@given(data=st.data())
def test_resource_limit_property(workdir, data, monkeypatch):
    """Hostile declared sizes (a .npz member's shape, an .h5 dataset's shape, a C header's
    input, a CBCNN's widths and batch) under a 256 MB memory budget: the peak resident
    memory grows by less than the budget, and a training run that goes ahead stays under
    its own plan (plus the interpreter's fixed working memory)."""
    from lbcnn.errors import ConfigError, MemoryPlanError
    monkeypatch.setenv("LBCNN_MEMORY_GB", str(BUDGET_GB))
    root, data_name = workdir
    case = data.draw(st.sampled_from(["npz", "h5", "c", "cbcnn"]))
    plan = None
    with tempfile.TemporaryDirectory(dir=root) as d, peak_rss_growth() as grown:
        d = Path(d)
        try:
            if case == "npz":
                shape = data.draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=3))
                _forged_npz(root / "run" / "model.npz", d / "m.npz", "head/weight", shape)
                from lbcnn.io.native import load_model_file
                load_model_file(d / "m.npz")
            elif case == "h5":
                shape = data.draw(st.lists(st.integers(1, 10**6), min_size=2, max_size=2))
                _forged_h5(root, d / "m.h5", shape)
                from lbcnn.deploy.keras_import import import_keras_h5
                import_keras_h5(d / "m.h5")
            elif case == "c":
                side = data.draw(st.integers(1, 10**9))
                _forged_c(root, d / "c", side)
                from lbcnn.io.artefacts import open_predictor
                pred = open_predictor(d / "c")
                pred.predict(np.zeros((1, *pred.input_shape), np.uint8))
            else:
                plan = _train_drawn_cbcnn(data, data_name)
        except (DataError, MemoryPlanError, ConfigError):
            plan = None
    assert grown() < BUDGET_GB * (1 << 30), (case, grown())
    if plan is not None:
        assert grown() <= plan + (48 << 20), (plan, grown())


def _forged_npz(src: Path, dst: Path, name: str, shape) -> None:
    import zipfile

    from numpy.lib import format as npy
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            payload = zin.read(info)
            if info.filename == name + ".npy":
                arr = np.load(src, allow_pickle=False)[name]
                buf = io.BytesIO()
                npy.write_array_header_1_0(buf, {"descr": npy.dtype_to_descr(arr.dtype),
                                                 "fortran_order": False, "shape": tuple(shape)})
                payload = buf.getvalue() + arr.tobytes()
            zout.writestr(info.filename, payload)


def _forged_h5(root: Path, dst: Path, shape) -> None:
    import shutil

    import h5py

    from lbcnn.deploy.keras_export import export_h5
    from lbcnn.io.artefacts import load_any
    if not (root / "m.h5").exists():
        export_h5(load_any(root / "run" / "model.npz"), root / "m.h5")
    shutil.copy(root / "m.h5", dst)
    with h5py.File(dst, "a") as f:
        for group in f["model_weights"].values():
            for wn in list(group.attrs.get("weight_names", [])):
                wn = wn.decode() if isinstance(wn, bytes) else wn
                if group[wn].ndim == 2:
                    del group[wn]
                    group.create_dataset(wn, shape=tuple(shape), dtype="float32",
                                         chunks=tuple(min(s, 256) for s in shape),
                                         compression="gzip")


def _forged_c(root: Path, folder: Path, side: int) -> None:
    import hashlib
    import re
    import shutil

    from lbcnn.deploy.c_export import export_c
    from lbcnn.io.artefacts import load_any
    if not (root / "c").exists():
        export_c(load_any(root / "run" / "model.npz"), root / "c", measure=False)
    shutil.copytree(root / "c", folder)
    header = (folder / "model.h").read_text()
    header = re.sub(r"#define LBCNN_HEIGHT \d+", f"#define LBCNN_HEIGHT {side}", header)
    header = re.sub(r"#define LBCNN_WIDTH \d+", f"#define LBCNN_WIDTH {side}", header)
    (folder / "model.h").write_text(header)
    record = json.loads((folder / "model.json").read_text())
    record["sources"]["model.h"] = hashlib.sha256(header.encode()).hexdigest()
    record.pop("input_shape", None)
    (folder / "model.json").write_text(json.dumps(record))


def _train_drawn_cbcnn(data, data_name: str) -> int:
    """Train a drawn CBCNN for one epoch on 40 images; returns its memory plan."""
    from lbcnn.data import load_dataset
    from lbcnn.memory import cbcnn_training_bytes
    from lbcnn.train.cbcnn import train_cbcnn
    blocks = tuple(data.draw(st.lists(st.sampled_from([2, 8, 24, 4096, 65536]), min_size=1,
                                      max_size=3)))
    dense = tuple(data.draw(st.lists(st.sampled_from([4, 32, 1 << 20]), max_size=1)))
    batch = data.draw(st.sampled_from([4, 16, 40]))
    ds = load_dataset(data_name)
    result = train_cbcnn(ds, None, blocks, dense, epochs=1, batch_size=batch, train_size=40,
                         val_fraction=0.25, progress=False)
    plan = result["memory_plan_bytes"]
    # the plan the run made is the one its shapes give (30 fit images, 45 test images)
    assert plan == cbcnn_training_bytes((12, 12, 1), blocks, dense, ds.n_classes,
                                        min(batch, 30), 40, eval_batch=45)
    return plan["total"]


# --- any option of any command: refused at parse time, or sane when compute starts -----------

class _Reached(BaseException):
    """Raised by the patched compute entry points: the command got past its checks."""


# where each command hands over to the long work (module, attribute)
_ENTRIES = [("lbcnn.train.search", "search"), ("lbcnn.train.optimize", "optimize"),
            ("lbcnn.train.cbcnn", "train_cbcnn"), ("lbcnn.train.head_finetune", "finetune_head"),
            ("lbcnn.heads.quantize", "apply_quantization"), ("lbcnn.train.transfer", "transfer"),
            ("lbcnn.deploy.c_export", "export_c"), ("lbcnn.deploy.onnx_export", "export_onnx"),
            ("lbcnn.deploy.keras_export", "export_h5"), ("lbcnn.evaluate", "evaluate"),
            ("lbcnn.deploy.mcu", "run_mcu")]
# options naming files, folders or services: other tests cover them
_PATH_OPTIONS = {"out", "workdir", "dataset", "data_path", "storage", "ray", "study_name",
                 "teacher", "test_folder", "backbone"}
OPTION_VALUES = st.one_of(st.sampled_from(HOSTILE + ["1e308", "-0", "0x10", "1_000", "  3",
                                                     "nan,1", "1,,2", "65537", "2e9"]),
                          st.text(max_size=6), st.integers(-10**12, 10**12).map(str),
                          st.floats().map(repr))


def _base_argv(cmd: str, root: Path, data_name: str) -> list:
    model = root / "run" / "model.npz"
    return {"search": ["search", "--dataset", data_name], "optimize": ["optimize", "--dataset",
            data_name, "--out", root / "never"], "train": ["train", "--model", "hybrid",
            "--dataset", data_name], "finetune": ["finetune", model, "--out", root / "never.npz"],
            "quantize": ["quantize", model, "--out", root / "never.npz"],
            "export": ["export", model, "--format", "onnx", "--out", root / "never.onnx"],
            "info": ["info", model, "--no-sizes"], "evaluate": ["evaluate", model],
            "predict": ["predict", model, root / "img.png"],
            "mcu": ["mcu", model], "transfer": ["transfer", "--backbone", model, "--dataset",
                                                 data_name], "datasets": ["datasets"]}[cmd]


def _numbers(value):
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return []


@given(data=st.data())
def test_any_option_property(workdir, data, monkeypatch):
    """For every command and any value of any of its options (found by introspecting the
    parser, so new options are covered as they come): either argparse refuses it with one
    line, or every number the command receives is finite and >= 0; and the command then
    ends with one line (exit 2), finishes, or reaches its compute step. Never a traceback."""
    import importlib

    from PIL import Image

    from lbcnn.cli import build_parser
    root, data_name = workdir
    if not (root / "img.png").exists():
        Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / "img.png")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    cmd = data.draw(st.sampled_from(sorted(sub.choices)))
    options = [a for a in sub.choices[cmd]._actions if a.option_strings and a.nargs != 0
               and a.dest not in _PATH_OPTIONS and a.dest != "help"]
    argv = [str(a) for a in _base_argv(cmd, root, data_name)]
    for action in data.draw(st.lists(st.sampled_from(options), max_size=3, unique=True)
                            if options else st.just([])):
        argv += [action.option_strings[-1], data.draw(OPTION_VALUES)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
        return
    for key, value in vars(args).items():
        for n in _numbers(value):
            assert math.isfinite(n) and n >= 0, (cmd, key, value)
    for module, name in _ENTRIES:
        def reached(*a, **k):
            raise _Reached
        monkeypatch.setattr(importlib.import_module(module), name, reached)
    monkeypatch.setattr("lbcnn.models.hybrid.Hybrid.fit", lambda *a, **k: (_ for _ in ()).throw(
        _Reached()))
    try:
        rc, stdout, stderr = run_cli(argv, root)
    except _Reached:
        return
    check_outcome(rc, stdout, stderr, json_mode="--json" in argv)
