"""Issue 30: the published anchors (benchmarks/anchors.csv) and `lbcnn optimize --reference`,
which draws them on front.png beside the front."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lbcnn.errors import ConfigError
from lbcnn.train.optimize.report import read_reference

ANCHORS = Path(__file__).resolve().parents[1] / "benchmarks" / "anchors.csv"


def test_anchor_file_lists_the_published_points():
    rows = {r["name"]: r for r in read_reference(ANCHORS)}
    bit16 = rows["BitNetMCU CNN 16-wide, fc1 2-bit"]
    assert (bit16["dataset"], bit16["accuracy"], bit16["kbits"], bit16["picked_on"]) == \
        ("mnist", 99.06, 42.88, "test")
    assert rows["BitNetMCU CNN 64-wide, fc1 2-bit, 90 epochs"]["kbits"] == 90.112
    assert rows["BitNetMCU CNN 96-wide, fc1 ternary"]["accuracy"] == 99.58
    lite = rows["AykoNet-Lite"]
    assert (lite["dataset"], lite["accuracy"], lite["picked_on"]) == ("gtsrb", 94.6, "unknown")
    assert lite["kbits"] == pytest.approx(36.8 * 8)
    assert any(r["dataset"] == "fashion_mnist" and r["accuracy"] == 92.5 for r in rows.values())


@pytest.mark.parametrize("text,message", [
    (None, "no such file"),
    ("dataset,name,accuracy\nmnist,x,99\n", "missing column(s) weight_bits"),
    ("dataset,name,accuracy,weight_bits\nmnist,x,high,100\n", "must be numbers"),
    ("dataset,name,accuracy,weight_bits\nmnist,x,120,100\n", "a percentage"),
    ("dataset,name,accuracy,weight_bits,picked_on\nmnist,x,99,100,train\n", "picked_on must be"),
])
def test_bad_reference_is_one_line(tmp_path, text, message):
    path = tmp_path / "ref.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        read_reference(path)
    assert "\n" not in str(err.value)


def test_reference_points_are_drawn_for_their_dataset_only():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lbcnn.train.optimize.report import _draw_reference

    ref = read_reference(ANCHORS)
    fig, ax = plt.subplots()
    accs = _draw_reference(ax, ref, "mnist")
    assert sorted(accs) == [99.06, 99.28, 99.44, 99.55, 99.58]
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(drawn[:, 1].tolist()) == sorted(accs)
    assert {t.get_text() for t in ax.texts} == {r["name"] for r in ref if r["dataset"] == "mnist"}
    plt.close(fig)


def test_optimize_reference_flag_redraws_front_png(tmp_path, monkeypatch):
    """The flag is read before the search (a bad file fails at once) and front.png is
    redrawn from the run's files with the rows of the run's dataset."""
    from lbcnn.cli import main
    from lbcnn.train.optimize import report

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 12, 12), dtype=np.uint8)
    y = np.arange(300) % 3
    data = tmp_path / "d.npz"
    np.savez(data, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    ref = tmp_path / "ref.csv"
    # dataset, name, accuracy, weight_bits, 4 empty columns, picked_on
    ref.write_text(ANCHORS.read_text() + f"npz:{data},ours-like point,80,2000,,,,,validation\n")
    assert main(["optimize", "--dataset", str(tmp_path / "missing.npz"), "--reference",
                 str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r0")]) == 2
    calls = []
    real = report.plot_front

    def spy(rows, front, path, dataset, title="", reference=None):
        calls.append((dataset, reference))
        return real(rows, front, path, dataset, title, reference)

    monkeypatch.setattr(report, "plot_front", spy)
    rc = main(["optimize", "--dataset", f"npz:{data}", "--train-size", "200", "--rungs", "100",
               "--layers", "1", "--nf1", "2", "--nl", "1", "--bits", "4", "--C-range", "1e-2",
               "--max-configs", "1", "--seed", "0", "--reference", str(ref),
               "--out", str(tmp_path / "run"), "--json"])
    assert rc == 0
    dataset, reference = calls[-1]
    assert reference is not None and dataset == f"npz:{data}"
    mine = [r for r in reference if r["dataset"] == dataset.lower()]
    assert [(r["name"], r["picked_on"]) for r in mine] == [("ours-like point", "validation")]
    assert (tmp_path / "run" / "front.png").stat().st_size > 0
