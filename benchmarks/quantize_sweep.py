"""Does an n-bit head keep what the float head gets? Checked on every kernel set of a search.

For each of the first ``--trials`` kernel sets that ``lbcnn search --seed S`` would
draw, fit the ELM head on the whole training budget (as the search's refit does),
then compare the float head with its n-bit quantization on the test set, with
and without bias correction (the training images' mean feature vector). No model
is chosen here, so looking at test accuracy selects nothing: the question is
only whether quantization changes predictions, and in particular whether every
kernel set that is perfect in float stays perfect at n bits.

    LBCNN_DATA=../shared/data python benchmarks/quantize_sweep.py --dataset olivetti \
        --split paper --filters 5,4 --trials 100 --bits 8

Prints one JSON object (per-trial rows under "per_trial").
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from lbcnn import load_dataset
from lbcnn.heads.quantize import dequantize, quantize_head, training_feature_mean
from lbcnn.models.lbcnn import LBCNN
from lbcnn.train.search import trial_seeds


MODES = ("per_tensor", "per_tensor_bias_corrected", "per_class_pow2",
         "per_class_pow2_bias_corrected")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="olivetti")
    ap.add_argument("--split", default="paper")
    ap.add_argument("--filters", default="5,4")
    ap.add_argument("--C", type=float, default=1e-3)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--bits", type=int, default=8)
    args = ap.parse_args()

    ds = load_dataset(args.dataset, split=args.split, seed=args.seed)
    tr, va = ds.split(args.train_size, 0.1, args.seed)
    fit = np.concatenate([tr, va])  # the search's refit set
    x, y = ds.x_train[fit], ds.y_train[fit]
    filters = tuple(int(f) for f in args.filters.split(","))
    rows, t0 = [], time.perf_counter()
    for t, tseed in enumerate(trial_seeds(args.seed, args.trials)):
        model = LBCNN(filters=filters, C=args.C, random_state=tseed,
                      input_scale=ds.input_scale, device="cpu").fit(x, y)
        h_test = model.forward_features(ds.x_test)  # once; each head is then one matmul
        pf = model.classes_[(h_test @ model.coef_ + model.intercept_).argmax(1)]
        mu = training_feature_mean(model, x)  # training images only
        rows_q = {}
        for mode in MODES:
            per_class = mode.startswith("per_class")
            w, b = dequantize(*quantize_head(model.coef_, model.intercept_, args.bits, per_class,
                                             per_class, mu if mode.endswith("bias_corrected")
                                             else None))
            pq = model.classes_[(h_test @ w + b).argmax(1)]
            rows_q[mode] = {"test_accuracy": float((pq == ds.y_test).mean()),
                            "changed_predictions": int((pq != pf).sum())}
        rows.append({"trial": t, "seed": tseed, "test_accuracy_float": float((pf == ds.y_test).mean()),
                     **{f"{k}_{m}": v for m, r in rows_q.items() for k, v in r.items()}})
    perfect = [r for r in rows if r["test_accuracy_float"] == 1.0]
    out = {
        "benchmark": "quantize_sweep", "dataset": ds.name, "split": args.split,
        "filters": list(filters), "C": args.C, "seed": args.seed, "bits": args.bits,
        "fit_images": int(len(fit)), "test_images": int(len(ds.y_test)), "trials": len(rows),
        "machine": platform.processor() or platform.machine(), "seconds": time.perf_counter() - t0,
        "float_test_accuracy_mean": float(np.mean([r["test_accuracy_float"] for r in rows])),
        "trials_perfect_float": len(perfect),
        **{f"of_those_perfect_{m}": sum(r[f"test_accuracy_{m}"] == 1.0 for r in perfect)
           for m in MODES},
        **{f"changed_predictions_{m}_total": sum(r[f"changed_predictions_{m}"] for r in rows)
           for m in MODES},
        "predictions_compared": len(rows) * int(len(ds.y_test)),
        "per_trial": rows,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
