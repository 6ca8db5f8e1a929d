"""A fresh folder of real photos, laid out and damaged the way users' folders are, for
walking docs/guide.md by hand (its recorded times come from this folder).

GTSRB training photos of ten sign classes, **one frame per physical sign** (GTSRB keeps 30
frames of each sign in a row; a random split of several frames would put near-twins on both
sides and flatter the test figure). Each is upscaled to a random size (60-140 px a side, as a
phone crop would be) and saved as JPEG; every 20th is stored sideways with an EXIF
orientation tag, three are 3024 x 3024 "phone photos" (sideways too), one is a 16-bit PNG, one
class has a nested sub-folder, one class has only three photos, and a readme.txt and a
truncated JPEG lie among them. Prints one JSON object saying what it wrote.

    python benchmarks/photo_folder.py --out signs
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# GTSRB class ids -> folder names (the ten with the most tracks, and a rare one)
CLASSES = {1: "speed30", 2: "speed50", 4: "speed70", 10: "no_passing_trucks",
           12: "priority_road", 13: "yield", 25: "road_work", 38: "keep_right",
           5: "speed80", 9: "no_passing"}
RARE = (11, "right_of_way", 3)      # class id, folder, photos kept


def main() -> None:
    from PIL import Image

    from lbcnn.data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    ds = load_dataset("gtsrb")
    out = Path(args.out)
    made = {"photos": 0, "sideways": 0, "big": 0, "per_class": {}}
    exif = Image.Exif()
    exif[0x0112] = 6                        # "turn 90 degrees clockwise to show"
    classes = {**CLASSES, RARE[0]: RARE[1]}
    for cid, name in classes.items():
        tracks = np.unique(ds.groups_train[ds.y_train == cid])
        if cid == RARE[0]:
            tracks = tracks[:RARE[2]]
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for t in tracks:
            frames = np.flatnonzero(ds.groups_train == t)
            img = Image.fromarray(ds.x_train[rng.choice(frames)])
            big = made["big"] < 3 and cid == 13 and made["photos"] % 7 == 0
            side = 3024 if big else int(rng.integers(60, 141))
            img = img.resize((side, side), Image.BICUBIC)
            sideways = big or made["photos"] % 20 == 7
            sub = folder / "dusk" if cid == 38 and t % 4 == 0 else folder
            sub.mkdir(exist_ok=True)
            path = sub / f"{int(t):04d}.jpg"
            if sideways:
                img.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
            else:
                img.save(path, quality=90)
            made["photos"] += 1
            made["sideways"] += sideways
            made["big"] += big
            made["per_class"][name] = made["per_class"].get(name, 0) + 1
    gray = np.asarray(Image.open(next((out / "yield").glob("*.jpg"))).convert("L").resize((96, 96)))
    Image.fromarray(gray.astype(np.uint16) * 257).save(out / "yield" / "scan16.png")
    made["photos"] += 1
    (out / "speed30" / "readme.txt").write_text("signs photographed on the way to work\n")
    first = next((out / "speed50").glob("*.jpg"))
    (out / "speed50" / "broken.jpg").write_bytes(first.read_bytes()[:300])
    made["junk"] = ["speed30/readme.txt", "speed50/broken.jpg"]
    made["out"] = str(out)
    print(json.dumps(made))


if __name__ == "__main__":
    main()
