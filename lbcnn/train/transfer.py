"""Transfer learning from a frozen binary backbone (issue 6, part 2).

A trained CBCNN or LB-CNN is loaded, frozen (``requires_grad=False``, eval
mode, BN running statistics never updated: features are computed under
``torch.no_grad`` in eval mode) and used as a fixed feature extractor through
its timm-style ``forward_features``. Only a NEW last layer is trained for the
target's classes:

* ``head="float"``: a float ``nn.Linear`` (with bias), softmax cross-entropy, Adam.
* ``head="binary"``: ``BinaryLinear`` (latent float weights, sign in the
  forward pass, straight-through estimator, latent weights clipped to [-1, 1]
  after every step) followed by ``BatchNorm1d`` and trained with the squared
  hinge loss, as CBCNN's own output layer. Its outputs come from +-1 weights
  only: ``BN(F.linear(f, sign(W)))``.

Inputs to the head: a CBCNN backbone gives +-1 features (so the binary head is
XNOR-popcount-able); an LB-CNN backbone gives float features, which are
standardized with the mean/std of the labelled training budget for both heads
(the binary head then has binary weights and real-valued inputs).

Data: ``per_class`` images per class are drawn (seeded, stratified) from the
target's training pool; a validation split (``val_fraction`` of the budget,
stratified) is carved from that budget for epoch selection when the budget
has at least 2 images per class (otherwise the last epoch is kept and the
result says so). The test set is read once, at the end.

Images whose size or channels differ from the backbone's input are converted
(grayscale by BT.601 luma, gray -> RGB by replication, resizing by Pillow
bilinear on uint8) and every conversion is reported in ``notes``. With
``resize="none"`` / ``channels="none"`` a mismatch is a ``ConfigError``.

``compare_scratch=True`` also trains the same architecture from scratch on the
same labelled images (same train/validation split) and with the transfer
run's wall-clock as its time budget (at least one epoch): a CBCNN with the
backbone's blocks/dense/preprocessing, trained with squared hinge and Adam
(constant ``scratch_lr``); for an LB-CNN backbone, a fresh LB-CNN of the same
filters (new random kernels) with its closed-form ELM head.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..binary.layers import BinaryLinear, clip_all_latent_
from ..binary.quantizers import sign_pm1
from ..errors import ConfigError, DataError

HEADS = ("float", "binary")


# -- conversion ---------------------------------------------------------------
def _as_nhwc_uint8(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"images must have shape (n, H, W) or (n, H, W, C), got {x.shape}")
    if x.dtype != np.uint8:
        raise DataError(f"transfer expects uint8 images, got dtype {x.dtype}")
    return x


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, H, W, C) uint8 -> (n, h, w, C) uint8 with Pillow's bilinear filter, per channel."""
    from PIL import Image

    x = _as_nhwc_uint8(x)
    h, w = int(size[0]), int(size[1])
    out = np.empty((len(x), h, w, x.shape[3]), dtype=np.uint8)
    for i in range(len(x)):
        for c in range(x.shape[3]):
            out[i, :, :, c] = np.asarray(Image.fromarray(x[i, :, :, c]).resize(
                (w, h), Image.Resampling.BILINEAR))
    return out


def plan_conversion(src_shape, dst_shape, accepted_channels, resize: str = "auto",
                    channels: str = "auto", what: str = "target") -> dict:
    """How to turn ``src_shape`` (H, W, C) images into the backbone's input.

    ``accepted_channels``: raw channel counts the backbone takes (a CBCNN whose
    preprocessing keeps the Y channel takes 1 or 3). Returns ``{"gray", "rgb",
    "resize", "notes"}``; raises ``ConfigError`` when a needed conversion was refused.
    """
    if resize not in ("auto", "none"):
        raise ConfigError(f"resize must be 'auto' or 'none', got {resize!r}")
    if channels not in ("auto", "gray", "none"):
        raise ConfigError(f"channels must be 'auto', 'gray' or 'none', got {channels!r}")
    h, w, c = (int(s) for s in src_shape)
    dh, dw = int(dst_shape[0]), int(dst_shape[1])
    plan = {"gray": False, "rgb": False, "resize": None, "notes": []}
    if channels == "gray" and c == 3:
        if 1 not in accepted_channels:
            raise ConfigError(f"--to-gray: the backbone takes {sorted(accepted_channels)}-channel "
                              "images, not grayscale")
        plan["gray"] = True
    elif c not in accepted_channels:
        need = sorted(accepted_channels)
        if channels == "none":
            raise ConfigError(f"channel mismatch: {what} images have {c} channel(s) but the backbone "
                              f"takes {need}; conversion was refused (--no-convert); allow it or "
                              "pick a matching backbone")
        if c == 3 and 1 in accepted_channels:
            plan["gray"] = True
        elif c == 1 and 3 in accepted_channels:
            plan["rgb"] = True
        else:
            raise ConfigError(f"channel mismatch: {what} images have {c} channels, the backbone "
                              f"takes {need}; no conversion between them")
    if plan["gray"]:
        plan["notes"].append(f"converted {what} RGB images to grayscale (BT.601 luma "
                             "0.299 R + 0.587 G + 0.114 B)")
    if plan["rgb"]:
        plan["notes"].append(f"replicated {what} grayscale images into 3 channels")
    if (h, w) != (dh, dw):
        if resize == "none":
            raise ConfigError(f"size mismatch: {what} images are {h}x{w} but the backbone takes "
                              f"{dh}x{dw}; resizing was refused (--resize none / --no-convert)")
        plan["resize"] = (dh, dw)
        plan["notes"].append(f"resized {what} images from {h}x{w} to {dh}x{dw} "
                             "(Pillow bilinear on uint8)")
    return plan


def apply_conversion(x, plan: dict) -> np.ndarray:
    from ..preprocess import rgb_to_y

    x = _as_nhwc_uint8(x)
    if plan["gray"]:
        x = rgb_to_y(x)
    if plan["rgb"]:
        x = np.repeat(x, 3, axis=3)
    if plan["resize"] is not None:
        x = resize_bilinear(x, plan["resize"])
    return x


# -- backbones ----------------------------------------------------------------
def _family(model) -> str:
    from ..models.cbcnn import CBCNN
    from ..models.lbcnn import LBCNN

    if isinstance(model, CBCNN):
        return "cbcnn"
    if isinstance(model, LBCNN):
        return "lbcnn"
    raise ConfigError(f"transfer needs a CBCNN or LB-CNN backbone, got {type(model).__name__}")


def backbone_input(model) -> tuple[tuple[int, int, int], set]:
    """((H, W, C) the network sees, raw channel counts accepted)."""
    if _family(model) == "cbcnn":
        h, w, c = model.net.input_shape
        acc = {1, 3} if (model.preprocess.y_channel and c == 1) else {c}
        return (h, w, c), acc
    h, w, c = model.body_.input_shape
    return (h, w, c), {c}


def freeze(model):
    """Freeze a backbone in place: eval mode, no gradients (BN statistics stay put)."""
    if _family(model) == "cbcnn":
        model.net.eval()
        for p in model.net.parameters():
            p.requires_grad_(False)
    return model


def backbone_state(model) -> dict[str, np.ndarray]:
    """Copies of every parameter, BN buffer and kernel: for bitwise before/after checks."""
    if _family(model) == "cbcnn":
        return {k: v.detach().cpu().numpy().copy() for k, v in model.net.state_dict().items()}
    from ..models.lbcnn import body_to_arrays
    return {k: v.copy() for k, v in body_to_arrays(model.body_).items()}


@torch.no_grad()
def _cbcnn_features(model, x: np.ndarray, layer: str, batch_size: int = 512) -> np.ndarray:
    net = model.net
    net.eval()
    outs = []
    for i in range(0, len(x), batch_size):
        f = net.forward_features(model.to_tensor(x[i:i + batch_size]))
        if layer == "pre_logits":
            f = net.head_hidden(f)
        outs.append(f.cpu().numpy())
    d = net.num_features if layer == "features" else (net.dense[-1] if net.dense else net.num_features)
    return np.concatenate(outs) if outs else np.zeros((0, d), np.float32)


# -- heads --------------------------------------------------------------------
class BinaryHead(nn.Module):
    """BinaryLinear (+-1 weights, STE, clipped latent) -> BatchNorm1d."""

    def __init__(self, n_features: int, n_classes: int, binary_input: bool):
        super().__init__()
        self.linear = BinaryLinear(n_features, n_classes,
                                   input_quantizer="ste_sign" if binary_input else None)
        self.bn = nn.BatchNorm1d(n_classes)

    def forward(self, f):
        return self.bn(self.linear(f))


def make_head(kind: str, n_features: int, n_classes: int, binary_input: bool) -> nn.Module:
    if kind not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {kind!r}")
    if int(n_classes) < 2:
        raise ConfigError(f"num_classes must be >= 2, got {n_classes}")
    if kind == "float":
        return nn.Linear(n_features, int(n_classes))
    return BinaryHead(n_features, int(n_classes), binary_input)


def _loss(kind, out, y):
    if kind == "float":
        return F.cross_entropy(out, y)
    from .losses import squared_hinge
    return squared_hinge(out, y, out.shape[1])


@torch.no_grad()
def _accuracy(module, x, y, batch_size=1024) -> float:
    module.eval()
    if len(x) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((module(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


def fit_loop(module, loss_kind: str, x_tr, y_tr, x_val, y_val, *, epochs: int, lr: float,
             batch_size: int, seed: int, max_seconds: float | None = None) -> dict:
    """Adam on (x, y) tensors; keeps the best-validation state (last epoch without
    validation). ``max_seconds`` stops before an epoch that would overrun (judged
    by the slowest epoch so far); at least one epoch always runs."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    n = len(x_tr)
    history, epoch_times = [], []
    best = {"val": -1.0, "epoch": 0, "state": None}
    t0 = time.perf_counter()
    for epoch in range(int(epochs)):
        te = time.perf_counter()
        module.train()
        perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
        tot, seen = 0.0, 0
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            if len(idx) < 2 and seen:  # BatchNorm cannot train on one sample
                continue
            out = module(x_tr[idx])
            loss = _loss(loss_kind, out, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            clip_all_latent_(module)
            tot += loss.item() * len(idx)
            seen += len(idx)
        rec = {"epoch": epoch + 1, "train_loss": tot / max(seen, 1)}
        if len(x_val):
            rec["val_accuracy"] = _accuracy(module, x_val, y_val)
            if rec["val_accuracy"] > best["val"]:
                best = {"val": rec["val_accuracy"], "epoch": epoch + 1,
                        "state": {k: v.detach().clone() for k, v in module.state_dict().items()}}
        history.append(rec)
        epoch_times.append(time.perf_counter() - te)
        if max_seconds is not None and time.perf_counter() - t0 + max(epoch_times) > max_seconds:
            break
    if best["state"] is not None:
        module.load_state_dict(best["state"])
    module.eval()
    return {"history": history, "epochs_run": len(history),
            "best_epoch": best["epoch"] if best["state"] is not None else len(history),
            "best_val_accuracy": best["val"] if best["state"] is not None else None,
            "seconds": time.perf_counter() - t0}


# -- the transfer model ------------------------------------------------------
class TransferModel:
    """A frozen backbone plus a trained last layer; uint8 images in, labels out.

    timm-style: ``forward_features(X)`` (converted images -> backbone features),
    ``forward_head(F)``, ``reset_classifier(num_classes)``.
    """

    def __init__(self, backbone, head_kind: str, n_classes: int, plan: dict | None = None,
                 layer: str = "features"):
        self.backbone = freeze(backbone)
        self.family = _family(backbone)
        if layer not in ("features", "pre_logits"):
            raise ConfigError(f"layer must be 'features' or 'pre_logits', got {layer!r}")
        if layer == "pre_logits" and self.family != "cbcnn":
            raise ConfigError("layer='pre_logits' needs a CBCNN backbone")
        self.layer = layer
        self.head_kind = head_kind
        self.plan = plan
        self.mean_ = self.std_ = None
        shape, _ = backbone_input(backbone)
        self.input_shape = shape
        self.num_features = self._n_features()
        self.head = make_head(head_kind, self.num_features, n_classes, self.family == "cbcnn")

    def _n_features(self) -> int:
        if self.family == "lbcnn":
            return int(self.backbone.body_.n_features)
        net = self.backbone.net
        if self.layer == "pre_logits" and net.dense:
            return int(net.dense[-1])
        return int(net.num_features)

    @property
    def n_classes(self) -> int:
        return int(self.head.bn.num_features if self.head_kind == "binary" else self.head.out_features)

    def convert(self, X) -> np.ndarray:
        X = _as_nhwc_uint8(X)
        if self.plan is None:
            _, acc = backbone_input(self.backbone)
            self.plan = plan_conversion(X.shape[1:], self.input_shape, acc)
        return apply_conversion(X, self.plan)

    def raw_features(self, X) -> np.ndarray:
        """Backbone features of (converted) images, before any standardization."""
        X = self.convert(X)
        if self.family == "cbcnn":
            return _cbcnn_features(self.backbone, X, self.layer)
        return self.backbone.forward_features(X)

    def forward_features(self, X) -> np.ndarray:
        """Images -> the features the head sees (standardized for LB-CNN)."""
        f = self.raw_features(X)
        if self.mean_ is not None:
            f = (f - self.mean_) / self.std_
        return f.astype(np.float32, copy=False)

    @torch.no_grad()
    def forward_head(self, f) -> torch.Tensor:
        self.head.eval()
        return self.head(torch.as_tensor(np.asarray(f, dtype=np.float32)))

    def reset_classifier(self, num_classes: int):
        self.head = make_head(self.head_kind, self.num_features, num_classes, self.family == "cbcnn")
        return self

    def decision_function(self, X) -> np.ndarray:
        return self.forward_head(self.forward_features(X)).numpy()

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X).argmax(1)

    def score(self, X, y) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def head_weights_pm1(self) -> np.ndarray:
        """The binary head's inference weights (+-1 int8)."""
        if self.head_kind != "binary":
            raise ConfigError("only the binary head has +-1 weights")
        return sign_pm1(self.head.linear.weight.detach()).numpy().astype(np.int8)


# -- data budget ----------------------------------------------------------------
def per_class_indices(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of every class present in ``y`` (seeded, no replacement)."""
    per_class = int(per_class)
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng([seed, 6])
    classes, counts = np.unique(y, return_counts=True)
    short = [(int(c), int(n)) for c, n in zip(classes, counts) if n < per_class]
    if short:
        c, n = short[0]
        raise ConfigError(f"per_class={per_class} but class {c} has only {n} training images "
                          f"({len(short)} class(es) too small); use at most {int(counts.min())}")
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                   for c in classes]))


def _budget_split(y_budget: np.ndarray, per_class: int, val_fraction: float, seed: int,
                  groups: np.ndarray | None = None):
    """(fit, val) indices into the budget; ``groups`` (GTSRB tracks) are held out whole."""
    from ..data.splits import train_val_split

    if per_class < 2:
        return np.arange(len(y_budget)), np.empty(0, dtype=np.int64)
    return train_val_split(y_budget, None, val_fraction, seed, groups)


# -- the API --------------------------------------------------------------------
def _load_backbone(backbone):
    if isinstance(backbone, (str, Path)):
        from ..models import load_model

        p = Path(backbone)
        if p.is_dir():
            p = p / "model.npz"
        model = load_model(p)
        _family(model)
        return model, str(p)
    _family(backbone)
    return backbone, None


def transfer(backbone, dataset, head: str = "float", per_class: int = 10, *, epochs: int = 50,
             lr: float = 1e-3, batch_size: int = 32, seed: int = 0, val_fraction: float = 0.2,
             resize: str = "auto", channels: str = "auto", layer: str = "features",
             compare_scratch: bool = False, scratch_lr: float = 1e-3,
             scratch_max_epochs: int = 1000, data_path=None, out=None, verbose: bool = False) -> dict:
    """Freeze ``backbone`` (a model file, run folder, or CBCNN/LBCNN object) and train a
    new ``head`` ("float" or "binary") for ``dataset`` (a name or ``Dataset``) on
    ``per_class`` labelled images per class. Returns a dict of results with the
    trained ``TransferModel`` under ``"model"`` (and ``"scratch"`` when asked)."""
    from ..data import Dataset, load_dataset

    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if int(epochs) < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}")
    model, path = _load_backbone(backbone)
    family = _family(model)
    if isinstance(dataset, str):
        dataset = load_dataset(dataset, data_path, seed=seed)
    if not isinstance(dataset, Dataset):
        raise ConfigError("dataset must be a Dataset or a dataset name")
    in_shape, accepted = backbone_input(model)
    plan = plan_conversion(dataset.input_shape, in_shape, accepted, resize, channels,
                           what=dataset.name)
    notes = list(plan["notes"])
    if family == "cbcnn" and model.preprocess.y_channel and dataset.input_shape[2] == 3 \
            and not plan["gray"]:
        notes.append("the backbone's own preprocessing converts RGB to Y (BT.601)")
    for n in notes:
        if verbose:
            print(f"note: {n}")

    torch.manual_seed(seed)
    tm = TransferModel(model, head, dataset.n_classes, plan, layer)
    before = backbone_state(model)

    budget = per_class_indices(dataset.y_train, per_class, seed)
    xb, yb = dataset.x_train[budget], dataset.y_train[budget]
    groups = None if dataset.groups_train is None else dataset.groups_train[budget]
    tr, va = _budget_split(yb, int(per_class), val_fraction, seed, groups)
    if len(va) == 0:
        notes.append(f"{per_class} labelled image(s) per class: no validation split; the last "
                     "epoch is kept")

    t0 = time.perf_counter()
    f_all = tm.raw_features(xb)
    if family == "lbcnn":
        tm.mean_ = f_all[tr].mean(0)
        tm.std_ = f_all[tr].std(0) + 1e-6
        f_all = (f_all - tm.mean_) / tm.std_
    f_all = torch.from_numpy(np.ascontiguousarray(f_all, dtype=np.float32))
    y_all = torch.as_tensor(yb, dtype=torch.int64)
    torch.manual_seed(seed)
    tm.reset_classifier(dataset.n_classes)
    fit = fit_loop(tm.head, head, f_all[tr], y_all[tr], f_all[va], y_all[va], epochs=epochs,
                   lr=lr, batch_size=batch_size, seed=seed)
    wall = time.perf_counter() - t0

    after = backbone_state(model)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    if changed:  # would be a bug: the body must stay frozen
        raise RuntimeError(f"frozen backbone changed during transfer: {changed[:3]}")

    test_acc = tm.score(dataset.x_test, dataset.y_test) if len(dataset.x_test) else None
    result = {
        "backbone": path, "backbone_family": family,
        "backbone_dataset": getattr(model, "meta_", {}).get("dataset") if family == "lbcnn" else None,
        "dataset": dataset.name, "test_split": dataset.test_split, "head": head, "layer": layer,
        "per_class": int(per_class), "n_classes": int(dataset.n_classes),
        "train_size": int(len(budget)), "fit_size": int(len(tr)), "val_size": int(len(va)),
        "test_size": int(len(dataset.x_test)), "seed": int(seed), "epochs": int(epochs),
        "lr": lr, "batch_size": int(batch_size), "val_fraction": val_fraction,
        "epochs_run": fit["epochs_run"], "best_epoch": fit["best_epoch"],
        "best_val_accuracy": fit["best_val_accuracy"], "test_accuracy": test_acc,
        "wall_seconds": wall, "n_features": tm.num_features,
        "backbone_input": list(in_shape), "target_input": list(dataset.input_shape),
        "conversion": {"gray": plan["gray"], "rgb": plan["rgb"],
                       "resize": list(plan["resize"]) if plan["resize"] else None},
        "notes": notes, "backbone_unchanged": True, "history": fit["history"], "model": tm,
        "provenance": dataset.provenance(),
    }
    if family == "cbcnn" and path is not None:
        from ..io.native import load_model_file
        result["backbone_dataset"] = load_model_file(path)[0].get("dataset")
    if compare_scratch:
        result["scratch"] = scratch(model, dataset, plan, xb, yb, tr, va, budget_seconds=wall,
                                    lr=scratch_lr, batch_size=batch_size, seed=seed,
                                    max_epochs=scratch_max_epochs)
    if out is not None:
        _write_out(Path(out), result)
    return result


def scratch(backbone, dataset, plan, xb, yb, tr, va, *, budget_seconds: float, lr: float = 1e-3,
            batch_size: int = 32, seed: int = 0, max_epochs: int = 1000) -> dict:
    """The backbone's architecture trained from scratch on the same labelled images
    (same train/validation indices) within ``budget_seconds`` (at least one epoch)."""
    family = _family(backbone)
    x_test = apply_conversion(dataset.x_test, plan)
    xb = apply_conversion(xb, plan)
    if family == "lbcnn":
        from ..models.lbcnn import LBCNN

        t0 = time.perf_counter()
        m = LBCNN(filters=backbone.body_.filters, nl=backbone.body_.nl, C=backbone.C,
                  random_state=seed, input_scale=backbone.body_.input_scale)
        m.fit(xb[tr], yb[tr])
        wall = time.perf_counter() - t0
        return {"model": "lbcnn (fresh random kernels, closed-form ELM head)",
                "fit_size": int(len(tr)), "val_size": 0, "epochs_run": 1, "wall_seconds": wall,
                "time_budget_seconds": budget_seconds, "test_accuracy": m.score(x_test, dataset.y_test),
                "best_val_accuracy": None}
    from ..models.cbcnn import CBCNN

    net0 = backbone.net
    torch.manual_seed(seed)
    m = CBCNN(None, net0.blocks, net0.dense, net0.input_shape, dataset.n_classes, net0.scale,
              backbone.preprocess)
    t0 = time.perf_counter()
    x_all = m.to_tensor(xb)
    y_all = torch.as_tensor(yb, dtype=torch.int64)
    prep = time.perf_counter() - t0
    fit = fit_loop(m.net, "binary", x_all[tr], y_all[tr], x_all[va], y_all[va], epochs=max_epochs,
                   lr=lr, batch_size=batch_size, seed=seed,
                   max_seconds=max(budget_seconds - prep, 0.0))
    wall = time.perf_counter() - t0
    return {"model": f"cbcnn blocks={list(net0.blocks)} dense={list(net0.dense)} from scratch "
                     f"(squared hinge, Adam lr={lr})",
            "fit_size": int(len(tr)), "val_size": int(len(va)), "epochs_run": fit["epochs_run"],
            "best_epoch": fit["best_epoch"], "best_val_accuracy": fit["best_val_accuracy"],
            "wall_seconds": wall, "time_budget_seconds": budget_seconds,
            "test_accuracy": m.score(x_test, dataset.y_test)}


def summary(result: dict) -> dict:
    """The JSON-safe part of a ``transfer`` result."""
    out = {k: v for k, v in result.items() if k != "model"}
    return out


def _write_out(out: Path, result: dict) -> None:
    import json

    from ..io.native import save_model_file
    from ..outputs import atomic_write_text

    tm = result["model"]
    arrays = {f"head/{k}": v.detach().cpu().numpy() for k, v in tm.head.state_dict().items()}
    if tm.head_kind == "binary":
        arrays["head/linear.weight"] = tm.head_weights_pm1()
    if tm.mean_ is not None:
        arrays["features/mean"], arrays["features/std"] = tm.mean_, tm.std_
    save_model_file(out / "head.npz", {"family": "transfer-head", "head": tm.head_kind,
                                        "layer": tm.layer, "backbone": result["backbone"],
                                        **result["provenance"],
                                        "test_accuracy": result["test_accuracy"],
                                        "test_size": result["test_size"]}, arrays)
    atomic_write_text(out / "summary.json", json.dumps(summary(result), indent=2, default=str) + "\n")
