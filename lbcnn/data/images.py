"""Image files to uint8 pixels: the one path every command takes (``folder:`` datasets,
``lbcnn predict``, the C export's test vectors), and the one the generated C repeats.

1. **Open.** Only a regular file is opened (a FIFO or device would block or never end);
   its pixel count is read from the header and checked against ``MAX_PIXELS`` before
   anything is decoded.
2. **Orientation.** The EXIF orientation tag is applied (``ImageOps.exif_transpose``), so a
   phone photo is upright, as it is shown.
3. **8 bits per channel**, by the image's pixel format (never by its values):

   - 8-bit gray (``L``, ``1``, ``LA``) stays gray; alpha is dropped;
   - 16-bit gray (``I;16*``): ``v / 257`` rounded (65535 -> 255);
   - 32-bit integer (``I``): read as 16-bit values, so 0..65535 -> ``v / 257`` rounded;
     an image with a value outside 0..65535 is refused;
   - 32-bit float (``F``): intensities in [0, 1], ``v * 255`` rounded half to even; an
     image with a value outside [0, 1], or NaN, is refused;
   - everything else (RGB, RGBA, palette, CMYK, YCbCr, ...): Pillow's RGB conversion,
     alpha dropped.

4. **Resize** (when the size differs): an *area* resize in exact integer arithmetic. Each
   output pixel is the mean of the source pixels it covers, each weighted by the overlap
   of the two pixel grids, rounded half up: with the source H x W and the output h x w,
   ``out = (2 * sum(ov_r * ov_c * src) + H*W) // (2 * H*W)``, where ``ov_r`` (``ov_c``) is
   the overlap of a source row (column) with the output row (column), in units of 1/(H*h)
   (1/(W*w)) of the image. Downscaling therefore averages every pixel (no aliasing) and
   the generated ``lbcnn_prepare_*`` C functions compute the same bytes.
5. **Channels, after the resize:** gray -> RGB copies the channel; RGB -> gray is the exact
   integer BT.601 luma of :func:`lbcnn.preprocess.rgb_to_y` (``round((299 R + 587 G +
   114 B) / 1000)``, halves to even).
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError

# the largest image decoded (width x height): 100 megapixels is 300 MB of RGB; a phone
# photo is 12-50 megapixels
MAX_PIXELS = 100_000_000

_GRAY_16 = ("I;16", "I;16L", "I;16B", "I;16N")
_GRAY_8 = ("L", "1", "LA", "La")


class ImageError(DataError):
    """An image file that cannot be used; ``reason`` names the kind, for the skip note."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def require_regular_file(path, what: str = "file") -> Path:
    """``path`` if it is a regular file (symbolic links followed); one line otherwise.
    Checked before opening: reading a FIFO blocks until a writer comes, a device never ends."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise DataError(f"{what} not found: {p}") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise ImageError(f"{p} is {kind}, not a regular file; lbcnn reads only regular files",
                         "not a regular file")
    return p


def decode(path) -> np.ndarray:
    """An image file as uint8 pixels, (H, W) for gray or (H, W, 3) for colour, upright;
    ``ImageError`` (one line, with a ``reason``) when it cannot be used."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = require_regular_file(path, "image")
    try:
        with warnings.catch_warnings():
            # the pixel limit below is lbcnn's own; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise _too_large(p, w, h)
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except (ValueError, TypeError, KeyError, OSError, SyntaxError):
                    pass  # an unreadable EXIF block: the pixels as stored
                return _eight_bit(im, p)
    except Image.DecompressionBombError:
        raise _too_large(p, None, None) from None
    except UnidentifiedImageError:
        raise ImageError(f"{p}: not an image Pillow reads", "not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{p}: truncated or corrupt image ({type(exc).__name__})",
                         "truncated or corrupt") from None


def _too_large(p, w, h) -> ImageError:
    size = f"{w} x {h} = {w * h / 1e6:.0f} megapixels" if w else "over Pillow's bomb limit"
    return ImageError(f"{p}: {size}; lbcnn decodes images up to {MAX_PIXELS / 1e6:.0f} "
                      f"megapixels (scale it down first)", "too large")


def _eight_bit(im, p) -> np.ndarray:
    mode = im.mode
    if mode in _GRAY_8:
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode in _GRAY_16 or mode == "I":
        a = np.asarray(im)
        if mode == "I" and a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ImageError(f"{p}: 32-bit integer pixels outside 0..65535 "
                             f"([{int(a.min())}, {int(a.max())}]); save it with 8 or 16 bits",
                             "pixel values out of range")
        return ((a.astype(np.int64) + 128) // 257).astype(np.uint8)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
            raise ImageError(f"{p}: floating-point pixels must lie in [0, 1] (got "
                             f"[{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]{', NaN' if np.isnan(a).any() else ''})",
                             "pixel values out of range")
        return np.round(a * 255.0).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def overlaps(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) integer overlap of output cell i, [i*n_in, (i+1)*n_in), with input
    cell j, [j*n_out, (j+1)*n_out), on a grid of n_in*n_out units; rows sum to n_in."""
    out_edges = np.arange(n_out + 1, dtype=np.int64) * n_in
    in_edges = np.arange(n_in + 1, dtype=np.int64) * n_out
    lo = np.maximum(out_edges[:-1, None], in_edges[None, :-1])
    hi = np.minimum(out_edges[1:, None], in_edges[None, 1:])
    return np.clip(hi - lo, 0, None)


def area_resize(x: np.ndarray, size) -> np.ndarray:
    """(H, W[, C]) uint8 -> (h, w[, C]) uint8, the exact overlap-weighted mean (module doc)."""
    x = np.asarray(x)
    h, w = (int(v) for v in size)
    H, W = x.shape[:2]
    if (H, W) == (h, w):
        return x.copy()
    x3 = x.reshape(H, W, -1)
    mv = overlaps(h, H).astype(np.float64)
    mh = overlaps(w, W).astype(np.float64)
    # float64 sums of integer products stay exact below 2**53 (here at most 255*H*W), so
    # BLAS gives the same integers the C's uint64 accumulators do, in any summation order
    t = np.zeros((h, W, x3.shape[2]))
    step = max(1, (1 << 22) // max(W * x3.shape[2], 1))  # rows per chunk: ~32 MB of float64
    for r0 in range(0, H, step):
        t += np.tensordot(mv[:, r0:r0 + step], x3[r0:r0 + step].astype(np.float64), axes=(1, 0))
    n = np.tensordot(t, mh, axes=(1, 1)).transpose(0, 2, 1)     # (h, w, C)
    d = H * W
    out = (2 * np.rint(n).astype(np.int64) + d) // (2 * d)
    return out.astype(np.uint8).reshape((h, w) + x.shape[2:])


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) gray or (H, W, 3) colour -> (H, W, channels): copy gray, or BT.601 luma."""
    from ..preprocess import rgb_to_y

    gray = x.ndim == 2 or x.shape[-1] == 1
    if channels == 1:
        return x.reshape(x.shape[:2] + (1,)) if gray else rgb_to_y(x[None])[0]
    if channels == 3:
        return np.repeat(x.reshape(x.shape[:2] + (1,)), 3, axis=2) if gray else x
    raise DataError(f"images have 1 or 3 channels, not {channels}")


def prepare(x: np.ndarray, size=None, channels: int | None = None) -> np.ndarray:
    """Decoded pixels -> the model's input: area resize to ``size`` (H, W) first, then
    ``channels`` (1 or 3; None keeps the image's own). Always (H, W, C) uint8."""
    if size is not None:
        x = area_resize(x, size)
    if channels is None:
        channels = 1 if x.ndim == 2 else x.shape[-1]
    return to_channels(x, channels)


def load_image(path, size=None, channels: int | None = None) -> tuple[np.ndarray, str]:
    """``decode`` then ``prepare``; returns the pixels and what the file held
    ("gray 640x480" / "colour 3024x4032"), for notes."""
    raw = decode(path)
    what = f"{'gray' if raw.ndim == 2 else 'colour'} {raw.shape[1]}x{raw.shape[0]}"
    return prepare(raw, size, channels), what
