"""The exact integer area resize: the same integers in NumPy, torch and the generated C.

Output pixel ``i`` of ``n_out`` covers the input interval ``[i n_in / n_out, (i+1) n_in /
n_out)``; its weight on input pixel ``j`` is the overlap divided by the interval's length.
In units of ``1 / n_out`` every overlap is an integer, so the weights are the rationals
``ov / n_in`` and their fixed-point table (``FRAC_BITS`` bits, each row summing to exactly
``2^FRAC_BITS``) is computed without floating point: floors, then the remainder handed
out one unit at a time to the largest fractional parts (ties to the lowest input index).
A 2-D resize applies the row table and the column table and rounds once:
``out = (A_h X A_w^T + 2^(2F-1)) >> 2F`` (at most ``255 * 2^2F`` < 2^31: exact in int32).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError

FRAC_BITS = 8
ONE = 1 << FRAC_BITS


def area_table(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) int64 weights, each row summing to ``2^FRAC_BITS``."""
    n_in, n_out = int(n_in), int(n_out)
    if n_in < 1 or n_out < 1:
        raise ConfigError(f"resize sizes must be positive, got {n_in} -> {n_out}")
    i = np.arange(n_out)[:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.minimum((i + 1) * n_in, (j + 1) * n_out) - np.maximum(i * n_in, j * n_out)
    overlap = np.maximum(overlap, 0).astype(np.int64)          # in units of 1 / n_out
    scaled = overlap * ONE
    table, rem = scaled // n_in, scaled % n_in
    short = ONE - table.sum(1)
    for r in range(n_out):
        # largest remainders first, then the lowest input index (a stable sort of -rem)
        order = np.argsort(-rem[r], kind="stable")
        table[r, order[:short[r]]] += 1
    return table


def resize_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The C's compact form: (first input index of each output, weights (n_out, taps)),
    ``taps`` the widest row's span; unused trailing weights are 0."""
    table = area_table(n_in, n_out)
    nz = table > 0
    first = nz.argmax(1)
    last = n_in - 1 - nz[:, ::-1].argmax(1)
    taps = int((last - first).max()) + 1
    weights = np.zeros((n_out, taps), np.int64)
    for r in range(n_out):
        span = table[r, first[r]:last[r] + 1]
        weights[r, :len(span)] = span
    # a row's span may end at the image's last pixel with fewer taps than the widest row
    first = np.minimum(first, n_in - taps)
    for r in range(n_out):
        weights[r] = table[r, first[r]:first[r] + taps]
    return first.astype(np.int64), weights


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 images (n, H, W[, C]) -> (n, size, size[, C]) uint8 by the exact area resize
    (unchanged when already that size)."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise DataError(f"the integer resize takes uint8 images, got {x.dtype}")
    if x.ndim not in (3, 4):
        raise DataError(f"images must be (n, H, W) or (n, H, W, C), got {x.shape}")
    h, w = x.shape[1:3]
    if (h, w) == (size, size):
        return x
    rows, cols = area_table(h, size), area_table(w, size)
    out = np.empty((len(x), size, size) + x.shape[3:], np.uint8)
    half = 1 << (2 * FRAC_BITS - 1)
    for a in range(0, len(x), 4096):
        xb = x[a:a + 4096].astype(np.int64)
        t = np.einsum("ij,nj...->ni...", rows, xb)
        t = np.einsum("kl,nil...->nik...", cols, t)
        out[a:a + 4096] = (t + half) >> (2 * FRAC_BITS)
    return out


def resize_torch(x, size: int):
    """The same resize of uint8-valued float NCHW torch images (any float dtype, values
    0..255 integers), exact: the sums stay below 2^31 and the float64 arithmetic is exact."""
    import torch

    h, w = x.shape[2:]
    if (h, w) == (size, size):
        return x
    rows = torch.as_tensor(area_table(h, size), dtype=torch.float64, device=x.device)
    cols = torch.as_tensor(area_table(w, size), dtype=torch.float64, device=x.device)
    t = torch.einsum("ij,ncjw,kw->ncik", rows, x.double(), cols)
    out = torch.floor((t + (1 << (2 * FRAC_BITS - 1))) / (1 << (2 * FRAC_BITS)))
    return out.to(x.dtype)


__all__ = ["FRAC_BITS", "area_table", "resize_images", "resize_table", "resize_torch"]
