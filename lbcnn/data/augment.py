"""Training-time augmentation on uint8 NHWC images (no float copy, no torch)."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by its own random (dy, dx) in [-max_shift, max_shift]^2.

    Cells uncovered by the move repeat the nearest border pixel (for MNIST-style
    digits that is background; for photos it avoids black bars a conv body
    would read as edges). Returns a new array of the same shape and dtype.
    """
    s = int(max_shift)
    if s < 0:
        raise ConfigError(f"max_shift must be >= 0, got {max_shift}")
    if x.ndim != 4:
        raise DataError(f"random_shift needs NHWC images, got shape {tuple(x.shape)}")
    n, h, w, _ = x.shape
    if s == 0 or n == 0:
        return x.copy()
    if s >= min(h, w):
        raise ConfigError(f"max_shift {s} must be smaller than the image ({h}x{w})")
    padded = np.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), mode="edge")
    dy = rng.integers(-s, s + 1, n)
    dx = rng.integers(-s, s + 1, n)
    out = np.empty_like(x)
    # One slice per distinct shift: (2s+1)^2 vectorised copies, not n.
    for a in range(-s, s + 1):
        for b in range(-s, s + 1):
            idx = np.flatnonzero((dy == a) & (dx == b))
            if len(idx):
                # output pixel (i, j) shows input pixel (i - a, j - b)
                out[idx] = padded[idx, s - a:s - a + h, s - b:s - b + w]
    return out
