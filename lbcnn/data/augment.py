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


def affine_params(n: int, h: int, w: int, max_shift: float, max_rotate: float, max_zoom: float,
                  rng: np.random.Generator) -> np.ndarray:
    """``n`` random (rotation, zoom, shift) draws as ``affine_grid`` matrices, shape (n, 2, 3).

    Rotation is uniform in +-``max_rotate`` degrees, zoom in [1 - max_zoom, 1 + max_zoom],
    shift in +-``max_shift`` pixels per axis, all about the image centre.
    """
    if min(max_shift, max_rotate, max_zoom) < 0 or max_zoom >= 1:
        raise ConfigError("need max_shift >= 0, max_rotate >= 0 and 0 <= max_zoom < 1")
    ang = np.deg2rad(rng.uniform(-max_rotate, max_rotate, n))
    zoom = rng.uniform(1 - max_zoom, 1 + max_zoom, n)
    dy, dx = rng.uniform(-max_shift, max_shift, (2, n))
    # theta maps output coords to input coords (normalised to [-1, 1]): the
    # inverse of "rotate by ang, zoom by zoom, then translate by (dx, dy)".
    cos, sin = np.cos(ang) / zoom, np.sin(ang) / zoom
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1] = cos, sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = -sin * w / h, cos
    tx, ty = -2 * dx / w, -2 * dy / h
    theta[:, 0, 2] = theta[:, 0, 0] * tx + theta[:, 0, 1] * ty
    theta[:, 1, 2] = theta[:, 1, 0] * tx + theta[:, 1, 1] * ty
    return theta


def elastic_offsets(n: int, h: int, w: int, alpha: float, sigma: float,
                    rng: np.random.Generator) -> np.ndarray:
    """``n`` random elastic displacement fields (Simard et al., 2003), shape (n, h, w, 2).

    Each pixel's (dx, dy) is uniform in [-1, 1], smoothed by a Gaussian of std
    ``sigma`` pixels and scaled by ``alpha`` pixels; returned in ``grid_sample``
    units (x then y, normalised to [-1, 1]) so it adds straight onto an
    ``affine_grid``. Small ``sigma`` gives noise, large ``sigma`` near-affine moves.
    """
    from scipy.ndimage import gaussian_filter

    if alpha < 0 or sigma <= 0:
        raise ConfigError(f"elastic needs alpha >= 0 and sigma > 0, got {alpha} and {sigma}")
    field = rng.uniform(-1.0, 1.0, (n, h, w, 2))
    field = gaussian_filter(field, sigma=(0, sigma, sigma, 0), mode="constant", cval=0.0)
    field *= alpha
    field[..., 0] *= 2.0 / w
    field[..., 1] *= 2.0 / h
    return field.astype(np.float32)


def warp_batch(x, theta, offsets=None):
    """Bilinear warp of a float NCHW torch batch by ``affine_params`` matrices, border
    repeated; ``offsets`` (n, H, W, 2), e.g. ``elastic_offsets``, move each sample point further."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
    grid = F.affine_grid(t, list(x.shape), align_corners=False)
    if offsets is not None:
        grid = grid + torch.as_tensor(offsets, dtype=x.dtype, device=x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_affine(x: np.ndarray, max_shift: float, max_rotate: float, max_zoom: float,
                  rng: np.random.Generator, elastic: float = 0.0,
                  elastic_sigma: float = 4.0) -> np.ndarray:
    """Each image rotated by up to ``max_rotate`` degrees, zoomed by a factor in
    [1 - max_zoom, 1 + max_zoom] and moved by up to ``max_shift`` pixels, about
    its centre, bilinear, border pixels repeated; back to the input dtype
    (uint8 is rounded), so the integer feature path still applies.
    ``elastic`` > 0 adds an ``elastic_offsets`` field (alpha, sigma in pixels)
    drawn after the affine parameters, so runs without it draw as before.
    """
    import torch

    if x.ndim != 4:
        raise DataError(f"random_affine needs NHWC images, got shape {tuple(x.shape)}")
    n, h, w, _ = x.shape
    theta = affine_params(n, h, w, max_shift, max_rotate, max_zoom, rng)
    out = np.empty_like(x)
    for a in range(0, n, 4096):
        xb = torch.from_numpy(np.ascontiguousarray(x[a:a + 4096])).permute(0, 3, 1, 2).float()
        off = elastic_offsets(len(xb), h, w, elastic, elastic_sigma, rng) if elastic > 0 else None
        yb = warp_batch(xb, theta[a:a + 4096], off).permute(0, 2, 3, 1).numpy()
        if np.issubdtype(x.dtype, np.integer):
            info = np.iinfo(x.dtype)
            yb = np.clip(np.rint(yb), info.min, info.max)
        out[a:a + 4096] = yb.astype(x.dtype)
    return out


# -- horizontal flip and random erasing (CBCNN training recipe) ----------------------
# Datasets whose classes survive a left-right mirror. Digits (mnist) and traffic signs
# (gtsrb: "keep left" <-> "keep right", turn signs, mirrored glyphs) change class, and
# unknown npz:/folder: datasets are refused because nothing says a mirror is harmless.
FLIP_SAFE = ("fashion_mnist", "cifar10", "olivetti")


def check_flip_allowed(dataset_name: str) -> None:
    """Raise a one-line ``ConfigError`` unless mirroring keeps ``dataset_name``'s classes."""
    name = str(dataset_name)
    if name in FLIP_SAFE:
        return
    why = {"mnist": "a mirrored digit is no longer the same digit",
           "gtsrb": "a mirrored sign can be another class (keep left/right, turn left/right) "
                    "or no sign at all"}.get(name, "lbcnn cannot tell whether a mirror keeps its "
                                                   "classes")
    raise ConfigError(f"--flip refused for {name}: {why}; flipping is allowed for "
                      f"{', '.join(FLIP_SAFE)}")


def flip_params(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` coin tosses: True where an image is mirrored left-right (probability 1/2)."""
    return rng.random(n) < 0.5


def flip_batch(x, flips):
    """Mirror (along the width, the last axis) the NCHW torch images where ``flips`` is True."""
    import torch

    flips = torch.as_tensor(np.asarray(flips, dtype=bool), device=x.device)
    if not bool(flips.any()):
        return x
    return torch.where(flips.view(-1, 1, 1, 1), torch.flip(x, dims=[3]), x)


ERASE_AREA = (0.02, 0.33)   # share of the image erased (Zhong et al. 2017, torchvision)
ERASE_RATIO = (0.3, 3.3)    # height / width of the erased box, log-uniform


def erase_params(n: int, h: int, w: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Random-erasing boxes, shape (n, 4) int: (top, left, height, width); height 0 = not erased.

    Each image is erased with probability ``p``; the box covers a uniform
    ``ERASE_AREA`` share of the image with a log-uniform ``ERASE_RATIO`` aspect,
    clipped to the image, at a uniform position. Every draw is made for every
    image (erased or not), so the stream does not depend on ``p``'s outcomes.
    """
    if not (0.0 <= p <= 1.0):
        raise ConfigError(f"erase probability must be in [0, 1], got {p}")
    if n == 0:
        return np.zeros((0, 4), np.int64)
    on = rng.random(n) < p
    area = rng.uniform(*ERASE_AREA, n) * h * w
    ratio = np.exp(rng.uniform(np.log(ERASE_RATIO[0]), np.log(ERASE_RATIO[1]), n))
    eh = np.clip(np.rint(np.sqrt(area * ratio)), 1, h).astype(np.int64)
    ew = np.clip(np.rint(np.sqrt(area / ratio)), 1, w).astype(np.int64)
    top = np.floor(rng.random(n) * (h - eh + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (w - ew + 1)).astype(np.int64)
    eh[~on] = 0
    return np.stack([top, left, eh, ew], 1)


def erase_batch(x, boxes, value: float = 0.0):
    """Fill each NCHW torch image's ``erase_params`` box (all channels) with ``value``.

    0 is the background of [0, 1]-scaled images and the mean of standardized ones."""
    import torch

    boxes = np.asarray(boxes)
    if not (boxes[:, 2] > 0).any():
        return x
    _, _, h, w = x.shape
    rows, cols = np.arange(h), np.arange(w)
    top, left, eh, ew = (boxes[:, i, None] for i in range(4))
    in_rows = (rows >= top) & (rows < top + eh)          # (n, h)
    in_cols = (cols >= left) & (cols < left + ew)        # (n, w)
    mask = torch.as_tensor(in_rows[:, :, None] & in_cols[:, None, :], device=x.device)
    return x.masked_fill(mask[:, None], value)
