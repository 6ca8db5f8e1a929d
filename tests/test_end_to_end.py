"""From a folder of your own images to a C library, as a user would (issue 14).

Real MNIST digits written as PNGs into three class folders named by their
class, with a stray readme.txt among them; then search, quantize, export C,
evaluate the C folder and predict one PNG.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "lbcnn", *map(str, args)], capture_output=True,
                       text=True, timeout=600)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler to build the exported C folder")
def test_own_images_to_c_library(mnist, tmp_path):
    from PIL import Image

    names = {0: "zero", 1: "one", 7: "seven"}
    imgs = tmp_path / "imgs"
    for digit, name in names.items():
        (imgs / name).mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(mnist.y_train == digit)[:120]):
            Image.fromarray(mnist.x_train[idx, :, :, 0]).save(imgs / name / f"{i:03d}.png")
    (imgs / "seven" / "readme.txt").write_text("sevens, written by hand")

    r = cli("search", "--dataset", imgs, "--filters", "4,2", "--trials", "3",
            "--test-fraction", "0.25", "--out", tmp_path / "run", "--json")
    assert r.returncode == 0, r.stderr
    assert "skipped 1 file" in r.stderr
    summary = json.loads(r.stdout)
    assert summary["class_names"] == ["one", "seven", "zero"]

    r = cli("quantize", tmp_path / "run", "--bits", "8", "--out", tmp_path / "q8.npz", "--json")
    assert r.returncode == 0, r.stderr
    r = cli("export", tmp_path / "q8.npz", "--format", "c", "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    header = (tmp_path / "c" / "model.h").read_text()
    names_line = next(ln for ln in header.splitlines() if "LBCNN_CLASS_NAMES" in ln and "=" in ln)
    assert '"one"' in names_line and '"seven"' in names_line and '"zero"' in names_line

    r = cli("evaluate", tmp_path / "q8.npz", "--json")
    assert r.returncode == 0, r.stderr
    native = json.loads(r.stdout)
    # the C folder's model.json records the dataset and its split, so nothing needs repeating
    r = cli("evaluate", tmp_path / "c", "--json")
    assert r.returncode == 0, r.stderr
    compiled = json.loads(r.stdout)
    assert compiled["n"] == native["n"] == 90
    assert compiled["accuracy"] == native["accuracy"] > 0.9

    png = imgs / "seven" / "000.png"
    r = cli("predict", tmp_path / "q8.npz", png)
    assert r.returncode == 0, r.stderr
    assert "seven" in r.stdout.splitlines()[0]
