"""CBCNN: a fully binarized CNN (binary weights and activations, STE training).

Qi et al. 2023. Each block is [binary conv 3x3 (padding 1) -> max-pool 2x2 ->
BN -> binary activation]; the head is [binary dense -> BN -> binary act]* ->
binary dense (classes) -> BN. The first conv sees the real-valued
(preprocessed) image; every later layer sees +-1 inputs, so its
pre-activations are integers and each BN + sign folds into an integer
threshold per channel (``fold_bn_sign``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin

from ..binary.layers import BinaryActivation, BinaryConv2d, BinaryLinear, clip_all_latent_
from ..binary.quantizers import sign_pm1
from ..errors import ConfigError, DataError
from ..preprocess import Preprocess
from . import register_model
from ._sk import (EAGER_NET, PER_CLASS_SCORES, InputError, as_value_error, classifier_tags,
                  load_estimator, save_estimator, softmax, validate_images, validate_targets)

# cbcnn28/32 are the three-block layout. The paper's reported sizes (0.48 M for
# 28x28x1 with 10 classes, 0.59 M for 32x32x1 with 43) are what a fourth 128-wide block
# gives (480,404 and 587,222 trainable values: binary weights plus BN gamma/beta), while
# three blocks give 0.59 M and 0.83 M, so the x4 presets are our best reading of the paper.
PRESETS = {
    "cbcnn28": {"input_shape": (28, 28, 1), "blocks": (128, 128, 128), "dense": (256,)},
    "cbcnn32": {"input_shape": (32, 32, 1), "blocks": (128, 128, 128), "dense": (256,)},
    "cbcnn28x4": {"input_shape": (28, 28, 1), "blocks": (128, 128, 128, 128), "dense": (256,)},
    "cbcnn32x4": {"input_shape": (32, 32, 1), "blocks": (128, 128, 128, 128), "dense": (256,)},
}


def _widths(values, what: str, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    try:
        values = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} widths must be integers, got {values!r}") from None
    if not values and not allow_empty:
        raise ConfigError(f"{what} needs at least one layer")
    bad = [v for v in values if v < 1]
    if bad:
        raise ConfigError(f"{what} widths must be >= 1; got a zero/negative-width layer in {values}")
    return values


class CBCNNNet(nn.Module):
    """The network on NCHW float input (the output of ``Preprocess.apply``, permuted)."""

    def __init__(self, input_shape=(28, 28, 1), blocks=(128, 128, 128), dense=(256,),
                 n_classes: int = 10, scale: bool = False):
        super().__init__()
        try:
            h, w, c = (int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise ConfigError(f"input_shape must be (H, W, C), got {input_shape!r}") from None
        if min(h, w, c) < 1:
            raise ConfigError(f"input_shape must be positive, got {input_shape}")
        blocks = _widths(blocks, "blocks", allow_empty=False)
        dense = _widths(dense, "dense", allow_empty=True)
        if int(n_classes) < 2:
            raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
        need = 2 ** len(blocks)
        if h < need or w < need:
            raise ConfigError(f"input {h}x{w} is too small for {len(blocks)} 2x2 max-pools "
                              f"(needs at least {need}x{need}); use fewer blocks or larger images")
        self.input_shape, self.blocks, self.dense = (h, w, c), blocks, dense
        self.n_classes, self.scale = int(n_classes), bool(scale)
        layers, cin = [], c
        for i, width in enumerate(blocks):
            layers += [BinaryConv2d(cin, width, 3, padding=1, scale=scale,
                                    input_quantizer=None if i == 0 else "ste_sign"),
                       nn.MaxPool2d(2), nn.BatchNorm2d(width), BinaryActivation()]
            cin, h, w = width, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.num_features = cin * h * w
        head, din = [], self.num_features
        for width in dense:
            head += [BinaryLinear(din, width, scale=scale), nn.BatchNorm1d(width), BinaryActivation()]
            din = width
        self.head_hidden = nn.Sequential(*head)
        self.classifier = BinaryLinear(din, self.n_classes, scale=scale)
        self.out_bn = nn.BatchNorm1d(self.n_classes)

    def config(self) -> dict:
        return {"input_shape": list(self.input_shape), "blocks": list(self.blocks),
                "dense": list(self.dense), "n_classes": self.n_classes, "scale": self.scale}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) -> (n, num_features) +-1 features after the last block."""
        return torch.flatten(self.features(x), 1)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.out_bn(self.classifier(self.head_hidden(f)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        if int(num_classes) < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        din = self.dense[-1] if self.dense else self.num_features
        self.n_classes = int(num_classes)
        self.classifier = BinaryLinear(din, self.n_classes, scale=self.scale)
        self.out_bn = nn.BatchNorm1d(self.n_classes)

    def clip_latent_(self) -> None:
        clip_all_latent_(self)

    def binary_layers(self):
        return [m for m in self.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]

    def profile(self) -> list[dict]:
        """Per-layer bit accounting: binary weights cost 1 bit, BN 32 bits per value."""
        rows = []
        names = {m: n for n, m in self.named_modules()}
        for name, m in self.named_modules():
            if isinstance(m, (BinaryConv2d, BinaryLinear)):
                kind = "binary conv 3x3" if isinstance(m, BinaryConv2d) else "binary dense"
                note = ("binary input, binary weights" if m.input_binary
                        else "real-valued input, binary weights")
                rows.append({"name": name, "kind": kind, "weights": int(m.weight.numel()),
                             "bits_per_weight": 1, "input_binary": m.input_binary,
                             "scale_h": m.scale, "note": note,
                             "bits": int(m.weight.numel()) + (32 * m.weight.shape[0] if m.scale else 0)})
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = int(m.num_features)
                rows.append({"name": names[m], "kind": "batch norm", "weights": 4 * n,
                             "bits_per_weight": 32, "input_binary": False,
                             "scale_h": False, "note": "folds into a threshold per channel"
                             if m is not self.out_bn else "final BN (float)",
                             "bits": 32 * 4 * n})
        return rows


def profile_totals(profile: list[dict]) -> dict:
    binary = sum(r["weights"] for r in profile if r["bits_per_weight"] == 1)
    return {"binary_weights": binary, "params": sum(r["weights"] for r in profile),
            "bits": sum(r["bits"] for r in profile)}


# -- BN + sign folding ------------------------------------------------------
@torch.no_grad()
def fold_bn_sign(bn: nn.modules.batchnorm._BatchNorm, integer: bool = True):
    """``(threshold, flip)`` per channel with
    ``sign(BN(x)) == where(flip, x <= t, x >= t) * 2 - 1`` (sign(0) = +1).

    With ``integer=True`` (inputs are integers: every layer after the first)
    the thresholds are integers, checked against the float BN itself so the
    fold is exact for every integer input. gamma == 0 gives a constant
    output: t = -inf (always +1) or t = +inf (always -1). Uses running stats.
    """
    mu = bn.running_mean.double()
    var = bn.running_var.double()
    gamma = (bn.weight.double() if bn.weight is not None else torch.ones_like(mu))
    beta = (bn.bias.double() if bn.bias is not None else torch.zeros_like(mu))
    s = torch.sqrt(var + bn.eps)
    flip = gamma < 0
    zero = gamma == 0
    t = torch.where(zero, torch.zeros_like(mu), mu - beta * s / torch.where(zero, torch.ones_like(gamma), gamma))
    if integer:
        t = torch.where(flip, torch.floor(t), torch.ceil(t))
        # nudge each threshold so it agrees with the float32 BN on the integers around it
        for _ in range(3):
            pos_t = _bn_float(bn, t) >= 0          # sign at t
            pos_prev = _bn_float(bn, t - 1) >= 0   # sign at t - 1
            pos_next = _bn_float(bn, t + 1) >= 0
            # non-flip: need bn(t) >= 0 and bn(t-1) < 0 ; flip: bn(t) >= 0 and bn(t+1) < 0
            up = ~flip & ~pos_t
            down = ~flip & pos_prev
            t = t + up.double() - (down & ~up).double()
            upf = flip & pos_next
            downf = flip & ~pos_t
            t = t + upf.double() - (downf & ~upf).double()
    t = torch.where(zero, torch.where(beta >= 0, torch.full_like(t, -np.inf),
                                      torch.full_like(t, np.inf)), t)
    flip = flip & ~zero
    return t.float(), flip


def _bn_float(bn, values: torch.Tensor) -> torch.Tensor:
    """The float32 eval-mode BN applied to one value per channel."""
    v = values.float().clamp(-3e38, 3e38).unsqueeze(0)
    return F.batch_norm(v, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        False, 0.0, bn.eps)[0]


def apply_threshold(x: torch.Tensor, t: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """+-1 from a folded threshold; channels on dim 1."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    t, flip = t.view(shape), flip.view(shape)
    pos = torch.where(flip, x <= t, x >= t)
    return pos.to(x.dtype) * 2 - 1


@torch.no_grad()
def folded_forward(net: CBCNNNet, x: torch.Tensor, return_bits: bool = False):
    """Inference with +-1 weights and per-channel thresholds instead of BN + sign
    (the deployment path). Only the final BN stays float."""
    if net.scale:
        raise ConfigError("folded inference supports scale=False networks only")
    bits, h, first = [], x, True
    mods = list(net.features)
    for i in range(0, len(mods), 4):
        conv, pool, bn = mods[i], mods[i + 1], mods[i + 2]
        h = pool(F.conv2d(h, sign_pm1(conv.weight), None, 1, 1))
        t, flip = fold_bn_sign(bn, integer=not first)
        h = apply_threshold(h, t, flip)
        bits.append(h)
        first = False
    h = torch.flatten(h, 1)
    mods = list(net.head_hidden)
    for i in range(0, len(mods), 3):
        lin, bn = mods[i], mods[i + 1]
        h = F.linear(h, sign_pm1(lin.weight))
        t, flip = fold_bn_sign(bn, integer=True)
        h = apply_threshold(h, t, flip)
        bits.append(h)
    out = net.out_bn(F.linear(h, sign_pm1(net.classifier.weight)))
    return (out, bits) if return_bits else out


# -- estimator --------------------------------------------------------------
class CBCNN(ClassifierMixin, BaseEstimator):
    """scikit-learn estimator around ``CBCNNNet``: images (or flattened rows) in, labels out.

    The network is built at construction from ``preset`` / ``blocks`` / ``dense`` /
    ``input_shape`` / ``n_classes`` (randomly initialized, usable by the exporters
    and the integer engine) and rebuilt by ``fit`` for the data's shape and
    classes, then trained by ``train_cbcnn`` for ``epochs`` with a ``val_fraction``
    split carved from the data (best-validation epoch kept). uint8 images go
    through ``preprocess``; float images are taken as preprocessed network input.
    Flattened rows ``(n, H*W*C)`` are reshaped with ``input_shape`` (or the
    preset's), else laid out square (see ``lbcnn.models._sk``).
    Learned state: ``net`` (trained), ``classes_``, ``history_``, ``input_shape_``,
    ``n_features_in_``.
    """

    _OWN_CONFIG_KEYS = ("preset", "net", "preprocess", "classes")
    _expected_failed_checks = {"check_classifiers_train": PER_CLASS_SCORES,
                               "check_classifiers_classes": PER_CLASS_SCORES,
                               "check_decision_proba_consistency": PER_CLASS_SCORES,
                               "check_estimators_unfitted": EAGER_NET,
                               "check_do_not_raise_errors_in_init_or_set_params": EAGER_NET}

    def __init__(self, preset: str | None = "cbcnn28", blocks=None, dense=None, input_shape=None,
                 n_classes: int = 10, scale: bool = False, preprocess=None, device=None,
                 epochs: int = 10, batch_size: int = 100, lr_start: float = 1e-3,
                 lr_end: float = 1e-4, val_fraction: float = 0.1, random_state: int = 0,
                 verbose: bool = False):
        self.preset = preset
        self.blocks = blocks
        self.dense = dense
        self.input_shape = input_shape
        self.n_classes = n_classes
        self.scale = scale
        self.preprocess = preprocess
        self.device = device
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr_start = lr_start
        self.lr_end = lr_end
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.verbose = verbose
        if preset and preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        cfg = self._arch()
        self._net = None
        if cfg["input_shape"] is not None:
            self._net = CBCNNNet(cfg["input_shape"], cfg["blocks"], cfg["dense"], n_classes, scale)
            self._net.to(self.device)

    # ``preprocess`` and ``device`` are hyperparameters as given (what get_params and
    # clone see) and resolved objects for the rest of lbcnn (``model.preprocess.y_channel``)
    @property
    def preprocess(self) -> Preprocess:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess_param = value
        try:
            self._preprocess = Preprocess.from_dict(value)
        except ConfigError as exc:  # a ValueError too, as scikit-learn expects
            raise as_value_error(exc) from None

    @property
    def device(self) -> torch.device:
        return self._device

    @device.setter
    def device(self, value):
        self._device_param = value
        self._device = torch.device(value) if value else torch.device("cpu")

    @property
    def net(self) -> CBCNNNet:
        if self._net is None:
            raise AttributeError("this CBCNN has no network yet: give a preset or input_shape, "
                                 "or fit it")
        return self._net

    @net.setter
    def net(self, value):
        self._net = value

    def get_params(self, deep=True):
        params = super().get_params(deep)
        params["preprocess"] = self._preprocess_param
        params["device"] = self._device_param
        return params

    def __sklearn_tags__(self):
        return classifier_tags(super().__sklearn_tags__(), poor_score=True)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "classes_")

    def _arch(self) -> dict:
        cfg = dict(PRESETS[self.preset]) if self.preset in PRESETS else {}
        for key in ("blocks", "dense", "input_shape"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        cfg.setdefault("blocks", (128, 128, 128))
        cfg.setdefault("dense", (256,))
        cfg.setdefault("input_shape", None)
        return cfg

    def _min_side(self) -> int:
        try:
            return 2 ** len(_widths(self._arch()["blocks"], "blocks", allow_empty=False))
        except ConfigError as exc:
            raise as_value_error(exc) from None

    def _images(self, X, reset: bool) -> np.ndarray:
        """Validated uint8/float NHWC images (raw: preprocessing happens in ``to_tensor``)."""
        if reset:
            shape = self._arch()["input_shape"]
        else:
            shape = self._net.input_shape if self._net is not None else None
        alt = (3,) if self.preprocess.y_channel else ()
        return validate_images(self, X, reset=reset, input_shape=shape,
                               min_side=self._min_side(), alt_channels=alt)

    def to_tensor(self, X) -> torch.Tensor:
        X = np.asarray(X)
        if X.ndim == 3:
            X = X[..., None]
        if X.ndim != 4:
            raise InputError(f"images must have shape (n, H, W) or (n, H, W, C), got {X.shape}")
        x = self.preprocess.apply(X) if X.dtype == np.uint8 else X.astype(np.float32)
        if tuple(x.shape[1:]) != tuple(self.net.input_shape):
            raise InputError(f"images have shape {tuple(x.shape[1:])} after preprocessing but the "
                             f"model expects {tuple(self.net.input_shape)} (H, W, C)")
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).to(self.device)

    @torch.no_grad()
    def decision_function(self, X, batch_size: int = 512) -> np.ndarray:
        """Per-class scores (n, k): the final BN's outputs."""
        X = self._images(X, reset=False)
        self.net.eval()
        outs = [self.net(self.to_tensor(X[i:i + batch_size])).cpu().numpy()
                for i in range(0, len(X), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.net.n_classes), np.float32)

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the per-class scores: rows sum to 1, argmax is ``predict``;
        a ranking, not a calibrated probability."""
        return softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        """Labels (``classes_``; class indices for a network that was never fitted)."""
        idx = self.decision_function(X).argmax(1)
        classes = getattr(self, "classes_", None)
        return idx if classes is None else classes[idx]

    @torch.no_grad()
    def forward_features(self, X) -> np.ndarray:
        self.net.eval()
        return self.net.forward_features(self.to_tensor(self._images(X, reset=False))).cpu().numpy()

    def reset_classifier(self, num_classes: int):
        self.net.reset_classifier(num_classes)
        self.net.to(self.device)
        if hasattr(self, "classes_"):
            self.classes_ = np.arange(num_classes)
        return self

    def fit(self, X, y, **train_kwargs):
        """Build a fresh network for ``X``'s shape and ``y``'s classes and train it with
        the CBCNN trainer (``lbcnn.train.cbcnn.train_cbcnn``, found through
        ``trainer_for``; ``train_kwargs`` override the estimator's own settings)."""
        from ..data import Dataset
        from . import trainer_for

        X = self._images(X, reset=True)
        classes, y_idx = validate_targets(y, len(X))
        if len(classes) < 2:
            raise InputError(f"a CBCNN needs at least 2 classes to train; y has 1 class "
                             f"({classes[0]!r})")
        cfg = self._arch()
        h, w, c = X.shape[1:]
        shape = (h, w, self.preprocess.out_channels(c)) if X.dtype == np.uint8 else (h, w, c)
        if cfg["input_shape"] is not None and tuple(shape) != tuple(cfg["input_shape"]):
            raise InputError(f"images have shape {tuple(shape)} (after preprocessing) but this "
                             f"CBCNN is set up for {tuple(cfg['input_shape'])}; pass "
                             f"preset=None, input_shape=None to take the data's shape")
        seed = (int(np.random.SeedSequence().entropy % 2**31) if self.random_state is None
                else int(self.random_state))
        try:
            with torch.random.fork_rng(devices=[]):  # the same seed gives the same network
                torch.manual_seed(seed)
                net = CBCNNNet(shape, cfg["blocks"], cfg["dense"], len(classes), self.scale)
        except ConfigError as exc:
            raise as_value_error(exc) from None
        self._net = net.to(self.device)
        self.classes_ = classes
        kwargs = {"epochs": self.epochs, "batch_size": self.batch_size, "lr_start": self.lr_start,
                  "lr_end": self.lr_end, "val_fraction": self.val_fraction,
                  "seed": seed, "progress": self.verbose, "device": self._device}
        kwargs.update(train_kwargs)
        ds = Dataset("arrays", X, y_idx.astype(np.int64), X[:0], y_idx[:0].astype(np.int64),
                     len(classes))
        device_param = self._device_param
        try:
            result = trainer_for("cbcnn")(ds, model=self, **kwargs)
        except (DataError, ConfigError) as exc:
            raise as_value_error(exc) from None
        finally:  # the trainer sets model.device; the hyperparameter stays as given
            self._device_param = device_param
        self.history_ = result["history"]
        return self

    def profile(self) -> list[dict]:
        return self.net.profile()

    def save(self, path) -> None:
        """Write the native ``.npz`` model file (``CBCNN.load`` reads it back)."""
        save_estimator(self, path)

    @classmethod
    def load(cls, path) -> "CBCNN":
        """Read a native CBCNN model file or run folder."""
        return load_estimator(cls, path)

    def _save_native(self, path, **meta) -> None:
        save_cbcnn(self, path, **meta)


register_model("cbcnn", CBCNN)


def save_cbcnn(model: CBCNN, path, **meta) -> None:
    from ..io.native import save_model_file

    arrays = {}
    for k, v in model.net.state_dict().items():
        v = v.detach().cpu()
        if k.endswith(".weight") and v.dim() >= 2 and not model.net.scale:
            arrays[k] = sign_pm1(v).numpy().astype(np.int8)  # 1 bit of information each
        else:
            arrays[k] = v.numpy()
    config = {"family": "cbcnn", "preset": model.preset, "net": model.net.config(),
              "preprocess": model.preprocess.to_dict(), **meta}
    if hasattr(model, "classes_"):
        config["classes"] = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    save_model_file(path, config, arrays)


def load_cbcnn(config: dict, arrays: dict) -> CBCNN:
    net = config.get("net")
    if not isinstance(net, dict):
        raise DataError("cbcnn model file has no network config")
    model = CBCNN(None, net["blocks"], net["dense"], tuple(net["input_shape"]),
                  net["n_classes"], net.get("scale", False), config.get("preprocess"))
    model.preset = config.get("preset")
    sd = model.net.state_dict()
    missing = set(sd) - set(arrays)
    if missing:
        raise DataError(f"cbcnn model file lacks arrays {sorted(missing)[:3]}")
    model.net.load_state_dict({k: torch.as_tensor(np.asarray(arrays[k])).to(sd[k].dtype)
                               for k in sd})
    model.net.eval()
    classes = config.get("classes")
    model.classes_ = np.array(classes) if classes is not None else np.arange(model.net.n_classes)
    if not model.preprocess.y_channel:  # else raw images may have 1 or 3 channels
        model.input_shape_ = tuple(model.net.input_shape)
        model.n_features_in_ = int(np.prod(model.net.input_shape))
    model.meta_ = config
    return model
