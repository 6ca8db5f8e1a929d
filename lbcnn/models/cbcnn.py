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

from ..binary.layers import BinaryActivation, BinaryConv2d, BinaryLinear, clip_all_latent_
from ..binary.quantizers import sign_pm1
from ..errors import ConfigError, DataError
from ..preprocess import Preprocess
from . import register_model

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
class CBCNN:
    """Estimator around ``CBCNNNet``: uint8 NHWC images in, labels out."""

    def __init__(self, preset: str | None = "cbcnn28", blocks=None, dense=None, input_shape=None,
                 n_classes: int = 10, scale: bool = False, preprocess=None, device=None):
        if preset and preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        cfg = dict(PRESETS[preset]) if preset else {}
        if blocks is not None:
            cfg["blocks"] = blocks
        if dense is not None:
            cfg["dense"] = dense
        if input_shape is not None:
            cfg["input_shape"] = input_shape
        if "input_shape" not in cfg:
            raise ConfigError("give a preset or an input_shape")
        cfg.setdefault("blocks", (128, 128, 128))
        cfg.setdefault("dense", (256,))
        self.preset = preset
        self.preprocess = Preprocess.from_dict(preprocess)
        self.device = torch.device(device) if device else torch.device("cpu")
        self.net = CBCNNNet(cfg["input_shape"], cfg["blocks"], cfg["dense"], n_classes, scale)
        self.net.to(self.device)

    @property
    def n_classes(self):
        return self.net.n_classes

    @property
    def input_shape(self):
        """Raw image shape the preprocessing expects (channels before Y conversion)."""
        return self.net.input_shape

    def to_tensor(self, X) -> torch.Tensor:
        X = np.asarray(X)
        if X.ndim == 3:
            X = X[..., None]
        if X.ndim != 4:
            raise DataError(f"images must have shape (n, H, W) or (n, H, W, C), got {X.shape}")
        x = self.preprocess.apply(X) if X.dtype == np.uint8 else X.astype(np.float32)
        if tuple(x.shape[1:]) != tuple(self.net.input_shape):
            raise DataError(f"images have shape {tuple(x.shape[1:])} after preprocessing but the "
                            f"model expects {tuple(self.net.input_shape)} (H, W, C)")
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).to(self.device)

    @torch.no_grad()
    def decision_function(self, X, batch_size: int = 512) -> np.ndarray:
        self.net.eval()
        outs = [self.net(self.to_tensor(X[i:i + batch_size])).cpu().numpy()
                for i in range(0, len(X), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.n_classes), np.float32)

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X).argmax(1)

    def score(self, X, y) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y)))

    @torch.no_grad()
    def forward_features(self, X) -> np.ndarray:
        self.net.eval()
        return self.net.forward_features(self.to_tensor(X)).cpu().numpy()

    def reset_classifier(self, num_classes: int):
        self.net.reset_classifier(num_classes)
        self.net.to(self.device)
        return self

    def fit(self, X, y, **train_kwargs):
        """Train on arrays (a validation split is carved from them); see ``train_cbcnn``."""
        from ..data import Dataset
        from ..train_cbcnn import train_cbcnn

        X = np.asarray(X)
        X = X[..., None] if X.ndim == 3 else X
        y = np.asarray(y, dtype=np.int64)
        ds = Dataset("arrays", X, y, X[:0], y[:0], self.n_classes)
        result = train_cbcnn(ds, model=self, **train_kwargs)
        self.history_ = result["history"]
        return self

    def profile(self) -> list[dict]:
        return self.net.profile()


register_model("cbcnn", CBCNN)


def save_cbcnn(model: CBCNN, path, **meta) -> None:
    from ..io import save_model_file

    arrays = {}
    for k, v in model.net.state_dict().items():
        v = v.detach().cpu()
        if k.endswith(".weight") and v.dim() >= 2 and not model.net.scale:
            arrays[k] = sign_pm1(v).numpy().astype(np.int8)  # 1 bit of information each
        else:
            arrays[k] = v.numpy()
    config = {"family": "cbcnn", "preset": model.preset, "net": model.net.config(),
              "preprocess": model.preprocess.to_dict(), **meta}
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
    return model
