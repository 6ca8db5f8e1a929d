"""``folder:PATH`` sources: one sub-folder per class, any image Pillow reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError


def read_folder(root: Path, resize=None, grayscale: bool = False, shape=None, classes=None):
    """(images, labels, class names, notes) from one sub-folder per class.

    Files Pillow cannot read (a stray ``readme.txt``) are skipped and counted in
    one note. ``shape``/``classes`` make a separate test folder match its
    training folder.
    """
    from PIL import Image, UnidentifiedImageError

    if resize is not None:
        resize = tuple(int(v) for v in resize)
        if len(resize) != 2 or min(resize) < 1:
            raise DataError(f"--resize takes H,W with positive sizes, got {resize}")
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root} has no class sub-folders")
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root} has class folders the training folder lacks: "
                            f"{', '.join(extra[:5])}")
    else:
        classes = found
    if shape is not None:
        shape = tuple(shape)
        if shape[-1] == 1:
            shape = shape[:-1]
    images, labels, skipped = [], [], []
    for label, cls in enumerate(classes):
        if cls not in found:
            continue
        files = sorted(f for f in (root / cls).iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise DataError(f"class folder {root / cls} is empty")
        before = len(images)
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    gray = grayscale or im.mode in ("L", "1", "I", "I;16")
                    im = im.convert("L" if gray else "RGB")
                    if resize is not None:
                        im = im.resize(tuple(resize)[::-1], Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                skipped.append(f)
                continue
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise DataError(f"{f} has shape {arr.shape}, others have {shape}; pass "
                                f"--resize H,W (and --grayscale when colour and gray images mix)")
            images.append(arr)
            labels.append(label)
        if len(images) == before:
            raise DataError(f"class folder {root / cls} holds no image that Pillow can read")
    if not images:
        raise DataError(f"{root} holds no image that Pillow can read")
    notes = []
    if skipped:
        notes.append(f"skipped {len(skipped)} file(s) that are not images Pillow reads "
                     f"(e.g. {skipped[0].relative_to(root)})")
    return np.stack(images), np.array(labels, dtype=np.int64), classes, notes

