"""Training for the CBCNN family: squared hinge on +-1 targets, Adam with an
exponential (or one-cycle / cosine) learning-rate schedule, a validation split
for the best checkpoint, an atomic checkpoint each epoch and an exact ``resume``.

Recipe options (docs/cbcnn_recipe.md): horizontal flips and random erasing
per image, a warm-up, and knowledge distillation from the float twin of the
network (``distill``), trained first in the same run (``distill=True``) or
read from a file (``teacher``); ``cbcnn_recipe.RECIPES`` bundles them. Checkpoints
and resuming: ``checkpoint``.

Determinism: the network is initialised from ``torch.manual_seed(seed)``; the
epoch-``e`` shuffle comes from ``numpy.random.default_rng([seed, e])``, the
warp / flip / erase draws from ``default_rng([seed, e, 1 / 2 / 3])``, and the
learning rate is a function of (epoch, step), so a resumed run draws the same
batches as an uninterrupted one. Checkpoints hold only tensors, numbers,
strings and containers (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..models import register_trainer
from ..models.cbcnn import CBCNN, save_cbcnn
from ..preprocess import Preprocess
from ..report import plot_training_curves
from .cbcnn_recipe import SCHEDULES, lr_at
from .checkpoint import CHECKPOINT, check_resume_config, cpu_state, load_checkpoint, save_checkpoint
from .losses import cross_entropy, squared_hinge

# NHWC activations: CPU max-pooling is ~10x faster than on NCHW and the convs a
# little faster; a whole cbcnn32 training step is 1.36x faster (bench_cbcnn_train.py).
# Values do not depend on the layout; the returned network is NCHW again.
TRAIN_FORMAT = torch.channels_last


@torch.no_grad()
def _evaluate(net, x: torch.Tensor, y: torch.Tensor, n_classes, batch_size, device,
              loss_fn=squared_hinge):
    net.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        out = net(xb.contiguous(memory_format=TRAIN_FORMAT))
        loss += float(loss_fn(out, yb, n_classes)) * len(xb)
        correct += int((out.argmax(1) == yb).sum())
    n = max(len(x), 1)
    return loss / n, correct / n


@torch.no_grad()
def update_weight_average(avg: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """One step of the exponential moving average of ``net``'s parameters and BN
    running statistics into ``avg`` (same architecture): ``avg = decay avg + (1 - decay) net``.

    The average starts as a copy of the initial network, whose share fades as decay^steps.
    No warm-up ramp such as ``min(decay, (1 + n) / (10 + n))``: at our step counts
    (a few thousand) that ramp, not the decay, would set the horizon, and every decay
    from 0.997 up would give the same average. The average is taken over the latent
    (clipped real) weights; the deployed network is their sign. Integer buffers (BN's
    batch counter) are copied.
    """
    d = float(decay)
    for a, p in zip(avg.parameters(), net.parameters()):
        a.lerp_(p.detach(), 1.0 - d)
    for a, b in zip(avg.buffers(), net.buffers()):
        if a.is_floating_point():
            a.lerp_(b, 1.0 - d)
        else:
            a.copy_(b)


@torch.no_grad()
def recalibrate_batch_norm(net: torch.nn.Module, x: torch.Tensor, batch_size: int = 100,
                           device=None) -> torch.nn.Module:
    """Re-estimate every BN layer's running mean and variance on ``x`` (network input,
    NCHW) and return ``net`` in eval mode; the weights are untouched.

    Training leaves running statistics of *augmented* batches (erased boxes, shifts),
    and with binary activations each BN + sign becomes a fixed threshold per channel,
    so a threshold estimated on erased images is off for clean ones. This pass gives
    each layer the equal-weight average of its batch statistics over ``x`` in order
    (``momentum=None``), as the BN layers saw them in training mode.
    """
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) < 2:
        raise ConfigError("batch-norm recalibration needs a network with BN layers and at "
                          "least 2 images")
    device = device or next(net.parameters()).device
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if len(xb) < 2:  # a one-image batch has no variance
                break
            xb = xb.to(device)
            net(xb.contiguous(memory_format=TRAIN_FORMAT) if xb.dim() == 4 else xb)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        net.eval()
    return net


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
                shift: float = 0.0, rotate: float = 0.0, zoom: float = 0.0,
                flip: bool = False, erase: float = 0.0, lr_schedule: str = "exp",
                warmup: float | None = None, teacher=None, distill: bool = False,
                teacher_epochs: int | None = None, distill_weight: float = 0.5,
                temperature: float = 4.0, float_twin: bool = False,
                recalibrate_bn: bool = False, ema: float | None = None, log=None) -> dict:
    """Train a CBCNN on ``dataset`` (a ``Dataset`` or a registry name).

    Returns a dict with ``model`` (best-validation weights), ``history``,
    ``test_accuracy`` (None without a test set), ``best_epoch``,
    ``wall_seconds`` and the paths written under ``out_dir`` (checkpoint,
    ``model.npz``, ``curves.png``, ``summary.json``). ``on_epoch_end(epoch, info)``
    runs after each epoch's checkpoint is written (raise in it to stop);
    ``info["phase"]`` is ``"teacher"`` or ``"student"``.
    ``max_seconds`` stops before an epoch that would not finish within the
    budget (judged by the slowest epoch so far); the best-validation weights
    are kept as usual, and ``test_accuracy`` stays None until a resumed run
    ends (``lbcnn evaluate`` reads it on demand). ``precision="bf16"`` runs the
    training forward pass under bfloat16 autocast (1.6x faster steps on a CPU
    with AVX512-BF16, 12x slower on one without; the latent
    weights, Adam state and every evaluation stay float32, so validation,
    test and the saved model are exact). ``shift`` (pixels), ``rotate``
    (degrees) and ``zoom`` (fraction) draw a random affine warp per training
    image and epoch, after preprocessing; the draws depend only on (seed,
    epoch), so a resumed run sees the same images.

    Recipe options: ``flip`` mirrors half the training images left-right each
    epoch (refused where that changes the class, see ``data.augment.FLIP_SAFE``);
    ``erase`` P erases a random box in each image with probability P;
    ``lr_schedule`` ``exp`` / ``onecycle`` / ``cosine`` with ``warmup`` epochs
    (``lr_at``). ``teacher`` (a teacher file written with ``float_twin=True``)
    or ``distill=True`` (train the float twin first, ``teacher_epochs``,
    default ``epochs``, in ``out_dir/teacher``; its time counts in
    ``wall_seconds`` and in ``max_seconds``) mixes the loss as
    ``(1 - distill_weight) * squared_hinge + distill_weight * kd_loss(T=temperature)``;
    a teacher file's recorded training time counts the same way.
    ``recalibrate_bn`` re-estimates the chosen epoch's BN statistics on the clean
    (unaugmented) training images after training and keeps them only if validation
    accuracy rises (``recalibrate_batch_norm``); ``result["bn_recalibration"]`` says
    what validation saw.
    ``ema`` D keeps an exponential moving average of the weights and BN statistics,
    updated after every step with decay D (``update_weight_average``); validation, the
    epoch choice and the saved model use the average, training itself is unchanged, and
    each epoch's record keeps the trained network's own validation accuracy as
    ``raw_val_accuracy``.
    The teacher is trained on this run's training split and chosen on its
    validation split only; it never sees the test set. ``float_twin=True``
    trains the float twin itself (cross-entropy, no test evaluation) and
    writes ``teacher.npz`` instead of ``model.npz``.

    ``log(message)`` receives the notes for people: the split sizes before
    training and, when no live progress bar is drawn (``progress=False``, or
    output to a file or pipe), one line per epoch.
    """
    from ..data import Dataset, load_dataset
    from .distill import (check_distill_settings, frozen_teacher, is_float_twin, kd_loss,
                          make_float_twin)

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
    if not (isinstance(erase, (int, float)) and math.isfinite(erase) and 0.0 <= erase <= 1.0):
        raise ConfigError(f"erase probability must be in [0, 1], got {erase}")
    if lr_schedule not in SCHEDULES:
        raise ConfigError(f"lr schedule must be one of {', '.join(SCHEDULES)}, got {lr_schedule!r}")
    if warmup is not None and not (isinstance(warmup, (int, float)) and math.isfinite(warmup)
                                   and 0 <= warmup < int(epochs)):
        raise ConfigError(f"warmup must be >= 0 epochs and shorter than the run "
                          f"({int(epochs)} epochs), got {warmup}")
    if flip:
        from ..data.augment import check_flip_allowed
        check_flip_allowed(dataset.name)
    if ema is not None and not (isinstance(ema, (int, float)) and math.isfinite(ema)
                                and 0.0 < ema < 1.0):
        raise ConfigError(f"ema decay must be in (0, 1), got {ema}")
    if ema is not None and float_twin:
        raise ConfigError("the weight average is for the binary network, not the float twin")
    if teacher is not None and distill:
        raise ConfigError("give a teacher file or distill (train the teacher here), not both")
    if float_twin and (teacher is not None or distill):
        raise ConfigError("the float twin is the teacher; it is not distilled itself")
    if float_twin and (model is not None or scale):
        raise ConfigError("the float twin is built here, from blocks/dense, without scale")
    if teacher_epochs is not None and (not distill or int(teacher_epochs) < 1):
        raise ConfigError(f"teacher epochs go with distill and must be >= 1, got {teacher_epochs}")
    if distill and warmup and warmup >= int(teacher_epochs or epochs):
        raise ConfigError(f"warmup ({warmup} epochs) must be shorter than the teacher's "
                          f"{int(teacher_epochs or epochs)} epochs")
    use_teacher = teacher is not None or bool(distill)
    if use_teacher:
        check_distill_settings(distill_weight, temperature)
    augment = bool(shift or rotate or zoom)
    if resume and out_dir is None:
        raise ConfigError("resume needs out_dir (where the checkpoint lives)")
    epochs, batch_size = int(epochs), int(batch_size)
    warmup = None if not warmup else float(warmup)
    from ..settings import resolve_device
    device = resolve_device(device)
    if model is not None:
        pre = model.preprocess
    else:
        pre = Preprocess.from_dict(preprocess)
    h, w, c = dataset.input_shape
    net_shape = (h, w, pre.out_channels(c))
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT if out else None

    if model is None:
        from ..models.cbcnn import PRESETS
        if blocks is None or dense is None:
            if preset not in PRESETS:
                raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)} "
                                  "or give blocks and dense")
            if tuple(PRESETS[preset]["input_shape"]) != net_shape:
                raise ConfigError(f"preset {preset} expects {PRESETS[preset]['input_shape']} inputs "
                                  f"but {dataset.name} gives {net_shape} after preprocessing")
        use = preset if blocks is None and dense is None else None
        arch = (use, blocks if blocks is not None else PRESETS[preset]["blocks"],
                dense if dense is not None else PRESETS[preset]["dense"])

    # every setting but the network's own and the teacher's fingerprint (checked later)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr_start": lr_start,
                "lr_end": lr_end, "seed": seed, "val_fraction": val_fraction,
                "train_size": train_size, "preprocess": json.dumps(pre.to_dict()),
                "dataset": dataset.name, "precision": precision, "shift": float(shift),
                "rotate": float(rotate), "zoom": float(zoom), "flip": bool(flip),
                "erase": float(erase), "lr_schedule": lr_schedule, "warmup": warmup,
                "distill": bool(distill),
                "teacher_epochs": int(teacher_epochs or epochs) if distill else None,
                "distill_weight": float(distill_weight) if use_teacher else None,
                "temperature": float(temperature) if use_teacher else None,
                "ema": float(ema) if ema is not None else None,
                "data_fingerprint": dataset.fingerprint()}
    memory_plan = _plan_training_memory(dataset, model, arch if model is None else None,
                                        net_shape, batch_size, train_size, val_fraction, seed,
                                        use_teacher)
    if resume and use_teacher and ckpt_path.exists():
        # refuse a changed setting before a teacher is trained or loaded, not after
        check_resume_config(load_checkpoint(ckpt_path)["config"], settings, ckpt_path)

    # -- the teacher: trained first (distill) or read from a file ------------------------
    teacher_net, teacher_info, teacher_wall = None, None, 0.0
    if use_teacher:
        from .distill import TEACHER_FILE, load_teacher, split_fingerprint, teacher_fingerprint
        tr_idx, val_idx = dataset.split(train_size, val_fraction, seed)
        split_fp = split_fingerprint(dataset.name, tr_idx, val_idx)
        student_shape = tuple(model.net.input_shape) if model is not None else net_shape
        student_classes = model.net.n_classes if model is not None else dataset.n_classes
        if distill:
            t_blocks = list(model.net.blocks) if model is not None else list(arch[1])
            t_dense = list(model.net.dense) if model is not None else list(arch[2])
            t_out = out / "teacher" if out is not None else None
            t_file = t_out / TEACHER_FILE if t_out is not None else None
            if t_out is not None and not resume:  # nothing of an older run may be reused
                for stale in (t_file, t_out / CHECKPOINT, ckpt_path):
                    stale.unlink(missing_ok=True)
            t_kw = dict(epochs=int(teacher_epochs or epochs), batch_size=batch_size,
                        lr_start=lr_start, lr_end=lr_end, seed=seed, val_fraction=val_fraction,
                        train_size=train_size, preprocess=pre.to_dict(), device=device,
                        progress=progress, precision=precision, shift=shift, rotate=rotate,
                        zoom=zoom, flip=flip, erase=erase, lr_schedule=lr_schedule,
                        warmup=warmup, float_twin=True, log=log)
            # On resume the teacher run resumes too: a finished one only re-checks its
            # settings against its checkpoint (a changed teacher setting is refused) and
            # rewrites teacher.npz from its best-validation weights.
            t_cb = (None if on_epoch_end is None
                    else lambda e, r: on_epoch_end(e, {**r, "phase": "teacher"}))
            t_res = train_cbcnn(dataset, None, t_blocks, t_dense, out_dir=t_out,
                                resume=bool(resume and t_out is not None
                                            and (t_out / CHECKPOINT).exists()),
                                on_epoch_end=t_cb, max_seconds=max_seconds, **t_kw)
            teacher_wall = float(t_res["wall_seconds"])
            path = t_res.get("teacher_path")
            if path is None:  # no out_dir: the in-memory best-validation twin
                teacher_net = frozen_teacher(t_res["model"].net)
                teacher_info = {"val_accuracy": t_res["best_val_accuracy"],
                                "best_epoch": t_res["best_epoch"], "epochs": t_kw["epochs"]}
        else:
            path = Path(teacher)
        if teacher_net is None:
            teacher_net, tcfg = load_teacher(path, input_shape=student_shape,
                                             n_classes=student_classes,
                                             preprocess=pre.to_dict(), split=split_fp,
                                             device=device)
            teacher_info = {"path": str(path), "val_accuracy": tcfg.get("val_accuracy"),
                            "best_epoch": tcfg.get("best_epoch"), "epochs": tcfg.get("epochs")}
            if not distill:  # a teacher file's training time counts like a --distill teacher's
                t = tcfg.get("wall_seconds")
                teacher_wall = float(t) if isinstance(t, (int, float)) and math.isfinite(t) \
                    and t >= 0 else 0.0
        teacher_info["fingerprint"] = teacher_fingerprint(teacher_net)
        teacher_info["wall_seconds"] = teacher_wall
        if max_seconds is not None:
            max_seconds = max(float(max_seconds) - teacher_wall, 0.0)

    torch.manual_seed(seed)
    if model is None:
        model = CBCNN(arch[0], arch[1], arch[2], net_shape, dataset.n_classes, scale, pre, device)
        if float_twin:
            make_float_twin(model.net)
    else:
        model.device = device
        model.net.to(device)
    net = model.net
    twin = is_float_twin(net)
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
    loss_fn = cross_entropy if twin else squared_hinge

    opt = torch.optim.Adam(net.parameters(), lr=lr_start)
    run_config = {"blocks": list(net.blocks), "dense": list(net.dense), "scale": net.scale,
                  **settings, "float_twin": twin,
                  "teacher_fingerprint": teacher_info["fingerprint"] if use_teacher else None}
    history, start_epoch, wall_before = [], 0, 0.0
    best = {"val_accuracy": -1.0, "epoch": -1, "state": None}
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        check_resume_config(ck["config"], run_config, ckpt_path, exact=True)
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
    ema_net = None
    if ema is not None:
        ema_net = copy.deepcopy(net)
        if start_epoch:
            if "ema_model" not in ck:
                raise DataError(f"checkpoint {ckpt_path} holds no weight average")
            ema_net.load_state_dict(ck["ema_model"])
        for prm in ema_net.parameters():
            prm.requires_grad_(False)

    phase = "teacher" if twin else "student"
    if log is not None:  # every option is checked by now: sizes come before the long work
        log(f"{dataset.name}: {len(tr_idx):,} training + {len(val_idx):,} validation images, "
            f"{len(dataset.y_test):,} test images, {dataset.n_classes} classes"
            + (" (float teacher)" if twin else ""))
    t0 = time.perf_counter()
    stopped_early = False
    steps = math.ceil(len(x_tr) / batch_size)
    from ..data.augment import (affine_params, erase_batch, erase_params, flip_batch,
                               flip_params, warp_batch)
    with _progress(progress) as bar:
        task = bar.add_task("float twin" if twin else "cbcnn",
                            total=(epochs - start_epoch) * steps, info="")
        epoch_seconds = []
        for epoch in range(start_epoch, epochs):
            epoch_start = time.perf_counter()
            lr = lr_at(epoch, epochs, lr_start, lr_end, lr_schedule, warmup, 0, steps)
            net.train()
            perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(x_tr)))
            if augment:
                theta = affine_params(len(x_tr), x_tr.shape[2], x_tr.shape[3], shift, rotate, zoom,
                                      np.random.default_rng([seed, epoch, 1]))
            if flip:
                flips = flip_params(len(x_tr), np.random.default_rng([seed, epoch, 2]))
            if erase:
                boxes = erase_params(len(x_tr), x_tr.shape[2], x_tr.shape[3], erase,
                                     np.random.default_rng([seed, epoch, 3]))
            tot_loss, correct, seen = 0.0, 0, 0
            for s in range(steps):
                idx = perm[s * batch_size:(s + 1) * batch_size]
                if len(idx) < 2 and seen:  # BatchNorm cannot train on one sample
                    continue
                for g in opt.param_groups:
                    g["lr"] = lr_at(epoch, epochs, lr_start, lr_end, lr_schedule, warmup, s, steps)
                xb, yb = x_tr[idx].to(device), y_tr[idx].to(device)
                if augment:
                    xb = warp_batch(xb, theta[idx.numpy()])
                if flip:
                    xb = flip_batch(xb, flips[idx.numpy()])
                if erase:
                    xb = erase_batch(xb, boxes[idx.numpy()])
                xb = xb.contiguous(memory_format=TRAIN_FORMAT)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    outb = net(xb)
                    if teacher_net is not None:
                        with torch.no_grad():
                            tb = teacher_net(xb)
                loss = loss_fn(outb.float(), yb, n_classes)
                if teacher_net is not None:
                    loss = ((1.0 - distill_weight) * loss
                            + distill_weight * kd_loss(outb.float(), tb.float(), temperature))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if not twin:
                    net.clip_latent_()
                if ema_net is not None:
                    update_weight_average(ema_net, net, ema)
                tot_loss += loss.item() * len(idx)
                correct += int((outb.argmax(1) == yb).sum())
                seen += len(idx)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {tot_loss / seen:.4f}")
            val_loss, val_acc = _evaluate(net, x_val, y_val, n_classes, 512, device, loss_fn)
            extra = {}
            if ema_net is not None:  # the average is what gets chosen and deployed
                extra = {"raw_val_accuracy": val_acc, "raw_val_loss": val_loss}
                val_loss, val_acc = _evaluate(ema_net, x_val, y_val, n_classes, 512, device, loss_fn)
            rec = {**extra, "epoch": epoch + 1, "lr": lr, "train_loss": tot_loss / max(seen, 1),
                   "train_accuracy": correct / max(seen, 1), "val_loss": val_loss,
                   # training time since the run began, so a resumed run's curve keeps rising
                   "val_accuracy": val_acc, "seconds": wall_before + time.perf_counter() - t0}
            history.append(rec)
            if val_acc > best["val_accuracy"]:
                chosen_net = ema_net if ema_net is not None else net
                best = {"val_accuracy": val_acc, "epoch": epoch + 1,
                        "state": cpu_state(chosen_net.state_dict())}
            if ckpt_path is not None:
                save_checkpoint({"config": run_config, "epoch": epoch, "model": cpu_state(net.state_dict()),
                                    "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                                    "history": history, "best_val_accuracy": best["val_accuracy"],
                                    "best_epoch": best["epoch"], "best_model": best["state"],
                                    **({"ema_model": cpu_state(ema_net.state_dict())}
                                       if ema_net is not None else {}),
                                    "wall_seconds": wall_before + time.perf_counter() - t0},
                                   ckpt_path)
                plot_training_curves(history, out / "curves.png",
                            f"CBCNN {'float twin ' if twin else ''}{dataset.name}")
            bar.update(task, info=f"epoch {epoch + 1}/{epochs} val {100 * val_acc:.2f} %")
            if log is not None and not (progress and bar.console.is_terminal):
                # a bar cannot redraw in a log file or a pipe: one line per epoch instead
                log(f"{'float twin ' if twin else ''}epoch {epoch + 1}/{epochs}: loss "
                    f"{rec['train_loss']:.4f}, val {100 * val_acc:.2f} % (best "
                    f"{100 * best['val_accuracy']:.2f} % at epoch {best['epoch']}), "
                    f"{time.perf_counter() - epoch_start:.0f} s")
            if on_epoch_end is not None:
                on_epoch_end(epoch, {**rec, "phase": phase})
            if max_seconds is not None:
                now = time.perf_counter()
                epoch_seconds.append(now - epoch_start)
                if now - t0 + max(epoch_seconds) > max_seconds:
                    stopped_early = epoch + 1 < epochs
                    break
    # a resumed run reports the whole run's training time, not only the resumed part;
    # a distilled run's includes the teacher's
    wall = wall_before + time.perf_counter() - t0 + teacher_wall

    net.to(memory_format=torch.contiguous_format)
    final_state = cpu_state(net.state_dict())
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    net.eval()
    val_final = best["val_accuracy"]
    recalibration = None
    if recalibrate_bn and not twin and not stopped_early and best["state"] is not None:
        r0 = time.perf_counter()
        recalibrate_batch_norm(net, x_tr, batch_size, device)
        val_after = _evaluate(net, x_val, y_val, n_classes, 512, device)[1]
        kept = val_after > best["val_accuracy"]  # chosen on validation, never on test
        if not kept:
            net.load_state_dict(best["state"])
            net.eval()
        val_final = val_after if kept else best["val_accuracy"]
        recalibration = {"val_accuracy_before": best["val_accuracy"],
                         "val_accuracy_after": val_after, "kept": bool(kept),
                         "seconds": time.perf_counter() - r0}
        wall += recalibration["seconds"]
        if log is not None:
            log(f"batch-norm statistics re-estimated on {len(x_tr):,} clean training images: "
                f"val {100 * best['val_accuracy']:.2f} % -> {100 * val_after:.2f} % "
                f"({'kept' if kept else 'not kept'})")
    test_acc = None
    # The teacher never looks at the test set, and neither does a run stopped by its time
    # budget: it will be resumed, and a test figure per session would invite choosing on it.
    if len(dataset.x_test) and not twin and not stopped_early:
        test_acc = model.score(dataset.x_test, dataset.y_test)
    result = {"model": model, "history": history, "best_epoch": best["epoch"],
              "best_val_accuracy": best["val_accuracy"], "test_accuracy": test_acc,
              "wall_seconds": wall, "final_state": final_state,
              "epochs_run": len(history), "stopped_by_time_budget": stopped_early,
              "teacher": teacher_info, "bn_recalibration": recalibration,
              "val_accuracy": val_final, "memory_plan_bytes": memory_plan}
    if out is not None:
        if twin:
            from .distill import TEACHER_FILE, save_teacher, split_fingerprint
            tpath = out / TEACHER_FILE
            save_teacher(net, tpath, preprocess=pre.to_dict(), dataset=dataset.name,
                         split=split_fingerprint(dataset.name, tr_idx, val_idx), seed=seed,
                         epochs=epochs, best_epoch=best["epoch"],
                         val_accuracy=best["val_accuracy"], wall_seconds=wall)
            result["teacher_path"] = str(tpath)
        else:
            save_cbcnn(model, out / "model.npz", **dataset.provenance(), seed=seed, epochs=epochs,
                       best_epoch=best["epoch"], test_accuracy=test_acc,
                       test_size=int(len(dataset.y_test)) if test_acc is not None else None,
                       val_accuracy=val_final, bn_recalibration=recalibration)
            result["model_path"] = str(out / "model.npz")
        summary = {k: v for k, v in result.items() if k not in ("model", "final_state")}
        summary.update(run_config)
        from ..outputs import write_json
        write_json(out / "summary.json", summary)
        result.update(checkpoint=str(ckpt_path), curves=str(out / "curves.png"))
    return result


def _plan_training_memory(dataset, model, arch, net_shape, batch_size, train_size,
                          val_fraction, seed, use_teacher) -> None:
    """Refuse, before torch allocates anything, a network and batch that do not fit: the
    weights with their optimizer state, one batch's activations and the images as tensors."""
    from ..memory import cbcnn_training_bytes, human_bytes, require
    if model is not None:
        blocks, dense, n_classes = model.net.blocks, model.net.dense, model.net.n_classes
    else:
        blocks, dense, n_classes = arch[1], arch[2], dataset.n_classes
    tr, va = dataset.split(train_size, val_fraction, seed)
    batch_size = max(min(int(batch_size), len(tr)), 1)  # a batch never holds more than the data
    # validation and the final test score run in batches of up to 512 images
    eval_batch = max(min(512, max(len(va), len(dataset.y_test))), 1)
    plan = cbcnn_training_bytes(net_shape, blocks, dense, n_classes, batch_size,
                                len(tr) + len(va), eval_batch=eval_batch,
                                copies=2 if use_teacher else 1)
    require(plan["total"], f"training a CBCNN with blocks {','.join(map(str, blocks))} and dense "
                           f"{','.join(map(str, dense)) or '-'} (weights and optimizer "
                           f"{human_bytes(plan['weights'])}, a batch of {batch_size} "
                           f"{human_bytes(plan['batch'])}, images {human_bytes(plan['images'])})",
            "use narrower --blocks/--dense, a smaller --batch-size or --train-size, or set "
            "LBCNN_MEMORY_GB if more memory is free than lbcnn sees")
    return plan


register_trainer("cbcnn", train_cbcnn)
