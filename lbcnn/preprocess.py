"""The CBCNN image compression block, usable by any family.

1. RGB -> YUV, keep Y (BT.601 luma: 0.299 R + 0.587 G + 0.114 B, rounded half
   to even in exact integer arithmetic, so every runtime gets the same pixels);
2. per-image histogram equalization (the paper's eq 1), uint8 -> uint8;
3. per-image standardization ``(m - mu) / max(sigma, 1/sqrt(P))`` (eq 2),
   P the number of values in the image.

All functions take uint8 NHWC numpy arrays (``(n, H, W)`` is read as one channel).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError, DataError

# BT.601 luma weights in thousandths: Y = round(s / 1000), s = 299 R + 587 G + 114 B.
# In floating point the exact halves (s % 1000 == 500) land either side of .5
# depending on the summation order, so numpy, onnxruntime and C would disagree.
LUMA_PERMILLE = np.array([299, 587, 114], dtype=np.int64)


def _nhwc(x: np.ndarray, need_uint8: bool = True) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"images must have shape (n, H, W) or (n, H, W, C), got {x.shape}")
    if need_uint8 and x.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got dtype {x.dtype}")
    return x


def rgb_to_y(x: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, H, W, 1) uint8 luma, rounded half to even, exactly.
    One channel passes through."""
    x = _nhwc(x)
    if x.shape[-1] == 1:
        return x
    if x.shape[-1] != 3:
        raise DataError(f"rgb_to_y needs 1 or 3 channels, got {x.shape[-1]}")
    q, r = np.divmod(x.astype(np.int64) @ LUMA_PERMILLE, 1000)
    y = q + ((r > 500) | ((r == 500) & (q % 2 == 1)))
    return y.astype(np.uint8)[..., None]  # at most 255: the weights sum to 1000


def model_input(x: np.ndarray, shape) -> np.ndarray:
    """A dataset's uint8 images as a model or plan taking ``shape`` (H, W, C) sees them:
    RGB images for a one-channel model (fitted on luma: ``lbcnn optimize``'s colour "y",
    a CBCNN with ``y_channel``) become their exact luma; any other mismatch is refused."""
    from .errors import ConfigError

    x = _nhwc(x)
    shape = tuple(int(v) for v in shape)
    if len(shape) == 3 and x.shape[-1] == 3 and shape[-1] == 1:
        x = rgb_to_y(x)
    if tuple(x.shape[1:]) != shape:
        raise ConfigError(f"the images have shape {tuple(x.shape[1:])} but the model takes "
                          f"{shape} (H, W, C)")
    return x


def equalize_hist(x: np.ndarray) -> np.ndarray:
    """Per-image, per-channel histogram equalization (eq 1):
    ``h(v) = round((cdf(v) - cdf_min) / (P - cdf_min) * 255)``. A constant image is
    returned unchanged."""
    x = _nhwc(x)
    n, h, w, c = x.shape
    out = np.empty_like(x)
    p = h * w
    for i in range(n):
        for ch in range(c):
            img = x[i, :, :, ch]
            cdf = np.cumsum(np.bincount(img.ravel(), minlength=256))
            cdf_min = cdf[img.min()]
            if p == cdf_min:
                out[i, :, :, ch] = img
                continue
            lut = np.rint((cdf - cdf_min) / (p - cdf_min) * 255.0)
            out[i, :, :, ch] = np.clip(lut, 0, 255).astype(np.uint8)[img]
    return out


def standardize(x: np.ndarray) -> np.ndarray:
    """Per-image standardization (eq 2), float32 out; P = H*W*C values per image."""
    x = _nhwc(x, need_uint8=False).astype(np.float64)
    p = int(np.prod(x.shape[1:]))
    mu = x.mean(axis=(1, 2, 3), keepdims=True)
    sigma = x.std(axis=(1, 2, 3), keepdims=True)
    return ((x - mu) / np.maximum(sigma, 1.0 / np.sqrt(p))).astype(np.float32)


@dataclass(frozen=True)
class Preprocess:
    """Which compression steps to apply; ``apply`` returns float32 NHWC model input.
    Without ``standardize`` the pixels are scaled by ``input_scale`` (default 1/255)."""

    y_channel: bool = False
    equalize: bool = False
    standardize: bool = False
    input_scale: float = 1.0 / 255.0

    def out_channels(self, channels: int) -> int:
        return 1 if self.y_channel else channels

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = _nhwc(x)
        if self.y_channel:
            x = rgb_to_y(x)
        if self.equalize:
            x = equalize_hist(x)
        if self.standardize:
            return standardize(x)
        return x.astype(np.float32) * np.float32(self.input_scale)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d) -> "Preprocess":
        if d is None:
            return cls()
        if isinstance(d, Preprocess):
            return d
        if isinstance(d, str):
            from .metadata import load_json
            d = load_json(d, "preprocessing options")
        if not isinstance(d, dict):
            raise ConfigError(f"preprocessing options must be a JSON object, got {str(d)[:40]}")
        unknown = set(d) - {"y_channel", "equalize", "standardize", "input_scale"}
        if unknown:
            raise ConfigError(f"unknown preprocessing options {sorted(unknown)}")
        flags = [k for k in ("y_channel", "equalize", "standardize")
                 if k in d and not isinstance(d[k], bool)]
        scale = d.get("input_scale", 1.0 / 255.0)
        if flags or isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale):
            raise ConfigError(f"preprocessing options must be true/false flags and a finite "
                              f"input_scale, got {str(d)[:80]}")
        return cls(**d)
