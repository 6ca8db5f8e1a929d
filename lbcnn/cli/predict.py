"""``lbcnn predict MODEL IMAGE...``: the class of each image file, folder or glob."""
from __future__ import annotations

from .common import add_trust_c, say

BATCH = 256  # images decoded and classified at a time


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a model: class name and score "
                                       "per image")
    p.add_argument("model", metavar="MODEL",
                   help="a run folder, native .npz model, Keras .h5, .onnx file, .tflite file "
                        "or exported C folder")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files in any format Pillow reads, folders (every file below them) "
                        "or glob patterns such as 'photos/**/*.jpg' (quoted); each is prepared "
                        "like the training images: EXIF orientation, area resize to the model's "
                        "input, its channels. Files that cannot be read are reported and "
                        "skipped, and counted at the end")
    p.add_argument("--top", type=_top, default=1, metavar="K",
                   help="also list the K best classes with their scores")
    p.add_argument("--interpreter", choices=["tflm", "litert"], default="tflm",
                   help="runs a .tflite: tflm (TensorFlow Lite Micro, the default) or litert")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    add_trust_c(p)
    p.set_defaults(func=run)


def _top(text: str) -> int:
    from .common import int_in
    return int_in(1, 1000, "a number of classes")(text)


def expand(items) -> tuple[list[str], list[tuple[str, str]]]:
    """(files, [(pattern, why)]): folders walked (sorted, hidden entries skipped), glob
    patterns expanded; a pattern or path that names nothing is reported, not fatal."""
    import glob
    import os
    from pathlib import Path

    files, missing = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = []
            for here, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(here, n) for n in names if not n.startswith(".")]
            files += sorted(found)
            if not found:
                missing.append((item, "an empty folder"))
        elif os.path.lexists(p):
            files.append(item)
        elif glob.has_magic(item):
            found = sorted(f for f in glob.glob(item, recursive=True) if not os.path.isdir(f))
            files += found
            if not found:
                missing.append((item, "no file matches the pattern"))
        else:
            missing.append((item, "not found"))
    return files, missing


def run(args) -> int:
    import numpy as np

    from ..errors import DataError, LbcnnError
    from ..io.artefacts import open_predictor
    from ..io.images import read_image
    from ..outputs import strict_json

    pred = open_predictor(args.model, trust_c=args.trust_c,
                          interpreter=args.interpreter)
    files, missing = expand(args.images)
    skipped = [(item, why) for item, why in missing]
    names = pred.names()
    index = {int(c): i for i, c in enumerate(pred.classes)}
    done = 0
    converted = []  # (path, note): said once at the end, summed up when there are many
    for start in range(0, len(files), BATCH):
        images, notes, paths = [], [], []
        for path in files[start:start + BATCH]:
            try:
                x, note = read_image(path, pred.input_shape)
            except LbcnnError as exc:
                skipped.append((path, str(exc)))
                if args.json:
                    print(strict_json({"image": path, "error": str(exc)}))
                elif len(files) + len(missing) > 1:   # one image alone: its error line says it
                    say(args, f"skipped: {exc}")
                continue
            images.append(x)
            notes.append(note)
            paths.append(path)
        if not images:
            continue
        x = np.stack(images)
        labels = pred.predict(x)
        proba = pred.predict_proba(x)
        for i, path in enumerate(paths):
            if notes[i]:
                converted.append((path, notes[i]))
            j = index.get(int(labels[i]))
            name = names[j] if j is not None else str(labels[i])
            score = None if proba is None or j is None else float(proba[i, j])
            top = []
            if proba is not None and args.top > 1:
                order = np.argsort(-proba[i], kind="stable")[:args.top]
                top = [{"class": names[o], "score": float(proba[i, o])} for o in order]
            if args.json:
                print(strict_json({"image": path, "class": name, "label": labels[i].item(),
                                   "score": score, "top": top, "note": notes[i]}))
            else:
                shown = f"{score:.3f}" if score is not None else "n/a (C export: class only)"
                print(f"{path}: {name} (score {shown})")
                for t in top[1:]:
                    print(f"    {t['class']}: {t['score']:.3f}")
        done += len(paths)
    if converted and not args.json:
        if len(converted) <= 3:
            for _, note in converted:
                say(args, f"note: {note}")
        else:
            say(args, f"note: {len(converted)} of {done} images were converted for the model's "
                      f"{'x'.join(map(str, pred.input_shape))} input (e.g. {converted[0][1]})")
    if skipped:
        total = done + len(skipped)
        if done == 0 and len(skipped) == 1:   # one image asked for: its error, one line
            item, why = skipped[0]
            raise DataError(why if item in why else f"{item}: {why}")
        if not args.json and missing:
            for item, why in missing:
                say(args, f"skipped: {item}: {why}")
        if done == 0:
            raise DataError(f"no image could be classified ({len(skipped)} of {total} skipped; "
                            f"first: {skipped[0][0]}: {skipped[0][1]})")
        say(args, f"note: classified {done} of {total}; skipped {len(skipped)} (listed above)")
        return 1
    return 0
