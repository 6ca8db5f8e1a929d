"""``folder:PATH`` sources: one sub-folder per class, any image Pillow reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError


def read_folder(root: Path, resize=None, grayscale: bool = False):
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders")
    images, labels, shape = [], [], None
    for label, cls in enumerate(classes):
        files = sorted(f for f in (root / cls).iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise DataError(f"class folder {root / cls} is empty")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    gray = grayscale or im.mode in ("L", "1", "I", "I;16")
                    im = im.convert("L" if gray else "RGB")
                    if resize is not None:
                        im = im.resize(tuple(resize)[::-1], Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise DataError(f"cannot read image {f}: {exc}") from None
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise DataError(f"{f} has shape {arr.shape}, others have {shape}; pass --resize H,W (or --grayscale when colour and gray images mix)")
            images.append(arr)
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64), classes

