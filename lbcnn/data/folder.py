"""``folder:PATH`` sources: one sub-folder per class, images as photos really come.

Every image goes through :mod:`lbcnn.data.images` (regular files only, pixel limit,
EXIF orientation, 16-bit and float rules, area resize, then channels). Images in
sub-folders of a class folder belong to that class (with a note). Files that cannot be
used are skipped, counted by reason in one note that names up to five of them. A class
with fewer than a tenth of the median class's images gets a warning.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import ImageError, decode, prepare

SHOWN = 5  # files named in a note


@dataclass
class FolderImages:
    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    members: list[str]            # each image's path relative to the root, '/'-separated
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root} has no class sub-folders (one sub-folder per class, named by "
                        f"its class)")
    return found


def _files(folder: Path) -> list[Path]:
    """Every non-hidden entry below ``folder`` that is not a folder, sorted by path;
    symbolic links to folders are not followed (no loops)."""
    out = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(here) / f for f in files if not f.startswith(".")]
    return sorted(out, key=lambda p: p.relative_to(folder).parts)


def read_folder(root: Path, resize=None, channels: int | None = None, shape=None,
                classes=None) -> FolderImages:
    """The images under ``root``, one sub-folder per class.

    ``channels``: 1 (``--grayscale``), 3 (``--rgb``) or None (the images' own; a mix of
    gray and colour is refused). ``shape`` (H, W, C) and ``classes`` make a separate test
    folder match its training folder.
    """
    found = class_folders(root)
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root} has class folders the training folder lacks: "
                            f"{', '.join(extra[:SHOWN])}")
    else:
        classes = found
    size = tuple(int(v) for v in resize) if resize is not None else None
    if shape is not None:
        size = size or tuple(shape[:2])
        channels = int(shape[2])
    images, labels, members = [], [], []
    skipped: dict[str, list[str]] = {}
    nested: list[str] = []
    first = None                      # (relative path, (H, W)) of the first image, when not resizing
    kinds = {1: [], 3: []}            # relative paths of gray / colour images (channels None)
    loose = [p.name for p in root.iterdir() if not p.is_dir() and not p.name.startswith(".")]
    for label, cls in enumerate(classes):
        if cls not in found:
            continue
        files = _files(root / cls)
        if not files:
            raise DataError(f"class folder {root / cls} is empty")
        before = len(images)
        for f in files:
            rel = f.relative_to(root).as_posix()
            try:
                raw = decode(f)
            except ImageError as exc:
                skipped.setdefault(exc.reason, []).append(rel)
                continue
            if len(f.relative_to(root / cls).parts) > 1:
                nested.append(rel)
            if size is None:
                if first is None:
                    first = (rel, raw.shape[:2])
                elif raw.shape[:2] != first[1]:
                    h, w = raw.shape[:2]
                    raise DataError(f"{rel} is {w}x{h} but {first[0]} is "
                                    f"{first[1][1]}x{first[1][0]}; pass --resize H,W to bring "
                                    f"every image to one size")
            x = prepare(raw, size, channels)
            if channels is None:
                kinds[x.shape[-1]].append(rel)
            images.append(x)
            labels.append(label)
            members.append(rel)
        if len(images) == before:
            raise DataError(f"class folder {root / cls} holds no image that lbcnn can read"
                            + (f" ({_skip_note(skipped)})" if skipped else ""))
    if kinds[1] and kinds[3]:
        raise DataError(f"{root} mixes gray and colour images ({len(kinds[1])} gray, e.g. "
                        f"{kinds[1][0]}; {len(kinds[3])} colour, e.g. {kinds[3][0]}); pass --rgb "
                        f"to copy gray images into three channels, or --grayscale for one "
                        f"gray channel")
    y = np.array(labels, dtype=np.int64)
    notes, warns = [], []
    if skipped:
        notes.append(_skip_note(skipped))
    if loose:
        notes.append(f"{len(loose)} file(s) directly in {root} belong to no class folder and "
                     f"were left out (e.g. {', '.join(sorted(loose)[:SHOWN])})")
    if nested:
        subs = sorted({r.rsplit("/", 1)[0] for r in nested})
        notes.append(f"included {len(nested)} image(s) from {len(subs)} sub-folder(s) of class "
                     f"folders, each counted in its class folder's class (e.g. "
                     f"{', '.join(subs[:SHOWN])})")
    warns += rare_classes(y, classes)
    return FolderImages(np.stack(images), y, list(classes), members, notes, warns)


def _skip_note(skipped: dict[str, list[str]]) -> str:
    total = sum(len(v) for v in skipped.values())
    parts, shown = [], 0
    for reason, files in sorted(skipped.items(), key=lambda kv: -len(kv[1])):
        names = files[:max(SHOWN - shown, 0)]
        shown += len(names)
        more = f", +{len(files) - len(names)} more" if len(files) > len(names) else ""
        parts.append(f"{len(files)} {reason}" + (f" ({', '.join(names)}{more})" if names else ""))
    return f"skipped {total} file(s): " + "; ".join(parts)


def rare_classes(y: np.ndarray, classes: list[str]) -> list[str]:
    """A warning per class with fewer than a tenth of the median class's images."""
    counts = np.bincount(y, minlength=len(classes))
    present = counts[counts > 0]
    if len(present) < 2:
        return []
    median = float(np.median(present))
    return [f"class {classes[c]!r} has {counts[c]} image(s), under a tenth of the median "
            f"class ({median:g}): too few to learn it, and its test accuracy rests on a "
            f"handful of images"
            for c in range(len(classes)) if 0 < counts[c] < median / 10]
