"""Training for the CBCNN family: squared hinge on +-1 targets, Adam with an
exponential learning-rate decay, a validation split for the best checkpoint,
an atomic checkpoint each epoch and an exact ``resume``.

Determinism: the network is initialised from ``torch.manual_seed(seed)``; the
epoch-``e`` shuffle comes from ``numpy.random.default_rng([seed, e])``, so a
resumed run draws the same batches as an uninterrupted one. Checkpoints hold
only tensors, numbers, strings and containers (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError
from .outputs import atomic_write_with
from .models.cbcnn import CBCNN, save_cbcnn
from .preprocess import Preprocess

CHECKPOINT = "checkpoint.pt"
# NHWC activations: CPU max-pooling is ~10x faster than on NCHW and the convs a
# little faster; a whole cbcnn32 training step is 1.36x faster (bench_cbcnn_train.py).
# Values do not depend on the layout; the returned network is NCHW again.
TRAIN_FORMAT = torch.channels_last


def squared_hinge(out: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """mean over samples and classes of max(0, 1 - t * out)^2, t the +-1 one-hot target."""
    t = torch.full_like(out, -1.0)
    t.scatter_(1, y.view(-1, 1), 1.0)
    return torch.clamp(1.0 - t * out, min=0.0).pow(2).mean()


def lr_at(epoch: int, epochs: int, lr_start: float, lr_end: float) -> float:
    """Exponential decay, lr_start at epoch 0 and lr_end at the last epoch."""
    if epochs <= 1:
        return float(lr_start)
    return float(lr_start * (lr_end / lr_start) ** (epoch / (epochs - 1)))


def _atomic_torch_save(obj, path: Path) -> None:
    atomic_write_with(path, lambda fh: torch.save(obj, fh))


CHECKPOINT_KEYS = ("config", "epoch", "model", "optimizer", "torch_rng", "history",
                   "best_val_accuracy", "best_epoch", "best_model")


def load_checkpoint(path) -> dict:
    """A training checkpoint, or one line saying why it cannot be used.

    ``weights_only=True`` never runs pickled code; its own refusal message
    suggests ``weights_only=False``, which must not reach a user.
    """
    import pickle

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"checkpoint {path} is missing or empty; start again without --resume")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"checkpoint {path} holds Python objects other than tensors and plain "
                        f"values; lbcnn refuses to load it") from None
    except Exception as exc:  # noqa: BLE001  a damaged file breaks torch's unpickler anywhere
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"checkpoint {path} is corrupt or truncated ({first[:120]})") from None
    if not isinstance(ckpt, dict):
        raise DataError(f"checkpoint {path} is not an lbcnn training checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise DataError(f"checkpoint {path} lacks {', '.join(missing)}; it is not an lbcnn "
                        f"training checkpoint or it is damaged")
    return ckpt


def _cpu_state(sd: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


@torch.no_grad()
def _evaluate(net, x: torch.Tensor, y: torch.Tensor, n_classes, batch_size, device):
    net.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        out = net(xb.contiguous(memory_format=TRAIN_FORMAT))
        loss += float(squared_hinge(out, yb, n_classes)) * len(xb)
        correct += int((out.argmax(1) == yb).sum())
    n = max(len(x), 1)
    return loss / n, correct / n


def plot_curves(history: list[dict], path, title: str = "") -> None:
    """Train/validation accuracy and loss per epoch (the paper's Figs 6-8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _save_fig

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    a1.plot(ep, [100 * h["train_accuracy"] for h in history], "o-", ms=3, label="train")
    a1.plot(ep, [100 * h["val_accuracy"] for h in history], "s-", ms=3, label="validation")
    a1.set_xlabel("epoch"); a1.set_ylabel("accuracy (%)"); a1.grid(alpha=0.3); a1.legend(fontsize=8)
    a2.plot(ep, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    a2.plot(ep, [h["val_loss"] for h in history], "s-", ms=3, label="validation")
    a2.set_xlabel("epoch"); a2.set_ylabel("squared hinge loss"); a2.grid(alpha=0.3); a2.legend(fontsize=8)
    if all(h["train_loss"] > 0 and h["val_loss"] > 0 for h in history):
        a2.set_yscale("log")  # the first epochs' loss would flatten the rest of the curve
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


def train_cbcnn(dataset, preset: str | None = "cbcnn28", blocks=None, dense=None, *,
                epochs: int = 10, batch_size: int = 100, lr_start: float = 1e-3,
                lr_end: float = 1e-4, seed: int = 0, val_fraction: float = 0.1,
                train_size: int | None = None, preprocess=None, scale: bool = False,
                out_dir=None, resume: bool = False, device=None, progress: bool = True,
                model: CBCNN | None = None, on_epoch_end=None,
                max_seconds: float | None = None, precision: str = "fp32",
                shift: float = 0.0, rotate: float = 0.0, zoom: float = 0.0) -> dict:
    """Train a CBCNN on ``dataset`` (a ``Dataset`` or a registry name).

    Returns a dict with ``model`` (best-validation weights), ``history``,
    ``test_accuracy`` (None without a test set), ``best_epoch``,
    ``wall_seconds`` and the paths written under ``out_dir`` (checkpoint,
    ``model.npz``, ``curves.png``, ``summary.json``). ``on_epoch_end(epoch, info)``
    runs after each epoch's checkpoint is written (raise in it to stop).
    ``max_seconds`` stops before an epoch that would not finish within the
    budget (judged by the slowest epoch so far); the best-validation weights
    are kept as usual. ``precision="bf16"`` runs the training forward pass
    under bfloat16 autocast (1.6x faster steps on a Zen 4 CPU; the latent
    weights, Adam state and every evaluation stay float32, so validation,
    test and the saved model are exact). ``shift`` (pixels), ``rotate``
    (degrees) and ``zoom`` (fraction) draw a random affine warp per training
    image and epoch, after preprocessing; the draws depend only on (seed,
    epoch), so a resumed run sees the same images.
    """
    from .data import Dataset, load_dataset

    if isinstance(dataset, str):
        dataset = load_dataset(dataset)
    if not isinstance(dataset, Dataset):
        raise ConfigError("dataset must be a Dataset or a dataset name")
    if int(epochs) < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not (math.isfinite(lr_start) and math.isfinite(lr_end) and lr_start > 0 and lr_end > 0):
        raise ConfigError(f"learning rates must be positive, got {lr_start} and {lr_end}")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}")
    if min(shift, rotate, zoom) < 0 or zoom >= 1:
        raise ConfigError(f"augmentation needs shift >= 0, rotate >= 0 and 0 <= zoom < 1, "
                          f"got shift={shift}, rotate={rotate}, zoom={zoom}")
    augment = bool(shift or rotate or zoom)
    if resume and out_dir is None:
        raise ConfigError("resume needs out_dir (where the checkpoint lives)")
    epochs, batch_size = int(epochs), int(batch_size)
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if model is not None:
        pre = model.preprocess
    else:
        pre = Preprocess.from_dict(preprocess)
    h, w, c = dataset.input_shape
    net_shape = (h, w, pre.out_channels(c))

    torch.manual_seed(seed)
    if model is None:
        from .models.cbcnn import PRESETS
        if blocks is None or dense is None:
            if preset not in PRESETS:
                raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)} "
                                  "or give blocks and dense")
            if tuple(PRESETS[preset]["input_shape"]) != net_shape:
                raise ConfigError(f"preset {preset} expects {PRESETS[preset]['input_shape']} inputs "
                                  f"but {dataset.name} gives {net_shape} after preprocessing")
        use = preset if blocks is None and dense is None else None
        model = CBCNN(use, blocks if blocks is not None else PRESETS[preset]["blocks"],
                      dense if dense is not None else PRESETS[preset]["dense"],
                      net_shape, dataset.n_classes, scale, pre, device)
    else:
        model.device = device
        model.net.to(device)
    net = model.net
    net.to(memory_format=TRAIN_FORMAT)
    n_classes = net.n_classes
    if dataset.n_classes > n_classes:
        raise DataError(f"{dataset.name} has {dataset.n_classes} classes but the model has {n_classes}")

    tr_idx, val_idx = dataset.split(train_size, val_fraction, seed)
    if len(tr_idx) < 2 or len(val_idx) < 1:
        raise ConfigError(f"{len(tr_idx)} training and {len(val_idx)} validation images: CBCNN's "
                          f"batch norm needs at least 2 to train on and 1 to validate; "
                          f"raise --train-size")
    x_tr = model.to_tensor(dataset.x_train[tr_idx]).cpu()
    y_tr = torch.as_tensor(dataset.y_train[tr_idx])
    x_val = model.to_tensor(dataset.x_train[val_idx]).cpu()
    y_val = torch.as_tensor(dataset.y_train[val_idx])

    opt = torch.optim.Adam(net.parameters(), lr=lr_start)
    run_config = {"blocks": list(net.blocks), "dense": list(net.dense), "epochs": epochs,
                  "batch_size": batch_size, "lr_start": lr_start, "lr_end": lr_end, "seed": seed,
                  "val_fraction": val_fraction, "train_size": train_size, "scale": net.scale,
                  "preprocess": json.dumps(pre.to_dict()), "dataset": dataset.name,
                  "precision": precision, "shift": float(shift), "rotate": float(rotate),
                  "zoom": float(zoom)}
    history, start_epoch, wall_before = [], 0, 0.0
    best = {"val_accuracy": -1.0, "epoch": -1, "state": None}
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT if out else None
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        # checkpoints written before bf16 and augmentation existed lack those keys
        saved = {"precision": "fp32", "shift": 0.0, "rotate": 0.0, "zoom": 0.0, **ck["config"]}
        if saved != run_config:
            diff = {k: (saved.get(k), v) for k, v in run_config.items() if saved.get(k) != v}
            raise ConfigError(f"cannot resume {ckpt_path}: the run's settings differ {diff}")
        try:
            net.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            torch.set_rng_state(ck["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise DataError(f"checkpoint {ckpt_path} does not fit this network ({first})") from None
        wall_before = float(ck.get("wall_seconds", 0.0))
        history = list(ck["history"])
        best = {"val_accuracy": ck["best_val_accuracy"], "epoch": ck["best_epoch"],
                "state": ck["best_model"]}
        start_epoch = int(ck["epoch"]) + 1

    t0 = time.perf_counter()
    stopped_early = False
    steps = math.ceil(len(x_tr) / batch_size)
    with _progress(progress) as bar:
        task = bar.add_task("cbcnn", total=(epochs - start_epoch) * steps, info="")
        epoch_seconds = []
        for epoch in range(start_epoch, epochs):
            epoch_start = time.perf_counter()
            lr = lr_at(epoch, epochs, lr_start, lr_end)
            for g in opt.param_groups:
                g["lr"] = lr
            net.train()
            perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(x_tr)))
            if augment:
                from .data.augment import affine_params, warp_batch
                theta = affine_params(len(x_tr), x_tr.shape[2], x_tr.shape[3], shift, rotate, zoom,
                                      np.random.default_rng([seed, epoch, 1]))
            tot_loss, correct, seen = 0.0, 0, 0
            for s in range(steps):
                idx = perm[s * batch_size:(s + 1) * batch_size]
                if len(idx) < 2 and seen:  # BatchNorm cannot train on one sample
                    continue
                xb, yb = x_tr[idx].to(device), y_tr[idx].to(device)
                if augment:
                    xb = warp_batch(xb, theta[idx.numpy()])
                xb = xb.contiguous(memory_format=TRAIN_FORMAT)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    outb = net(xb)
                loss = squared_hinge(outb.float(), yb, n_classes)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                net.clip_latent_()
                tot_loss += loss.item() * len(idx)
                correct += int((outb.argmax(1) == yb).sum())
                seen += len(idx)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {tot_loss / seen:.4f}")
            val_loss, val_acc = _evaluate(net, x_val, y_val, n_classes, 512, device)
            rec = {"epoch": epoch + 1, "lr": lr, "train_loss": tot_loss / max(seen, 1),
                   "train_accuracy": correct / max(seen, 1), "val_loss": val_loss,
                   "val_accuracy": val_acc, "seconds": time.perf_counter() - t0}
            history.append(rec)
            if val_acc > best["val_accuracy"]:
                best = {"val_accuracy": val_acc, "epoch": epoch + 1, "state": _cpu_state(net.state_dict())}
            if ckpt_path is not None:
                _atomic_torch_save({"config": run_config, "epoch": epoch, "model": _cpu_state(net.state_dict()),
                                    "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                                    "history": history, "best_val_accuracy": best["val_accuracy"],
                                    "best_epoch": best["epoch"], "best_model": best["state"],
                                    "wall_seconds": wall_before + time.perf_counter() - t0},
                                   ckpt_path)
                plot_curves(history, out / "curves.png", f"CBCNN {dataset.name}")
            bar.update(task, info=f"epoch {epoch + 1}/{epochs} val {100 * val_acc:.2f} %")
            if on_epoch_end is not None:
                on_epoch_end(epoch, rec)
            if max_seconds is not None:
                now = time.perf_counter()
                epoch_seconds.append(now - epoch_start)
                if now - t0 + max(epoch_seconds) > max_seconds:
                    stopped_early = epoch + 1 < epochs
                    break
    # a resumed run reports the whole run's training time, not only the resumed part
    wall = wall_before + time.perf_counter() - t0

    net.to(memory_format=torch.contiguous_format)
    final_state = _cpu_state(net.state_dict())
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    net.eval()
    test_acc = None
    if len(dataset.x_test):
        test_acc = model.score(dataset.x_test, dataset.y_test)
    result = {"model": model, "history": history, "best_epoch": best["epoch"],
              "best_val_accuracy": best["val_accuracy"], "test_accuracy": test_acc,
              "wall_seconds": wall, "final_state": final_state,
              "epochs_run": len(history), "stopped_by_time_budget": stopped_early}
    if out is not None:
        save_cbcnn(model, out / "model.npz", **dataset.provenance(), seed=seed, epochs=epochs,
                   best_epoch=best["epoch"], test_accuracy=test_acc,
                   val_accuracy=best["val_accuracy"])
        summary = {k: v for k, v in result.items() if k not in ("model", "final_state")}
        summary.update(run_config)
        from .outputs import write_json
        write_json(out / "summary.json", summary)
        result.update(checkpoint=str(ckpt_path), model_path=str(out / "model.npz"),
                      curves=str(out / "curves.png"))
    return result
