"""Image files as model input: ``read_image`` converts one to the uint8 (H, W, C) a model takes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .sniff import sniff


def read_image(path, shape) -> tuple[np.ndarray, str | None]:
    """An image file as uint8 (H, W, C) for a model taking ``shape``; and a note
    when it had to be converted or resized (None when it fit as is)."""
    from PIL import Image, UnidentifiedImageError

    h, w, c = shape
    p = Path(path)
    if not p.exists():
        raise DataError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            mode, size = im.mode, im.size
            want = "L" if c == 1 else "RGB"
            conv = im.convert(want) if im.mode != want else im
            if conv.size != (w, h):
                conv = conv.resize((w, h), Image.BILINEAR)
            x = np.asarray(conv, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{p}: cannot read it as an image ({sniff(p)}; {exc.__class__.__name__})") \
            from None
    x = x[..., None] if x.ndim == 2 else x
    changes = []
    if mode != ("L" if c == 1 else "RGB"):
        changes.append(f"{mode} -> {'gray' if c == 1 else 'RGB'}")
    if size != (w, h):
        changes.append(f"{size[0]}x{size[1]} -> {w}x{h} (bilinear)")
    note = f"{p.name}: converted {', '.join(changes)} for the model" if changes else None
    return x, note
