"""Quantization-aware training of the lowbit family (``models.lowbit``).

``QATRun`` is the run: a configuration, a dataset split and a state that advances epoch
by epoch (``advance(to_epoch)`` returns the validation score so far), checkpointed
atomically after every epoch and resumed exactly; ``finish()`` freezes the chosen epoch
into integers, reads the test set once and writes the run folder. ``train_lowbit`` is
the one-call form (the trainer ``LowBitCNN.fit`` and ``lbcnn train --model lowbit`` use).

Recipe: AdamW (weight decay on weights only), a linear warm-up then a per-step cosine
(``cbcnn_recipe.lr_at``), cross-entropy, straight-through rounding (LSQ steps learned),
optional float warm-up epochs, augmentation on the raw image before the exact integer
resize (so the network sees what the device computes), an exponential moving average of
the weights, and distillation from the float twin (``distill``: trained first in the
same run, or a ``teacher`` file). The epoch is chosen on validation accuracy of the
*integer* model (frozen after every epoch on training images); the test set is read once,
at the end, for the chosen epoch.

Determinism: the network from ``torch.manual_seed(seed)``; epoch ``e``'s shuffle, warps,
flips and erasing from ``numpy.random.default_rng([seed, e, ...])`` and its dropout from
``torch.manual_seed`` of (seed, e); the learning rate is a function of (epoch, step). So
a run resumed from its epoch-``e`` checkpoint draws the same batches as one that never
stopped and ends with identical weights.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..models import register_trainer
from ..models.lowbit import LowBitCNN, save_lowbit
from .checkpoint import CHECKPOINT, check_resume_config, cpu_state, load_checkpoint, save_checkpoint

CALIBRATION_IMAGES = 2048
TEACHER_FAMILY = "lowbit_float_twin"

# defaults of lbcnn train --model lowbit (the research runs' recipe; docs/lowbit.md)
DEFAULTS = {"epochs": 15, "batch_size": 256, "lr": 6e-3, "lr_end": None, "weight_decay": 1e-4,
            "warmup": None, "shift": 1.4, "rotate": 5.0, "zoom": 0.05, "flip": False,
            "erase": 0.0, "ema": None, "float_epochs": 0, "label_smoothing": 0.0,
            "distill_weight": 0.7, "temperature": 4.0}


def _check(settings: dict, dataset_name: str) -> None:
    s = settings
    if int(s["epochs"]) < 1:
        raise ConfigError(f"epochs must be >= 1, got {s['epochs']}")
    if int(s["batch_size"]) < 2:
        raise ConfigError(f"batch size must be >= 2 (batch norm), got {s['batch_size']}")
    for key in ("lr", "lr_end"):
        v = s[key]
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"{key.replace('_', ' ')} must be a positive number, got {v!r}")
    if not (math.isfinite(s["weight_decay"]) and s["weight_decay"] >= 0):
        raise ConfigError(f"weight decay must be >= 0, got {s['weight_decay']}")
    if not (0 <= s["warmup"] < s["epochs"]):
        raise ConfigError(f"warmup must be >= 0 epochs and shorter than the run "
                          f"({s['epochs']} epochs), got {s['warmup']}")
    if min(s["shift"], s["rotate"], s["zoom"]) < 0 or s["zoom"] >= 1:
        raise ConfigError("augmentation needs shift >= 0, rotate >= 0 and 0 <= zoom < 1")
    if not 0.0 <= s["erase"] <= 1.0:
        raise ConfigError(f"erase probability must be in [0, 1], got {s['erase']}")
    if s["flip"]:
        from ..data.augment import check_flip_allowed
        check_flip_allowed(dataset_name)
    if s["ema"] is not None and not 0.0 < s["ema"] < 1.0:
        raise ConfigError(f"ema decay must be in (0, 1), got {s['ema']}")
    if not 0 <= int(s["float_epochs"]) < int(s["epochs"]):
        raise ConfigError(f"float epochs must be >= 0 and fewer than the run's "
                          f"{s['epochs']}, got {s['float_epochs']}")
    if not 0.0 <= s["label_smoothing"] < 1.0:
        raise ConfigError(f"label smoothing must be in [0, 1), got {s['label_smoothing']}")
    if s["float_twin"] and (s["teacher"] is not None or s["distill"]):
        raise ConfigError("the float twin is the teacher; it is not distilled itself")
    if s["teacher"] is not None and s["distill"]:
        raise ConfigError("give a teacher file or distill (train the teacher here), not both")
    if s["float_twin"] and (s["init"] != "random" or s["init_from"] is not None):
        raise ConfigError("the float twin starts from random weights (no --init/--init-from)")
    if s["float_twin"] and (s["ema"] is not None or s["float_epochs"]):
        raise ConfigError("--ema and --float-epochs are for the quantized network, not the twin")


class QATRun:
    """One lowbit training run (see the module docstring). ``model`` is the estimator whose
    architecture settings are trained (its ``net_``, ``frozen_`` etc. are set by ``finish``)."""

    def __init__(self, dataset, model: LowBitCNN, *, epochs: int = 15, batch_size: int = 256,
                 lr: float = 6e-3, lr_end: float | None = None, weight_decay: float = 1e-4,
                 warmup: float | None = None, seed: int = 0, val_fraction: float = 0.1,
                 train_size: int | None = None, shift: float = 0.0, rotate: float = 0.0,
                 zoom: float = 0.0, flip: bool = False, erase: float = 0.0,
                 ema: float | None = None, float_epochs: int = 0, label_smoothing: float = 0.0,
                 init: str = "random", init_from=None, teacher=None, distill: bool = False,
                 teacher_epochs: int | None = None, distill_weight: float = 0.7,
                 temperature: float = 4.0, float_twin: bool = False, out_dir=None,
                 resume: bool = False, device=None, log=None, on_epoch_end=None,
                 max_seconds: float | None = None,
                 calibration_images: int = CALIBRATION_IMAGES, read_test: bool = True):
        from ..data import Dataset, load_dataset
        from ..data.resize import resize_images

        if isinstance(dataset, str):
            dataset = load_dataset(dataset)
        if not isinstance(dataset, Dataset):
            raise ConfigError("dataset must be a Dataset or a dataset name")
        lr_end = float(lr) / 1000.0 if lr_end is None else lr_end
        if warmup is None:   # one epoch of warm-up, when the run has more than one
            warmup = 1.0 if int(epochs) > 1 else 0.0
        self.settings = s = {
            "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
            "lr_end": float(lr_end), "weight_decay": float(weight_decay),
            "warmup": float(warmup), "seed": int(seed), "val_fraction": float(val_fraction),
            "train_size": train_size, "shift": float(shift), "rotate": float(rotate),
            "zoom": float(zoom), "flip": bool(flip), "erase": float(erase),
            "ema": None if ema is None else float(ema), "float_epochs": int(float_epochs),
            "label_smoothing": float(label_smoothing), "init": init,
            "init_from": None if init_from is None else str(init_from),
            "teacher": None if teacher is None else str(teacher), "distill": bool(distill),
            "teacher_epochs": int(teacher_epochs or epochs) if distill else None,
            "distill_weight": float(distill_weight), "temperature": float(temperature),
            "float_twin": bool(float_twin), "dataset": dataset.name,
            "calibration_images": int(calibration_images)}
        _check(s, dataset.name)
        if s["teacher"] is not None or s["distill"]:
            from .distill import check_distill_settings
            check_distill_settings(s["distill_weight"], s["temperature"])
        if resume and out_dir is None:
            raise ConfigError("resume needs out_dir (where the checkpoint lives)")
        self.dataset, self.model, self.log = dataset, model, log
        self.on_epoch_end, self.max_seconds = on_epoch_end, max_seconds
        # not a training setting: a run may be resumed with or without its test read
        self.read_test = bool(read_test)
        self.device = torch.device(device) if device else torch.device("cpu")
        self.out = Path(out_dir) if out_dir is not None else None
        self.ckpt_path = self.out / CHECKPOINT if self.out is not None else None
        h, w, c = dataset.input_shape
        self.arch = model.architecture(c, dataset.n_classes)
        self.input_shape = (h, w, c)
        self.run_config = {"arch": self.arch, "dropout": float(model.dropout),
                           **{k: v for k, v in s.items()},
                           "data_fingerprint": dataset.fingerprint()}
        if resume and self.ckpt_path.exists():  # a changed setting is refused before any work
            check_resume_config(load_checkpoint(self.ckpt_path)["config"], self.run_config,
                                self.ckpt_path, defaults={})

        self.tr_idx, self.val_idx = dataset.split(train_size, val_fraction, seed)
        if len(self.tr_idx) < 2 or len(self.val_idx) < 1:
            raise ConfigError(f"{len(self.tr_idx)} training and {len(self.val_idx)} validation "
                              f"images: batch norm needs at least 2 to train on and 1 to "
                              f"validate; raise --train-size")
        size = self.arch["size"]
        from ..memory import require
        n_all = len(self.tr_idx) + len(self.val_idx)
        require(n_all * (h * w * c + 5 * size * size * c), f"{n_all:,} training and validation "
                f"images (raw, resized, float)", "use a smaller --train-size or --size")
        self.x_raw = torch.from_numpy(np.ascontiguousarray(
            dataset.x_train[self.tr_idx])).permute(0, 3, 1, 2)          # uint8 NCHW, raw size
        x_tr_u8 = torch.from_numpy(resize_images(dataset.x_train[self.tr_idx], size)) \
            .permute(0, 3, 1, 2).contiguous()
        self.x_tr = x_tr_u8.float().div_(255.0)
        self.y_tr = torch.as_tensor(dataset.y_train[self.tr_idx])
        self.x_val_u8 = dataset.x_train[self.val_idx]
        self.x_val = torch.from_numpy(resize_images(self.x_val_u8, size)) \
            .permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        self.y_val = np.asarray(dataset.y_train[self.val_idx])
        ncal = min(s["calibration_images"], len(self.tr_idx))
        cal = np.sort(np.random.default_rng([s["seed"], 11]).permutation(len(self.tr_idx))[:ncal])
        self.x_cal = x_tr_u8[cal].float()     # pixels, exactly

        self.teacher_net, self.teacher_info, self.teacher_wall = self._teacher(resume)
        torch.manual_seed(s["seed"])
        self.net = model.build_net(c, dataset.n_classes)
        if s["float_twin"]:
            self.net.quantized, self.net.float_twin = False, True
        self.history, self.epoch, self.wall_before = [], 0, 0.0
        self.best = {"val_accuracy": -1.0, "epoch": -1, "state": None}
        self.init_info = None
        self.ema_net = None
        ck = None
        fresh = not (resume and self.ckpt_path.exists())
        if fresh:   # on the CPU, where the training images are
            from .qat_init import initialize
            self.init_info = initialize(self.net, s["init"], s["init_from"], s["seed"],
                                        self.x_tr, np.asarray(self.y_tr), log)
        self.net.to(self.device)
        decay, rest = self.net.weight_decay_groups()
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": s["weight_decay"]},
                                      {"params": rest, "weight_decay": 0.0}], lr=s["lr"])
        if not fresh:
            ck = load_checkpoint(self.ckpt_path)
            check_resume_config(ck["config"], self.run_config, self.ckpt_path, exact=True,
                                defaults={})
            try:
                self.net.load_state_dict(ck["model"])
                self.opt.load_state_dict(ck["optimizer"])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else \
                    type(exc).__name__
                raise DataError(f"checkpoint {self.ckpt_path} does not fit this network "
                                f"({first})") from None
            self.history = list(ck["history"])
            self.epoch = int(ck["epoch"]) + 1
            self.wall_before = float(ck.get("wall_seconds", 0.0))
            self.best = {"val_accuracy": ck["best_val_accuracy"], "epoch": ck["best_epoch"],
                         "state": ck["best_model"]}
            self.init_info = ck.get("init")
        if s["ema"] is not None:
            self.ema_net = copy.deepcopy(self.net)
            if ck is not None:
                if "ema_model" not in ck:
                    raise DataError(f"checkpoint {self.ckpt_path} holds no weight average")
                self.ema_net.load_state_dict(ck["ema_model"])
            for p in self.ema_net.parameters():
                p.requires_grad_(False)
        self.stopped_early = False
        self._epoch_seconds: list[float] = []
        if log is not None:
            log(f"{dataset.name}: {len(self.tr_idx):,} training + {len(self.val_idx):,} "
                f"validation images, {len(dataset.y_test):,} test images, {dataset.n_classes} "
                f"classes; input resized to {size}x{size}"
                + (" (float twin)" if s["float_twin"] else ""))

    # -- the teacher -----------------------------------------------------------------------
    def _teacher(self, resume: bool):
        s = self.settings
        if s["teacher"] is None and not s["distill"]:
            return None, None, 0.0
        from .distill import TEACHER_FILE, split_fingerprint, teacher_fingerprint

        split = split_fingerprint(self.dataset.name, self.tr_idx, self.val_idx)
        if s["distill"]:
            t_out = self.out / "teacher" if self.out is not None else None
            if t_out is not None and not resume:
                for stale in (t_out / TEACHER_FILE, t_out / CHECKPOINT, self.ckpt_path):
                    stale.unlink(missing_ok=True)
            keep = ("batch_size", "lr", "lr_end", "weight_decay", "warmup", "seed",
                    "val_fraction", "train_size", "shift", "rotate", "zoom", "flip", "erase",
                    "label_smoothing", "calibration_images")
            res = train_lowbit(self.dataset, model=self.model, epochs=s["teacher_epochs"],
                               float_twin=True, out_dir=t_out, device=self.device,
                               resume=bool(resume and t_out is not None
                                           and (t_out / CHECKPOINT).exists()),
                               log=self.log, max_seconds=self.max_seconds,
                               on_epoch_end=None if self.on_epoch_end is None else
                               lambda e, r: self.on_epoch_end(e, {**r, "phase": "teacher"}),
                               **{k: s[k] for k in keep})
            net = res["net"]
            info = {"val_accuracy": res["best_val_accuracy"], "best_epoch": res["best_epoch"],
                    "epochs": s["teacher_epochs"]}
            wall = float(res["wall_seconds"])
        else:
            net, cfg = load_teacher(s["teacher"], self.arch, split, self.model.dropout)
            info = {"path": s["teacher"], "val_accuracy": cfg.get("val_accuracy"),
                    "best_epoch": cfg.get("best_epoch"), "epochs": cfg.get("epochs")}
            t = cfg.get("wall_seconds")
            wall = float(t) if isinstance(t, (int, float)) and math.isfinite(t) and t >= 0 else 0.0
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        info["fingerprint"] = teacher_fingerprint(net)
        info["wall_seconds"] = wall
        if self.max_seconds is not None:
            self.max_seconds = max(float(self.max_seconds) - wall, 0.0)
        self.run_config["teacher_fingerprint"] = info["fingerprint"]
        return net.to(self.device), info, wall

    # -- one epoch ---------------------------------------------------------------------------
    def _batches(self, epoch: int):
        """(index, input) batches of epoch ``epoch``: augmented raw images, rounded to
        pixels, integer-resized, / 255."""
        from ..data.augment import (affine_params, erase_batch, erase_params, flip_batch,
                                    flip_params, warp_batch)
        from ..data.resize import resize_torch

        s, n, bs = self.settings, len(self.x_raw), self.settings["batch_size"]
        perm = torch.from_numpy(np.random.default_rng([s["seed"], epoch]).permutation(n))
        warp = bool(s["shift"] or s["rotate"] or s["zoom"])
        h, w = self.x_raw.shape[2:]
        theta = (affine_params(n, h, w, s["shift"], s["rotate"], s["zoom"],
                               np.random.default_rng([s["seed"], epoch, 1])) if warp else None)
        flips = flip_params(n, np.random.default_rng([s["seed"], epoch, 2])) if s["flip"] else None
        boxes = (erase_params(n, h, w, s["erase"], np.random.default_rng([s["seed"], epoch, 3]))
                 if s["erase"] else None)
        plain = not (warp or s["flip"] or s["erase"])
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            if len(idx) < 2:          # batch norm cannot train on one image
                continue
            if plain:
                yield idx, self.x_tr[idx].to(self.device)
                continue
            xb = self.x_raw[idx].float()
            if warp:
                xb = warp_batch(xb, theta[idx.numpy()])
            if flips is not None:
                xb = flip_batch(xb, flips[idx.numpy()])
            if boxes is not None:
                xb = erase_batch(xb, boxes[idx.numpy()])
            xb = resize_torch(torch.clamp(torch.round(xb), 0, 255), self.arch["size"])
            yield idx, (xb / 255.0).to(self.device)

    def _train_epoch(self, epoch: int) -> dict:
        from .cbcnn_recipe import lr_at
        from .cbcnn import update_weight_average

        s, net = self.settings, self.net
        if not s["float_twin"]:
            net.quantized = epoch >= s["float_epochs"]
            if self.ema_net is not None:
                self.ema_net.quantized = net.quantized
        torch.manual_seed(s["seed"] * 100_003 + epoch)   # dropout draws, resumable
        steps = math.ceil(len(self.x_raw) / s["batch_size"])
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (idx, xb) in enumerate(self._batches(epoch)):
            for g in self.opt.param_groups:
                g["lr"] = lr_at(epoch, s["epochs"], s["lr"], s["lr_end"], "cosine",
                                s["warmup"] or None, step, steps)
            yb = self.y_tr[idx].to(self.device)
            out = net(xb)
            loss = F.cross_entropy(out, yb, label_smoothing=s["label_smoothing"])
            if self.teacher_net is not None:
                from .distill import kd_loss
                with torch.no_grad():
                    tb = self.teacher_net(xb)
                loss = ((1.0 - s["distill_weight"]) * loss
                        + s["distill_weight"] * kd_loss(out, tb, s["temperature"]))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.ema_net is not None:
                update_weight_average(self.ema_net, net, s["ema"])
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
        return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}

    @torch.no_grad()
    def _validate(self, net) -> dict:
        """Validation loss and accuracy of the fake-quantized (or float) forward, and, for a
        quantized net, accuracy of its frozen integers (what the device would run)."""
        net.eval()
        outs = torch.cat([net(self.x_val[i:i + 1000].to(self.device)).cpu()
                          for i in range(0, len(self.x_val), 1000)])
        y = torch.as_tensor(self.y_val)
        rec = {"val_loss": float(F.cross_entropy(outs, y)),
               "fake_quant_val_accuracy": float((outs.argmax(1) == y).float().mean())}
        if not net.quantized:
            rec["val_accuracy"] = rec["fake_quant_val_accuracy"]
            rec["integer_val_accuracy"] = None
            return rec
        from ..models.lowbit_int import freeze, integer_logits
        fz = freeze(copy.deepcopy(net).cpu(), self.x_cal, self.input_shape)
        pred = integer_logits(fz, self.x_val_u8).argmax(1)
        rec["integer_val_accuracy"] = float((pred == self.y_val).mean())
        rec["integer_fake_quant_agreement"] = float((pred == outs.argmax(1).numpy()).mean())
        rec["val_accuracy"] = rec["integer_val_accuracy"]
        return rec

    def advance(self, to_epoch: int | None = None) -> float:
        """Train up to epoch ``to_epoch`` (default: the run's last), one checkpoint an epoch;
        returns the best validation accuracy so far (of the integer model; the float
        twin's own). Stops early, setting ``stopped_early``, before an epoch that would
        overrun ``max_seconds``."""
        s = self.settings
        to_epoch = s["epochs"] if to_epoch is None else min(int(to_epoch), s["epochs"])
        t0 = time.perf_counter()
        while self.epoch < to_epoch:
            e0 = time.perf_counter()
            epoch = self.epoch
            rec = {"epoch": epoch + 1, **self._train_epoch(epoch)}
            chosen = self.ema_net if self.ema_net is not None else self.net
            if self.ema_net is not None:
                raw = self._validate(self.net)
                rec["raw_val_accuracy"] = raw["val_accuracy"]
            rec.update(self._validate(chosen))
            rec["quantized"] = bool(chosen.quantized)
            rec["seconds"] = self.wall_before + time.perf_counter() - t0
            self.history.append(rec)
            if (chosen.quantized or s["float_twin"]) and rec["val_accuracy"] > self.best["val_accuracy"]:
                self.best = {"val_accuracy": rec["val_accuracy"], "epoch": epoch + 1,
                             "state": cpu_state(chosen.state_dict())}
            self.epoch = epoch + 1
            if self.ckpt_path is not None:
                self._save_checkpoint(self.wall_before + time.perf_counter() - t0)
            if self.log is not None:
                extra = (f" (fake-quant {100 * rec['fake_quant_val_accuracy']:.2f} %)"
                         if rec.get("integer_val_accuracy") is not None else "")
                self.log(f"{'float twin ' if s['float_twin'] else ''}epoch {epoch + 1}/"
                         f"{s['epochs']}: loss {rec['train_loss']:.4f}, val "
                         f"{100 * rec['val_accuracy']:.2f} %{extra}, best "
                         f"{100 * max(self.best['val_accuracy'], 0):.2f} % at epoch "
                         f"{self.best['epoch']}, {time.perf_counter() - e0:.0f} s")
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, {**rec, "phase": "teacher" if s["float_twin"]
                                          else "student"})
            self._epoch_seconds.append(time.perf_counter() - e0)
            if self.max_seconds is not None and self.epoch < s["epochs"]:
                spent = self.wall_before + time.perf_counter() - t0
                if spent + max(self._epoch_seconds) > self.max_seconds:
                    self.stopped_early = True
                    break
        self.wall_before += time.perf_counter() - t0
        return self.best["val_accuracy"]

    def _save_checkpoint(self, wall: float) -> None:
        save_checkpoint({"config": self.run_config, "epoch": self.epoch - 1,
                         "model": cpu_state(self.net.state_dict()),
                         "optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                         "history": self.history, "best_val_accuracy": self.best["val_accuracy"],
                         "best_epoch": self.best["epoch"], "best_model": self.best["state"],
                         "init": self.init_info,
                         **({"ema_model": cpu_state(self.ema_net.state_dict())}
                            if self.ema_net is not None else {}),
                         "wall_seconds": wall}, self.ckpt_path)

    # -- the end -----------------------------------------------------------------------------
    def finish(self) -> dict:
        """Freeze the chosen epoch, read the test set once (unless stopped by the time
        budget), write the run folder; the result dict (see ``train_lowbit``)."""
        from ..models.lowbit_int import freeze

        s, model = self.settings, self.model
        final_state = cpu_state(self.net.state_dict())
        net = self.ema_net if self.ema_net is not None else self.net
        if self.best["state"] is None:
            raise ConfigError("no quantized epoch was trained (all were float warm-up); "
                              "train longer or lower --float-epochs")
        net.load_state_dict(self.best["state"])
        net.eval()
        net = net.cpu()
        wall = self.wall_before + self.teacher_wall
        result = {"history": self.history, "best_epoch": self.best["epoch"],
                  "best_val_accuracy": self.best["val_accuracy"], "test_accuracy": None,
                  "wall_seconds": wall, "epochs_run": len(self.history),
                  "stopped_by_time_budget": self.stopped_early, "teacher": self.teacher_info,
                  "init": self.init_info, "final_state": final_state, "net": net,
                  "train_size": int(len(self.tr_idx) + len(self.val_idx)),
                  "fit_size": int(len(self.tr_idx)), "val_size": int(len(self.val_idx))}
        if s["float_twin"]:
            if self.out is not None:
                result["teacher_path"] = str(save_twin(net, self.out / "teacher.npz", self))
            self._write_summary(result)
            return result
        model.net_ = net
        model.frozen_ = freeze(net, self.x_cal, self.input_shape)
        model.classes_ = np.arange(self.dataset.n_classes)
        model.input_shape_ = tuple(self.input_shape)
        model.n_features_in_ = int(np.prod(self.input_shape))
        model.history_ = self.history
        chosen = next(h for h in self.history if h["epoch"] == self.best["epoch"])
        result["fake_quant_val_accuracy"] = chosen["fake_quant_val_accuracy"]
        result["integer_fake_quant_agreement"] = chosen.get("integer_fake_quant_agreement")
        result["model"] = model
        # the test set: read once, for the chosen epoch; not by a run its budget stopped, nor
        # with read_test=False (candidates compared on validation; lbcnn evaluate reads it)
        result["test_read"] = bool(self.read_test and len(self.dataset.x_test)
                                   and not self.stopped_early)
        if result["test_read"]:
            result["test_accuracy"] = float(model.score(self.dataset.x_test, self.dataset.y_test))
        if self.out is not None:
            record = self.dataset.provenance()
            save_lowbit(model, self.out / "model.npz", **record, seed=s["seed"],
                        epochs=s["epochs"], best_epoch=self.best["epoch"],
                        val_fraction=s["val_fraction"], train_size=s["train_size"],
                        val_accuracy=self.best["val_accuracy"],
                        test_accuracy=result["test_accuracy"],
                        test_size=(int(len(self.dataset.y_test))
                                   if result["test_accuracy"] is not None else None),
                        input_resize={"from": list(self.input_shape[:2]),
                                      "to": [self.arch["size"]] * 2,
                                      "method": "exact integer area, 8-bit fixed-point weights"},
                        training={k: v for k, v in s.items() if k != "dataset"})
            result["model_path"] = str(self.out / "model.npz")
        self._write_summary(result)
        return result

    def _write_summary(self, result: dict) -> None:
        if self.out is None:
            return
        from ..outputs import write_json
        from ..report import plot_training_curves

        keep = {k: v for k, v in result.items() if k not in ("model", "final_state", "net")}
        write_json(self.out / "summary.json", {**keep, **self.run_config})
        write_json(self.out / "history.json", self.history)
        plot_training_curves(self.history, self.out / "curves.png",
                             f"lowbit {'float twin ' if self.settings['float_twin'] else ''}"
                             f"{self.dataset.name}", loss_name="cross-entropy")
        result["checkpoint"] = str(self.ckpt_path)


def train_lowbit(dataset, *, model: LowBitCNN | None = None, progress: bool = False,
                 **settings) -> dict:
    """Train a lowbit model on ``dataset`` (a ``Dataset`` or a registry name): ``QATRun``
    with ``settings``, advanced to its last epoch, then finished.

    Returns ``model`` (fitted: ``frozen_`` the integers), ``history``, ``best_epoch``,
    ``best_val_accuracy`` (integer model), ``fake_quant_val_accuracy``,
    ``test_accuracy`` (None without a test set, with ``read_test=False``, or when the time
    budget stopped the run: resume it), ``test_read``, ``wall_seconds``, ``final_state``,
    and the run folder's paths with
    ``out_dir``. A ``float_twin`` run returns its float ``net`` and writes ``teacher.npz``.
    """
    del progress   # one line per epoch through ``log``
    model = model if model is not None else LowBitCNN()
    run = QATRun(dataset, model, **settings)
    run.advance()
    return run.finish()


# -- the float twin's file (a teacher) ------------------------------------------------------
def save_twin(net, path: Path, run: QATRun) -> Path:
    from .distill import save_teacher, split_fingerprint

    return save_teacher(net, path, preprocess={"size": run.arch["size"]},
                        dataset=run.dataset.name,
                        split=split_fingerprint(run.dataset.name, run.tr_idx, run.val_idx),
                        family=TEACHER_FAMILY, seed=run.settings["seed"],
                        epochs=run.settings["epochs"], best_epoch=run.best["epoch"],
                        val_accuracy=run.best["val_accuracy"],
                        wall_seconds=run.wall_before)


def load_teacher(path, arch: dict, split: str, dropout: float):
    """A lowbit float twin written by a ``float_twin`` run, checked against the student."""
    from ..models.lowbit import LowBitNet
    from .distill import read_teacher_file

    config, arrays = read_teacher_file(path, TEACHER_FAMILY)
    cfg = config.get("net")
    twin_arch = {k: v for k, v in (cfg or {}).items() if k != "dropout"}
    if twin_arch != arch:
        raise ConfigError(f"--teacher {path} is the twin of another architecture; train it "
                          f"with the same lowbit settings (--float-twin)")
    if config.get("split") != split:
        raise ConfigError(f"--teacher {path} was trained on another dataset, --train-size, "
                          f"--val-fraction or --seed: its training images may include this "
                          f"run's validation images; train the teacher with the same ones")
    net = LowBitNet(arch, dropout)
    net.quantized, net.float_twin = False, True
    sd = net.state_dict()
    if set(sd) != set(arrays) or any(tuple(arrays[k].shape) != tuple(v.shape) for k, v in sd.items()):
        raise DataError(f"--teacher {path}: arrays do not match its network")
    net.load_state_dict({k: torch.as_tensor(np.asarray(arrays[k])).to(sd[k].dtype) for k in sd})
    return net, config


register_trainer("lowbit", train_lowbit)
