"""``lbcnn transfer``: the CLI shell over ``lbcnn.train.transfer`` (imports torch lazily)."""
from __future__ import annotations

from .common import add_data_args, batch_int, fraction, positive_float, positive_int, seed_int


def add_parser(sub) -> None:
    t = sub.add_parser("transfer", help="freeze a trained CBCNN/LB-CNN body and train a new last "
                       "layer for another dataset")
    t.add_argument("--backbone", required=True, metavar="MODEL", help="model file or run folder")
    add_data_args(t, folder_options=False)
    t.add_argument("--head", default="float", choices=["float", "binary"],
                   help="the new last layer: float weights, or ±1 weights (STE) followed by batch norm")
    t.add_argument("--per-class", type=positive_int, default=10, help="labelled images per class")
    t.add_argument("--epochs", type=positive_int, default=50, help="most epochs for the new layer")
    t.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    t.add_argument("--batch-size", type=batch_int, default=32, help="images per step")
    t.add_argument("--val-fraction", type=fraction, default=0.2,
                   help="of the labelled budget, for epoch selection (none below 2 per class)")
    t.add_argument("--seed", type=seed_int, default=0, help="seed for the labelled subset and training")
    t.add_argument("--layer", default="features", choices=["features", "pre_logits"],
                   help="CBCNN: conv features (forward_features) or the last hidden dense layer")
    t.add_argument("--resize", default="auto", choices=["auto", "none"],
                   help="auto: resize target images to the backbone's input")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--to-gray", action="store_true", help="convert RGB targets to grayscale")
    g.add_argument("--no-convert", action="store_true",
                   help="refuse any resizing or channel conversion (a mismatch is an error)")
    t.add_argument("--compare-scratch", action="store_true",
                   help="also train the architecture from scratch, same data and wall-clock")
    t.add_argument("--out", help="folder for summary.json and head.npz")
    t.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    t.add_argument("--json", action="store_true", help="print one JSON object at the end")
    t.set_defaults(func=run)


def run(args) -> int:
    import argparse
    import json
    import sys

    from ..train.transfer import summary, transfer
    from .common import load_data

    if args.out:
        from ..outputs import prepare_run_dir
        prepare_run_dir(args.out, force=args.force, resumable=False)
    # transfer's own --resize (auto/none) converts images for the backbone, not the loader
    data_args = argparse.Namespace(dataset=args.dataset, data_path=args.data_path,
                                   split=args.split)
    ds = load_data(data_args, seed=args.seed, quiet=args.json)
    channels = "none" if args.no_convert else ("gray" if args.to_gray else "auto")
    resize = "none" if args.no_convert else args.resize
    r = transfer(args.backbone, ds, head=args.head, per_class=args.per_class, epochs=args.epochs,
                 lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                 val_fraction=args.val_fraction, resize=resize, channels=channels,
                 layer=args.layer, compare_scratch=args.compare_scratch, out=args.out)
    s = summary(r)
    for n in s["notes"]:
        print(f"note: {n}", file=sys.stderr)
    if args.json:
        s.pop("history", None)
        print(json.dumps(s, default=str))
        return 0
    acc = s["test_accuracy"]
    print(f"transfer {s['backbone_family']} -> {s['dataset']} ({args.head} head, {s['per_class']}/class, "
          f"fit {s['fit_size']} / val {s['val_size']}, seed {s['seed']}): test accuracy "
          f"{100 * acc:.2f} % on {s['test_size']:,} images, {s['wall_seconds']:.1f} s")
    if "scratch" in s:
        sc = s["scratch"]
        print(f"scratch (same data, {sc['time_budget_seconds']:.1f} s budget, {sc['epochs_run']} "
              f"epoch(s)): test accuracy {100 * sc['test_accuracy']:.2f} %, {sc['wall_seconds']:.1f} s")
    return 0
