"""n-bit head weight scale: largest weight (absmax) against MSE clipping.

For a few LB-CNN bodies on MNIST, fit the ELM head on the fit part of a
10,000-image budget (seed 0 split: 9,000 fit + 1,000 validation), quantize it
every way, and score each head on the validation images and on 5,000 *other*
training images (outside the budget; never the test set). Prints JSON.

    python benchmarks/head_clipping.py [--kernel-seed 7]
"""
import argparse
import json
import time

import numpy as np

from lbcnn.data import load_dataset
from lbcnn.heads.elm import RidgeAccumulator, one_vs_rest_targets
from lbcnn.heads.quantize import dequantize, quantize_head
from lbcnn.models.lbcnn import LBCNNBody

BODIES = [((80, 1, 2), 3e-4), ((20, 4, 2), 3e-4), ((40, 1), 5e-4)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel-seed", type=int, default=7)
    args = ap.parse_args()
    ds = load_dataset("mnist")
    tr, va = ds.split(10000, 0.1, 0)
    rest = np.setdiff1d(np.arange(len(ds.y_train)), np.concatenate([tr, va]))
    other = np.random.default_rng(123).choice(rest, 5000, replace=False)
    rows = []
    for filters, C in BODIES:
        t0 = time.perf_counter()
        body = LBCNNBody.random((28, 28, 1), filters, 1, args.kernel_seed, ds.input_scale)
        h = body.transform(ds.x_train[tr])
        acc = RidgeAccumulator(h.shape[1], 10, C)
        acc.update(h, one_vs_rest_targets(ds.y_train[tr], 10))
        w = acc.solve()
        mu = h.mean(0, dtype=np.float64)
        hv, ho = body.transform(ds.x_train[va]), body.transform(ds.x_train[other])

        def score(W, b):
            return (round(100 * float(((hv @ W + b).argmax(1) == ds.y_train[va]).mean()), 2),
                    round(100 * float(((ho @ W + b).argmax(1) == ds.y_train[other]).mean()), 2))

        row = {"filters": list(filters), "features": int(h.shape[1]), "C": C,
               "float": score(w, np.zeros(10, np.float32))}
        for bits in (3, 4, 5, 8):
            for clip in ("absmax", "mse"):
                for per_class in (False, True):
                    W, b = dequantize(*quantize_head(w, np.zeros(10, np.float32), bits, per_class,
                                                     feature_mean=mu, clip=clip))
                    row[f"int{bits}_{clip}{'_per_class' if per_class else ''}"] = score(W, b)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    print(json.dumps({"dataset": "mnist", "budget": 10000, "fit": int(len(tr)), "val": int(len(va)),
                      "other_train_images": 5000, "kernel_seed": args.kernel_seed,
                      "score": "[validation %, other-training-images %]", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
