"""A folder of "photos" as users bring them, for the own-images tests: one sub-folder per
class, JPEGs of mixed sizes and colour, some stored sideways with an EXIF orientation tag,
a 16-bit gray PNG, a nested sub-folder, a rare class, a stray text file and a truncated JPEG.

Class k is a bright horizontal band at height k of 4 on coloured noise: learnable at 16 x 16,
and a sideways photo read without its EXIF rotation shows a vertical band instead."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "star", "triangle")   # folder names, sorted
RARE = "triangle"
ORIENTATION = 0x0112


def upright(k: int, h: int, w: int, rng) -> np.ndarray:
    """(h, w, 3) uint8: class k's band on tinted noise."""
    tint = rng.integers(40, 120, 3)
    img = (rng.random((h, w, 1)) * 50 + tint).astype(np.float64)
    top, bottom = int(h * (0.05 + 0.24 * k)), int(h * (0.05 + 0.24 * k + 0.18))
    img[top:bottom] = 235 + rng.random((bottom - top, w, 1)) * 20
    return np.clip(img, 0, 255).astype(np.uint8)


def save_jpeg(path: Path, pixels: np.ndarray, sideways: bool = False) -> None:
    from PIL import Image

    im = Image.fromarray(pixels)
    if sideways:  # stored rotated; tag 6 says "turn 90 degrees clockwise to display"
        exif = Image.Exif()
        exif[ORIENTATION] = 6
        im.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)
    else:
        im.save(path, quality=92)


def make_photos(root: Path, per_class: int = 30, rare: int = 2, seed: int = 0) -> dict:
    """Write the folder; returns what it holds (paths relative to ``root``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    made = {"sideways": [], "png16": None, "nested": [], "junk": [], "images": 0}
    for k, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(rare if cls == RARE else per_class):
            h, w = (int(v) for v in rng.integers(36, 90, 2))
            pixels = upright(k, h, w, rng)
            sideways = i % 5 == 1
            nested = cls == "square" and i % 6 == 0
            folder = root / cls / "more" if nested else root / cls
            folder.mkdir(exist_ok=True)
            path = folder / f"{i:03d}.jpg"
            save_jpeg(path, pixels, sideways)
            rel = path.relative_to(root).as_posix()
            made["images"] += 1
            if sideways:
                made["sideways"].append(rel)
            if nested:
                made["nested"].append(rel)
    gray = upright(0, 48, 64, rng).mean(axis=2).round().astype(np.uint16) * 257
    png = root / CLASSES[0] / "scan16.png"
    Image.fromarray(gray).save(png)           # Pillow writes mode I;16
    made["png16"] = png.relative_to(root).as_posix()
    made["images"] += 1
    (root / CLASSES[1] / "readme.txt").write_text("photos from the workshop\n")
    good = root / CLASSES[2] / "000.jpg"
    (root / CLASSES[2] / "cut.jpg").write_bytes(good.read_bytes()[:200])
    made["junk"] = [f"{CLASSES[1]}/readme.txt", f"{CLASSES[2]}/cut.jpg"]
    return made
