"""Score a predictor on a dataset's test split: accuracy, per-class accuracy and the
confusion matrix (``evaluate``), written as JSON + PNG (``write_report``) and drawn
in the terminal (``render``). Opening the artefact is ``io.artefacts.open_predictor``'s.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import Dataset
from .io.artefacts import Predictor, open_predictor


def evaluate(pred: Predictor, ds: Dataset) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix on ``ds``'s test split."""
    y = np.asarray(ds.y_test)
    p = pred.predict(ds.x_test)
    k = int(max(len(pred.classes), ds.n_classes, (y.max() + 1) if len(y) else 0))
    names = pred.class_names if pred.class_names is not None and \
        len(pred.class_names) == len(pred.classes) else None
    if names is None and ds.class_names is not None and len(ds.class_names) == k:
        names = list(ds.class_names)
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(k)]
    names += [str(i) for i in range(len(names), k)]
    conf = np.zeros((k, k + 1), dtype=np.int64)   # last column: a label outside 0..K-1
    inside = (p >= 0) & (p < k)
    np.add.at(conf, (y, np.where(inside, p, k)), 1)
    per_class = []
    for c in range(k):
        n_c = int(conf[c].sum())
        per_class.append({"class": c, "name": names[c], "n": n_c, "correct": int(conf[c, c]),
                          "accuracy": float(conf[c, c] / n_c) if n_c else None})
    result = {"model": str(pred.path), "kind": pred.kind, "dataset": ds.name,
              "recorded_dataset": pred.dataset, "split": ds.test_split, "n": int(len(y)),
              "correct": int((p == y).sum()),
              "accuracy": float(np.mean(p == y)) if len(y) else float("nan"),
              "class_names": names, "per_class": per_class,
              "confusion": conf[:, :k].tolist()}
    if conf[:, k].any():
        result["predicted_outside_classes"] = conf[:, k].tolist()
    result["split_fingerprint"] = ds.test_fingerprint()
    recorded_split = (pred.config.get("split") or {}) if isinstance(pred.config.get("split"), dict) \
        else {}
    result["same_split_as_recorded"] = (recorded_split.get("fingerprint") == ds.test_fingerprint()
                                        if recorded_split.get("fingerprint") else None)
    result["recorded_refit_on_train_plus_val"] = bool(pred.config.get("refit_on_train_plus_val"))
    for key in ("val_accuracy", "test_accuracy", "test_size"):
        if isinstance(pred.config.get(key), (int, float)) and not isinstance(pred.config[key], bool):
            result[f"recorded_{key}"] = pred.config[key]
    return result


def evaluate_file(model_path, ds: Dataset) -> dict:
    """``evaluate(open_predictor(model_path), ds)``."""
    return evaluate(open_predictor(model_path), ds)


def write_report(result: dict, out_dir) -> dict:
    """``evaluation.json`` and ``confusion.png`` in ``out_dir``; returns their paths."""
    from .outputs import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "evaluation.json", json.dumps(result, indent=2))
    plot_confusion(result, out / "confusion.png")
    return {"json": str(out / "evaluation.json"), "png": str(out / "confusion.png")}


def plot_confusion(result: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(result["confusion"], dtype=np.float64)
    k = len(conf)
    rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    size = min(4 + 0.35 * k, 16)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    names = result["class_names"]
    ticks = range(k)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=90, fontsize=7 if k > 15 else 9)
    ax.set_yticklabels(names, fontsize=7 if k > 15 else 9)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if conf[i, j]:
                    ax.text(j, i, f"{int(conf[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result['dataset']}: accuracy {100 * result['accuracy']:.2f} % "
                 f"({result['n']:,} test images)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    from .outputs import atomic_write_bytes
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def render(result: dict, max_matrix: int = 15):
    """Rich renderables: the summary, per-class accuracy and the confusion matrix
    (the top confusions when there are more than ``max_matrix`` classes)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lines = [f"{result['model']} ({result['kind']}) on {result['dataset']} "
             f"({result['split']}): accuracy {100 * result['accuracy']:.2f} % "
             f"({result['correct']:,} / {result['n']:,})"]
    if "recorded_val_accuracy" in result:
        refit = " (selection, before the refit on train + validation)" \
            if result.get("recorded_refit_on_train_plus_val") else ""
        lines.append(f"recorded in the model file: validation "
                     f"{100 * result['recorded_val_accuracy']:.2f} %{refit}")
    if "recorded_test_accuracy" in result:
        n = result.get("recorded_test_size")
        same = {True: ", this test split", False: ", another test split"}.get(
            result.get("same_split_as_recorded"), "")
        lines.append(f"recorded in the model file: test {100 * result['recorded_test_accuracy']:.2f} %"
                     + (f" (n={n:,}{same})" if n else ""))
    t = Table(title="per-class accuracy")
    for col in ("class", "name", "images", "correct", "accuracy"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for r in result["per_class"]:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} %"
        t.add_row(str(r["class"]), r["name"], f"{r['n']:,}", f"{r['correct']:,}", acc)
    parts = [Text("\n".join(lines)), t]
    conf = np.asarray(result["confusion"])
    k = len(conf)
    if k <= max_matrix:
        m = Table(title="confusion matrix (rows: true class, columns: predicted)")
        m.add_column("true \\ pred", justify="left")
        for j in range(k):
            m.add_column(result["class_names"][j][:8], justify="right")
        for i in range(k):
            m.add_row(result["class_names"][i][:16],
                      *[Text(str(v), style="bold") if i == j else (str(v) if v else "·")
                        for j, v in enumerate(conf[i])])
        parts.append(m)
    else:
        off = [(int(conf[i, j]), i, j) for i in range(k) for j in range(k) if i != j and conf[i, j]]
        off.sort(reverse=True)
        m = Table(title=f"top confusions ({k} classes: the full matrix is in the JSON / PNG)")
        for col in ("true", "predicted as", "images"):
            m.add_column(col, justify="right" if col == "images" else "left")
        for v, i, j in off[:10]:
            m.add_row(result["class_names"][i], result["class_names"][j], f"{v:,}")
        parts.append(m)
    return Group(*parts)
