"""Gradient fine-tuning of the LB-CNN output layer, kernels frozen.

Starts from the ELM head (optionally re-solved on the full training split),
then runs Adam on softmax cross-entropy over mini-batches. Two things keep
Adam from wrecking the good starting point: features are centred and scaled
to unit RMS (the mean and scale are folded back into the head at the end, so the saved
head is the same plain affine layer) and the ELM logits are first rescaled by
the temperature that minimizes training cross-entropy (argmax unchanged). Only the head's
weight and bias are torch parameters: the +-1 kernels never enter autograd
(the body runs under ``inference_mode``), so they get no gradient and no
optimizer state. The epoch is chosen on the validation split (never on the
test set), with early stopping after ``patience`` epochs without improvement.

Features are computed once and kept in memory when the plan fits
(``lbcnn.memory.require``); otherwise each mini-batch is streamed from the body.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError, MemoryPlanError
from ..memory import human_bytes, require


@dataclass
class FinetuneResult:
    best_epoch: int
    epochs_run: int
    val_accuracy_start: float
    val_accuracy: float
    feature_mode: str
    seconds: float
    seconds_features: float
    seconds_elm: float = 0.0
    history: list = field(default_factory=list)
    temperature: float = 1.0
    refit_full: bool = False  # True: the saved head was retrained on train + validation
    refit_history: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def labels_to_index(model, y) -> np.ndarray:
    y = np.asarray(y)
    idx = np.searchsorted(model.classes_, y)
    idx = np.clip(idx, 0, len(model.classes_) - 1)
    if not np.all(model.classes_[idx] == y):
        bad = sorted(set(np.asarray(y)[model.classes_[idx] != y].tolist()))[:5]
        raise DataError(f"labels {bad} are not among the model's classes")
    return idx.astype(np.int64)


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn("[bold]finetune"), TextColumn("epoch {task.fields[epoch]}"),
                    BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"),
                    TextColumn("val acc {task.fields[val]}"),
                    TimeElapsedColumn(), TimeRemainingColumn())


def _features_or_none(body, x, what, in_memory):
    if in_memory is False:
        return None
    try:
        require(4 * len(x) * body.n_features, f"{what} features ({len(x):,} x {body.n_features:,})",
                "features will be streamed per batch")
    except MemoryPlanError:
        if in_memory:
            raise
        return None
    return body.transform(x)


def finetune_head(model, x_train, y_train, x_val, y_val, *, epochs: int = 20,
                  batch_size: int = 128, lr: float = 1e-4, patience: int = 3, seed: int = 0,
                  elm_full: bool = False, in_memory: bool | None = None,
                  weight_decay: float = 0.0, shift: int = 0, lr_schedule: str = "constant",
                  refit_full: bool = False, rotate: float = 0.0, zoom: float = 0.0,
                  elastic: float = 0.0, elastic_sigma: float = 4.0, progress: bool = False,
                  log=None) -> FinetuneResult:
    """Fine-tune ``model.coef_``/``intercept_`` in place; returns what happened.

    ``y_train``/``y_val`` are class labels (values of ``model.classes_``).
    ``in_memory``: None plans it, True insists (MemoryPlanError if it does not
    fit), False always streams. ``shift`` > 0 moves every training image by a
    fresh random (dy, dx) in [-shift, shift]^2 each epoch and recomputes its
    features (into the same buffer when in memory); the starting point,
    feature moments and validation use the unshifted images.
    ``rotate`` (degrees) and ``zoom`` (fraction) add random rotations and
    zooms to the shift (then bilinear, continuous shifts; see
    ``lbcnn.data.augment.random_affine``); ``elastic`` (alpha, pixels) adds
    Simard-style elastic distortions smoothed over ``elastic_sigma`` pixels.
    ``lr_schedule="cosine"`` anneals the learning rate from ``lr`` towards 0
    over ``epochs`` (set ``patience`` high enough to reach the low-lr end).
    ``refit_full`` replays the chosen number of epochs from the same start on
    train + validation (sklearn's ``refit``): the saved head then has seen the
    validation images, and ``val_accuracy`` is the selection run's.
    """
    from ..models.lbcnn import fit_elm

    if epochs < 0 or batch_size < 1 or lr <= 0 or patience < 1 or weight_decay < 0 or shift < 0:
        raise ConfigError("need epochs >= 0, batch size >= 1, lr > 0, patience >= 1, "
                          "weight decay >= 0 and shift >= 0")
    if rotate < 0 or not 0 <= zoom < 1:
        raise ConfigError(f"need rotate >= 0 and 0 <= zoom < 1, got {rotate} and {zoom}")
    if elastic < 0 or elastic_sigma <= 0:
        raise ConfigError(f"need elastic >= 0 and elastic_sigma > 0, "
                          f"got {elastic} and {elastic_sigma}")
    if lr_schedule not in ("constant", "cosine"):
        raise ConfigError(f"lr_schedule must be constant or cosine, got {lr_schedule!r}")
    body = model.body_
    yt, yv = labels_to_index(model, y_train), labels_to_index(model, y_val)
    if len(yt) == 0 or len(yv) == 0:
        raise ConfigError("fine-tuning needs non-empty training and validation splits")
    k = len(model.classes_)
    t_start = time.perf_counter()
    t_elm = 0.0
    if elm_full:
        t0 = time.perf_counter()
        model.coef_, model.solver_ = fit_elm(body, x_train, yt, k, model.C, model.batch_size,
                                             torch.device("cpu"))
        model.intercept_ = np.zeros(k, dtype=np.float32)
        t_elm = time.perf_counter() - t0

    t0 = time.perf_counter()
    ht = _features_or_none(body, x_train, "training", in_memory)
    hv = _features_or_none(body, x_val, "validation", in_memory) if ht is not None else None
    mode = "memory" if ht is not None else "stream"
    t_feat = time.perf_counter() - t0
    if log:
        log(f"features: {mode}"
            + (f" ({human_bytes(ht.nbytes + hv.nbytes)})" if ht is not None else ""))

    # Precondition: train on centred, rescaled features z = (h - mu) / sd with
    # logits = z V + c, which is the same affine head (W = V / sd,
    # b = c - (mu / sd) V) -- folded back exactly at the end. Raw LB-CNN
    # features reach ~40 and Adam's per-weight steps then swing the logits.
    mu, sd = _moments(ht if ht is not None else None, body, x_train)
    w0 = np.asarray(model.coef_, dtype=np.float64)
    v0 = w0 * sd[:, None]
    c0 = np.asarray(model.intercept_, dtype=np.float64) + mu @ w0
    mu_t, sd_t = torch.from_numpy(mu.astype(np.float32)), torch.from_numpy(sd.astype(np.float32))
    # The ELM head regresses +-1 targets; rescale its logits by the
    # temperature that minimizes training cross-entropy (argmax unchanged).
    sub = np.sort(np.random.default_rng(seed).permutation(len(yt))[:10000])
    alpha = _temperature(_feats_raw(body, x_train, ht, sub) @ w0.astype(np.float32)
                         + model.intercept_, yt[sub])
    # The only trainable tensors. Kernels are not parameters at all.
    weight = torch.nn.Parameter(torch.from_numpy((alpha * v0).astype(np.float32)))
    bias = torch.nn.Parameter(torch.from_numpy((alpha * c0).astype(np.float32)))
    params = [weight, bias]
    for w, extras in body._torch_cache.get(str(torch.device("cpu")), []):
        assert not w.requires_grad and not any(e.requires_grad for e in extras)

    def feats(x, h, idx):
        return (torch.from_numpy(_feats_raw(body, x, h, idx)) - mu_t) / sd_t

    def val_accuracy() -> float:
        correct = 0
        with torch.no_grad():
            for a in range(0, len(yv), 4096):
                sl = np.arange(a, min(a + 4096, len(yv)))
                logits = feats(x_val, hv, sl) @ weight + bias
                correct += int((logits.argmax(1).numpy() == yv[sl]).sum())
        return correct / len(yv)

    def make_opt():
        return (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay > 0
                else torch.optim.Adam(params, lr=lr))

    def train_epoch(epoch, x_src, h_buf, y_idx, opt, rng, aug_rng, on_batch) -> float:
        """One pass over (x_src, y_idx); returns the mean training loss."""
        x_epoch = x_src
        if shift or rotate or zoom or elastic:
            from ..data.augment import random_affine, random_shift
            x_epoch = (random_affine(x_src, shift, rotate, zoom, aug_rng, elastic, elastic_sigma)
                       if rotate or zoom or elastic else random_shift(x_src, shift, aug_rng))
            if h_buf is not None:
                body.transform(x_epoch, out=h_buf)
        if lr_schedule == "cosine":  # epoch e trains at the rate midway through it
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * (epoch - 0.5) / epochs))
        perm = rng.permutation(len(y_idx))
        total, seen = 0.0, 0
        for b in range(-(-len(y_idx) // batch_size)):
            idx = np.sort(perm[b * batch_size:(b + 1) * batch_size])
            h = feats(x_epoch, h_buf, idx)
            assert not h.requires_grad
            loss = F.cross_entropy(h @ weight + bias, torch.from_numpy(y_idx[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            on_batch(total / seen)
        return total / seen

    opt = make_opt()
    start = (weight.detach().clone(), bias.detach().clone())
    rng, aug_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    torch.manual_seed(seed)
    best_acc = start_acc = val_accuracy()
    best = start
    best_epoch, since, history, epochs_run = 0, 0, [{"epoch": 0, "loss": None,
                                                     "val_accuracy": start_acc}], 0
    n_batches = -(-len(yt) // batch_size)
    bar = _progress(progress)
    task = None
    if bar is not None:
        bar.start()
        task = bar.add_task("", total=epochs * n_batches, epoch=0, loss=float("nan"),
                            val=f"{100 * start_acc:.2f}%")
    try:
        for epoch in range(1, epochs + 1):
            def on_batch(loss, epoch=epoch):
                if bar is not None:
                    bar.update(task, advance=1, epoch=epoch, loss=loss)
            mean_loss = train_epoch(epoch, x_train, ht, yt, opt, rng, aug_rng, on_batch)
            acc = val_accuracy()
            epochs_run = epoch
            history.append({"epoch": epoch, "loss": mean_loss, "val_accuracy": acc,
                            "lr": opt.param_groups[0]["lr"]})
            if bar is not None:
                bar.update(task, val=f"{100 * acc:.2f}% (best {100 * max(acc, best_acc):.2f}%)")
            if acc > best_acc:
                best_acc, best_epoch, since = acc, epoch, 0
                best = (weight.detach().clone(), bias.detach().clone())
            else:
                since += 1
                if since >= patience:
                    break
    finally:
        if bar is not None:
            bar.stop()
    refit_history = []
    if refit_full and best_epoch > 0:
        # The epoch count was chosen on validation; now replay the same run
        # (same start, schedule, seeds) on train + validation for that many
        # epochs. Nothing is chosen here, so nothing needs held-out data.
        x_all = np.concatenate([x_train, x_val])
        y_all = np.concatenate([yt, yv])
        h_all = None
        if ht is not None:
            require(4 * len(y_all) * body.n_features,
                    f"train+validation features ({len(y_all):,} x {body.n_features:,})",
                    "use --stream or drop --refit-full")
            h_all = np.concatenate([ht, hv])
            del ht
        with torch.no_grad():
            weight.copy_(start[0])
            bias.copy_(start[1])
        opt = make_opt()
        rng, aug_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
        for epoch in range(1, best_epoch + 1):
            loss = train_epoch(epoch, x_all, h_all, y_all, opt, rng, aug_rng, lambda _: None)
            refit_history.append({"epoch": epoch, "loss": loss, "lr": opt.param_groups[0]["lr"]})
        best = (weight.detach().clone(), bias.detach().clone())
    # The optimizer only ever saw the head.
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(weight), id(bias)}
    v, c = best[0].numpy().astype(np.float64), best[1].numpy().astype(np.float64)
    model.coef_ = (v / sd[:, None]).astype(np.float32)
    model.intercept_ = (c - (mu / sd) @ v).astype(np.float32)
    model.head_meta_ = {"kind": "float32"}
    model.__dict__.pop("head_arrays_", None)
    return FinetuneResult(best_epoch, epochs_run, start_acc, best_acc, mode,
                          time.perf_counter() - t_start, t_feat, t_elm, history,
                          float(alpha), bool(refit_history), refit_history)


def _feats_raw(body, x, h, idx) -> np.ndarray:
    return h[idx] if h is not None else body.transform(x[idx])


def _moments(h, body, x, chunk: int = 2048):
    """Per-feature mean and std (float64), same chunking in memory or streamed."""
    s = s2 = None
    n = 0
    chunks = ((h[a:a + chunk]) for a in range(0, len(h), chunk)) if h is not None else \
        (f for _, _, f in body.iter_transform(x, chunk))
    for f in chunks:
        f = f.astype(np.float64)
        s = f.sum(0) if s is None else s + f.sum(0)
        s2 = (f * f).sum(0) if s2 is None else s2 + (f * f).sum(0)
        n += len(f)
    mu = s / n
    sd = np.sqrt(np.maximum(s2 / n - mu * mu, 0.0))
    # One global scale (RMS of the per-feature stds), not one per feature:
    # dividing by tiny per-feature stds inflates those weights once folded
    # back, and the heavy tail then wrecks a per-tensor fixed-point scale.
    rms = float(np.sqrt(np.mean(sd * sd)))
    return mu, np.full_like(sd, rms if rms > 0 else 1.0)


def _temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The scalar a > 0 minimizing cross-entropy of a * logits (log grid, then refine)."""
    lg = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    yt = torch.from_numpy(y)

    def ce(a):
        return float(F.cross_entropy(lg * a, yt))
    grid = np.exp(np.linspace(np.log(0.1), np.log(1000.0), 41))
    best = min(grid, key=ce)
    fine = best * np.exp(np.linspace(-0.12, 0.12, 13))
    return float(min(fine, key=ce))
