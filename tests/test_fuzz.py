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
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from lbcnn.cli import main  # noqa: E402
from lbcnn.errors import LbcnnError  # noqa: E402
from tests.test_safety import tiny_npz  # noqa: E402


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
            "torch_rng": torch.get_rng_state(), "history": [], "best_val_accuracy": 0.5,
            "best_epoch": 1, "best_model": None}
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
