"""``lbcnn predict MODEL IMAGE...``: the class of each image file."""
from __future__ import annotations

from .common import say


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a model: class name and score "
                                       "per image")
    p.add_argument("model", metavar="MODEL",
                   help="a run folder, native .npz model, Keras .h5, .onnx file or exported C folder")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files in any format Pillow reads; converted to the model's "
                        "channels and resized (bilinear) to its input size, with a note")
    p.add_argument("--top", type=int, default=1, metavar="K",
                   help="also list the K best classes with their scores")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ..io.artefacts import open_predictor
    from ..io.images import read_image
    from ..outputs import strict_json

    pred = open_predictor(args.model)
    images, notes = [], []
    for path in args.images:
        x, note = read_image(path, pred.input_shape)
        images.append(x)
        notes.append(note)
    x = np.stack(images)
    labels = pred.predict(x)
    proba = pred.predict_proba(x)
    names = pred.names()
    index = {int(c): i for i, c in enumerate(pred.classes)}
    for i, path in enumerate(args.images):
        if notes[i] and not args.json:
            say(args, f"note: {notes[i]}")
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
    return 0
