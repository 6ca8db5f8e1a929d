"""``lbcnn quantize``: the signed n-bit fixed-point head of an LB-CNN."""
from __future__ import annotations

from ..outputs import strict_json
from ..report import print_table
from .common import (accuracy, add_data_args, bit_width, carried_meta, dataset_for, fraction,
                     load_model_arg, require_lbcnn, say, seed_int)


def add_parser(sub) -> None:
    q = sub.add_parser("quantize", help="signed n-bit fixed-point head")
    q.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder or a model file")
    add_data_args(q, required=False)
    q.add_argument("--bits", type=bit_width, default=8, help="bits per head weight (2..16)")
    q.add_argument("--per-class", action="store_true", help="one scale per output class")
    q.add_argument("--pow2", action="store_true", help="power-of-two scales (shifts in hardware)")
    q.add_argument("--clip", choices=("output", "mse", "absmax"), default="output",
                   help="weight scale: the clipping level with the least logit error on training "
                        "features (output), the least weight error (mse), or the largest weight "
                        "(absmax) (default: %(default)s)")
    q.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                   help="gptq: round feature by feature, cancelling each rounding error through "
                        "the training features' correlations (GPTQ); nearest: round each weight "
                        "alone (default: %(default)s)")
    q.add_argument("--no-bias-correction", action="store_true",
                   help="do not fold the weights' mean rounding error (over the training "
                        "images' features) into the bias")
    q.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="validation share, the same split finetune held out")
    q.add_argument("--seed", type=seed_int, default=0, help="seed of that split")
    q.add_argument("--out", required=True, help="output model file")
    q.add_argument("--json", action="store_true", help="print one JSON object at the end")
    q.set_defaults(func=run)


def run(args) -> int:
    from ..data.splits import finetune_split
    from ..heads.quantize import FEATURE_SAMPLE, apply_quantization, training_feature_stats
    from ..models.lbcnn import save_lbcnn

    from ..outputs import check_out_file
    out = check_out_file(args.out)
    model, src = load_model_arg(args.model)
    require_lbcnn(model, "quantize")
    ds = dataset_for(model, args, strict=True)
    # the same validation split ``finetune`` held out (disjoint from the search's images)
    tr, va, disjoint = finetune_split(ds, model, args.val_fraction, args.seed)
    xv, yv = ds.x_train[va], ds.y_train[va]
    meta_in = getattr(model, "meta_", {}) or {}
    # a validation figure only on images the head was not fitted on: a search refit on
    # train + validation (the default) or a --refit-full fine-tune has seen them all
    held_out = disjoint in ("groups", "images") and \
        not meta_in.get("finetune", {}).get("refit_full")
    before = {"val_accuracy": accuracy(model, xv, yv) if held_out else None,
              "test_accuracy": accuracy(model, ds.x_test, ds.y_test)}
    # bias correction uses training images only (never validation or test)
    mu, sample, gram = None, None, None
    gptq = args.rounding == "gptq"
    if args.clip == "output" or gptq or not args.no_bias_correction:  # one pass serves all
        mu, sample, *rest = training_feature_stats(
            model, ds.x_train[tr], sample=FEATURE_SAMPLE if args.clip == "output" else 0,
            gram=gptq)
        gram = rest[0] if gptq else None
    if args.no_bias_correction:
        mu = None
    apply_quantization(model, args.bits, args.per_class, args.pow2, mu, args.clip, sample,
                       gram, args.rounding)
    after = {"val_accuracy": accuracy(model, xv, yv) if held_out else None,
             "test_accuracy": accuracy(model, ds.x_test, ds.y_test)}
    meta = carried_meta(model)
    meta.update(**ds.provenance(), val_accuracy=after["val_accuracy"],
                test_accuracy=after["test_accuracy"], test_size=int(len(ds.y_test)),
                quantize={"bits": args.bits, "per_class": args.per_class, "pow2": args.pow2,
                          "clip": args.clip, "rounding": args.rounding,
                          "bias_correction_images": 0 if mu is None else int(len(tr)),
                          "source": str(src), "before": before, "after": after,
                          "val_size": int(len(va)) if held_out else 0, "seed": args.seed})
    save_lbcnn(model, out, **meta)
    summary = {"dataset": ds.name, "source": str(src), "out": str(out), "head": model.head_meta_,
               "before": before, "after": after, "val_size": int(len(va)) if held_out else 0,
               "validation_held_out": held_out, "n_test": int(len(ds.y_test)),
               "test_split": ds.split_record(), "file_bytes": out.stat().st_size}
    if args.json:
        print(strict_json(summary))
    else:
        if not held_out:
            say(args, "note: no validation figure: the head was fitted on every training image "
                      "(the search refits on train + validation), so none is held out; the "
                      "test figures below are")
        rows = [("scale", f"{model.head_meta_['scale']}{', power of two' if args.pow2 else ''}"),
                ("bias correction", "off" if mu is None else f"on ({len(tr):,} training images)")]
        if held_out:
            rows.append(("validation accuracy", f"{100 * before['val_accuracy']:.2f} % -> "
                                                f"{100 * after['val_accuracy']:.2f} % "
                                                f"(n={len(va):,}, held out)"))
        rows += [("test accuracy", f"{100 * before['test_accuracy']:.2f} % -> "
                                   f"{100 * after['test_accuracy']:.2f} % (n={len(ds.y_test):,})"),
                 ("model", f"{out} ({summary['file_bytes']:,} bytes)")]
        print_table(f"{args.bits}-bit head on {ds.name}", rows)
    return 0
