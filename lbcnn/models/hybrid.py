"""Hybrid: a binarized image and fixed +-1 kernels feeding a small float MLP.

The binary part follows the paper on binarized convolutions feeding a
non-binary fully connected network:

    image --threshold--> +-1 map (28x28)
      --3x3 'valid' XNOR-popcount conv (out = 2P - N)--> 26x26
      --2x2 average pool, stride 1, last row/col replicated--> 26x26 --sign--> +-1
      --3x3 'valid' XNOR-popcount conv--> 24x24
      --2x2 average pool, stride 1, replicated edge--> 24x24 --sign--> +-1
      = 576 features  --> MLP 576 -> 120 sigmoid -> classes (softmax)

The paper fixes two unpadded convolutions and 576 features but not the
pooling geometry; a stride-1 pool with a replicated (not zero) edge keeps
24 x 24 = 576 and adds no zero padding, which the paper avoids because zeros
distort a binary signal. sign(0) is +1 throughout.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import ConfigError, DataError
from . import register_model
from ._sk import load_estimator, save_estimator, softmax

# Edge probes made only of +-1: top-vs-bottom (horizontal edges) for the first
# conv, left-vs-right (vertical edges) for the second. The paper names the
# orientations but not the values; among the probe shapes we tried, these won
# on validation (MNIST, 9k fit / 1k val, seed 0): 92.9 % against 75.9 % for
# thin line probes ([-1,-1,-1],[1,1,1],[-1,-1,-1]) and 89.3 % for one random pair.
PAPER_KERNELS = {
    "horizontal": np.array([[1, 1, 1], [1, 1, 1], [-1, -1, -1]], dtype=np.int8),
    "vertical": np.array([[1, 1, -1], [1, 1, -1], [1, 1, -1]], dtype=np.int8),
}
LINE_PROBES = {
    "horizontal": np.array([[-1, -1, -1], [1, 1, 1], [-1, -1, -1]], dtype=np.int8),
    "vertical": np.array([[-1, 1, -1], [-1, 1, -1], [-1, 1, -1]], dtype=np.int8),
}


def otsu_threshold(img: np.ndarray) -> int:
    """Otsu's threshold on one uint8 image: maximises between-class variance."""
    hist = np.bincount(img.ravel(), minlength=256).astype(np.float64)
    p = hist / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_b = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    sigma_b[~np.isfinite(sigma_b)] = -1
    return int(np.argmax(sigma_b))


def binarize_images(x: np.ndarray, threshold) -> np.ndarray:
    """uint8 (n, H, W[, 1]) -> int8 +-1 (n, H, W); pixel > t is +1."""
    x = np.asarray(x)
    if x.ndim == 4:
        if x.shape[-1] != 1:
            raise DataError(f"the hybrid takes grayscale images, got {x.shape[-1]} channels")
        x = x[..., 0]
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataError(f"expected uint8 images (n, H, W), got {x.dtype} {x.shape}")
    if threshold == "otsu":
        t = np.array([otsu_threshold(im) for im in x], dtype=np.int32)[:, None, None]
    else:
        t = float(threshold)
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"threshold must be 'otsu' or in [0, 1], got {threshold}")
        t = t * 255.0
    return np.where(x > t, 1, -1).astype(np.int8)


def pm1_conv_valid(a: torch.Tensor, k: np.ndarray) -> torch.Tensor:
    """(n, H, W) +-1 float tensor conv 'valid' with a +-1 (3, 3) kernel: exact small ints."""
    w = torch.as_tensor(k, dtype=a.dtype).view(1, 1, *k.shape)
    return F.conv2d(a.unsqueeze(1), w).squeeze(1)


def avgpool_rebinarize(a: torch.Tensor) -> torch.Tensor:
    """2x2 average, stride 1, the last row/column replicated, then sign (0 -> +1)."""
    padded = F.pad(a.unsqueeze(1), (0, 1, 0, 1), mode="replicate")
    avg = F.avg_pool2d(padded, 2, stride=1).squeeze(1)
    return torch.where(avg >= 0, 1.0, -1.0)


class HybridBody:
    """The fixed binary front end. ``kernels`` is a list of (3, 3) +-1 arrays."""

    def __init__(self, input_shape, kernels, threshold=0.5):
        self.input_shape = tuple(int(s) for s in input_shape)
        raw = [np.asarray(k) for k in kernels]
        if not 1 <= len(raw) <= 64:
            raise ConfigError(f"the hybrid needs 1 to 64 kernels, got {len(raw)}")
        for k in raw:
            if k.shape != (3, 3) or k.dtype.kind not in "iuf" or not np.all(np.abs(k) == 1):
                raise ConfigError("hybrid kernels must be 3x3 arrays of exactly +-1")
        self.kernels = [k.astype(np.int8) for k in raw]
        self.threshold = threshold
        h, w = self.input_shape[:2]
        if h - 2 * len(self.kernels) < 1 or w - 2 * len(self.kernels) < 1:
            raise ConfigError(f"input {h}x{w} is too small for {len(self.kernels)} valid 3x3 convs")

    @classmethod
    def make(cls, input_shape, kernels="paper", threshold=0.5, seed=0):
        if isinstance(kernels, str):
            if kernels == "paper":
                ks = [PAPER_KERNELS["horizontal"], PAPER_KERNELS["vertical"]]
            elif kernels == "lines":
                ks = [LINE_PROBES["horizontal"], LINE_PROBES["vertical"]]
            elif kernels == "random":
                rng = np.random.default_rng(seed)
                ks = [(rng.integers(0, 2, (3, 3)) * 2 - 1).astype(np.int8) for _ in range(2)]
            else:
                raise ConfigError(f"kernels must be 'paper', 'lines', 'random' or arrays, "
                                  f"got {kernels!r}")
        else:
            ks = kernels
        return cls(input_shape, ks, threshold)

    @property
    def output_shape(self):
        h, w = self.input_shape[:2]
        n = len(self.kernels)
        return h - 2 * n, w - 2 * n

    @property
    def n_features(self) -> int:
        h, w = self.output_shape
        return h * w

    def transform(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """uint8 images -> int8 +-1 features (n, n_features)."""
        b = binarize_images(x, self.threshold)
        if tuple(b.shape[1:]) != self.input_shape[:2]:
            raise DataError(f"images are {b.shape[1:]} but the model expects {self.input_shape[:2]}")
        out = np.empty((len(b), self.n_features), dtype=np.int8)
        with torch.inference_mode():
            for s in range(0, len(b), batch_size):
                a = torch.from_numpy(b[s:s + batch_size].astype(np.float32))
                for k in self.kernels:
                    a = avgpool_rebinarize(pm1_conv_valid(a, k))
                out[s:s + batch_size] = a.reshape(len(a), -1).numpy().astype(np.int8)
        return out


class HybridMLP(nn.Module):
    def __init__(self, n_in, hidden, n_classes, init_range=0.5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(n_in, hidden)
        self.out = nn.Linear(hidden, n_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.empty(p.shape).uniform_(-init_range, init_range, generator=g))

    def forward(self, x):
        return self.out(torch.sigmoid(self.hidden(x)))


class Hybrid(ClassifierMixin, BaseEstimator):
    """scikit-learn hybrid classifier (binary front end, float MLP head) on uint8
    grayscale images (n, H, W[, 1])."""

    _OWN_CONFIG_KEYS = ("input_shape", "threshold", "n_kernels", "hidden", "classes")

    def __init__(self, kernels="paper", threshold="otsu", hidden=120, optimizer="adam", lr=1e-3,
                 epochs=60, batch_size=32, patience=10, weight_decay=0.0, random_state=0,
                 progress=False):
        self.kernels = kernels
        self.threshold = threshold
        self.hidden = hidden
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.progress = progress

    def _plan_memory(self, n_images: int) -> None:
        """The MLP with its gradients, Adam state and best copy (5 float32 copies), and the
        features as float32 (plus the int8 ones they come from): refused before torch
        allocates them."""
        from ..memory import human_bytes, require
        d, k, hidden = self.body_.n_features, len(self.classes_), int(self.hidden)
        weights = 4 * 5 * (hidden * (d + 1) + k * (hidden + 1))
        features = 5 * n_images * d
        batch = 4 * 4 * int(self.batch_size) * (hidden + k)
        require(weights + features + batch,
                f"the hybrid's MLP ({d:,} features x {hidden:,} hidden: "
                f"{human_bytes(weights)}) and its {n_images:,} images' features "
                f"({human_bytes(features)})",
                "use a smaller --hidden, smaller images or a smaller --train-size")

    def fit(self, X, y, X_val=None, y_val=None):
        X = np.asarray(X)
        y = np.asarray(y)
        if len(X) != len(y):
            raise DataError(f"{len(X)} images but {len(y)} labels")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        shape = X.shape[1:3] + (1,)
        self.body_ = HybridBody.make(shape, self.kernels, self.threshold, self.random_state)
        self.classes_ = np.unique(y if y_val is None else np.concatenate([y, y_val]))
        self._plan_memory(len(X) + (0 if X_val is None else len(X_val)))
        torch.manual_seed(self.random_state)
        f = torch.from_numpy(self.body_.transform(X).astype(np.float32))
        t = torch.from_numpy(np.searchsorted(self.classes_, y))
        if X_val is not None:
            fv = torch.from_numpy(self.body_.transform(X_val).astype(np.float32))
            tv = np.searchsorted(self.classes_, y_val)
        self.net_ = HybridMLP(f.shape[1], self.hidden, len(self.classes_), seed=self.random_state)
        opt = (torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD)(
            self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        g = torch.Generator().manual_seed(self.random_state)
        best, best_state, bad = -1.0, None, 0
        self.history_ = []
        start = time.perf_counter()
        for epoch in range(self.epochs):
            self.net_.train()
            perm = torch.randperm(len(f), generator=g)
            total = 0.0
            for s in range(0, len(f), self.batch_size):
                idx = perm[s:s + self.batch_size]
                loss = F.cross_entropy(self.net_(f[idx]), t[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            rec = {"epoch": epoch + 1, "loss": total / len(f)}
            if X_val is not None:
                with torch.no_grad():
                    rec["val_accuracy"] = float((self.net_(fv).argmax(1).numpy() == tv).mean())
                if rec["val_accuracy"] > best:
                    best, bad = rec["val_accuracy"], 0
                    best_state = {k: v.clone() for k, v in self.net_.state_dict().items()}
                else:
                    bad += 1
            self.history_.append(rec)
            if self.progress:
                print(f"epoch {epoch + 1}: loss {rec['loss']:.4f} val {rec.get('val_accuracy', float('nan')):.4f}")
            if X_val is not None and bad >= self.patience:
                break
        if best_state is not None:
            self.net_.load_state_dict(best_state)
        self.best_val_accuracy_ = best if X_val is not None else None
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def decision_function(self, X) -> np.ndarray:
        with torch.no_grad():
            f = torch.from_numpy(self.body_.transform(X).astype(np.float32))
            return self.net_(f).numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the MLP's logits (it is trained with cross-entropy)."""
        return softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]

    def score(self, X, y) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())

    def forward_features(self, X) -> np.ndarray:
        return self.body_.transform(X)

    def save(self, path) -> None:
        """Write the native ``.npz`` model file (``Hybrid.load`` reads it back)."""
        save_estimator(self, path)

    @classmethod
    def load(cls, path) -> "Hybrid":
        """Read a native hybrid model file or run folder."""
        return load_estimator(cls, path)

    def _save_native(self, path, **meta) -> None:
        save_hybrid(self, path, **meta)

    def reset_classifier(self, num_classes: int):
        self.net_ = HybridMLP(self.body_.n_features, self.hidden, num_classes, seed=self.random_state)
        self.classes_ = np.arange(num_classes)
        return self


def save_hybrid(model: Hybrid, path, **meta) -> None:
    from ..io.native import save_model_file

    config = {"family": "hybrid", "input_shape": list(model.body_.input_shape),
              "threshold": model.body_.threshold, "n_kernels": len(model.body_.kernels),
              "hidden": model.hidden, "classes": [int(c) for c in model.classes_], **meta}
    arrays = {f"body/kernel/{i}": k for i, k in enumerate(model.body_.kernels)}
    for k, v in model.net_.state_dict().items():
        arrays[f"mlp/{k}"] = v.numpy()
    save_model_file(path, config, arrays)


def load_hybrid(config: dict, arrays: dict) -> Hybrid:
    model = Hybrid(threshold=config["threshold"], hidden=config["hidden"])
    kernels = [arrays[f"body/kernel/{i}"] for i in range(config["n_kernels"])]
    model.body_ = HybridBody(tuple(config["input_shape"]), kernels, config["threshold"])
    model.classes_ = np.array(config["classes"])
    model.net_ = HybridMLP(model.body_.n_features, config["hidden"], len(model.classes_))
    state = {k[4:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("mlp/")}
    model.net_.load_state_dict(state)
    model.meta_ = config
    return model


register_model("hybrid", Hybrid)
