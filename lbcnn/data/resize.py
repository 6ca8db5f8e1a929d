"""Batches of images through the package's exact integer area resize
(``data.images.area_resize``): the same integers for a whole array in NumPy, for float
NCHW batches in torch (training-time augmentation), and the compact tables the lowbit
family's generated C resizes with.

Output pixel (i, j) of an h x w image from an H x W one is
``(2 * sum(ov_r[i, y] * ov_c[j, x] * src[y, x]) + H*W) // (2 * H*W)``, with ``ov_r`` /
``ov_c`` the integer overlaps of ``images.overlaps`` (rows sum to H / W): the
overlap-weighted mean, rounded half up. Sums stay below ``511 * H * W``, exact in float64
and in the C's uint32.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .images import overlaps


def resize_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The C's compact form of ``overlaps(n_out, n_in)``: (first input index of each
    output, weights (n_out, taps)), ``taps`` the widest row's span (a shorter row is
    shifted back so its span stays inside the image, its extra weights 0)."""
    table = overlaps(int(n_out), int(n_in))
    nz = table > 0
    first = nz.argmax(1)
    last = n_in - 1 - nz[:, ::-1].argmax(1)
    taps = int((last - first).max()) + 1
    first = np.minimum(first, n_in - taps)
    weights = np.stack([table[r, first[r]:first[r] + taps] for r in range(n_out)])
    return first.astype(np.int64), weights.astype(np.int64)


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 images (n, H, W[, C]) -> (n, size, size[, C]) uint8 (unchanged when already
    that size); image for image what ``images.area_resize`` gives."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise DataError(f"the integer resize takes uint8 images, got {x.dtype}")
    if x.ndim not in (3, 4):
        raise DataError(f"images must be (n, H, W) or (n, H, W, C), got {x.shape}")
    h, w = x.shape[1:3]
    if (h, w) == (size, size):
        return x
    rows = overlaps(size, h).astype(np.float64)
    cols = overlaps(size, w).astype(np.float64)
    out = np.empty((len(x), size, size) + x.shape[3:], np.uint8)
    d = h * w
    for a in range(0, len(x), 4096):
        t = np.einsum("ij,nj...->ni...", rows, x[a:a + 4096].astype(np.float64))
        t = np.einsum("kl,nil...->nik...", cols, t)
        out[a:a + 4096] = (2 * np.rint(t).astype(np.int64) + d) // (2 * d)
    return out


def resize_torch(x, size: int):
    """The same resize of uint8-valued float NCHW torch images (any float dtype, values
    0..255 integers)."""
    import torch

    h, w = x.shape[2:]
    if (h, w) == (size, size):
        return x
    rows = torch.as_tensor(overlaps(size, h), dtype=torch.float64, device=x.device)
    cols = torch.as_tensor(overlaps(size, w), dtype=torch.float64, device=x.device)
    t = torch.einsum("ij,ncjw,kw->ncik", rows, x.double(), cols)
    d = h * w
    out = torch.div(2 * torch.round(t).long() + d, 2 * d, rounding_mode="floor")
    return out.to(x.dtype)


__all__ = ["resize_images", "resize_table", "resize_torch"]
