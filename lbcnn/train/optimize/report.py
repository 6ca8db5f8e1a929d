"""What a person reads: trials.csv, front.csv/json, front.png, the terminal table."""
from __future__ import annotations

from pathlib import Path

# The paper's hand-picked ELM0 models (8-bit head, 10,000 training images; test accuracy),
# marked on front.png for comparison. Olivetti's size only (no accuracy on this split).
PAPER_POINTS = {
    "mnist": [("10,4,2", 104, 97.22), ("10,4", 157, 97.75), ("20,4,2", 207, 98.06),
              ("20,4", 315, 98.08), ("40,4,2", 414, 98.35), ("40,4", 629, 98.53)],
    "gtsrb": [("20,2", 2643, 90.37)],
    "olivetti": [("5,4", 1638, None)],
}

# a --reference CSV (benchmarks/anchors.csv): published points drawn on front.png
REFERENCE_NEEDS = ("dataset", "name", "accuracy", "weight_bits")
PICKED_ON = ("test", "validation", "unknown")


def read_reference(path) -> list[dict]:
    """The rows of a reference CSV (columns dataset, name, accuracy in %, weight_bits, and
    optionally picked_on: test / validation / unknown); every problem is one ConfigError."""
    import csv

    from ...errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--reference: no such file {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REFERENCE_NEEDS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"--reference {path}: missing column(s) {', '.join(missing)}")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"--reference {path}: not a readable CSV ({exc})") from None
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            acc, bits = float(r["accuracy"]), float(r["weight_bits"])
        except (TypeError, ValueError):
            raise ConfigError(f"--reference {path} line {i}: accuracy and weight_bits must be "
                              f"numbers, got {r['accuracy']!r}, {r['weight_bits']!r}") from None
        if not (0 <= acc <= 100 and bits > 0):
            raise ConfigError(f"--reference {path} line {i}: accuracy must be a percentage and "
                              f"weight_bits positive, got {acc}, {bits}")
        picked = (r.get("picked_on") or "unknown").strip().lower()
        if picked not in PICKED_ON:
            raise ConfigError(f"--reference {path} line {i}: picked_on must be one of "
                              f"{', '.join(PICKED_ON)}, got {picked!r}")
        out.append({"dataset": (r["dataset"] or "").strip().lower(), "name": r["name"],
                    "accuracy": acc, "kbits": bits / 1000, "picked_on": picked})
    return out


def _draw_reference(ax, reference, dataset: str) -> list[float]:
    """The reference points of this dataset: filled where picked on validation, hollow
    where picked on the test set or unknown; their accuracies (for the y range)."""
    pts = [r for r in reference if r["dataset"] == str(dataset).lower()]
    marks = {"validation": ("D", "C1"), "test": ("D", "none"), "unknown": ("s", "none")}
    for picked in PICKED_ON:
        group = [r for r in pts if r["picked_on"] == picked]
        if not group:
            continue
        marker, face = marks[picked]
        ax.scatter([r["kbits"] for r in group], [r["accuracy"] for r in group], marker=marker,
                   s=34, facecolors=face, edgecolors="C1", zorder=4,
                   label=f"reference, picked on {picked}" if picked != "unknown"
                   else "reference, selection unknown")
        for r in group:
            ax.annotate(r["name"], (r["kbits"], r["accuracy"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", color="C1")
    return [r["accuracy"] for r in pts]


TRIAL_FIELDS = ["trial", "state", "label", "filters", "nl", "C", "bits", "color", "kernel_seed",
                "kbits", "macs", "params", "features", "top_rung", "pruned_at_rung",
                "val_accuracy"]


def trial_rows(study, objectives) -> list[dict]:
    """One row per trial of the study, pruned and skipped ones included."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        cfg = ua.get("config") or {}
        state = "INFEASIBLE" if "infeasible" in ua else t.state.name
        row = {"trial": t.number + 1, "state": state,  # from 1, as search and the files
               "label": "", "filters": ",".join(map(str, cfg.get("filters", []))),
               "nl": cfg.get("nl"), "C": cfg.get("C"), "bits": cfg.get("bits"),
               "color": cfg.get("color"), "kernel_seed": ua.get("kernel_seed"),
               "kbits": ua.get("kbits"), "macs": ua.get("macs"), "params": ua.get("params"),
               "features": ua.get("features"), "pruned_at_rung": ua.get("pruned_at_rung"),
               "infeasible": ua.get("infeasible")}
        if cfg:
            from .space import Config
            row["label"] = Config(**{**cfg, "filters": tuple(cfg["filters"])}).label()
        top = None
        r = 0
        while f"rung{r}" in ua:
            res = ua[f"rung{r}"]
            row[f"rung{r}_n_train"] = res["n_train"]
            row[f"rung{r}_val_accuracy"] = res["val_accuracy"]
            row[f"rung{r}_C"] = res.get("C")
            row[f"rung{r}_seconds"] = res["seconds"]
            if res.get("C") is not None:  # solved per body: the C its last rung chose
                row["C"] = res["C"]
            top = r
            r += 1
        if ua.get("skipped") or ua.get("stopped"):
            row["deadline"] = ua.get("skipped") or ua.get("stopped")
        row["top_rung"] = top
        row["val_accuracy"] = ua[f"rung{top}"]["val_accuracy"] if top is not None else None
        rows.append(row)
    return rows


def progress_bar(total_seconds: float):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]optimize"), BarColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), transient=False)
    bar.add_task("starting", total=total_seconds)
    return bar


def front_table(front: list[dict], title: str = "Pareto front"):
    from rich.table import Table

    t = Table(title=title)
    for col in ("trial", "configuration", "val acc", "test acc", "kbits", "MACs", "fit s"):
        t.add_column(col, justify="left" if col == "configuration" else "right")
    for m in front:
        test = "-" if m["test_accuracy"] is None else f"{100 * m['test_accuracy']:.2f} %"
        fit = "-" if m["fit_seconds"] is None else f"{m['fit_seconds']:.1f}"
        t.add_row(str(m["trial"]), m["label"], f"{100 * m['val_accuracy']:.2f} %", test,
                  f"{m['kbits']:.1f}", f"{m['macs']:,}", fit)
    return t


def plot_front(rows: list[dict], front: list[dict], path: Path, dataset: str,
               title: str = "", reference: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...report import _save_fig

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    pruned = [r for r in rows if r["state"] == "PRUNED" and r["val_accuracy"] is not None]
    if pruned:
        ax.scatter([r["kbits"] for r in pruned], [100 * r["val_accuracy"] for r in pruned], s=6,
                   c="0.8", label=f"pruned (val acc at its last rung, {len(pruned)})")
    if done:
        ax.scatter([r["kbits"] for r in done], [100 * r["val_accuracy"] for r in done], s=10,
                   c="0.45", label=f"completed ({len(done)})")
    if front:
        fx = [m["kbits"] for m in front]
        ax.step(fx, [100 * m["val_accuracy"] for m in front], where="post", c="C3", lw=1)
        ax.scatter(fx, [100 * m["val_accuracy"] for m in front], s=28, c="C3", zorder=3,
                   label="front (val acc)")
        tested = [m for m in front if m["test_accuracy"] is not None]
        ax.scatter([m["kbits"] for m in tested], [100 * m["test_accuracy"] for m in tested], s=28,
                   marker="x", c="C0", zorder=3, label="front after refit (test acc)")
    for i, (name, kbits, acc) in enumerate(PAPER_POINTS.get(dataset, [])):
        lab = "paper, hand-picked (test acc)" if i == 0 else None
        if acc is None:
            ax.axvline(kbits, ls="--", c="C2", lw=1, label=f"paper {name} size" if i == 0 else None)
        else:
            ax.scatter([kbits], [acc], marker="*", s=70, c="C2", zorder=4, label=lab)
            ax.annotate(name, (kbits, acc), fontsize=7, xytext=(3, -9), textcoords="offset points")
    accs = [100 * m["val_accuracy"] for m in front] + \
        [100 * m["test_accuracy"] for m in front if m["test_accuracy"] is not None]
    accs += [a for _, _, a in PAPER_POINTS.get(dataset, []) if a is not None]
    if reference:
        accs += _draw_reference(ax, reference, dataset)
    if accs:
        # the interesting part is the top few points; tiny, weak models fall off the bottom
        ax.set_ylim(max(0, min(accs) - 1, max(accs) - 8), min(100.5, max(accs) + 0.5))
    ax.set_xscale("log")
    ax.set_xlabel("model size, kbits (as flashed: lbcnn info's conv + head + bias + rescale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


FRONT_FIELDS = ["trial", "label", "filters", "nl", "C", "bits", "color", "kernel_seed",
                "val_accuracy", "test_accuracy", "kbits", "macs", "params", "features",
                "train_size", "fit_seconds", "model"]


def write_outputs(run_dir: Path, rows, front, summary, dataset: str, objectives) -> None:
    from ...outputs import write_csv, write_json

    fields = list(TRIAL_FIELDS)
    for row in rows:
        fields += [k for k in row if k not in fields]
    write_csv(run_dir / "trials.csv", rows, fields)
    flat = [{**m, **{k: (",".join(map(str, v)) if k == "filters" else v)
                     for k, v in m["config"].items()}} for m in front]
    write_csv(run_dir / "front.csv", flat, FRONT_FIELDS)
    write_json(run_dir / "front.json", {"objectives": list(objectives), "front": front})
    write_json(run_dir / "summary.json", summary)
    plot_front(rows, front, run_dir / "front.png", dataset,
               title=f"{dataset}: {summary['trials']} configurations "
                     f"({summary['pruned']} pruned), {summary['train_size']:,} training images")


def plot_front_from_run(run_dir, dataset: str, reference: list[dict] | None = None) -> Path:
    """Redraw ``front.png`` of a finished run from its trials.csv, front.json and
    summary.json (``lbcnn optimize --reference``: the published points on top)."""
    import csv
    import json

    run_dir = Path(run_dir)

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    with open(run_dir / "trials.csv", newline="", encoding="utf-8") as f:
        rows = [{"state": r["state"], "kbits": num(r["kbits"]),
                 "val_accuracy": num(r["val_accuracy"])} for r in csv.DictReader(f)]
    rows = [r for r in rows if r["kbits"] is not None]
    front = json.loads((run_dir / "front.json").read_text())["front"]
    summary = json.loads((run_dir / "summary.json").read_text())
    path = run_dir / "front.png"
    plot_front(rows, front, path, dataset,
               title=f"{dataset}: {summary['trials']} configurations ({summary['pruned']} "
                     f"pruned), {summary['train_size']:,} training images", reference=reference)
    return path
