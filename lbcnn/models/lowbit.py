"""The trained low-bit depthwise family (``lowbit``): LB-CNN's deployable shape with trained
kernels of 1 to 8 bits and a small quantization-aware head.

Every image is first resized to ``size`` x ``size`` by the exact integer area resize
(``data.resize``: the C does the same integers). Then ``channels`` independent channel
paths, each computed on its own (one at a time on a microcontroller): a 3x3 'valid'
conv of the image (all its colour planes with ``first="full"``, one plane with
``"depthwise"``), then the ``path`` string's further ops, ``c`` a 3x3 'valid' conv of
the path's own map and ``p`` a 2x2 max pool; every conv is followed by batch norm (or a
bias, or nothing) and ReLU. The paths' last maps (k values each) meet in the head: an
unsigned ``act_bits`` activation quantizer, zero to two hidden dense layers (batch norm,
ReLU, quantized again) and the output layer.

Kernels have ``conv_bits`` (1 = +-1) and head layers ``head_bits`` (2..8), both with LSQ
steps per output channel (``binary.quantizers.LSQWeight``), trained with straight-through
rounding. ``LowBitNet`` is that fake-quantized network (``quantized=False``: its float
twin). Deployment freezes it into integers (``models.lowbit_int``): batch norm folded,
per-channel integer shifts and biases on int16 maps, fixed-point multipliers in the head;
the estimator's predictions, the NumPy engine and the generated C run those integers and
give identical logits.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin

from ..binary.quantizers import make_quantizer
from ..errors import ConfigError, DataError
from . import register_model
from .lowbit_arch import (CONV_NORMS, DENSE_NORMS, FIRST_MODES, architecture,  # noqa: F401
                          conv_inputs, conv_modes, dense_dims, features_per_path, path_geometry,
                          profile)
from ._sk import (PER_CLASS_SCORES, InputError, as_value_error, classifier_tags, load_estimator,
                  save_estimator, softmax, validate_images, validate_targets)

class LowBitNet(nn.Module):
    """The fake-quantized network on NCHW float input (pixels / 255, already resized).

    ``quantized=False`` runs it in float (the float twin, and float warm-up epochs).
    """

    def __init__(self, arch: dict, dropout: float = 0.0):
        super().__init__()
        self.arch = dict(arch)
        self.quantized = True
        self.float_twin = False
        a = self.arch
        m = a["channels"]
        self.conv_w = nn.ParameterList()
        self.conv_q = nn.ModuleList()
        self.conv_norm = nn.ModuleList()
        self.conv_bias = nn.ParameterList()
        for layer, (bits, mode) in enumerate(zip(a["conv_bits"], a["conv_modes"])):
            w = torch.empty(m, conv_inputs(a, layer), 3, 3)
            nn.init.kaiming_normal_(w, nonlinearity="relu")
            self.conv_w.append(nn.Parameter(w))
            self.conv_q.append(make_quantizer("lsq_weight", shape=w.shape, bits=bits, mode=mode,
                                              per=a["conv_scale"]))
            self.conv_norm.append(nn.BatchNorm2d(m) if a["conv_norm"] == "bn" else nn.Identity())
            self.conv_bias.append(nn.Parameter(torch.zeros(m),
                                               requires_grad=a["conv_norm"] == "bias"))
        self.act_in = make_quantizer("lsq_activation", bits=a["act_bits"])
        dims = dense_dims(a)
        self.fc_w = nn.ParameterList()
        self.fc_q = nn.ModuleList()
        self.fc_norm = nn.ModuleList()
        self.fc_bias = nn.ParameterList()
        self.fc_act = nn.ModuleList()
        for i in range(len(dims) - 1):
            self._add_dense(i, dims[i], dims[i + 1])
        self.out_bias = nn.Parameter(torch.zeros(a["n_classes"]))
        self.dropout = float(dropout)
        self.drop = nn.Dropout(self.dropout) if self.dropout > 0 else nn.Identity()

    def _add_dense(self, i: int, d_in: int, d_out: int) -> None:
        a = self.arch
        last = i == len(a["hidden"])
        w = torch.empty(d_out, d_in)
        nn.init.kaiming_normal_(w, nonlinearity="relu")
        if last:
            w.mul_(0.5)
        q = make_quantizer("lsq_weight", shape=w.shape, bits=a["head_bits"][i],
                           mode=a["head_mode"], per="channel")
        if i < len(self.fc_w):
            self.fc_w[i] = nn.Parameter(w)
            self.fc_q[i] = q
            return
        self.fc_w.append(nn.Parameter(w))
        self.fc_q.append(q)
        if not last:
            self.fc_norm.append(nn.BatchNorm1d(d_out) if a["dense_norm"] == "bn" else nn.Identity())
            self.fc_bias.append(nn.Parameter(torch.zeros(d_out),
                                             requires_grad=a["dense_norm"] == "bias"))
            self.fc_act.append(make_quantizer("lsq_activation", bits=a["act_bits"]))

    # -- forward -----------------------------------------------------------------------
    def conv_weight(self, layer: int) -> torch.Tensor:
        w = self.conv_w[layer]
        return self.conv_q[layer](w) if self.quantized else w

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, size, size) -> (n, channels * k) non-negative path outputs."""
        a = self.arch
        layer = 0
        for op in a["path"]:
            if op == "p":
                x = F.max_pool2d(x, 2)
                continue
            groups = (1 if a["first"] == "full" else x.shape[1]) if layer == 0 else a["channels"]
            x = F.conv2d(x, self.conv_weight(layer), groups=groups)
            if a["conv_norm"] == "bn":
                x = self.conv_norm[layer](x)
            elif a["conv_norm"] == "bias":
                x = x + self.conv_bias[layer].view(1, -1, 1, 1)
            x = F.relu(x)
            layer += 1
        return x.flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: the paths' outputs, quantized to ``act_bits`` unsigned levels."""
        f = self.body(x)
        return self.act_in(f) if self.quantized else f

    def forward_head(self, f: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Dense layers from the head input; ``upto=i`` stops before dense layer i (the
        input of the last layer with ``upto=len(hidden)``)."""
        n = len(self.fc_w)
        for i in range(n):
            if upto is not None and i == upto:
                return f
            w = self.fc_q[i](self.fc_w[i]) if self.quantized else self.fc_w[i]
            f = F.linear(self.drop(f), w)
            if i < n - 1:
                f = self.fc_norm[i](f) if self.arch["dense_norm"] == "bn" else f + self.fc_bias[i]
                f = F.relu(f)
                if self.quantized:
                    f = self.fc_act[i](f)
            else:
                f = f + self.out_bias
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new, randomly initialized output layer for ``num_classes`` classes."""
        if int(num_classes) < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        self.arch["n_classes"] = int(num_classes)
        dims = dense_dims(self.arch)
        self._add_dense(len(dims) - 2, dims[-2], dims[-1])
        self.out_bias = nn.Parameter(torch.zeros(int(num_classes)))

    def config(self) -> dict:
        return {**self.arch, "dropout": self.dropout}

    def weight_decay_groups(self):
        """(decayed, not decayed) parameters: weights decay; steps, norms and biases do not."""
        decay = list(self.conv_w) + list(self.fc_w)
        ids = {id(p) for p in decay}
        rest = [p for p in self.parameters() if id(p) not in ids and p.requires_grad]
        return decay, rest


# -- estimator ------------------------------------------------------------------------------
def _as_pixels(x: np.ndarray) -> np.ndarray:
    """uint8 pixels; floats in [0, 1] are scaled by 255, floats in (1, 255] taken as pixel
    values (both rounded); anything else is refused: the integer pipeline reads bytes."""
    if x.dtype == np.uint8:
        return x
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.astype(np.uint8)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise InputError(f"the lowbit family reads 8-bit pixels; values must lie in [0, 1] or "
                         f"[0, 255], got [{lo:.3g}, {hi:.3g}]")
    return np.rint(x * (255.0 if hi <= 1.0 else 1.0)).astype(np.uint8)


class LowBitCNN(ClassifierMixin, BaseEstimator):
    """scikit-learn estimator of the lowbit family: uint8 images (or flattened rows) in,
    labels out; ``fit`` trains with ``lbcnn.train.qat`` (found through ``trainer_for``).

    Architecture: ``size``, ``channels``, ``first``, ``path``, ``conv_bits``,
    ``conv_mode``, ``conv_scale``, ``conv_norm``, ``hidden``, ``head_bits``,
    ``head_mode``, ``act_bits``, ``dense_norm`` (see the module docstring and
    docs/lowbit.md). Training: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``,
    ``val_fraction`` (the epoch is chosen on that split), ``random_state``; ``fit``'s
    keyword arguments go to the trainer. Learned state: ``net_`` (the fake-quantized
    network at the chosen epoch), ``frozen_`` (its integers, what predictions run),
    ``classes_``, ``history_``, ``input_shape_``, ``n_features_in_``.
    """

    _OWN_CONFIG_KEYS = ("net", "classes", "input_shape", "frozen", "logit_scale")
    _expected_failed_checks = {"check_classifiers_train": PER_CLASS_SCORES,
                               "check_classifiers_classes": PER_CLASS_SCORES}

    def __init__(self, size: int = 16, channels: int = 32, first: str = "full",
                 path: str = "ccpcp", conv_bits=(8,), conv_mode: str = "auto",
                 conv_scale: str = "channel", conv_norm: str = "bn", hidden=(64,),
                 head_bits=(2, 4), head_mode: str = "symnz", act_bits: int = 8,
                 dense_norm: str = "bn", dropout: float = 0.0, epochs: int = 15,
                 batch_size: int = 256, lr: float = 6e-3, weight_decay: float = 1e-4,
                 val_fraction: float = 0.1, random_state: int = 0, input_shape=None,
                 device=None, verbose: bool = False):
        self.size = size
        self.channels = channels
        self.first = first
        self.path = path
        self.conv_bits = conv_bits
        self.conv_mode = conv_mode
        self.conv_scale = conv_scale
        self.conv_norm = conv_norm
        self.hidden = hidden
        self.head_bits = head_bits
        self.head_mode = head_mode
        self.act_bits = act_bits
        self.dense_norm = dense_norm
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.input_shape = input_shape
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        return classifier_tags(super().__sklearn_tags__(), poor_score=True)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "frozen_")

    def architecture(self, input_channels: int, n_classes: int) -> dict:
        return architecture(input_channels, self.size, self.channels, self.first, self.path,
                            self.conv_bits, self.conv_mode, self.conv_scale, self.conv_norm,
                            self.hidden, self.head_bits, self.head_mode, self.act_bits,
                            n_classes, self.dense_norm)

    def build_net(self, input_channels: int, n_classes: int) -> LowBitNet:
        """A randomly initialized network for this estimator's settings (the torch RNG's
        current state draws it)."""
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        return LowBitNet(self.architecture(input_channels, n_classes), self.dropout)

    def _images(self, X, reset: bool) -> np.ndarray:
        shape = self.input_shape if reset else getattr(self, "input_shape_", None)
        x = validate_images(self, X, reset=reset, input_shape=shape)
        return _as_pixels(x)

    @property
    def arch_(self) -> dict:
        return self.frozen_["arch"]

    def decision_function(self, X, batch_size: int = 1024) -> np.ndarray:
        """Integer class scores (n, k), int64: the deployed integer model's logits (the
        NumPy engine's and the generated C's, exactly)."""
        from sklearn.utils.validation import check_is_fitted

        from .lowbit_int import integer_logits

        check_is_fitted(self)
        X = self._images(X, reset=False)
        try:
            return integer_logits(self.frozen_, X, batch_size)
        except DataError as exc:
            raise as_value_error(exc) from None

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the integer logits times ``logit_scale`` (the real-valued logits they
        stand for); a ranking, not a calibrated probability."""
        return softmax(self.decision_function(X).astype(np.float64) * self.frozen_["logit_scale"])

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]

    def forward_features(self, X, batch_size: int = 1024) -> np.ndarray:
        """The head's integer input (n, channels * k), 0 .. 2^act_bits - 1."""
        from sklearn.utils.validation import check_is_fitted

        from .lowbit_int import integer_features

        check_is_fitted(self)
        return integer_features(self.frozen_, self._images(X, reset=False), batch_size)

    def reset_classifier(self, num_classes: int):
        """A new output layer on the trained network (``net_``); the integers are frozen
        again by the next training run, so the estimator counts as unfitted until then."""
        net = getattr(self, "net_", None)
        if net is None:
            raise ConfigError("reset_classifier needs the trained network (net_): a model "
                              "loaded from a file holds only its integers")
        net.reset_classifier(num_classes)
        self.classes_ = np.arange(int(num_classes))
        if hasattr(self, "frozen_"):
            del self.frozen_
        return self

    def fit(self, X, y, **train_kwargs):
        """Train on ``X, y`` with ``val_fraction`` held out to choose the epoch."""
        from ..data import Dataset
        from . import trainer_for

        X = self._images(X, reset=True)
        classes, y_idx = validate_targets(y, len(X))
        if len(classes) < 2:
            raise InputError(f"a lowbit model needs at least 2 classes; y has 1 ({classes[0]!r})")
        seed = (int(np.random.SeedSequence().entropy % 2**31) if self.random_state is None
                else int(self.random_state))
        kwargs = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                  "weight_decay": self.weight_decay, "val_fraction": self.val_fraction,
                  "seed": seed, "device": self.device,
                  "log": (lambda m: print(m, file=sys.stderr)) if self.verbose else None}
        kwargs.update(train_kwargs)
        ds = Dataset("arrays", X, y_idx.astype(np.int64), X[:0], y_idx[:0].astype(np.int64),
                     len(classes))
        try:
            result = trainer_for("lowbit")(ds, model=self, **kwargs)
        except (DataError, ConfigError) as exc:
            raise as_value_error(exc) from None
        self.classes_ = classes
        self.history_ = result["history"]
        return self

    def profile(self) -> list[dict]:
        from sklearn.utils.validation import check_is_fitted
        check_is_fitted(self)
        return profile(self.arch_)

    def save(self, path) -> None:
        """Write the native ``.npz`` model file (``LowBitCNN.load`` reads it back)."""
        save_estimator(self, path)

    @classmethod
    def load(cls, path) -> "LowBitCNN":
        return load_estimator(cls, path)

    def _save_native(self, path, **meta) -> None:
        save_lowbit(self, path, **meta)


register_model("lowbit", LowBitCNN)

_HYPER = ("size", "channels", "first", "path", "conv_bits", "conv_mode", "conv_scale",
          "conv_norm", "hidden", "head_bits", "head_mode", "act_bits", "dense_norm")


# -- model files ----------------------------------------------------------------------------
def save_lowbit(model: LowBitCNN, path, **meta) -> None:
    """The frozen integers (kernels and head weights bit-packed at their widths) and the
    architecture; no float weights: the file holds what the C flashes."""
    from ..io.native import save_model_file
    from .lowbit_int import frozen_arrays

    fz = model.frozen_
    classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    if any(isinstance(c, bool) or not isinstance(c, int) for c in classes):
        raise ConfigError(f"model files store integer class labels; this model's are "
                          f"{type(classes[0]).__name__} ({classes[0]!r}, ...): fit it on "
                          f"integer labels (and keep their names apart) to save it")
    arrays, packed = frozen_arrays(fz)
    config = {"family": "lowbit", "net": fz["arch"], "input_shape": list(fz["input_shape"]),
              "logit_scale": float(fz["logit_scale"]),
              "classes": classes, "frozen": fz["meta"], **meta}
    save_model_file(path, config, arrays, packed=packed)


def load_lowbit(config: dict, arrays: dict) -> LowBitCNN:
    from .lowbit_int import frozen_from_arrays

    net = config["net"]
    fz = frozen_from_arrays(net, config, arrays)
    model = LowBitCNN(**{k: net[k] for k in _HYPER if k in net and k != "conv_mode"},
                      conv_mode=_stored_mode(net), dropout=float(net.get("dropout", 0.0)))
    model.frozen_ = fz
    model.classes_ = np.array(config["classes"])
    model.input_shape_ = tuple(fz["input_shape"])
    model.n_features_in_ = int(np.prod(fz["input_shape"]))
    model.meta_ = config
    return model


def _stored_mode(net: dict) -> str:
    modes = list(net["conv_modes"])
    if modes == conv_modes(net["conv_bits"], "auto"):
        return "auto"
    return modes[0]


__all__ = ["CONV_NORMS", "DENSE_NORMS", "FIRST_MODES", "LowBitCNN", "LowBitNet",
           "architecture", "conv_inputs", "conv_modes", "dense_dims",
           "features_per_path", "load_lowbit", "path_geometry", "profile", "save_lowbit"]
