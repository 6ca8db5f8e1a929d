"""Tables and plots for people: rich tables in the terminal, PNGs on disk."""
from __future__ import annotations

from pathlib import Path


def plot_trials(history: list[dict], path: Path, title: str = "", chosen: int | None = None,
                n_val: int | None = None) -> None:
    """Per-trial validation accuracy with the running best (the paper's Fig. 3).

    ``chosen`` (1-based) marks the selected trial; ``n_val`` draws its +-1
    standard-error band, so trials inside the band read as tied with it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = [100 * h["val_accuracy"] for h in history]
    best = [max(acc[: i + 1]) for i in range(len(acc))]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot(range(1, len(acc) + 1), acc, "o-", ms=3, lw=1, label="trial")
    ax.plot(range(1, len(acc) + 1), best, "--", lw=1.2, label="best so far")
    if chosen is not None:
        c = acc[chosen - 1]
        if n_val:
            se = 100 * (c / 100 * (1 - c / 100) / n_val) ** 0.5
            ax.axhspan(c - se, c + se, color="tab:orange", alpha=0.15,
                       label=f"chosen ±1 s.e. (n={n_val:,})")
        ax.plot([chosen], [c], "*", ms=12, color="tab:red", label=f"chosen: trial {chosen}")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def plot_finetune(history: list[dict], path: Path, title: str = "") -> None:
    """Validation accuracy (and training loss) per fine-tuning epoch; 0 = the starting head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history if h.get("val_accuracy") is not None]
    acc = [100 * h["val_accuracy"] for h in history if h.get("val_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot(ep, acc, "o-", ms=3, lw=1, label="validation accuracy")
    if acc:
        best = max(range(len(acc)), key=lambda i: (acc[i], -i))
        ax.plot([ep[best]], [acc[best]], "*", ms=12, color="tab:red",
                label=f"chosen: epoch {ep[best]}" + (" (start)" if ep[best] == 0 else ""))
    ax.set_xlabel("epoch (0 = starting ELM head)")
    ax.set_ylabel("validation accuracy (%)")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    losses = [(h["epoch"], h["loss"]) for h in history if h.get("loss") is not None]
    if losses:
        ax2 = ax.twinx()
        ax2.plot(*zip(*losses), "--", lw=1, color="tab:gray", label="training loss")
        ax2.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def plot_training_curves(history: list[dict], path, title: str = "",
                         loss_name: str = "squared hinge") -> None:
    """A training run's train/validation accuracy and loss per epoch (CBCNN: the paper's
    Figs 6-8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    a1.plot(ep, [100 * h["train_accuracy"] for h in history], "o-", ms=3, label="train")
    a1.plot(ep, [100 * h["val_accuracy"] for h in history], "s-", ms=3, label="validation")
    a1.set_xlabel("epoch"); a1.set_ylabel("accuracy (%)"); a1.grid(alpha=0.3); a1.legend(fontsize=8)
    a2.plot(ep, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    a2.plot(ep, [h["val_loss"] for h in history], "s-", ms=3, label="validation")
    a2.set_xlabel("epoch"); a2.set_ylabel(f"{loss_name} loss"); a2.grid(alpha=0.3); a2.legend(fontsize=8)
    if all(h["train_loss"] > 0 and h["val_loss"] > 0 for h in history):
        a2.set_yscale("log")  # the first epochs' loss would flatten the rest of the curve
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _save_fig(fig, path: Path) -> None:
    from .outputs import atomic_write_with
    atomic_write_with(path, lambda fh: fig.savefig(fh, format="png"))


def console(**kw):
    """A rich console on stdout: the terminal's width, or, when stdout is a file or a pipe
    (where rich would cut everything to 80 columns), wide enough for any table. ``COLUMNS``
    still wins. For machine-readable output every command has ``--json``.

    Markup is off: dataset names, class names and paths come from users, and a class called
    ``[/]`` or a folder called ``[unlabeled]`` must print as itself, not crash the table or
    vanish from it; styles are given as ``rich.text.Text`` objects instead."""
    import os
    import sys

    from rich.console import Console

    if not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        kw.setdefault("width", 1000)
    kw.setdefault("markup", False)
    kw.setdefault("highlight", False)
    return Console(**kw)


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column rich table: what every command prints when it ends."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    console().print(table)


def summary_table(summary: dict):
    from rich.table import Table

    table = Table(title=f"LB-CNN search: {summary['dataset']} filters "
                        f"{','.join(map(str, summary['filters']))}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("validation accuracy", f"{100 * summary['val_accuracy']:.2f} % "
         f"± {100 * summary.get('val_standard_error', 0.0):.2f} "
         + (f"({summary['selection']}, n={summary['train_size']:,})"
            if summary.get("selection", "").endswith("cross-validation")
            else f"(n={summary['val_size']:,})")),
        ("test accuracy", f"{100 * summary['test_accuracy']:.2f} %  (n={summary['test_size']:,})"),
        ("best trial / trials", f"{summary['best_trial']} / {summary['trials']}"),
        ("training images", f"{summary['train_size']:,} ({summary['fit_size']:,} fit + "
                            f"{summary['val_size']:,} val)"),
        ("features", f"{summary['features']:,}"),
        ("conv kbits (1 bit/weight)", f"{summary['kbits_conv']:.2f}"),
        ("head kbits (if stored at 8 bits/weight)", f"{summary['kbits_head']:.1f}"),
        ("s/trial, median", f"{summary['seconds_per_trial']:.2f}"),
        ("  features / solve / scoring", f"{summary['seconds_features_median']:.2f} / "
                                         f"{summary['seconds_solve_median']:.2f} / "
                                         f"{summary['seconds_scoring_median']:.3f}"),
        ("search total s", f"{summary['seconds_search_total']:.1f}"),
        ("final refit s", f"{summary['seconds_refit']:.1f}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table
