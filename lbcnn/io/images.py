"""Image files as model input: ``read_image`` converts one to the uint8 (H, W, C) a model
takes, through the same pipeline as ``folder:`` datasets (:mod:`lbcnn.data.images`:
EXIF orientation, 8-bit rules, area resize, then channels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError


def read_image(path, shape) -> tuple[np.ndarray, str | None]:
    """An image file as uint8 (H, W, C) for a model taking ``shape``; and a note
    when it had to be converted or resized (None when it fit as is)."""
    from ..data.images import ImageError, decode, prepare
    from .sniff import sniff

    h, w, c = (int(v) for v in shape)
    p = Path(path)
    try:
        raw = decode(p)
    except ImageError as exc:
        if exc.reason == "not an image":
            raise DataError(f"{p}: cannot read it as an image ({sniff(p)})") from None
        raise
    gray = raw.ndim == 2
    x = prepare(raw, (h, w), c)
    changes = []
    if gray != (c == 1):
        changes.append(f"{'gray' if gray else 'RGB'} -> {'gray (BT.601 luma)' if c == 1 else 'RGB'}")
    if raw.shape[:2] != (h, w):
        changes.append(f"{raw.shape[1]}x{raw.shape[0]} -> {w}x{h} (area resize)")
    note = f"{p.name}: converted {', '.join(changes)} for the model" if changes else None
    return x, note
